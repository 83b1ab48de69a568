"""Two recipes answering the same prompts: live figures, speed-ups of B over A, and how alike their answers are.

The Compare page's logic on plain data and engines; nothing here touches Streamlit (``compare_view`` draws).
"""

from __future__ import annotations

import os
import queue
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .. import quality
from ..formats import human_bytes
from ..latency import decode_tok_s, tpot
from ..recipe import GenerationSettings
from ..serving.engine import Engine, Request
from ..serving.results import GenerationResult, TokenEvent

SIDES = ("a", "b")
SEQUENTIAL, CONCURRENT = "sequential", "concurrent"
ORIGIN = "compare"  # the history rows' origin
WARMUP_TOKENS = 4
RESULT_TIMEOUT_S = 300.0  # a stopped request ends after its current token; this bounds a stuck one
SAME_BAND = 0.05  # speed-ups within 5% of 1 read "about the same": run-to-run noise on a CPU is that large
_END = object()


@dataclass(frozen=True)
class Measure:
    key: str  # in GenerationResult.metrics()
    name: str
    unit: str
    higher_is_better: bool


MEASURES = (
    Measure("ttft_ms", "Time to first token", "ms", False),
    Measure("tpot_ms", "Time per output token", "ms", False),
    Measure("decode_tok_s", "Decode speed", "tok/s", True),
    Measure("e2e_ms", "End to end", "ms", False),
)
DISTRIBUTIONS = MEASURES[:3]  # what the prompt set charts per recipe


# Figures of one answer -------------------------------------------------------------------------------------


def live_metrics(token_times: Sequence[float]) -> dict:
    """TTFT, TPOT and decode speed of an answer so far, from its token times (seconds since request start).

    The same definitions as a finished answer's (``metrics.tpot``), applied to the tokens that have arrived.
    """
    n = len(token_times)
    ttft = token_times[0] if n else None
    last = token_times[-1] if n else None
    per_token = tpot(n, ttft, last)
    rate = decode_tok_s(n, ttft, last)
    return {"new_tokens": n, "ttft_ms": None if ttft is None else ttft * 1000,
            "tpot_ms": None if per_token is None else per_token * 1000, "decode_tok_s": rate}


def reply(result: GenerationResult, engine: Engine | None = None) -> dict:
    """What a turn keeps of one side's answer: its text, figures, token times and ids, and the model's size."""
    model = engine.model if engine is not None else None
    return {
        "text": result.text,
        "metrics": result.metrics(),
        "token_times": list(result.token_times),
        "token_ids": list(result.token_ids),
        "error": result.error,
        "recipe_key": result.recipe_key,
        "label": engine.recipe.label() if model else result.recipe_key,
        "weight_bytes": model.stats.weight_bytes if model else None,
        "backend": model.stats.backend if model else None,
    }


# Summary of A against B -----------------------------------------------------------------------------------


