"""Runtimes side by side: the same model under transformers and under llama.cpp, and a bare llama-cpp-python loop.

Recipes: transformers fp32 and int8; llama.cpp fp32, fp16, q8_0, q4_k_m, q4_0 and the shipped Q4_1 file;
layer pruning 0.3 -> q4_0; a distilled student -> q4_0 (``--student NAME``, or ``--distill-steps N`` to build the
default student first); and the reference: a bare ``llama_cpp.Llama(...).generate`` loop on the shipped file, the
way people use llama.cpp from Python, with the thread count this machine decodes fastest with.

Everything is loaded once, in this process, then measured in ``--rounds`` interleaved rounds (every recipe once
per round, the starting recipe rotating), so that drift in the machine's speed hits every recipe alike. Each
measurement is ``--runs`` greedy answers of exactly ``--max-new-tokens`` tokens to the same prompt after one
warm-up; decode tok/s = (tokens - 1) / (last - first token time), TTFT from submission. Figures are medians over
rounds. QA accuracy (the dev questions of assets/eval/qa.jsonl) is measured once per recipe, after the timing.

Prints a markdown table with each recipe's ratio to the bare shipped-Q4_1 loop and to transformers fp32, and the
targets the issue set; it asserts nothing.

Run: ``python benchmarks/runtimes.py [--rounds 3] [--runs 3] [--max-new-tokens 128] [--student NAME |
--distill-steps N] [--qa-limit N] [--no-eval]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
QA_MARGIN = 0.05  # "quality near the baseline": QA accuracy within 5 points of transformers fp32


@dataclass
class Measured:
    label: str
    decode: list[float] = field(default_factory=list)  # one median per round
    ttft_ms: list[float] = field(default_factory=list)
    weight_bytes: int | None = None
    qa: float | None = None
    backend: str = ""
    error: str | None = None


def recipes(student: str | None):
    from workbench.recipe import PruneSpec, Recipe

    ll = dict(runtime="llama.cpp", device="cpu")
    out = [
        ("transformers fp32", Recipe(device="cpu", dtype="fp32")),
        ("transformers int8", Recipe(device="cpu", dtype="int8")),
        ("llama.cpp fp32", Recipe(dtype="fp32", **ll)),
        ("llama.cpp fp16", Recipe(dtype="fp16", **ll)),
        ("llama.cpp q8_0", Recipe(dtype="q8_0", **ll)),
        ("llama.cpp q4_k_m", Recipe(dtype="q4_k_m", **ll)),
        ("llama.cpp q4_0", Recipe(dtype="q4_0", **ll)),
        ("llama.cpp shipped q4_1", Recipe(dtype="shipped", **ll)),
        ("layers 0.3 -> q4_0", Recipe(dtype="q4_0", prune=PruneSpec("layers", 0.3), **ll)),
    ]
    if student:
        out.append(("student -> q4_0", Recipe(dtype="q4_0", variant=student, **ll)))
    return out


class Bare:
    """llama-cpp-python as people call it: ``Llama(path).generate(tokens, temp=0)``, timed at each token."""

    def __init__(self, path: str, threads: int):
        from llama_cpp import Llama

        self.llm = Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
        self.threads = threads

    def run(self, prompt_ids: list[int], tokens: int) -> tuple[float, float]:
        self.llm.reset()  # no prompt reuse between runs: every run prefills, as the engine's do
        start = time.perf_counter()
        times = []
        for _ in self.llm.generate(prompt_ids, temp=0.0, repeat_penalty=1.0):
            times.append(time.perf_counter())
            if len(times) == tokens:
                break
        return (len(times) - 1) / (times[-1] - times[0]), (times[0] - start) * 1000


def measure_engine(model, tokens: int, runs: int) -> tuple[float, float]:
    from workbench.recipe import GenerationSettings
    from workbench.serving.engine import Engine

    engine = Engine(model)  # no history: benchmark runs are not user requests
    try:
        settings = GenerationSettings(max_new_tokens=tokens, ignore_eos=True)
        results = [engine.generate(PROMPT, settings, origin="bench") for _ in range(runs)]
    finally:
        engine.close()
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(errors[0])
    return statistics.median(r.decode_tok_s for r in results), statistics.median(r.ttft_s * 1000 for r in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over every recipe (default 3)")
    parser.add_argument("--runs", type=int, default=3, help="measured answers per recipe and round (default 3)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--qa-limit", type=int, default=None, help="QA on the first N questions (default: all)")
    parser.add_argument("--no-eval", action="store_true", help="speed only")
    student = parser.add_mutually_exclusive_group()
    student.add_argument("--student", default=None, help="a student built by `workbench distill`")
    student.add_argument("--distill-steps", type=int, default=None, help="build the default student first")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from workbench import devices, quality, runtimes
    from workbench.runtimes.llamacpp import gguf_files

    name = args.student
    if args.distill_steps:
        from workbench.optimize.distill import distill

        name = distill("embedded", steps=args.distill_steps)["name"]
    chosen = recipes(name)
    models, rows = {}, {}
    for label, recipe in chosen:
        rows[label] = Measured(label)
        try:
            models[label] = runtimes.build(recipe)
            rows[label].weight_bytes = models[label].stats.weight_bytes
            rows[label].backend = models[label].stats.backend
        except Exception as exc:  # a recipe that cannot be built here is a row that says why
            rows[label].error = f"{type(exc).__name__}: {exc}"
        print(f"built {label}: {rows[label].error or rows[label].backend}", file=sys.stderr, flush=True)
    threads = devices.physical_cores()
    shipped = runtimes.build(chosen[7][1])  # the shipped file's path, for the bare loop
    bare = Bare(str(shipped.path), threads)
    bare_label = f"bare llama-cpp-python loop, shipped q4_1 ({threads} threads)"
    rows[bare_label] = Measured(bare_label, weight_bytes=shipped.stats.weight_bytes,
                                backend=gguf_files.describe(shipped.stats.tensor_types))
    prompt_ids = shipped.encode_chat([{"role": "user", "content": PROMPT}])
    order = [label for label, _ in chosen if label in models] + [bare_label]
    for label in order:  # warm-up: first-use costs (weight repacking, allocations) are not latency
        bare.run(prompt_ids, 8) if label == bare_label else measure_engine(models[label], 8, 1)
    for r in range(args.rounds):
        rotated = order[r % len(order):] + order[:r % len(order)]
        for label in rotated:
            if label == bare_label:
                runs = [bare.run(prompt_ids, args.max_new_tokens) for _ in range(args.runs)]
                decode, ttft = statistics.median(x for x, _ in runs), statistics.median(t for _, t in runs)
            else:
                decode, ttft = measure_engine(models[label], args.max_new_tokens, args.runs)
            rows[label].decode.append(decode)
            rows[label].ttft_ms.append(ttft)
            print(f"[round {r + 1}/{args.rounds}] {label}: {decode:.1f} tok/s, TTFT {ttft:.0f} ms", file=sys.stderr,
                  flush=True)
    if not args.no_eval:
        items = quality.load_qa()[:args.qa_limit] if args.qa_limit else None
        for label in order[:-1]:
            rows[label].qa = quality.qa_accuracy(models[label], items)["accuracy"]
            print(f"QA {label}: {rows[label].qa:.0%}", file=sys.stderr, flush=True)
        rows[bare_label].qa = rows["llama.cpp shipped q4_1"].qa  # the same file, the same greedy answers
    report(rows, bare_label, args)
    return 0


def report(rows: dict[str, Measured], bare_label: str, args) -> None:
    def median(values):
        return statistics.median(values) if values else None

    bare = median(rows[bare_label].decode)
    fp32 = median(rows["transformers fp32"].decode)
    print(f"{machine()}; {args.rounds} interleaved rounds of {args.runs} greedy answers of exactly "
          f"{args.max_new_tokens} tokens after a warm-up; medians over rounds\n")
    print("| recipe | decode tok/s | TTFT ms | weights MB | QA | vs bare shipped Q4_1 | vs transformers fp32 |")
    print("|---|---|---|---|---|---|---|")
    for m in rows.values():
        if m.error:
            print(f"| {m.label} | {m.error} | | | | | |")
            continue
        decode = median(m.decode)
        qa = "n/a" if m.qa is None else f"{m.qa:.2f}"
        print(f"| {m.label} | {decode:.1f} | {median(m.ttft_ms):.0f} | {m.weight_bytes / 2**20:.1f} | {qa} | "
              f"{decode / bare:.2f}× | {decode / fp32:.2f}× |")
    print()
    shipped = median(rows["llama.cpp shipped q4_1"].decode)
    lines = [
        f"engine on the shipped Q4_1 file / bare loop: {shipped / bare:.2f}× (target ≥ 0.95×)",
        f"llama.cpp fp32 / transformers fp32: {median(rows['llama.cpp fp32'].decode) / fp32:.2f}× (target ≥ 1.4×)",
        f"llama.cpp q4_0 / transformers fp32: {median(rows['llama.cpp q4_0'].decode) / fp32:.2f}× (target ≥ 4×)",
    ]
    base_qa = rows["transformers fp32"].qa
    if base_qa is not None:
        near = [m for m in rows.values() if not m.error and m.qa is not None and m.qa >= base_qa - QA_MARGIN
                and m.label != bare_label]
        best = max(near, key=lambda m: median(m.decode))
        lines.append(f"fastest recipe with QA within {QA_MARGIN * 100:.0f} points of transformers fp32 "
                     f"({base_qa:.2f}): {best.label}, {median(best.decode) / shipped:.2f}× the shipped Q4_1 "
                     f"(stretch target ≥ 1.5×)")
    for line in lines:
        print(f"- {line}")


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} on {torch.get_num_threads()} threads"


if __name__ == "__main__":
    sys.exit(main())
