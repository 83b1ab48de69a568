"""Recipes side by side: decode tok/s, TTFT, weight bytes, peak RSS, perplexity and QA accuracy, each also as
a ratio to fp32 on the same model, device and settings.

Recipes: fp32 (the reference), bf16, int8 through every int8 backend that runs on the device (the default one
marked), nf4, magnitude pruning 0.5, MLP channel pruning 0.5, layer pruning 0.5, and a distilled student
(``--student NAME``, or ``--distill-steps N`` to build one first with ``workbench distill``).

Each recipe runs in a process of its own, ``python -m workbench bench --json --eval ...``, so that its peak
RSS is its own (no other recipe's weights, no earlier build) and no recipe inherits another's warm caches.
The timed runs come first (warm-up excluded, every run exactly ``--max-new-tokens`` tokens), then quality:
perplexity on the evaluation text and accuracy on the QA questions, after the timing so neither disturbs it.

Prints a markdown table, and beside it the targets some recipes are expected to reach on a CPU; it asserts
nothing: the figures are whatever this machine measured.

Run: ``python benchmarks/recipes.py [--rounds 1] [--runs 3] [--max-new-tokens 64] [--student NAME | --distill-steps N]
[--only LABEL,...] [--no-eval] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Decode tok/s, as a multiple of fp32's, that a recipe is expected to reach on a CPU.
TARGETS = {"channels 0.5": 1.2, "layers 0.5": 1.6, "int8 (default)": 1.3}
# A student is expected to win back at least this share of the QA accuracy that layer pruning alone lost.
STUDENT_RECOVERY_TARGET = 0.5


def recipes(device: str, student: str | None, model: str = "embedded") -> list[tuple[str, list[str]]]:
    """(label, recipe flags) of every recipe to measure, fp32 first."""
    from workbench.devices import resolve_device
    from workbench.optimize.quantize import DEFAULTS, backends_for

    device = resolve_device(device)
    out = [("fp32", ["--dtype", "fp32"]), ("bf16", ["--dtype", "bf16"])]
    for backend in backends_for("int8", device):
        default = " (default)" if DEFAULTS.get(("int8", device)) == backend.name else ""
        out.append((f"int8 {backend.name}{default}", ["--dtype", "int8", "--backend", backend.name]))
    out.append(("nf4", ["--dtype", "nf4"]))
    for method in ("magnitude", "channels", "layers"):
        out.append((f"{method} 0.5", ["--prune-method", method, "--prune-ratio", "0.5"]))
    if student:
        ratio = student_layers_ratio(student, model)
        if ratio is not None and f"layers {ratio:g}" not in {label for label, _ in out}:
            out.append((f"layers {ratio:g}", ["--prune-method", "layers", "--prune-ratio", str(ratio)]))
        out.append((f"student {student}", ["--variant", student]))
    return out


def student_layers_ratio(name: str, model: str = "embedded") -> float | None:
    """The share of layers the student was cut by before healing: its starting point, to compare it with."""
    from workbench.optimize.variants import list_students

    for student in list_students(model):
        if student["name"] == name:
            return student.get("spec", {}).get("layers_ratio")
    return None


def run_recipe(label: str, flags: list[str], args: argparse.Namespace, evaluate: bool = True) -> dict:
    """One recipe in its own process; returns its bench entry, or {"error": ...} if the process failed."""
    command = [sys.executable, "-m", "workbench", "bench", "--json", "--model", args.model,
               "--device", args.device, "--runs", str(args.runs), "--warmup", str(args.warmup),
               "--max-new-tokens", str(args.max_new_tokens), *flags]
    if evaluate:
        command.append("--eval")
    if args.max_eval_tokens:
        command += ["--max-eval-tokens", str(args.max_eval_tokens)]
    if args.qa_limit:
        command += ["--qa-limit", str(args.qa_limit)]
    stderr = None if args.verbose else subprocess.PIPE
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"label": label, "error": tail[0]}
    (entry,) = json.loads(proc.stdout)["results"]
    return {**entry, "label": label}


def combine(entries: list[dict]) -> dict:
    """One recipe's entries from several interleaved rounds as one entry: the median of the rounds' figures.

    Rounds interleave the recipes (round 1: every recipe, then round 2: every recipe, ...), so a machine whose
    speed drifts over minutes (other tenants, thermal limits) slows every recipe alike instead of a few.
    """
    ok = [e for e in entries if "error" not in e]
    if not ok:
        return entries[0]
    decode = [e["decode_tok_s"]["median"] for e in ok]
    first = ok[0]
    return {
        **first,
        "decode_tok_s": {"median": statistics.median(decode), "min": min(e["decode_tok_s"]["min"] for e in ok),
                         "max": max(e["decode_tok_s"]["max"] for e in ok), "rounds": decode},
        "ttft_ms": {**first["ttft_ms"], "p50": statistics.median(e["ttft_ms"]["p50"] for e in ok)},
        "peak_rss_mb": max(e["peak_rss_mb"] for e in ok),
        "quality": next((e["quality"] for e in ok if e.get("quality")), None),
    }


def build_student(args: argparse.Namespace) -> str:
    """Build (or resume) the default student of the model with ``workbench distill``; returns its name."""
    command = [sys.executable, "-m", "workbench", "distill", "--json", "--no-eval", "--model", args.model,
               "--steps", str(args.distill_steps)]
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"workbench distill failed (exit status {proc.returncode})")
    return json.loads(proc.stdout)["name"]


def row(entry: dict, reference: dict | None) -> dict:
    """Absolute figures of one recipe and their ratios to the reference (fp32)."""
    if "error" in entry:
        return {"label": entry["label"], "error": entry["error"]}
    quality = entry.get("quality") or {}
    figures = {
        "decode_tok_s": entry["decode_tok_s"]["median"],
        "ttft_ms": entry["ttft_ms"]["p50"],
        "weight_mb": entry["model"]["weight_bytes"] / 2**20,
        "peak_rss_mb": entry["peak_rss_mb"],
        "perplexity": quality.get("perplexity"),
        "qa_accuracy": quality.get("qa_accuracy"),
    }
    ref = row(reference, None)["figures"] if reference and "error" not in reference else {}
    ratios = {k: _ratio(v, ref.get(k)) for k, v in figures.items()}
    return {"label": entry["label"], "backend": entry["model"]["backend"], "figures": figures, "ratios": ratios,
            "qa": f"{quality.get('qa_correct', '?')}/{quality.get('qa_n', '?')}", "recipe": entry["recipe"]}


def _ratio(value, reference):
    return value / reference if value is not None and reference else None


def target_cell(label: str, ratios: dict) -> str:
    key = "int8 (default)" if label.startswith("int8") and label.endswith("(default)") else label
    if key not in TARGETS or ratios.get("decode_tok_s") is None:
        return ""
    want, got = TARGETS[key], ratios["decode_tok_s"]
    return f"decode ≥ {want:g}×: {'met' if got >= want else 'not met'} ({got:.2f}×)"


def table(rows: list[dict]) -> str:
    header = ["recipe", "decode tok/s", "× fp32", "TTFT p50 ms", "× fp32", "weight MB", "× fp32", "peak RSS MB",
              "× fp32", "perplexity", "× fp32", "QA", "× fp32", "target", "kernel path"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | failed: {r['error']} |" + " |" * (len(header) - 2))
            continue
        f, x = r["figures"], r["ratios"]
        cells = [r["label"]]
        for key, digits in (("decode_tok_s", 1), ("ttft_ms", 1), ("weight_mb", 1), ("peak_rss_mb", 0),
                            ("perplexity", 2)):
            cells += [_num(f[key], digits), _times(x[key])]
        qa = f["qa_accuracy"]
        cells += ["n/a" if qa is None else f"{qa:.0%} ({r['qa']})", _times(x["qa_accuracy"])]
        cells += [target_cell(r["label"], x), r["backend"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def student_recovery(rows: list[dict], layers_ratio: float | None) -> str | None:
    """How much of the QA accuracy that pruning the same layers alone lost the student wins back (1.0 = all)."""
    by = {r["label"]: r for r in rows if "error" not in r}
    students = [r for label, r in by.items() if label.startswith("student")]
    cut = f"layers {layers_ratio:g}" if layers_ratio is not None else None
    if not students or "fp32" not in by or cut not in by:
        return None
    fp32, layers = by["fp32"]["figures"]["qa_accuracy"], by[cut]["figures"]["qa_accuracy"]
    student = students[0]["figures"]["qa_accuracy"]
    lost = fp32 - layers
    if lost <= 0:
        return f"{cut} lost no QA accuracy here (fp32 {fp32:.0%}, {cut} {layers:.0%}): nothing to recover"
    share = (student - layers) / lost
    verdict = "met" if share >= STUDENT_RECOVERY_TARGET else "not met"
    return (f"QA accuracy: fp32 {fp32:.0%}, {cut} (the student's starting point, unhealed) {layers:.0%}, "
            f"{students[0]['label']} {student:.0%}: the student recovers {share:.0%} of what pruning lost "
            f"(target ≥ {STUDENT_RECOVERY_TARGET:.0%}: {verdict})")


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _times(value) -> str:
    return "n/a" if value is None else f"{value:.2f}×"


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per recipe (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs per recipe (default 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds over all recipes; figures are the median of the rounds (default 1)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens per run (default 64)")
    parser.add_argument("--max-eval-tokens", type=int, default=None, help="perplexity text cap (default: all)")
    parser.add_argument("--qa-limit", type=int, default=None, help="first N QA questions (default: all)")
    parser.add_argument("--no-eval", action="store_true", help="timing and memory only: no perplexity or QA")
    student = parser.add_mutually_exclusive_group()
    student.add_argument("--student", default=None, help="a student built by `workbench distill`, as --variant")
    student.add_argument("--distill-steps", type=int, default=None,
                         help="build (or resume) the default student with this many steps first")
    parser.add_argument("--only", default=None, help="comma-separated labels to run (fp32 always runs)")
    parser.add_argument("--verbose", action="store_true", help="show each recipe's progress")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON after the table")
    args = parser.parse_args()

    name = build_student(args) if args.distill_steps else args.student
    chosen = recipes(args.device, name, args.model)
    if args.only:
        wanted = {label.strip() for label in args.only.split(",")} | {"fp32"}
        chosen = [(label, flags) for label, flags in chosen if label in wanted or label.split(" (")[0] in wanted]
    by_label: dict[str, list[dict]] = {label: [] for label, _ in chosen}
    for r in range(1, args.rounds + 1):
        for i, (label, flags) in enumerate(chosen, start=1):
            start = time.perf_counter()
            evaluate = not args.no_eval and r == 1  # quality does not vary between rounds: measured once
            entry = run_recipe(label, flags, args, evaluate)
            by_label[label].append(entry)
            summary = entry.get("error") or f"{entry['decode_tok_s']['median']:.1f} tok/s"
            if entry.get("quality"):
                summary += f", ppl {entry['quality']['perplexity']:.2f}, QA {entry['quality']['qa_accuracy']:.0%}"
            print(f"[round {r}/{args.rounds}, {i}/{len(chosen)}] {label}: {summary} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    entries = [combine(by_label[label]) for label, _ in chosen]
    reference = entries[0]
    rows = [row(e, reference) for e in entries]
    print(f"{args.model} on {args.device} ({machine()}); {args.rounds} interleaved round(s) of {args.runs} runs of "
          f"{args.max_new_tokens} tokens after {args.warmup} warm-up; decode tok/s = median over runs (and rounds); "
          "ratios are recipe / fp32 (higher is better for decode and QA, lower for TTFT, bytes, RSS and perplexity)\n")
    print(table(rows))
    recovery = student_recovery(rows, student_layers_ratio(name, args.model) if name else None)
    if recovery:
        print("\n" + recovery)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
