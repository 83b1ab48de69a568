"""How close each runtime decodes to this machine's memory bound, measured on a real model, and why not closer.

A runtime's *efficiency* is its achieved decode tok/s over the bound ``bandwidth / bytes read per token`` (the
predictor's count of bytes for that format). It is measured here, through the benchmark code (the engine, warm-up
excluded), for transformers fp32 and llama.cpp q4_0 on the embedded model, and cached with the machine
fingerprint: the predictor multiplies other models' bounds by it. Each measurement gets one sentence on what
limits it: memory traffic, per-token overhead and slow kernels, dequantization, or compute.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

from . import bench, machine, predict, runtimes
from .formats import figure
from .progress import OnStep
from .recipe import EMBEDDED, GenerationSettings, Recipe, RecipeError

EFFICIENCY_RECIPES = (("transformers", "fp32"), ("llama.cpp", "q4_0"))  # one per runtime, the predictor's basis
RUNS = 3
WARMUP = 1
MAX_NEW_TOKENS = 32
FLOAT_FORMATS = ("fp32", "fp16", "bf16")


def recipes(model: str = EMBEDDED, pairs=EFFICIENCY_RECIPES) -> list[Recipe]:
    return [Recipe(model=model, runtime=runtime, device="cpu", dtype=dtype) for runtime, dtype in pairs]


def measure_recipe(recipe: Recipe, roof: dict, arch: predict.Architecture, *, runs: int = RUNS, warmup: int = WARMUP,
                   max_new_tokens: int = MAX_NEW_TOKENS, on_step: OnStep | None = None, model=None,
                   stop: Callable[[], bool] | None = None) -> dict:
    """Benchmark one recipe and set its decode tok/s against the bound of its bytes on this machine.

    Args:
        recipe: what to build and measure (batch 1).
        roof: this machine's figures (``machine.roofline``).
        arch: the recipe's model architecture, for the bytes each token reads.
        model: an already built model of ``recipe``, to skip the build.
    """
    settings = GenerationSettings(max_new_tokens=max_new_tokens, ignore_eos=True)
    built = model or runtimes.build(recipe)
    load_before = _load()
    try:
        entry = bench.run_bench(recipe, settings, runs, warmup, on_step, model=built, stop=stop)
    finally:
        if model is None:
            built.close()  # llama.cpp holds its weights until closed
    achieved = entry["decode_tok_s"]["median"]
    prompt = statistics.mean(r["prompt_tokens"] for r in entry["per_run"])
    context = round(prompt + max_new_tokens / 2)  # the KV cache's mean length over the decoded tokens
    runtime, dtype = recipe.runtime, recipe.dtype
    bound = predict.decode_bound(arch, runtime, dtype, roof["bandwidth_gb_s"], context)
    read = predict.bytes_read_per_token(arch, runtime, dtype)
    found = {"runtime": runtime, "dtype": dtype, "label": recipe.label(), "achieved_tok_s": achieved,
             "achieved_range": [entry["decode_tok_s"]["min"], entry["decode_tok_s"]["max"]],
             "bound_tok_s": bound, "efficiency": achieved / bound if achieved else None, "context_tokens": context,
             "bytes_read_per_token": read, "weight_bytes_stored": entry["model"]["weight_bytes"],
             "achieved_gb_s": read * achieved / 1e9 if achieved else None,
             "gflops_achieved": predict.flops_per_token(arch, context) * achieved / 1e9 if achieved else None,
             "backend": entry["model"]["backend"], "runs": runs, "max_new_tokens": max_new_tokens,
             "measured_at": time.time(), "load_before": load_before, "load_after": _load(),
             "cores": roof.get("threads")}
    found["limit"] = limit(found, roof)
    return found


def _load() -> float | None:
    """The 1-minute load average: work other processes put on the CPU while a figure is measured."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def busy(found: dict) -> str | None:
    """A warning when other work loaded the CPU past its cores while the recipe was measured, else None."""
    # Before the runs: afterwards the load counts the measurement's own threads. The build just before counts
    # too, hence the margin over the cores.
    load, cores = found.get("load_before"), found.get("cores") or 1
    if load is None or load <= 1.5 * cores:
        return None
    why = (", llama.cpp's most: its threads wait for each other at every step of every token, so on a busy CPU "
           "fewer threads (--threads 1) can be many times faster" if found.get("runtime") == "llama.cpp" else "")
    return (f"The CPU was busy with other work (load {load:.1f} on {cores} cores): every figure here is low{why}; "
            "measure again on a quiet machine.")


