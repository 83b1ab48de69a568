"""Benchmarks: fixed prompts through the engine, warm-up excluded, one summary per recipe and batch size.

Used by ``workbench bench`` and the Benchmark page. Requests go through ``Engine.generate`` exactly as the
app's do, so these are the figures a user sees. Every run generates exactly ``max_new_tokens`` tokens (EOS
is ignored), so runs of different recipes do the same amount of work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from . import devices
from .metrics import itl, summarize
from .recipe import Recipe, RecipeError

OnStep = Callable[[int, int, dict], None]  # (runs done, runs in total, metrics of the run just finished)
OnBuild = Callable[[str, float], None]  # (build stage, fraction done)
Evaluate = Callable[[object], dict]  # built OptimizedModel -> quality figures (e.g. perplexity, qa_accuracy)

# Fixed prompts of a few lengths, used in this order by every recipe so that recipes are compared on the
# same work. Run i uses PROMPTS[i % len(PROMPTS)].
PROMPTS = (
    "What is the capital of France?",
    "Explain in a few sentences why the first token of an answer takes longer than the ones after it.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List five ways to make a small language model answer faster on a laptop, with one line on each.",
    "Summarize the difference between latency and throughput for someone who runs a web service.",
)

class BenchError(RuntimeError):
    """A benchmark run failed inside the engine; the message carries the engine's error."""


# The engine's single worker serves one request at a time; other batch sizes come with dynamic batching.
SUPPORTED_BATCH_SIZES = (1,)


def check_batch_size(batch_size: int) -> None:
    """Raise RecipeError unless the engine can serve this batch size."""
    if batch_size not in SUPPORTED_BATCH_SIZES:
        available = ", ".join(map(str, SUPPORTED_BATCH_SIZES))
        raise RecipeError(
            "batch-size", f"batch sizes other than 1 arrive with dynamic batching; available: {available}"
        )


