"""Engine overhead: the engine's decode tok/s against a bare ``model.generate`` of the same model.

Both sides run the embedded model in fp32 on the CPU, in this one process, on the same prompt token ids
(the engine's chat encoding of PROMPT), greedy, with ``max_new_tokens = min_new_tokens = 128`` so that
both decode exactly 128 tokens whatever the model would say.

Timing method, the same on both sides: ``generate`` calls a streamer's ``put`` right after it chooses each
token; both streamers read ``time.perf_counter()`` there. The bare side's streamer does nothing else; the
engine's also hands the token to its consumer's queue, which is part of the overhead being measured.
Decode tok/s = (tokens - 1) / (last token time - first token time), as DESIGN.md defines it, so prefill is
left out on both sides. TTFT is printed too (bare: from just before ``generate``; engine: from submission).
The bare side runs in the main thread; the engine generates in its worker thread, so whatever running off
the main thread costs is counted as engine overhead.

Order: one warm-up run of each side, then ``--rounds`` rounds of one run each, alternating which side goes
first, so that slow drift (clock boost, other processes) falls on both sides alike. Prints every run, each
side's median, the ratio of the medians engine / bare (the engine should keep at least 0.95 of the bare
speed), and the median of the per-round ratios, which is less sensitive to drift between rounds.

Run: ``python benchmarks/engine_overhead.py [--rounds 5] [--max-new-tokens 128]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers.generation.streamers import BaseStreamer

from workbench import runtimes
from workbench.latency import decode_tok_s
from workbench.recipe import GenerationSettings, Recipe
from workbench.serving.engine import Engine

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


class _Stamps(BaseStreamer):
    """Records perf_counter at each generated token, and nothing else."""

    def __init__(self):
        self.prompt_seen = False
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call passes the prompt
            self.prompt_seen = True
            return
        self.times.extend([time.perf_counter()] * value.numel())

    def end(self) -> None:
        pass


def bare_run(model, input_ids: torch.Tensor, pad_token_id: int, tokens: int) -> tuple[float, float]:
    """One bare ``model.generate``; returns (decode tok/s, TTFT seconds)."""
    stamps = _Stamps()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=pad_token_id,
            streamer=stamps,
        )
    new_tokens = out.shape[1] - input_ids.shape[1]
    assert new_tokens == len(stamps.times) == tokens, (new_tokens, len(stamps.times))
    ttft, e2e = stamps.times[0] - start, stamps.times[-1] - start
    return decode_tok_s(new_tokens, ttft, e2e), ttft


def engine_run(engine: Engine, tokens: int) -> tuple[float, float]:
    """One request through the engine; returns (decode tok/s, TTFT seconds)."""
    result = engine.generate(PROMPT, GenerationSettings(max_new_tokens=tokens, ignore_eos=True), origin="bench")
    assert result.error is None and result.new_tokens == tokens, (result.error, result.new_tokens)
    return result.decode_tok_s, result.ttft_s


def main() -> None:
    parser = argparse.ArgumentParser(description="Engine decode tok/s against a bare model.generate.")
    parser.add_argument("--rounds", type=int, default=5, help="measured runs of each side (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens decoded per run (default 128)")
    args = parser.parse_args()

    model = runtimes.build(Recipe(device="cpu", dtype="fp32"))  # the transformers runtime: a PyTorch module inside
    engine = Engine(model)  # no history: these runs are not user requests
    input_ids = torch.tensor([engine.encode_chat([{"role": "user", "content": PROMPT}])])
    pad = model.tokenizer.pad_token_id
    sides = {
        "bare": lambda: bare_run(model.module, input_ids, pad, args.max_new_tokens),
        "engine": lambda: engine_run(engine, args.max_new_tokens),
    }
    print(f"{model.recipe.label()} · {model.stats.backend} · torch threads {torch.get_num_threads()}")
    print(f"prompt {input_ids.shape[1]} tokens, {args.max_new_tokens} new tokens per run, greedy")
    for run in sides.values():
        run()  # warm-up, not counted
    results = {name: [] for name in sides}
    for i in range(args.rounds):
        order = ["bare", "engine"] if i % 2 == 0 else ["engine", "bare"]
        for name in order:
            tok_s, ttft = sides[name]()
            results[name].append((tok_s, ttft))
            print(f"round {i + 1} {name:>6}: decode {tok_s:7.2f} tok/s   TTFT {ttft * 1000:7.1f} ms")
    engine.close()
    report(results)


def report(results: dict[str, list[tuple[float, float]]]) -> None:
    """Print each side's median decode tok/s and TTFT, and the ratio engine / bare."""
    medians = {}
    for name, runs in results.items():
        medians[name] = statistics.median(tok_s for tok_s, _ in runs)
        ttft = statistics.median(t for _, t in runs)
        print(f"{name:>6}: median decode {medians[name]:.2f} tok/s   median TTFT {ttft * 1000:.1f} ms")
    print(f"ratio engine / bare: {medians['engine'] / medians['bare']:.3f} (target >= 0.95)")
    # Within a round the two runs are back to back, so their ratio is less exposed to slow drift.
    paired = [e / b for (e, _), (b, _) in zip(results["engine"], results["bare"])]
    print(f"median of per-round ratios: {statistics.median(paired):.3f}")


if __name__ == "__main__":
    main()