def limit(found: dict, roof: dict) -> str:
    """One sentence on what limits a measured recipe: memory traffic, overhead and kernels, dequantization, compute."""
    share, gb_s = found.get("efficiency"), found.get("achieved_gb_s")
    if not share:
        return "No decode speed was measured."
    reads = (f"it reads {figure(gb_s, 1 if gb_s >= 1 else 2)} GB/s of weights, {share:.0%} of the {figure(roof['bandwidth_gb_s'], 1)} GB/s "
             "this machine's memory delivers")
    compute = (found.get("gflops_achieved") or 0) / roof["peak_gflops"] if roof.get("peak_gflops") else 0
    if compute > 0.5:
        return f"Compute: it runs at {compute:.0%} of this machine's fp32 matmul peak while {reads}."
    if share >= 0.7:
        return f"Memory traffic: {reads}; only fewer bytes per token (a smaller format or model) make it faster."
    if found["dtype"] not in FLOAT_FORMATS:
        return (f"Dequantization and per-token overhead: {reads}; unpacking the {found['dtype']} blocks and the work "
                "between matmuls cost more than the memory reads.")
    return (f"Per-token overhead and kernels: {reads}; the matrix-vector kernels and the framework's per-token "
            "work, not memory, set the pace.")


def measure_efficiency(model: str = EMBEDDED, pairs=EFFICIENCY_RECIPES, *, roof: dict | None = None,
                       on_step: OnStep | None = None, stop: Callable[[], bool] | None = None,
                       runs: int = RUNS, max_new_tokens: int = MAX_NEW_TOKENS, save: bool | None = None,
                       config: str | None = None) -> dict:
    """Measure each runtime's efficiency on ``model`` now and cache it with the machine fingerprint.

    Args:
        model: the recipe's model; ``config`` (default: the shipped config of the embedded model, else the model's
            own directory) gives its architecture.
        pairs: (runtime, dtype) to measure; a runtime that cannot run here is kept with its ``problem``.
        on_step: progress ``(step, total, metrics)`` across all recipes (``metrics["phase"]`` is the recipe label).
        save: cache the result as this machine's efficiencies (default: only for the embedded model, the
            predictor's basis).

    Returns:
        ``{"model", "roofline", "runtimes": {runtime: measurement or {"problem": ...}}}``.
    """
    roof = roof or machine.roofline()
    arch = predict.architecture(config or (None if model == EMBEDDED else model))
    per = (WARMUP + runs)
    chosen = recipes(model, pairs)
    found: dict[str, dict] = {}
    for n, recipe in enumerate(chosen):
        try:
            recipe = runtimes.check(recipe)
        except RecipeError as exc:
            found[recipe.runtime] = {"runtime": recipe.runtime, "dtype": recipe.dtype, "problem": str(exc)}
            continue
        step = None if on_step is None else (
            lambda i, _t, m, o=n * per, label=recipe.label(): on_step(o + i, per * len(chosen), {**m, "phase": label}))
        found[recipe.runtime] = measure_recipe(recipe, roof, arch, runs=runs, max_new_tokens=max_new_tokens,
                                               on_step=step, stop=stop)
    report = {"model": model, "roofline": {k: roof[k] for k in ("bandwidth_gb_s", "peak_gflops", "threads")},
              "runtimes": found}
    if save or (save is None and model == EMBEDDED):
        print_ = roof.get("fingerprint") or machine.fingerprint()
        old = cached_efficiency(print_) or {"runtimes": {}}
        kept = {k: v for k, v in old["runtimes"].items() if "problem" not in v}
        merged = {**report, "fingerprint": print_,
                  "runtimes": {**kept, **{k: v for k, v in found.items() if "problem" not in v or k not in kept}}}
        machine.save(machine.cache_path(print_, "efficiency"), merged)
        return merged
    return report