def speedup(measure: Measure, a: float | None, b: float | None) -> float | None:
    """How many times faster B is than A on one measure: A÷B for a time, B÷A for a rate; None without both."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return b / a if measure.higher_is_better else a / b


def speedup_text(ratio: float | None) -> str:
    """'2.10× faster', '0.80× — slower', 'about the same' (within SAME_BAND), or '–'."""
    if ratio is None:
        return "–"
    if abs(ratio - 1) <= SAME_BAND:
        return f"{ratio:.2f}× — about the same"
    return f"{ratio:.2f}× faster" if ratio > 1 else f"{ratio:.2f}× — slower"


def token_agreement(a_ids: Sequence[Sequence[int]], b_ids: Sequence[Sequence[int]]) -> float:
    """Share of A's tokens that B reproduces at the same position, pooled over answers (``quality.agreement``).

    A is the reference (usually the baseline): positions past A's answer are ignored, positions of A's answer
    that B does not reach disagree.

    Args:
        a_ids: A's generated token ids, one list per prompt.
        b_ids: B's, for the same prompts in the same order.
    """
    return quality.agreement([list(ids) for ids in b_ids], [list(ids) for ids in a_ids])


def summary(a: dict, b: dict) -> dict:
    """A turn's summary: each measure for A and B with B's speed-up, weight bytes, token agreement.

    Args:
        a: A's ``reply``.
        b: B's ``reply``.
    """
    measures = {}
    for measure in MEASURES:
        va, vb = a["metrics"].get(measure.key), b["metrics"].get(measure.key)
        measures[measure.key] = {"a": va, "b": vb, "speedup": speedup(measure, va, vb)}
    return {
        "measures": measures,
        "weight_bytes": {"a": a.get("weight_bytes"), "b": b.get("weight_bytes")},
        "new_tokens": {"a": a["metrics"]["new_tokens"], "b": b["metrics"]["new_tokens"]},
        "agreement": token_agreement([a["token_ids"]], [b["token_ids"]]),
        "identical": a["token_ids"] == b["token_ids"],
    }


def summary_rows(result: dict, of: str = "") -> list[dict]:
    """The summary table: one row per measure, A, B and B's speed-up; then weight bytes and agreement.

    Args:
        result: ``summary`` or ``set_summary`` output.
        of: added to each measure's unit, e.g. ", median" for a prompt set.
    """
    rows = []
    for measure in MEASURES:
        m = result["measures"][measure.key]
        rows.append({"": f"{measure.name} ({measure.unit}{of})", "A": _num(m["a"], measure.unit),
                     "B": _num(m["b"], measure.unit), "B vs A": speedup_text(m["speedup"])})
    wa, wb = result["weight_bytes"]["a"], result["weight_bytes"]["b"]
    rows.append({"": "Weight bytes", "A": human_bytes(wa) if wa else "–", "B": human_bytes(wb) if wb else "–",
                 "B vs A": bytes_text(wa, wb)})
    rows.append({"": "New tokens", "A": str(result["new_tokens"]["a"]), "B": str(result["new_tokens"]["b"]),
                 "B vs A": ""})
    rows.append({"": "Token agreement (B with A, same position)", "A": "reference",
                 "B": f"{result['agreement']:.0%}", "B vs A": "identical answers" if result["identical"] else ""})
    return rows


def verdict(result: dict) -> tuple[str, str]:
    """(level, sentence): "faster", "slower" or "same" by B's decode speed against A's, then one plain sentence."""
    decode = result["measures"]["decode_tok_s"]["speedup"]
    ttft = result["measures"]["ttft_ms"]["speedup"]
    if decode is None:
        level, first = "same", "B's decode speed could not be compared (an answer had fewer than 2 tokens)"
    elif decode > 1 + SAME_BAND:
        level, first = "faster", f"B decodes {decode:.2f}× faster than A"
    elif decode < 1 - SAME_BAND:
        level, first = "slower", f"B decodes at {decode:.2f}× A's speed (slower)"
    else:
        level, first = "same", "B decodes about as fast as A"
    if ttft is None:
        second = ""
    elif ttft > 1 + SAME_BAND:
        second = f", its first token comes {ttft:.2f}× sooner"
    elif ttft < 1 - SAME_BAND:
        second = f", its first token takes {1 / ttft:.2f}× as long"
    else:
        second = ", its first token comes about as soon"
    third = ("its answer is token for token the same as A's" if result["identical"]
             else f"it reproduces {result['agreement']:.0%} of A's tokens at the same positions")
    return level, f"{first}{second}, and {third}."


def bytes_text(a: int | None, b: int | None) -> str:
    """B's weight bytes against A's: '4.00× smaller', '1.00× — the same', '2.00× larger'."""
    if not a or not b:
        return "–"
    if a == b:
        return "the same"
    return f"{a / b:.2f}× smaller" if b < a else f"{b / a:.2f}× larger"


def speedup_bars(result: dict) -> list[dict]:
    """Bars for ``charts.ratio_figure``: B's speed-up over A per measure (> 1 = B faster), and bytes B÷A."""
    bars = []
    for measure in MEASURES:
        ratio = result["measures"][measure.key]["speedup"]
        if ratio is not None:
            bars.append({"name": measure.name, "ratio": ratio, "better": _better(ratio), "text": f"{ratio:.2f}×"})
    wa, wb = result["weight_bytes"]["a"], result["weight_bytes"]["b"]
    if wa and wb:
        ratio = wa / wb  # a speed-up too: how many times fewer bytes each token reads
        bars.append({"name": "Fewer weight bytes", "ratio": ratio, "better": _better(ratio), "text": f"{ratio:.2f}×"})
    return bars


def _better(ratio: float) -> bool | None:
    return None if abs(ratio - 1) <= SAME_BAND else ratio > 1


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if unit != "ms" or value < 100 else f"{value:.0f}"


# Running both ----------------------------------------------------------------------------------------------

_warm: weakref.WeakSet = weakref.WeakSet()
_warm_lock = threading.Lock()


def warm_up(engine: Engine) -> bool:
    """Run one short unrecorded request on an engine the first time it is compared; True if it ran now.

    A model's first request pays one-off costs (allocations, kernel selection) that are not its latency.
    """
    with _warm_lock:
        if engine in _warm:
            return False
        _warm.add(engine)
    engine.submit("Hello", GenerationSettings(max_new_tokens=WARMUP_TOKENS), origin=ORIGIN, record=False).result(
        timeout=RESULT_TIMEOUT_S)
    return True


