"""The profiler of one chat turn: its wall time split into the phases it went through, which add up to it.

A turn runs as a chat turn does: the response-cache lookup (when the cache applies), the chat template and
tokenizer, the engine's queue, the runtime's prefill, decode steps and token choices, and the decoding of the
answer to text. Each phase is timed where it happens (a thin wrapper around the loaded model sees tokenizing,
generating and detokenizing; ``runtimes.profiling`` sees the model calls inside ``generate``); what falls
between the timed phases (thread hand-offs) is ``unaccounted_ms``, kept out of ``parts``. A warm-up turn runs
first and is not counted. Under transformers a second turn then runs under ``torch.profiler`` for the per-module
table and the traces (the profiler slows ops, so its figures never enter ``parts``).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import store
from .recipe import GenerationSettings
from .runtimes import profiling
from .runtimes.base import LoadedModel, OnToken, Row, complete
from .serving.engine import Engine

PART_ORDER = ("cache_lookup", "tokenize", "queue", "prefill", "decode", "sampling", "generate_overhead",
              "detokenize")
PART_LABELS = {
    "cache_lookup": "response-cache lookup",
    "tokenize": "chat template + tokenizer",
    "queue": "engine queue",
    "prefill": "prefill (prompt forward)",
    "decode": "decode steps (forward per token)",
    "sampling": "sampling (logits → token)",
    "generate_overhead": "generate loop between model calls",
    "detokenize": "detokenize the answer",
}
TOLERANCE = 0.10  # the parts must add up to the measured E2E within this share
Lookup = Callable[[], str]  # looks the turn up in the response cache; returns "miss", "exact" or "semantic"
OnStep = Callable[[int, int, dict], None]


@dataclass
class TurnProfile:
    """One turn's profile; ``to_dict`` is the ``workbench profile --json`` report."""

    recipe: dict
    recipe_key: str
    runtime: str
    prompt_tokens: int
    new_tokens: int
    e2e_ms: float  # the turn's wall time: cache lookup start to the answer's text
    parts: dict[str, float]  # measured phases, ms, in PART_ORDER
    unaccounted_ms: float  # e2e_ms minus the parts
    decode_steps: dict  # n, mean_ms, p50_ms, max_ms of the decode forward passes
    cache: str  # "off" (not looked up), "miss", "exact" or "semantic"
    engine: dict  # the engine's own figures of the turn: ttft_ms, e2e_ms (from the request's submission)
    counters: dict = field(default_factory=dict)  # llama.cpp's llama_perf_context
    modules: list[dict] = field(default_factory=list)  # transformers: time per module kind, under torch.profiler
    ops: list[dict] = field(default_factory=list)  # transformers: top aten ops by self time
    trace: str | None = None  # the main trace (Chrome trace JSON: Perfetto opens it)
    traces: dict = field(default_factory=dict)  # every file written: chrome, tensorboard, phases
    text: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def accounted(self) -> float:
        """The share of the E2E the parts account for."""
        return sum(self.parts.values()) / self.e2e_ms if self.e2e_ms else 0.0

    def adds_up(self, tolerance: float = TOLERANCE) -> bool:
        return abs(self.unaccounted_ms) <= tolerance * self.e2e_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "accounted_share": round(self.accounted, 4)}


def profile_turn(model: LoadedModel, prompt: str, settings: GenerationSettings | None = None, *,
                 lookup: Lookup | None = None, warmup: int = 1, trace: bool = True, folder: Path | None = None,
                 on_step: OnStep | None = None, top: int = 15) -> TurnProfile:
    """Profile one chat turn of ``prompt`` on ``model`` (which nothing else may use meanwhile).

    Args:
        model: the loaded model (from ``runtimes.build``, or a lease of a shared one).
        prompt: the user's message.
        settings: generation settings (default: greedy, the dataclass's token budget).
        lookup: the response-cache lookup of this turn, timed as ``cache_lookup``; None when the cache does not
            apply. The model answers either way (it is what is profiled), and nothing is stored.
        warmup: turns run first and not counted (first-call costs: allocations, lazy initialisation).
        trace: also write the traces (and, under transformers, run the ``torch.profiler`` turn).
        folder: where traces go (default ``WORKBENCH_HOME/profiles/<time>-<recipe key>``).
        on_step: ``(step, total, {"stage": ...})`` before each turn.
        top: how many ops the top-ops table keeps.
    """
    settings = settings or GenerationSettings()
    messages = [{"role": "user", "content": prompt}]
    kind = profiling.runtime_kind(model)
    torch_turn = trace and kind == "transformers"
    total = warmup + 1 + int(torch_turn)
    step = _Steps(on_step, total)
    for _ in range(warmup):
        step("warm-up turn (not counted)")
        _run_turn(model, messages, settings, None)
    step("timed turn")
    timed = _run_turn(model, messages, settings, lookup, watch=True)
    profile = _profile_of(model, kind, timed)
    if trace:
        folder = folder or default_folder(model)
        folder.mkdir(parents=True, exist_ok=True)
        profile.traces["phases"] = str(write_phase_trace(timed, folder / "phases.json"))
        profile.trace = profile.traces["phases"]
        if torch_turn:
            step("turn under torch.profiler (per-module table and trace)")
            # On this thread: torch.profiler records the ops of the thread that starts it (not the engine's).
            traced = profiling.trace_modules(model, lambda: complete(model, model.encode_chat(messages), settings),
                                             folder, top)
            profile.modules, profile.ops = traced["modules"], traced["ops"]
            profile.traces.update(chrome=traced["trace"], tensorboard=traced["tensorboard"])
            profile.trace = traced["trace"]
    step.done()
    return profile


