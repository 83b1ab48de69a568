"""Where a turn's time goes inside a runtime: model calls, token choice, and (transformers) each kind of module.

A probe watches one turn of a loaded model without changing what it computes. Under transformers, forward
hooks on the model time each forward pass (the first is the prefill, after a device sync); the time from a
pass's end to the token handed out is the token's choice (logits processors, argmax or a draw, stopping
checks). Under llama.cpp, the model's bindings are wrapped for the turn: every ``llama_decode`` and
``llama_sampler_sample`` is timed, and the context is made with llama.cpp's own performance counters on, read
back with ``llama_perf_context``. ``trace_modules`` runs a turn under ``torch.profiler`` with each attention,
MLP, norm and head module annotated, and exports a Chrome trace (Perfetto) and a TensorBoard trace.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import devices
from .base import LoadedModel

SPAN_KINDS = ("prefill", "decode", "sampling")
# Module kinds, matched on a submodule's attribute name (then its class name); the outermost match is annotated.
MODULE_KINDS = (
    ("lm_head", ("lm_head", "embed_out", "output")),
    ("embeddings", ("embed", "wte", "wpe")),
    ("rotary", ("rotary",)),
    ("attention", ("attn", "attention")),
    ("mlp", ("mlp", "feed_forward", "ffn")),
    ("norms", ("norm", "ln_")),
)
FORWARD = "model forward"
GENERATE = "generate"
OVERHEAD = "python/dispatch"  # time inside annotated modules that no aten op accounts for


@dataclass
class Span:
    """One timed stretch of a turn (``time.perf_counter`` seconds)."""

    kind: str  # one of SPAN_KINDS
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Probe:
    """What a probe saw of one turn: its spans, and the runtime's own counters (llama.cpp's)."""

    spans: list[Span] = field(default_factory=list)
    counters: dict = field(default_factory=dict)
    _forward_end: float | None = None  # transformers: the latest pass's end, not yet followed by a token
    _sampled: bool = False  # llama.cpp: a token was chosen already (later llama_decode calls are decode steps)

    def token(self, t: float) -> None:
        """A token was handed out at ``t``: under transformers, the stretch since the last pass ended is sampling."""
        if self._forward_end is not None and self._forward_end <= t:
            self.spans.append(Span("sampling", self._forward_end, t))
        self._forward_end = None


def runtime_kind(model: LoadedModel) -> str:
    """"transformers", "llama.cpp", or "other" (a runtime whose insides no probe here knows)."""
    from .llamacpp.model import LlamaCppModel
    from .transformers import TransformersModel

    if isinstance(model, TransformersModel):
        return "transformers"
    if isinstance(model, LlamaCppModel):
        return "llama.cpp"
    return "other"


@contextmanager
def probe(model: LoadedModel) -> Iterator[Probe]:
    """Watch the turns run inside the block (one at a time; nothing else may use the model meanwhile)."""
    kind = runtime_kind(model)
    if kind == "transformers":
        with _forward_probe(model) as seen:
            yield seen
    elif kind == "llama.cpp":
        with _llama_probe(model) as seen:
            yield seen
    else:
        yield Probe()


# transformers ------------------------------------------------------------------------------------------------


@contextmanager
def _forward_probe(model) -> Iterator[Probe]:
    seen = Probe()
    module, device = model.module, model.recipe.device
    started: list[float] = []

    def before(mod, args):
        started.append(time.perf_counter())

    def after(mod, args, output):
        devices.sync(device)
        end = time.perf_counter()
        kind = "decode" if any(s.kind != "sampling" for s in seen.spans) else "prefill"
        seen.spans.append(Span(kind, started.pop(), end))
        seen._forward_end = end

    handles = [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def module_kind(name: str, module: torch.nn.Module) -> str | None:
    """The kind of a submodule (attention, mlp, norms, lm_head, embeddings, rotary) from its name, or None."""
    leaf, cls = name.rsplit(".", 1)[-1].lower(), type(module).__name__.lower()
    for kind, words in MODULE_KINDS:
        exact = kind == "lm_head"  # "output" is a common inner name too
        if any(leaf == w or not exact and (leaf.startswith(w) or leaf.endswith(w)) for w in words):
            return kind
    for kind, words in MODULE_KINDS:
        if kind in ("attention", "mlp", "norms") and any(w in cls for w in words):
            return kind
    return None


def annotated_modules(root: torch.nn.Module) -> list[tuple[str, str, torch.nn.Module]]:
    """(kind, name, module) of the outermost submodules of each kind: their insides are left to the ops."""
    found = []

    def walk(prefix: str, module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            kind = module_kind(full, child)
            if kind:
                found.append((kind, full, child))
            else:
                walk(full, child)

    walk("", root)
    return found


@contextmanager
def _annotations(root: torch.nn.Module) -> Iterator[None]:
    """Every forward of the model and of its annotated submodules as a ``record_function`` range named by kind."""
    handles = []

    def hooks(label: str, module: torch.nn.Module) -> None:
        stack: list = []

        def enter(mod, args):
            ctx = torch.profiler.record_function(label)
            ctx.__enter__()
            stack.append(ctx)

        def leave(mod, args, output):
            if stack:
                stack.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))

    hooks(FORWARD, root)
    for kind, _, module in annotated_modules(root):
        hooks(kind, module)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def trace_modules(model, run: Callable[[], None], folder: Path, top: int = 15) -> dict:
    """Run ``run`` (one turn of ``model``) under ``torch.profiler``; the time per module kind and the top ops.

    Args:
        model: a transformers-runtime model (``runtime_kind(model) == "transformers"``).
        run: does the turn (through the serving layer, as a chat turn would).
        folder: where ``trace.json`` (Chrome trace: Perfetto, chrome://tracing) and ``tensorboard/`` (for
            TensorBoard's profiler plugin) are written.
        top: how many ops the ops table keeps.

    Returns:
        ``{"modules": [...], "ops": [...], "trace": path, "tensorboard": folder}``; times in ms as measured
        under the profiler, which slows every op a little.
    """
    folder.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if model.recipe.device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    board = folder / "tensorboard"
    handler = torch.profiler.tensorboard_trace_handler(str(board), worker_name="turn")
    with _annotations(model.module):
        with torch.profiler.profile(activities=activities, on_trace_ready=handler) as prof:
            with torch.profiler.record_function(GENERATE):
                run()
    # Kineto saves a trace once: the TensorBoard handler's file is also the Chrome trace Perfetto opens.
    written = sorted(board.glob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    trace = folder / ("trace.json" + (".gz" if written and written[-1].suffix == ".gz" else ""))
    if written:
        shutil.copyfile(written[-1], trace)
    averages = prof.key_averages()
    return {"modules": module_table(averages), "ops": op_table(averages, top), "trace": str(trace),
            "tensorboard": str(board)}


def _labels() -> set[str]:
    return {FORWARD, GENERATE} | {kind for kind, _ in MODULE_KINDS}


def module_table(averages) -> list[dict]:
    """Rows ``{name, calls, ms, share}`` per module kind, the Python/dispatch rest and what ran outside forward.

    ``share`` is of the whole turn under the profiler. A module kind's ``ms`` is the time of the ops run under it;
    the Python/dispatch row is the time inside the model's forward and its annotated modules that no aten op
    accounts for (their self time), counted there alone, so that the rows add up to the turn.
    """
    by_name = {a.key: a for a in averages}
    labels = _labels()
    turn = by_name.get(GENERATE)
    total_us = turn.cpu_time_total if turn is not None else 0.0
    forward = by_name.get(FORWARD)
    rows = []
    for kind, _ in MODULE_KINDS:
        a = by_name.get(kind)
        if a is not None:
            rows.append({"name": kind, "calls": a.count, "ms": (a.cpu_time_total - a.self_cpu_time_total) / 1000})
    overhead_us = sum(by_name[k].self_cpu_time_total for k in labels - {GENERATE} if k in by_name)
    rows.append({"name": OVERHEAD, "calls": forward.count if forward else 0, "ms": overhead_us / 1000})
    if forward is not None and turn is not None:
        rows.append({"name": "outside forward (sampling, cache, loop)", "calls": 1,
                     "ms": (turn.cpu_time_total - forward.cpu_time_total) / 1000})
    rows.sort(key=lambda r: -r["ms"])
    for row in rows:
        row["ms"] = round(row["ms"], 3)
        row["share"] = round(row["ms"] * 1000 / total_us, 4) if total_us else None
    return rows


def op_table(averages, top: int) -> list[dict]:
    """The ``top`` aten ops by self time: ``{name, calls, self_ms, total_ms}``."""
    labels = _labels()
    ops = [a for a in averages if a.key not in labels and not a.key.startswith("ProfilerStep")]
    ops.sort(key=lambda a: -a.self_cpu_time_total)
    return [{"name": a.key, "calls": a.count, "self_ms": round(a.self_cpu_time_total / 1000, 3),
             "total_ms": round(a.cpu_time_total / 1000, 3)} for a in ops[:top]]


# llama.cpp ---------------------------------------------------------------------------------------------------


class _TimedLibrary:
    """The llama.cpp bindings, with ``llama_decode`` and ``llama_sampler_sample`` timed and contexts made with
    llama.cpp's performance counters on; everything else passes through."""

    def __init__(self, lib, seen: Probe):
        self._lib, self._seen = lib, seen

    def __getattr__(self, name: str):
        return getattr(self._lib, name)

    def llama_decode(self, ctx, batch):
        start = time.perf_counter()
        status = self._lib.llama_decode(ctx, batch)
        self._seen.spans.append(Span("decode" if self._seen._sampled else "prefill", start, time.perf_counter()))
        return status

    def llama_sampler_sample(self, sampler, ctx, index):
        start = time.perf_counter()
        token = self._lib.llama_sampler_sample(sampler, ctx, index)
        self._seen.spans.append(Span("sampling", start, time.perf_counter()))
        self._seen._sampled = True
        return token

    def llama_init_from_model(self, model, params):
        params.no_perf = False  # the runtime's contexts keep no timings; this one does
        return self._lib.llama_init_from_model(model, params)


@contextmanager
def _llama_probe(model) -> Iterator[Probe]:
    seen = Probe()
    with model._lock:  # no turn runs while the bindings are swapped
        model._live()
        real = model._lib
        model._lib = _TimedLibrary(real, seen)
        try:
            if model._ctx is None or getattr(model, "_perf_ctx", None) is not model._ctx:
                # A context with counters, made now so that its allocation stays out of the turn.
                if model._ctx is not None:
                    real.llama_free(model._ctx)
                    model._ctx, model._ctx_seqs = None, 0
                model._context(1)
                model._perf_ctx = model._ctx
            real.llama_perf_context_reset(model._ctx)
        except BaseException:
            model._lib = real
            raise
    try:
        yield seen
    finally:
        with model._lock:
            model._lib = real
            if model._ctx is not None:
                seen.counters = llama_counters(real, model._ctx)


def llama_counters(lib, ctx) -> dict:
    """llama.cpp's own view of the turn (``llama_perf_context``): prompt eval and eval time and token counts."""
    data = lib.llama_perf_context(ctx)
    return {"prompt_eval_ms": round(data.t_p_eval_ms, 3), "prompt_eval_tokens": int(data.n_p_eval),
            "eval_ms": round(data.t_eval_ms, 3), "eval_tokens": int(data.n_eval),
            "load_ms": round(data.t_load_ms, 3)}
