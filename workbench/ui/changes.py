"""What a recipe changed against its baseline: the build figures, and speed and quality measured side by side.

``measure_pair`` is the work of the What changed page's measurement job; the rest turns models and results
into table rows, ratios and one plain sentence. Nothing here touches Streamlit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .. import bench, quality
from ..formats import human_bytes, human_count
from ..recipe import GenerationSettings
from . import leases
from .jobs import Job

RUNS = 3  # measured generations per model
WARMUP = 1
MAX_NEW_TOKENS = 64  # exactly this many per run (EOS ignored), so both models do the same work
PERPLEXITY_TOKENS = 512  # perplexity on the first this many tokens of the evaluation text
QUICK_QA = 10  # questions in a quick measurement (of the dev set)
QUICK_PROMPTS = 10  # agreement prompts in a quick measurement (of the 20)
SAME_BAND = 0.05  # ratios within 5% of 1 are reported as "about the same": run-to-run noise is that large

SIDES = ("baseline", "recipe")


# Measuring -------------------------------------------------------------------------------------------------


def measure_pair(job: Job, model, baseline, quick: bool = False) -> dict:
    """Decode speed, TTFT, perplexity, QA accuracy and agreement of a recipe's model and of its baseline.

    Speed comes from ``bench.run_bench`` (warm-up excluded, exactly ``MAX_NEW_TOKENS`` per run), quality
    from ``quality.evaluate``. Both models are leased for the whole measurement (``leases``): chat
    requests to them are told they are busy meanwhile. Progress goes to ``job.on_step`` with ``phase``
    "speed" or "quality"; Stop on the job ends the measurement at the next step (or its wait for the lease).

    Args:
        job: the job running this (progress and stop flag).
        model: the recipe's ``LoadedModel``.
        baseline: the baseline's (may be ``model`` itself: measured once).
        quick: the first ``QUICK_QA`` questions and ``QUICK_PROMPTS`` prompts instead of all of them.
    """
    def waiting(text: str) -> None:
        job.on_step(0, 0, {"phase": "speed", "text": text})

    with leases.lease_all([model, baseline], job.title, "What changed", stop=lambda: job.stopping,
                          on_wait=waiting) as (own, own_baseline):
        return _measure_pair(job, own, own_baseline, quick)


def _measure_pair(job: Job, model, baseline, quick: bool) -> dict:
    load_before = _load()
    same = baseline is model or baseline.recipe == model.recipe
    models = {"recipe": model} if same else {"baseline": baseline, "recipe": model}
    speed = {side: _speed(job, side, m, list(models).index(side), len(models)) for side, m in models.items()}
    qa = quality.load_qa()[:QUICK_QA] if quick else None
    prompts = quality.load_prompts()[:QUICK_PROMPTS] if quick else None

    def on_quality(i: int, total: int, metrics: dict) -> None:
        job.check_stop()
        job.on_step(i, total, {**metrics, "phase": "quality", "text": _quality_text(metrics.get("stage", ""))})

    report = quality.evaluate(model, baseline, max_tokens=PERPLEXITY_TOKENS, qa=qa, prompts=prompts,
                              on_step=on_quality)
    sides = {
        "recipe": {**speed["recipe"], "weight_bytes": model.stats.weight_bytes,
                   "perplexity": report["perplexity"], "qa_accuracy": report["qa_accuracy"],
                   "agreement": report["agreement"]},
        "baseline": {**speed.get("baseline", speed["recipe"]), "weight_bytes": baseline.stats.weight_bytes,
                     **report["baseline"]},
    }
    return {
        "recipe_key": model.recipe.key(),
        "label": model.recipe.label(),
        "baseline_label": baseline.recipe.label(),
        "device": model.recipe.device,
        "measured_at": time.time(),
        "load_before": load_before,  # 1-minute load average when the measurement started (None if unknown)
        "cpus": os.cpu_count(),
        "quick": quick,
        "runs": RUNS,
        "max_new_tokens": MAX_NEW_TOKENS,
        "eval_tokens": report["eval_tokens"],
        "qa_n": report["qa_n"],
        "prompts_n": len(prompts if prompts is not None else quality.load_prompts()),
        **sides,
    }


def _speed(job: Job, side: str, model, index: int, n_models: int) -> dict:
    per_model = RUNS + WARMUP
    name = "baseline" if side == "baseline" else "this recipe"

    def on_run(i: int, total: int, metrics: dict) -> None:
        job.check_stop()
        phase = "warm-up" if metrics.get("phase") == "warmup" else f"run {i - WARMUP} of {RUNS}"
        job.on_step(index * per_model + i, n_models * per_model,
                    {"phase": "speed", "text": f"Speed of {name}: {phase}"})

    job.check_stop()
    job.on_step(index * per_model, n_models * per_model, {"phase": "speed", "text": f"Speed of {name}: starting"})
    entry = bench.run_bench(model.recipe, GenerationSettings(max_new_tokens=MAX_NEW_TOKENS), runs=RUNS,
                            warmup=WARMUP, on_step=on_run, model=model)
    return {
        "decode_tok_s": entry["decode_tok_s"]["median"],
        "decode_tok_s_range": (entry["decode_tok_s"]["min"], entry["decode_tok_s"]["max"]),
        "ttft_ms": entry["ttft_ms"]["p50"],
        "tpot_ms": entry["tpot_ms"]["p50"],
        "bandwidth_gb_s": entry["bandwidth_gb_s"],
    }


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def busy_note(result: dict) -> str | None:
    """A warning when the machine was already busy as the measurement started, else None.

    On a busy CPU, batch-1 decoding slows down far more than the share of CPU taken: each small matmul ends
    at a barrier of all its threads, and one descheduled thread stalls them all.
    """
    load, cpus = result.get("load_before"), result.get("cpus")
    if load is None or not cpus or load < 0.5 * cpus:
        return None
    return (f"The machine was already busy when this was measured (load {load:.1f} on {cpus} cores): speed "
            "figures are lower and noisier than on an idle machine. Measure again when it is idle to compare.")


def _quality_text(stage: str) -> str:
    who = "baseline" if stage.startswith("baseline ") else "this recipe"
    what = {"perplexity": "perplexity", "qa": "QA questions", "agreement": "greedy answers for agreement"}
    return f"Quality of {who}: {what.get(stage.removeprefix('baseline '), stage)}"


# Build figures ---------------------------------------------------------------------------------------------


def build_rows(model, baseline) -> list[dict]:
    """Rows of the build table: parameters, non-zero parameters, weight bytes, build time, kernel path.

    Args:
        model: the recipe's ``LoadedModel``.
        baseline: the baseline's.
    """
    mine, base = model.stats, baseline.stats
    zeros = 1 - mine.nonzero_params / mine.params if mine.params else 0.0
    return [
        _row("Parameters", human_count(base.params), human_count(mine.params), _share(mine.params, base.params)),
        _row("Non-zero parameters", human_count(base.nonzero_params), human_count(mine.nonzero_params),
             _share(mine.nonzero_params, base.nonzero_params)
             + (f" ({zeros:.0%} of this model's weights are zero)" if zeros >= 0.01 else "")),
        _row("Weight bytes", human_bytes(base.weight_bytes), human_bytes(mine.weight_bytes),
             _times(mine.weight_bytes, base.weight_bytes, "smaller", "larger", lower_is_better=True)),
        _row("Bits per weight", f"{base.bits_per_weight:.2f}", f"{mine.bits_per_weight:.2f}",
             _times(mine.bits_per_weight, base.bits_per_weight, "fewer", "more", lower_is_better=True)),
        _row("Build time", f"{base.build_s:.1f} s", f"{mine.build_s:.1f} s", ""),
        _row("Runtime", f"{baseline.recipe.runtime} · {_threads(base.threads)}",
             f"{model.recipe.runtime} · {_threads(mine.threads)}",
             "same" if baseline.recipe.runtime == model.recipe.runtime else "changed"),
        _row("Kernel path", base.backend, mine.backend, "same" if base.backend == mine.backend else "changed"),
    ]


def _threads(n: int | None) -> str:
    return "threads: the library's choice" if not n else f"{n} thread{'s' if n != 1 else ''}"


def _row(name: str, baseline: str, recipe: str, change: str) -> dict:
    return {"": name, "Baseline": baseline, "This recipe": recipe, "Change": change}


def _share(mine: float, base: float) -> str:
    if not base or mine == base:
        return "same"
    return f"{mine / base:.0%} of baseline"


def _times(mine: float | None, base: float | None, better: str, worse: str, lower_is_better: bool) -> str:
    """'3.95× smaller' / '0.82× — slower' style wording of mine against base."""
    if not mine or not base:
        return "–"
    gain = base / mine if lower_is_better else mine / base
    if abs(gain - 1) < SAME_BAND:
        return f"{gain:.2f}× — about the same"
    return f"{gain:.2f}× {better}" if gain > 1 else f"{gain:.2f}× — {worse}"


# Measured figures ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measure:
    key: str  # in each side's dict of a measure_pair result
    name: str
    fmt: str
    higher_is_better: bool | None  # None: informative only
    chart: bool  # drawn in the ratio chart


MEASURES = (
    Measure("decode_tok_s", "Decode speed (tok/s, median and range)", "{:.1f}", True, True),
    Measure("ttft_ms", "Time to first token (ms, median)", "{:.0f}", False, True),
    Measure("tpot_ms", "Time per output token (ms, median)", "{:.1f}", False, False),
    Measure("bandwidth_gb_s", "Weights read per second (GB/s)", "{:.2f}", None, False),
    Measure("weight_bytes", "Weight bytes", "", False, True),
    Measure("perplexity", "Perplexity (lower is better)", "{:.2f}", False, True),
    Measure("qa_accuracy", "QA accuracy", "{:.0%}", True, True),
    Measure("agreement", "Greedy tokens equal to the baseline's", "{:.0%}", True, False),
)


def measured_rows(result: dict, device_word: str = "") -> list[dict]:
    """Rows of the measured table: each measure for the baseline and the recipe, and how they compare."""
    rows = []
    for m in MEASURES:
        base, mine = result["baseline"].get(m.key), result["recipe"].get(m.key)
        spreads = [result[side].get(m.key + "_range") for side in SIDES]
        rows.append(_row(m.name, _fmt(m, base, spreads[0]), _fmt(m, mine, spreads[1]),
                         _change(m, mine, base, device_word)))
    return rows


def _fmt(m: Measure, value, spread: tuple | None = None) -> str:
    if value is None:
        return "–"
    text = human_bytes(value) if m.key == "weight_bytes" else m.fmt.format(value)
    if spread and None not in spread and spread[0] != spread[1]:
        text += f" ({m.fmt.format(spread[0])}–{m.fmt.format(spread[1])})"  # the runs' range: how noisy it is
    return text


def _change(m: Measure, mine, base, device_word: str) -> str:
    if mine is None or base is None:
        return "–"
    if m.key == "decode_tok_s":
        return _times(mine, base, "faster", f"slower than baseline{device_word}", lower_is_better=False)
    if m.key in ("ttft_ms", "tpot_ms"):
        return _times(mine, base, "faster", "slower", lower_is_better=True)
    if m.key == "weight_bytes":
        return _times(mine, base, "smaller", "larger", lower_is_better=True)
    if m.key == "bandwidth_gb_s":
        return f"{mine / base:.2f}×" if base else "–"
    if m.key == "perplexity":
        change = mine / base - 1
        return "unchanged" if abs(change) < 0.005 else f"{change:+.1%} — " + ("better" if change < 0 else "worse")
    points = round((mine - base) * 100)  # accuracy and agreement, in percentage points
    if m.key == "agreement":
        return ""  # the baseline agrees with itself by definition: the recipe's share says it all
    return "unchanged" if points == 0 else f"{points:+d} points — " + ("better" if points > 0 else "worse")


def ratios(result: dict) -> list[dict]:
    """Recipe ÷ baseline for each charted measure: ``name``, ``ratio``, ``better`` (True/False/None), ``text``.

    Measures the baseline scored 0 on (or that are missing) are left out: no ratio exists.
    """
    out = []
    for m in MEASURES:
        base, mine = result["baseline"].get(m.key), result["recipe"].get(m.key)
        if not m.chart or base in (None, 0) or mine is None:
            continue
        ratio = mine / base
        if abs(ratio - 1) < SAME_BAND / 5:
            better = None
        else:
            better = (ratio > 1) == m.higher_is_better
        word = {True: "better", False: "worse", None: "same"}[better]
        name = m.name.split(" (")[0]
        out.append({"name": name, "ratio": ratio, "better": better, "text": f"{ratio:.2f}× · {word}"})
    return out


def device_word(device: str) -> str:
    return {"cpu": " on this CPU", "cuda": " on this GPU", "mps": " on this Mac's GPU"}.get(device, "")


def verdict(result: dict) -> tuple[str, str]:
    """('slower' | 'faster' | 'same', one plain sentence) about decode speed against the baseline."""
    base, mine = result["baseline"].get("decode_tok_s"), result["recipe"].get("decode_tok_s")
    where = device_word(result["device"])
    if not base or not mine:
        return "same", "Decode speed could not be measured (no tokens after the first)."
    ratio = mine / base
    if result["label"] == result["baseline_label"]:
        return "same", f"This recipe is the baseline: {mine:.1f} tok/s{where}."
    if ratio < 1 - SAME_BAND:
        return "slower", (f"Decode speed {ratio:.2f}× — slower than baseline{where} "
                          f"({mine:.1f} vs {base:.1f} tok/s).")
    if ratio > 1 + SAME_BAND:
        return "faster", (f"Decode speed {ratio:.2f}× — faster than baseline{where} "
                          f"({mine:.1f} vs {base:.1f} tok/s).")
    return "same", (f"Decode speed {ratio:.2f}× — about the same as baseline{where} ({mine:.1f} vs {base:.1f} tok/s; "
                    f"differences under {SAME_BAND:.0%} are within run-to-run noise).")