def check_runs(runs: int, warmup: int) -> None:
    """Raise RecipeError unless there is at least one measured run and no negative warm-up."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise RecipeError("runs", f"runs must be an integer of 1 or more, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise RecipeError("warmup", f"warm-up runs must be an integer of 0 or more, got {warmup!r}")


def run_bench(
    recipe: Recipe,
    settings,
    runs: int = 5,
    warmup: int = 1,
    on_step: OnStep | None = None,
    *,
    optimized=None,
    history=None,
    trust_remote_code: bool = False,
    on_build: OnBuild | None = None,
    evaluate: Evaluate | None = None,
) -> dict:
    """Build a recipe's model and measure it on the fixed prompts.

    Args:
        recipe: what to build and measure; its ``batch_size`` must be supported by the engine.
        settings: ``engine.GenerationSettings``; ``ignore_eos`` is forced on so that every run generates
            exactly ``max_new_tokens`` tokens.
        runs: measured runs (at least 1).
        warmup: runs before the measured ones, excluded from every figure and from the history.
        on_step: progress callback ``(runs done, runs in total, metrics)``; metrics are the run's
            ``GenerationResult.metrics()`` plus ``phase`` ("warmup" or "measure").
        optimized: an already built ``OptimizedModel`` of this recipe, to skip the build.
        history: a ``metrics.HistoryStore`` that records the measured runs (origin "bench"), or None.
        trust_remote_code: allow hub model code (opt-in), passed to the build.
        on_build: build progress callback ``(stage, fraction)``.
        evaluate: called with the built model after the timed runs (so that memory and time figures are
            the runs' alone); what it returns is the entry's ``quality``.

    Returns:
        One entry: the recipe, TTFT / TPOT / E2E / ITL summaries in ms, decode tok/s median, min and max,
        throughput, memory, the model's stats and each measured run (and ``quality`` with ``evaluate``).
    """
    from .optimize import build

    check_batch_size(recipe.batch_size)
    check_runs(runs, warmup)
    if optimized is None:
        optimized = build(recipe, trust_remote_code=trust_remote_code, on_step=on_build)
    entry = measure(optimized, replace(settings, ignore_eos=True), runs, warmup, on_step, history)
    if evaluate is not None:
        entry["quality"] = evaluate(optimized)
    return entry


def sweep(
    recipes: Iterable[Recipe],
    batch_sizes: Iterable[int],
    settings,
    runs: int = 5,
    warmup: int = 1,
    on_step: OnStep | None = None,
    **kwargs,
) -> list[dict]:
    """Benchmark every recipe at every batch size, one after another (never concurrently).

    Args:
        recipes: the recipes to measure; their own ``batch_size`` is replaced by each of ``batch_sizes``.
        batch_sizes: batch sizes to measure each recipe at; all are checked before anything is built.
        settings, runs, warmup, on_step: as in ``run_bench``.
        **kwargs: passed to ``run_bench`` (history, trust_remote_code, on_build, evaluate).

    Returns:
        One ``run_bench`` entry per recipe and batch size, in that order.
    """
    batch_sizes = list(batch_sizes)
    for batch_size in batch_sizes:
        check_batch_size(batch_size)
    check_runs(runs, warmup)
    return [
        run_bench(replace(recipe, batch_size=b), settings, runs, warmup, on_step, **kwargs)
        for recipe in recipes
        for b in batch_sizes
    ]


def measure(optimized, settings, runs: int, warmup: int, on_step: OnStep | None = None, history=None) -> dict:
    """Measure a built model through its own engine: warm-up runs first, then the measured runs.

    Args:
        optimized: the ``OptimizedModel`` to measure.
        settings: ``engine.GenerationSettings`` used for every run, as given.
        runs, warmup, on_step, history: as in ``run_bench``.
    """
    from .engine import Engine

    on_step = on_step or (lambda i, total, metrics: None)
    total = warmup + runs
    # The engine starts without a history so that warm-up runs are never recorded; it is ours alone and
    # serves one request at a time, so attaching the history afterwards cannot race another request.
    engine = Engine(optimized, history=None)
    try:
        for i in range(warmup):
            result, _ = _timed_run(engine, PROMPTS[i % len(PROMPTS)], settings)
            on_step(i + 1, total, {"phase": "warmup", **result.metrics()})
        engine.history = history
        _reset_peak_rss()
        results, wall_s = [], 0.0
        for i in range(runs):
            result, run_wall = _timed_run(engine, PROMPTS[i % len(PROMPTS)], settings)
            results.append(result)
            wall_s += run_wall  # time between runs (the callback, a UI repaint) is not the model's
            on_step(warmup + i + 1, total, {"phase": "measure", **result.metrics()})
    finally:
        engine.close()
    return _entry(optimized, settings, results, wall_s, warmup)


def _timed_run(engine, prompt: str, settings):
    start = time.perf_counter()
    result = engine.generate(prompt, settings, origin="bench")
    wall = time.perf_counter() - start
    if result.error:
        raise BenchError(f"benchmark run failed: {result.error}")
    return result, wall


def _entry(optimized, settings, results: list, wall_s: float, warmup: int) -> dict:
    recipe = optimized.recipe
    new_tokens = sum(r.new_tokens for r in results)
    decode = [r.decode_tok_s for r in results if r.decode_tok_s is not None]
    median_decode = statistics.median(decode) if decode else None
    return {
        "recipe": recipe.to_dict(),
        "recipe_key": recipe.key(),
        "label": recipe.label(),
        "batch_size": recipe.batch_size,
        "runs": len(results),
        "warmup": warmup,
        "max_new_tokens": settings.max_new_tokens,
        "ttft_ms": _summary_ms(r.ttft_s for r in results),
        "tpot_ms": _summary_ms(r.tpot_s for r in results),
        "e2e_ms": _summary_ms(r.e2e_s for r in results),
        "itl_ms": _summary_ms(gap for r in results for gap in itl(r.token_times)),
        "decode_tok_s": {
            "median": median_decode,
            "min": min(decode) if decode else None,
            "max": max(decode) if decode else None,
        },
        "throughput_tok_s": new_tokens / wall_s if wall_s > 0 else None,
        "new_tokens": new_tokens,
        "wall_s": wall_s,
        # gpt-fast's "bandwidth achieved": every decode step reads all weights once.
        "bandwidth_gb_s": optimized.stats.weight_bytes * median_decode / 1e9 if median_decode else None,
        "peak_rss_mb": devices.peak_rss_mb(),
        "rss_mb": devices.process_rss_mb(),
        "device_memory_mb": devices.device_memory_mb(recipe.device),
        "model": optimized.stats.to_dict(),
        "notes": list(optimized.notes),
        "per_run": [_run_row(r) for r in results],
    }


def _summary_ms(seconds: Iterable[float | None]) -> dict:
    summary = summarize(list(seconds))
    return {k: v if k == "n" or v is None else v * 1000 for k, v in summary.items()}


def _run_row(result) -> dict:
    metrics = result.metrics()
    keys = ("prompt_tokens", "new_tokens", "ttft_ms", "tpot_ms", "e2e_ms", "decode_tok_s", "finish_reason")
    return {k: metrics[k] for k in keys}


def _reset_peak_rss() -> None:
    """Restart the process's peak-RSS mark (Linux), so the peak covers the measured runs only.

    Without it the peak would include loading (fp32 weights before a cast, a GGUF conversion) or an
    earlier recipe of the same sweep. Elsewhere the mark cannot be reset and stays process-wide.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
