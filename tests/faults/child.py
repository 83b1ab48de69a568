"""A child process for the fault-injection tests: it does one real piece of the workbench's work and, at a named
point inside a write, says so and waits: to be killed with SIGKILL, or told to go on.

    python child.py <scenario> '<json args>'

Environment: ``WORKBENCH_HOME``; ``FAULT_AT`` the point (below); ``FAULT_REACHED`` a file this process creates when
it gets there; ``FAULT_GO`` a file whose appearance lets it go on (without one it waits to be killed);
``FAULT_NO_EXCHANGE=1`` makes folder swaps use two renames (as where the OS has no atomic exchange);
``FAULT_FSIZE=<bytes>`` makes every write past that size fail with EFBIG (a full disk, where nothing can be mounted).

Points (``kind:name``): ``finish_dir:<text>`` before the marker of a temp folder whose path holds ``<text>``;
``swap_in:<name>`` before a complete folder is swapped in at ``<name>``; ``renamed:<name>`` just after a rename to
``<name>`` (the first of two); ``replace:<name>`` before a written temp file becomes ``<name>``; ``write_gguf`` once
half of a GGUF file is on disk. The loops (``history``, ``cache``) print each finished write's number instead.

The last line on stdout is the scenario's result as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny, answers

from workbench import store  # noqa: E402


def pause() -> None:
    """Tell the test this process reached its point; wait for FAULT_GO, or forever (until killed)."""
    Path(os.environ["FAULT_REACHED"]).write_text(str(os.getpid()))
    go = os.environ.get("FAULT_GO")
    while not (go and Path(go).exists()):
        time.sleep(0.02)


def install(point: str) -> None:
    """Wrap the function that does the write at ``point`` so that the process pauses there (once)."""
    kind, _, name = point.partition(":")
    done = []

    def once(hit: bool) -> None:
        if hit and not done:
            done.append(True)
            pause()

    if kind == "finish_dir":
        original_finish = store.finish_dir

        def finish_dir(folder, marker, text):
            once(name in str(folder))
            return original_finish(folder, marker, text)

        store.finish_dir = finish_dir
    elif kind == "swap_in":
        original_swap = store.swap_in

        def swap_in(new, final):
            once(Path(final).name == name and Path(final).exists())
            return original_swap(new, final)

        store.swap_in = swap_in
    elif kind == "renamed":
        original_rename = os.rename

        def rename(src, dst, *args, **kwargs):
            original_rename(src, dst, *args, **kwargs)
            once(Path(dst).name == name)

        os.rename = rename
    elif kind == "replace":
        original_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            once(Path(dst).name == name)
            return original_replace(src, dst, *args, **kwargs)

        os.replace = replace
    elif kind == "write_gguf":
        from workbench.runtimes.llamacpp import export

        original_write = export.write_gguf

        def write_gguf(model, tokenizer, path, **kwargs):
            original_write(model, tokenizer, path, **kwargs)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])  # what a kill in the middle of the write leaves
            once(True)

        export.write_gguf = write_gguf
    else:
        raise SystemExit(f"unknown fault point {point!r}")


# Scenarios -----------------------------------------------------------------------------------------------------


def convert(gguf: str) -> dict:
    """Load a GGUF source (converting it once); a ModelSourceError is the result, as the CLI would show it."""
    from workbench import loading

    stages = []
    try:
        _, _, weights = loading.load(gguf, on_stage=lambda stage, _: stages.append(stage))
    except loading.ModelSourceError as exc:
        return {"error": str(exc), "stages": stages}
    return {"weights": weights, "stages": stages}


def gguf_file(model: str) -> dict:
    from workbench.recipe import Recipe
    from workbench.runtimes import llamacpp

    recipe = Recipe(model=model, runtime="llama.cpp", device="cpu", dtype="fp32", threads=1)
    path, _, found = llamacpp.gguf_file(recipe)
    return {"path": str(path), "params": found.params}


def distill(teacher: str, spec: dict, steps: int, checkpoint_every: int) -> dict:
    from workbench.optimize.distill import distill as build
    from workbench.recipe import StudentSpec

    return build(teacher, StudentSpec(**spec), steps, checkpoint_every=checkpoint_every)


def history(path: str) -> dict:
    from workbench.observe.history import HistoryStore
    from workbench.observe.records import RequestRecord

    rows = HistoryStore(path)
    for i in range(1_000_000):
        rows.add(RequestRecord(f"k{i}", "label", 1_700_000_000.0 + i, 10, 3, 0.1, 0.3, 0.0, token_times=[0.1] * 3))
        rows.flush()  # written by the history's background writer: finished once it is on disk
        print(i, flush=True)
    return {}


def cache(directory: str) -> dict:
    from answers import GREEDY, RECIPE, answer, ask

    from workbench.response_cache.disk import ResponseCache

    responses = ResponseCache(directory)
    for i in range(1_000_000):
        if not responses.store(RECIPE.key(), ask(f"Question number {i}?"), GREEDY, answer(f"Answer {i}.")):
            raise SystemExit(f"store {i} failed: {responses.problem}")
        print(i, flush=True)
    return {}


SCENARIOS = {"convert": convert, "gguf_file": gguf_file, "distill": distill, "history": history, "cache": cache}

if __name__ == "__main__":
    if os.environ.get("FAULT_FSIZE"):
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        limit = int(os.environ["FAULT_FSIZE"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    if os.environ.get("FAULT_NO_EXCHANGE") == "1":
        store._exchange = lambda a, b: False
    if os.environ.get("FAULT_AT"):
        install(os.environ["FAULT_AT"])
    result = SCENARIOS[sys.argv[1]](**json.loads(sys.argv[2]))
    print(json.dumps(result), flush=True)