def is_warm(engine: Engine) -> bool:
    return engine in _warm


def merged_events(handles: Sequence[Request], poll_s: float) -> Iterator[tuple[int, TokenEvent] | None]:
    """The token events of several requests as they arrive, as (index of the request, event).

    A None comes every ``poll_s`` while no event arrives, so that a caller can keep its UI responsive.
    Ends once every request has ended.
    """
    inbox: queue.Queue = queue.Queue()

    def pump(i: int, handle: Request) -> None:
        try:
            for event in handle:
                inbox.put((i, event))
        finally:
            inbox.put((i, _END))

    for i, handle in enumerate(handles):
        threading.Thread(target=pump, args=(i, handle), name=f"compare-pump-{i}", daemon=True).start()
    open_ = len(handles)
    while open_:
        try:
            i, event = inbox.get(timeout=poll_s)
        except queue.Empty:
            yield None
            continue
        if event is _END:
            open_ -= 1
            continue
        yield i, event


def run_prompt_set(
    engines: tuple[Engine, Engine],
    prompts: Sequence[str],
    settings: GenerationSettings,
    mode: str = SEQUENTIAL,
    on_step: Callable[[int, int, dict], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Send every prompt to A and to B; their figures, answers and agreement, prompt by prompt.

    Sequential mode runs A's answer, then B's, so that neither shares the CPU with the other while timed;
    concurrent mode submits both at once. Each engine is warmed up first (unrecorded); every timed request is
    recorded in the history with origin "compare".

    Args:
        engines: A's and B's engines (the same engine twice is allowed: it answers each prompt twice).
        prompts: the prompts, each sent as a single user message.
        settings: generation settings of every answer.
        mode: SEQUENTIAL or CONCURRENT.
        on_step: ``on_step(done, total, {"text": ...})`` after each prompt.
        stop: returns True to end after the current answers (they are kept).
    """
    stop = stop or (lambda: False)
    load_before = load_average()
    for engine in engines:
        warm_up(engine)
    sides = {side: {"label": e.recipe.label(), "recipe_key": e.recipe.key(),
                    "weight_bytes": e.model.stats.weight_bytes, "token_ids": [],
                    **{m.key: [] for m in MEASURES}} for side, e in zip(SIDES, engines)}
    started = time.time()
    done = 0
    for i, prompt in enumerate(prompts):
        if stop():
            break
        results = _answer_both(engines, prompt, settings, mode, stop)
        for side, result in zip(SIDES, results):
            figures = result.metrics()
            for measure in MEASURES:
                sides[side][measure.key].append(figures[measure.key])
            sides[side]["token_ids"].append(list(result.token_ids))
        done = i + 1
        if on_step:
            on_step(done, len(prompts), {"text": f"Prompt {done} of {len(prompts)}"})
    return {"a": sides["a"], "b": sides["b"], "prompts": list(prompts[:done]), "mode": mode,
            "max_new_tokens": settings.max_new_tokens, "measured_at": started, "load_before": load_before,
            "cpus": os.cpu_count()}


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none): how busy the machine was before timing."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _answer_both(engines, prompt: str, settings: GenerationSettings, mode: str, stop) -> list[GenerationResult]:
    if mode == CONCURRENT:
        handles = [engine.submit(prompt, settings, origin=ORIGIN) for engine in engines]
        return [_wait(handle, stop) for handle in handles]
    return [_wait(engine.submit(prompt, settings, origin=ORIGIN), stop) for engine in engines]


def _wait(handle: Request, stop, poll_s: float = 0.2) -> GenerationResult:
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while not handle.done.wait(poll_s):
        if stop():
            handle.stop()
        if time.monotonic() > deadline:
            handle.stop()
            break
    return handle.result(timeout=RESULT_TIMEOUT_S)


def set_summary(result: dict) -> dict:
    """A prompt set's summary in ``summary``'s shape: medians of each measure over the prompts, pooled agreement."""
    measures = {}
    for measure in MEASURES:
        va, vb = _median(result["a"][measure.key]), _median(result["b"][measure.key])
        measures[measure.key] = {"a": va, "b": vb, "speedup": speedup(measure, va, vb)}
    a_ids, b_ids = result["a"]["token_ids"], result["b"]["token_ids"]
    return {
        "measures": measures,
        "weight_bytes": {side: result[side]["weight_bytes"] for side in SIDES},
        "new_tokens": {side: sum(len(ids) for ids in result[side]["token_ids"]) for side in SIDES},
        "agreement": token_agreement(a_ids, b_ids),
        "identical": a_ids == b_ids,
    }


def _median(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None