def default_folder(model: LoadedModel) -> Path:
    """``WORKBENCH_HOME/profiles/<YYYYmmdd-HHMMSS>-<recipe key>``."""
    return store.home() / "profiles" / f"{time.strftime('%Y%m%d-%H%M%S')}-{model.recipe.key()}"


class _Steps:
    def __init__(self, on_step: OnStep | None, total: int):
        self.on_step, self.total, self.i = on_step, total, 0

    def __call__(self, stage: str) -> None:
        if self.on_step is not None:
            self.on_step(self.i, self.total, {"stage": stage})
        self.i += 1

    def done(self) -> None:
        if self.on_step is not None:
            self.on_step(self.total, self.total, {"stage": "done"})


# One turn ----------------------------------------------------------------------------------------------------


@dataclass
class _Turn:
    """The timestamps (perf_counter seconds) of one turn, as the wrapper and the probe saw them."""

    start: float = 0.0
    end: float = 0.0
    marks: dict[str, tuple[float, float]] = field(default_factory=dict)  # phase -> (start, end)
    spans: list[profiling.Span] = field(default_factory=list)  # the runtime's model calls and token choices
    tokens: list[float] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    cache: str = "off"
    result: object = None
    generate_start: float = 0.0
    generate_end: float = 0.0  # after the answer was handed over: the engine finishes a row inside generate


class _Watched(LoadedModel):
    """The model as the engine sees it during a profiled turn: tokenizing, generating and decoding are timed."""

    def __init__(self, inner: LoadedModel, turn: _Turn, probe: profiling.Probe | None):
        self.inner, self.turn, self.probe = inner, turn, probe
        self.recipe, self.stats, self.notes = inner.recipe, inner.stats, inner.notes

    def _mark(self, phase: str, start: float) -> None:
        self.turn.marks[phase] = (start, time.perf_counter())

    def encode_chat(self, messages: list[dict]) -> list[int]:
        start = time.perf_counter()
        ids = self.inner.encode_chat(messages)
        self._mark("tokenize", start)
        return ids

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def decode(self, token_ids: list[int]) -> str:
        start = time.perf_counter()
        text = self.inner.decode(token_ids)
        self._mark("detokenize", start)
        return text

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.inner.eos_ids

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    def generate(self, rows: Sequence[Row], settings: GenerationSettings, on_token: OnToken) -> None:
        def token(i: int, token_id: int, t: float) -> None:
            if self.probe is not None:
                self.probe.token(t)
            self.turn.tokens.append(t)
            on_token(i, token_id, t)

        self.turn.generate_start = time.perf_counter()
        try:
            self.inner.generate(rows, settings, token)
        finally:
            self.turn.generate_end = time.perf_counter()

    def nll(self, token_ids: list[int], first_target: int) -> float:
        return self.inner.nll(token_ids, first_target)


def _run_turn(model: LoadedModel, messages: list[dict], settings: GenerationSettings, lookup: Lookup | None,
              watch: bool = False) -> _Turn:
    """One turn through an engine of its own (batch size 1, no history); with ``watch``, probed."""
    turn = _Turn()
    if not watch:
        engine = Engine(_Watched(model, turn, None), None, batch_size=1)
        try:
            turn.result = engine.generate(messages, settings, origin="profile")
        finally:
            engine.close()
        _check(turn)
        return turn
    with profiling.probe(model) as probe:
        engine = Engine(_Watched(model, turn, probe), None, batch_size=1)
        try:
            turn.start = time.perf_counter()
            if lookup is not None:
                turn.cache = lookup()
                turn.marks["cache_lookup"] = (turn.start, time.perf_counter())
            request = engine.submit(messages, settings, origin="profile", record=False)
            turn.result = request.result()
            turn.end = time.perf_counter()
            turn.marks["queue"] = (request.submitted, request.started)
        finally:
            engine.close()
    turn.spans, turn.counters = list(probe.spans), dict(probe.counters)
    # The turn's generate ends with its last token: the engine then decodes and hands the answer over from
    # inside the runtime's token callback, while generate's own return comes after the turn has ended.
    turn.marks["generate"] = (turn.generate_start, turn.tokens[-1] if turn.tokens else turn.generate_end)
    _check(turn)
    return turn