def cached_efficiency(print_: dict | None = None) -> dict | None:
    """The efficiency measured on this machine (same fingerprint), or None."""
    print_ = machine.fingerprint() if print_ is None else print_
    return machine.read_cached(machine.cache_path(print_, "efficiency"), print_)


def efficiencies(report: dict | None) -> dict:
    """runtime -> {"efficiency", "dtype"} for ``predict.predict_here``, from a measurement report."""
    if not report:
        return {}
    return {runtime: {"efficiency": m["efficiency"], "dtype": m["dtype"]}
            for runtime, m in report.get("runtimes", {}).items() if m.get("efficiency")}


def against_frontier(rows: list[dict], roof: dict, report: dict | None, model: str = EMBEDDED) -> list[dict]:
    """The predictor's decode tok/s set against what a frontier sweep measured here, per recipe it can predict.

    Each row of ``rows`` (``frontier.table`` of this machine's records) that runs ``model`` unpruned, as itself, in
    a format the predictor knows, gets two predictions of its tok/s: ``predicted_tok_s`` is what ``workbench
    predict`` says (the bound times the runtime's efficiency cached in ``report``, measured in another run), and
    ``same_run_tok_s`` uses the efficiency the sweep's own row of the runtime's basis format reached, so that
    machine drift between runs drops out (for that basis row itself it equals the measurement). The bound counts
    the KV cache at the row's mean context (``predict.DEFAULT_CONTEXT`` where a record does not say).
    """
    arch = predict.architecture(None if model == EMBEDDED else model)
    cached = efficiencies(report)
    basis_formats = dict(EFFICIENCY_RECIPES)
    chosen = [row for row in rows if _predictable(row, model)]
    same_run = {}
    for row in chosen:
        runtime, dtype = row["recipe"]["runtime"], row["recipe"]["dtype"]
        if basis_formats.get(runtime) == dtype and row["decode_tok_s"]:
            same_run[runtime] = row["decode_tok_s"] / _bound(arch, row, roof)
    out = []
    for row in chosen:
        runtime, dtype = row["recipe"]["runtime"], row["recipe"]["dtype"]
        bound = _bound(arch, row, roof)
        measured_on = cached.get(runtime, {}).get("dtype")
        share = cached.get(runtime, {}).get("efficiency") if predict.efficiency_carries(runtime, measured_on,
                                                                                        dtype) else None
        predicted = bound * share if share else None
        carries = predict.efficiency_carries(runtime, basis_formats.get(runtime), dtype)
        same = bound * same_run[runtime] if runtime in same_run and carries else None
        measured = row["decode_tok_s"]
        error = (predicted - measured) / measured if predicted and measured else None
        backend = row["recipe"].get("backend")
        name = f"{runtime} {dtype}" + (f" ({backend})" if backend not in (None, "auto", "torch", runtime) else "")
        out.append({"label": row["label"], "format": name, "runtime": runtime, "dtype": dtype, "bound_tok_s": bound,
                    "measured_tok_s": measured, "predicted_tok_s": predicted, "relative_error": error,
                    "within_25pct": None if error is None else abs(error) <= 0.25,
                    "efficiency_from": measured_on if share else None,
                    "not_predicted": None if carries else (
                        f"no efficiency is measured for {runtime}'s {dtype} kernels, and "
                        f"{basis_formats.get(runtime)}'s does not carry over to them"),
                    "same_run_tok_s": same, "same_run_error": (same - measured) / measured
                    if same and measured else None, "basis": basis_formats.get(runtime) == dtype})
    return out


def _bound(arch: predict.Architecture, row: dict, roof: dict) -> float:
    context = round(row.get("context_tokens") or predict.DEFAULT_CONTEXT)
    return predict.decode_bound(arch, row["recipe"]["runtime"], row["recipe"]["dtype"], roof["bandwidth_gb_s"], context)


def _predictable(row: dict, model: str) -> bool:
    recipe = row["recipe"]
    return (recipe["model"] == model and recipe.get("prune", {}).get("method", "none") == "none"
            and recipe.get("variant", "none") == "none" and recipe["dtype"] in predict.RUNTIME_FORMATS.get(
                recipe["runtime"], ()) and bool(row.get("decode_tok_s")))
