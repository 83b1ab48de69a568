"""Check the package's import rules: ``python -m workbench.tools.layers`` prints the layers and every breach.

Every import in ``workbench/`` is read from the source, those made inside functions included, and must
- form no cycle;
- point down the layers below (or within its own layer), never up;
- keep streamlit inside ``workbench.ui``;
- keep torch, transformers and the transformers runtime's modules out of everything above the runtime seam,
  except where ``SEAM_EXCEPTIONS`` says why.

Exit status 0 when every rule holds, 1 otherwise.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "workbench"
ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A module belongs to the first layer one of whose prefixes names it or a package above it.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("workbench.recipe", "workbench.latency", "workbench.formats", "workbench.progress",
                    "workbench.conversation", "workbench.catalog", "workbench.devices", "workbench.access")),
    ("store", ("workbench.store",)),
    ("loading", ("workbench.loading",)),
    ("optimize", ("workbench.optimize",)),
    ("runtimes", ("workbench.runtimes",)),
    ("serving", ("workbench.serving",)),
    ("export", ("workbench.export",)),
    ("measurement", ("workbench.quality", "workbench.bench", "workbench.load", "workbench.machine", "workbench.student_card",
                     "workbench.predict", "workbench.roofline", "workbench.profile", "workbench.frontier")),
    ("response cache", ("workbench.response_cache",)),
    ("observation", ("workbench.observe",)),
    ("interfaces", ("workbench.cli", "workbench.ui", "workbench.tools", "workbench.__main__")),
)
SEAM = "runtimes"  # the layer whose modules may reach the model libraries for the layers above
MODEL_LIBRARIES = ("torch", "transformers", "llama_cpp", "workbench.runtimes.transformers", "workbench.runtimes.llamacpp",
                   "workbench.optimize.pipeline", "workbench.optimize.prune", "workbench.optimize.quantize")
SEAM_EXCEPTIONS = {
    # The response cache's own sentence-embedding model (not a recipe's), loaded with transformers.
    "workbench.response_cache.embedder": ("torch", "transformers"),
    # TensorBoard scalars are written with torch's SummaryWriter (an optional extra).
    "workbench.observe.tensorboard": ("torch",),
    # Export builds the recipe's float model and reuses the llama.cpp runtime's GGUF file, to write them for other
    # servers: what it writes is the runtimes' own artifacts, not a model it runs.
    "workbench.export": ("workbench.runtimes.llamacpp", "workbench.optimize.pipeline"),
}
UI_ONLY = "streamlit"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a workbench module, or the top-level name of a library)
    line: int
    in_function: bool


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the package by dotted name."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    """The imports of one module: workbench modules by their full name, other libraries by their top name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node, in_function in _walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(name, _resolve(alias.name, known), node.lineno, in_function))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: level 1 is this package, 2 its parent, ...
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(Import(name, submodule if submodule in known else _resolve(base, known), node.lineno,
                                    in_function))
    return found


def _walk(tree: ast.AST, in_function: bool = False) -> Iterable[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(tree):
        yield child, in_function
        inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from _walk(child, inside)


def _resolve(dotted: str, known: set[str]) -> str:
    """The longest known workbench module that ``dotted`` names, or the top-level name of a library."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return parts[0]


def layer_of(module: str) -> int | None:
    if module == PACKAGE:
        return 0  # the package's own __init__, which imports nothing
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), by Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def check(root: Path = ROOT) -> list[str]:
    """Every breach of the import rules, one line each (empty when they all hold)."""
    known = modules(root)
    names = set(known)
    problems: list[str] = []
    edges: dict[str, set[str]] = {name: set() for name in names}
    for name, path in known.items():
        rank = layer_of(name)
        if rank is None:
            problems.append(f"{name}: in no layer; add it to LAYERS in workbench/tools/layers.py")
            continue
        for imp in imports(name, path, names):
            where = f"{path.relative_to(root.parent)}:{imp.line}"
            if imp.target in names:
                if imp.target != name:
                    edges[name].add(imp.target)
                target_rank = layer_of(imp.target)
                if target_rank is not None and target_rank > rank:
                    problems.append(f"{where}: {name} ({LAYERS[rank][0]}) imports {imp.target} "
                                    f"({LAYERS[target_rank][0]}), a layer above it")
            if imp.target == UI_ONLY and not name.startswith("workbench.ui"):
                problems.append(f"{where}: {name} imports streamlit; only workbench.ui may")
            seam = [r for r, (layer, _) in enumerate(LAYERS) if layer == SEAM][0]
            library = next((lib for lib in MODEL_LIBRARIES if imp.target == lib or imp.target.startswith(lib + ".")),
                           None)
            if rank > seam and library and library not in SEAM_EXCEPTIONS.get(name, ()):
                problems.append(f"{where}: {name} imports {imp.target}; above the runtime seam, go through "
                                "workbench.runtimes")
    for component in cycles(edges):
        problems.append("import cycle: " + " -> ".join(component + component[:1]))
    return problems


def main() -> int:
    known = modules()
    for rank, (layer, _) in reversed(list(enumerate(LAYERS))):
        members = sorted(m for m in known if layer_of(m) == rank)
        print(f"{layer:>15}: {', '.join(m.removeprefix('workbench.') for m in members)}")
    problems = check()
    for problem in problems:
        print(problem)
    verdict = f"{len(problems)} breaches" if problems else "no cycle, every import points down"
    print(f"{len(known)} modules: {verdict}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