def _check(turn: _Turn) -> None:
    error = getattr(turn.result, "error", None)
    if error:
        raise RuntimeError(f"the turn failed: {error}")


# From timestamps to parts ------------------------------------------------------------------------------------


def _profile_of(model: LoadedModel, kind: str, turn: _Turn) -> TurnProfile:
    ms = lambda s: round(s * 1000, 3)  # noqa: E731
    span = lambda name: turn.marks[name][1] - turn.marks[name][0]  # noqa: E731
    seconds: dict[str, float] = {}
    for name in ("cache_lookup", "tokenize", "queue"):
        if name in turn.marks:
            seconds[name] = span(name)
    inside = 0.0
    if kind != "other":
        for name in profiling.SPAN_KINDS:
            seconds[name] = sum(s.seconds for s in turn.spans if s.kind == name)
            inside += seconds[name]
        seconds["generate_overhead"] = max(0.0, span("generate") - inside)
    else:  # a runtime nobody probes: generate as one part
        seconds["decode"] = span("generate")
    seconds["detokenize"] = span("detokenize")
    e2e = turn.end - turn.start
    parts = {name: ms(seconds[name]) for name in PART_ORDER if name in seconds}
    steps = [s.seconds * 1000 for s in turn.spans if s.kind == "decode"]
    result = turn.result
    notes = []
    if turn.cache in ("exact", "semantic"):
        notes.append(f"the response cache holds this answer ({turn.cache}): a chat turn would be answered from it; "
                     "the model answered here so that it could be profiled")
    if kind == "other":
        notes.append("this runtime's generate is not split further: its whole time is under decode")
    return TurnProfile(
        recipe=model.recipe.to_dict(), recipe_key=model.recipe.key(), runtime=model.recipe.runtime,
        prompt_tokens=result.prompt_tokens, new_tokens=result.new_tokens,
        e2e_ms=ms(e2e), parts=parts, unaccounted_ms=round(ms(e2e) - sum(parts.values()), 3),
        decode_steps=_step_stats(steps), cache=turn.cache,
        engine={"ttft_ms": ms(result.ttft_s or 0.0), "e2e_ms": ms(result.e2e_s or 0.0)},
        counters=turn.counters, text=result.text, notes=notes,
    )


def _step_stats(steps_ms: list[float]) -> dict:
    if not steps_ms:
        return {"n": 0, "mean_ms": None, "p50_ms": None, "max_ms": None}
    return {"n": len(steps_ms), "mean_ms": round(statistics.fmean(steps_ms), 3),
            "p50_ms": round(statistics.median(steps_ms), 3), "max_ms": round(max(steps_ms), 3)}


def write_phase_trace(turn: _Turn, path: Path) -> Path:
    """The turn's phases as a Chrome trace (``traceEvents``, complete events in µs): Perfetto and
    chrome://tracing open it, for any runtime."""
    us = lambda t: round((t - turn.start) * 1e6, 3)  # noqa: E731
    events = [{"name": "turn", "ph": "X", "ts": 0.0, "dur": us(turn.end), "pid": 1, "tid": 1, "cat": "turn"}]
    for name, (start, end) in turn.marks.items():
        events.append({"name": name, "ph": "X", "ts": us(start), "dur": round((end - start) * 1e6, 3), "pid": 1,
                       "tid": 2, "cat": "phase"})
    for i, s in enumerate(turn.spans):
        events.append({"name": s.kind, "ph": "X", "ts": us(s.start), "dur": round(s.seconds * 1e6, 3), "pid": 1,
                       "tid": 3, "cat": "model", "args": {"index": i}})
    for i, t in enumerate(turn.tokens):
        events.append({"name": f"token {i}", "ph": "i", "ts": us(t), "pid": 1, "tid": 3, "s": "t"})
    meta = [{"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}}
            for tid, name in ((1, "turn"), (2, "phases"), (3, "model calls"))]
    store.write_file(path, json.dumps({"traceEvents": meta + events, "displayTimeUnit": "ms"}))
    return path
