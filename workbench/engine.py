"""One worker thread per loaded model: a request queue, dynamic batching, streaming, and honest token timing.

Tokens are timestamped where they are produced: in the streamer's ``put`` that ``generate`` calls right
after choosing each token, after a device sync. Times are seconds since the request was submitted, so
TTFT includes any time spent waiting in the queue (also reported on its own as ``queue_s``).

With a recipe batch size above 1 the worker batches dynamically: it takes up to ``batch_size`` waiting
requests (waiting at most ``batch_window_s`` for more to arrive), runs them as one left-padded ``generate``
call and streams each request its own tokens, each timed from that request's own start. Requests whose
generation settings differ run in separate calls. A batch runs to its end before the next one starts
("static" scheduler); the "continuous" scheduler lets requests join a running batch at every decode step,
through transformers' continuous batching manager.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from . import devices
from .metrics import HistoryStore, RequestRecord, decode_tok_s, tpot
from .optimize import OptimizedModel
from .recipe import RecipeError

_END = object()
SCHEDULERS = ("static", "continuous")
DEFAULT_BATCH_WINDOW_S = 0.02  # how long the worker waits for more requests to fill a batch
# The continuous scheduler's paged KV cache is allocated up front: room for this many tokens (prompt and answer)
# per request of a full batch. Left to itself, transformers sizes it from free memory (GBs on a CPU machine).
CONTINUOUS_TOKENS_PER_REQUEST = 1024
CONTINUOUS_PAGE_SIZE = 64


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: generate exactly max_new_tokens

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 8192:
            raise RecipeError("max-new-tokens", f"max new tokens must be an integer from 1 to 8192, got {self.max_new_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise RecipeError("temperature", f"temperature must be between 0 and 5 (0 = greedy), got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise RecipeError("top-p", f"top-p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise RecipeError("seed", f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0


@dataclass
class TokenEvent:
    text: str  # new text since the previous event (may be "" while a multi-byte character is incomplete)
    token_id: int
    t: float  # seconds since request start
    index: int  # 0-based token index


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    new_tokens: int
    token_times: list[float]  # seconds since request start, one per generated token
    ttft_s: float | None
    e2e_s: float | None
    queue_s: float
    cache: str = "miss"
    recipe_key: str = ""
    finish_reason: str = "eos"  # "eos" | "length" | "stopped" | "error"
    error: str | None = None
    token_ids: list[int] = field(default_factory=list)
    batch_size: int = 1  # how many requests ran together in the generate call that produced this one

    @property
    def tpot_s(self) -> float | None:
        return tpot(self.new_tokens, self.ttft_s, self.e2e_s)

    @property
    def decode_tok_s(self) -> float | None:
        return decode_tok_s(self.new_tokens, self.ttft_s, self.e2e_s)

    def metrics(self) -> dict:
        ms = lambda s: None if s is None else round(s * 1000, 3)  # noqa: E731
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "ttft_ms": ms(self.ttft_s),
            "tpot_ms": ms(self.tpot_s),
            "e2e_ms": ms(self.e2e_s),
            "decode_tok_s": None if self.decode_tok_s is None else round(self.decode_tok_s, 3),
            "queue_ms": ms(self.queue_s),
            "cache": self.cache,
            "finish_reason": self.finish_reason,
            "batch_size": self.batch_size,
        }


def encode_chat(tokenizer, messages: list[dict]) -> torch.Tensor:
    """Token ids (1, T) of a conversation, ending where the assistant's answer starts.

    Uses the tokenizer's chat template when it has one; base models without one get a plain transcript.
    """
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        return enc["input_ids"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return tokenizer("\n".join(lines) + "\nAssistant:", return_tensors="pt")["input_ids"]


class Request:
    """Handle of one submitted request: iterate it for streamed text, call ``result()`` for the outcome."""

    def __init__(self, prompt_ids: torch.Tensor, settings: GenerationSettings, tokenizer, origin: str):
        self.prompt_ids = prompt_ids  # (1, T)
        self.settings = settings
        self.origin = origin
        self.submitted = time.perf_counter()
        self.submitted_wall = time.time()
        self.started: float | None = None
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._tokenizer = tokenizer
        self._result: GenerationResult | None = None
        self.record = True  # False keeps it out of the history (warm-up runs)

    def stop(self) -> None:
        """End generation after the current token; the partial answer and its metrics are kept."""
        self.cancelled.set()

    def __iter__(self) -> Iterator[TokenEvent]:
        ids: list[int] = []
        shown = ""
        while True:
            item = self._events.get()
            if item is _END:
                return
            token_id, t = item
            ids.append(token_id)
            text = self._tokenizer.decode(ids, skip_special_tokens=True)
            delta = ""
            if not text.endswith("\ufffd") and text.startswith(shown):  # hold incomplete UTF-8 sequences back
                delta, shown = text[len(shown):], text
            yield TokenEvent(delta, token_id, t, len(ids) - 1)

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        assert self._result is not None
        return self._result


class _Row:
    """One request's place in a running batch: the tokens it got, their times, and whether it still streams."""

    def __init__(self, request: Request):
        self.request = request
        self.ids: list[int] = []
        self.times: list[float] = []
        self.open = True
        self.batch_size = 1  # requests that ran together with this one (the largest seen, for "continuous")

    def add(self, token_id: int, now: float) -> None:
        t = now - self.request.submitted
        if self.times and t <= self.times[-1]:
            t = self.times[-1] + 1e-9  # keep times strictly increasing even at clock resolution
        self.ids.append(token_id)
        self.times.append(t)
        self.request._events.put((token_id, t))

    def complete(self, eos: set[int]) -> bool:
        """Whether this row has what it asked for (its own token budget, or EOS) or was stopped."""
        settings = self.request.settings
        return (len(self.ids) >= settings.max_new_tokens or self.request.cancelled.is_set()
                or (not settings.ignore_eos and bool(self.ids) and self.ids[-1] in eos))


class _BatchStreamer(BaseStreamer):
    """Receives each step's tokens from ``generate`` the moment they are chosen; row i goes to request i.

    A row that is complete (its budget reached, EOS, or stopped) is finished at once — its caller gets the
    result while the rest of the batch carries on; whatever ``generate`` still computes for it is dropped.
    """

    def __init__(self, engine: "Engine", rows: list[_Row]):
        self.engine = engine
        self.rows = rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call passes the prompt
            self.prompt_seen = True
            return
        devices.sync(self.engine.device)
        now = time.perf_counter()
        tokens = value.reshape(len(self.rows), -1).tolist()  # (B, 1)
        eos = self.engine._eos_ids()
        for row, step in zip(self.rows, tokens):
            if not row.open:
                continue
            for token_id in step:
                row.add(token_id, now)
            if row.complete(eos):
                self.engine._finish(row)

    def end(self) -> None:
        pass


class _RowsDone(StoppingCriteria):
    """Per row: done once its request is finished or stopped, so that one Stop never ends the others."""

    def __init__(self, rows: list[_Row]):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        done = [not row.open or row.request.cancelled.is_set() for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Engine:
    """Owns one loaded model; a single worker thread serves the request queue, in batches of up to the recipe's size.

    Args:
        optimized: the built model.
        history: where finished requests are recorded (None = not recorded).
        batch_size: most requests run together (default: the recipe's ``batch_size``).
        batch_window_s: how long the worker waits for more requests before it runs a batch that is not full.
        scheduler: "static" (a batch runs to its end before the next starts) or "continuous" (requests join
            a running batch at each decode step; see ``continuous_batching_problem``).
    """

    def __init__(self, optimized: OptimizedModel, history: HistoryStore | None = None, batch_size: int | None = None,
                 batch_window_s: float = DEFAULT_BATCH_WINDOW_S, scheduler: str = "static"):
        if scheduler not in SCHEDULERS:
            raise RecipeError("scheduler", f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)}")
        self.optimized = optimized
        self.history = history
        self.device = optimized.recipe.device
        self.batch_size = int(batch_size or optimized.recipe.batch_size)
        if not 1 <= self.batch_size <= 256:
            raise RecipeError("batch-size", f"batch size must be an integer from 1 to 256, got {batch_size!r}")
        self.batch_window_s = max(0.0, float(batch_window_s))
        self.scheduler = scheduler
        self.batches: list[int] = []  # the size of every generate call run so far (static scheduler)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._continuous = _Continuous(self) if scheduler == "continuous" else None
        self._worker = threading.Thread(target=self._serve, name=f"engine-{optimized.recipe.key()}", daemon=True)
        self._worker.start()

    @property
    def tokenizer(self):
        return self.optimized.tokenizer

    def encode_chat(self, messages: list[dict]) -> torch.Tensor:
        """Token ids (1, T) of a conversation, using the model's chat template when it has one."""
        return encode_chat(self.tokenizer, messages)

    def submit(
        self, messages: list[dict] | str, settings: GenerationSettings | None = None, origin: str = "chat",
        record: bool = True,
    ) -> Request:
        """Queue a request; returns at once.

        Args:
            messages: a chat (list of role/content dicts) or a single user message.
            settings: generation settings (defaults: greedy, 256 tokens).
            origin: who asked ("chat", "cli", "bench", ...), stored with the request's history row.
            record: False keeps the request out of the history (warm-up runs).
        """
        if self._closed:
            raise RuntimeError("engine is closed")
        settings = settings or GenerationSettings()
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        request = Request(self.encode_chat(messages), settings, self.tokenizer, origin)
        request.record = record
        self._queue.put(request)
        return request

    def generate(self, messages: list[dict] | str, settings: GenerationSettings | None = None, origin: str = "cli") -> GenerationResult:
        """Submit and wait for the whole answer."""
        return self.submit(messages, settings, origin).result()

    def close(self) -> None:
        """Stop the worker after the requests already queued; frees the model once nothing else holds it."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join(timeout=60)

    # Worker --------------------------------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                break
            batch, closing = self._collect(request)
            if self._continuous is not None:
                self._continuous.serve(batch)
            else:
                for group in _compatible_groups(batch):
                    self._run_batch(group)
            if closing:
                break
        if self._continuous is not None:
            self._continuous.close()
        self.optimized = None  # let the model be freed

    def _collect(self, first: Request) -> tuple[list[Request], bool]:
        """The first request plus up to batch_size - 1 more: those waiting now, then those arriving in the window."""
        batch, closing = [first], False
        if self._continuous is not None:
            return batch, False  # requests join the running batch as they come; no window needed
        deadline = time.perf_counter() + self.batch_window_s
        while len(batch) < self.batch_size:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            if item is None:
                closing = True  # serve what was collected, then stop
                break
            batch.append(item)
        return batch, closing

    def _run_batch(self, requests: list[Request]) -> None:
        started = time.perf_counter()
        rows = []
        for request in requests:
            request.started = started
            rows.append(_Row(request))
            rows[-1].batch_size = len(requests)
        self.batches.append(len(requests))
        error = None
        try:
            self._generate(rows)
        except Exception as exc:  # a failed batch must not kill the worker
            error = f"{type(exc).__name__}: {exc}"
        for row in rows:
            if row.open:
                self._finish(row, error)

    def _generate(self, rows: list[_Row]) -> None:
        model = self.optimized.model
        settings = _group_settings([row.request for row in rows])
        config = self._generation_config(settings)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        input_ids, attention_mask = self._left_padded([row.request.prompt_ids for row in rows])
        # inference_mode is a little faster; some quantized tensor types cannot live in it.
        with torch.inference_mode() if self.optimized.inference_mode else torch.no_grad():
            model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=config,
                streamer=_BatchStreamer(self, rows),
                stopping_criteria=StoppingCriteriaList([_RowsDone(rows)]),
            )

    def _left_padded(self, prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids and attention mask, prompts aligned on the right so that every row's next token is at -1."""
        width = max(p.shape[1] for p in prompts)
        pad = self._pad_id()
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - p.shape[1]:] = p[0]
            mask[i, width - p.shape[1]:] = 1
        return ids.to(self.device), mask.to(self.device)

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = min(self._eos_ids() or {0})
        return int(pad)

    def _generation_config(self, settings: GenerationSettings) -> GenerationConfig:
        base = self.optimized.model.generation_config
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            do_sample=not settings.greedy,
            pad_token_id=self._pad_id(),
            bos_token_id=base.bos_token_id,
            eos_token_id=base.eos_token_id if base.eos_token_id is not None else self.tokenizer.eos_token_id,
        )
        if not settings.greedy:
            kwargs.update(temperature=float(settings.temperature), top_p=float(settings.top_p), top_k=0)
        if settings.ignore_eos:
            # A benchmark needs exactly max_new_tokens: EOS is masked out until then.
            kwargs["min_new_tokens"] = settings.max_new_tokens
        return GenerationConfig(**kwargs)

    def _finish(self, row: _Row, error: str | None = None) -> None:
        """Hand a request its result: record it, end its stream, wake whoever waits on it."""
        if not row.open:
            return
        row.open = False
        request = row.request
        result = self._result(request, row.ids, row.times, error, row.batch_size)
        if self.history is not None and request.record:
            self._record(request, result)  # before done: whoever waits on result() finds the row stored
        request._result = result
        request._events.put(_END)
        request.done.set()

    def _result(self, request: Request, ids: list[int], times: list[float], error: str | None,
                batch_size: int = 1) -> GenerationResult:
        eos = self._eos_ids()
        if error:
            reason = "error"
        elif request.cancelled.is_set() and len(ids) < request.settings.max_new_tokens and not (ids and ids[-1] in eos):
            reason = "stopped"
        elif ids and ids[-1] in eos and not request.settings.ignore_eos:
            reason = "eos"
        else:
            reason = "length"
        return GenerationResult(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            prompt_tokens=int(request.prompt_ids.shape[1]),
            new_tokens=len(ids),
            token_times=list(times),
            ttft_s=times[0] if times else None,
            e2e_s=times[-1] if times else None,
            queue_s=request.started - request.submitted,
            recipe_key=self.optimized.recipe.key(),
            finish_reason=reason,
            error=error,
            token_ids=list(ids),
            batch_size=batch_size,
        )

    def _eos_ids(self) -> set[int]:
        eos = self.optimized.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    def _record(self, request: Request, result: GenerationResult) -> None:
        recipe = self.optimized.recipe
        try:
            self.history.add(
                RequestRecord(
                    recipe_key=recipe.key(),
                    recipe_label=recipe.label(),
                    started_at=request.submitted_wall,
                    prompt_tokens=result.prompt_tokens,
                    new_tokens=result.new_tokens,
                    ttft_s=result.ttft_s,
                    e2e_s=result.e2e_s,
                    queue_s=result.queue_s,
                    cache=result.cache,
                    finish_reason=result.finish_reason,
                    origin=request.origin,
                    batch_size=result.batch_size,
                    token_times=result.token_times,
                )
            )
        except Exception:  # history is best-effort; an unwritable disk must not lose the answer
            pass


_unique = itertools.count()


def _group_key(settings: GenerationSettings) -> tuple:
    """Requests with equal keys can share one generate call."""
    # With ignore_eos every row must run exactly its budget, and min_new_tokens is one number per call.
    budget = settings.max_new_tokens if settings.ignore_eos else None
    if settings.greedy:
        return ("greedy", settings.ignore_eos, budget)
    if settings.seed is not None:
        return ("seeded", next(_unique))  # runs alone: a seed promises the same text whatever else is queued
    return ("sample", float(settings.temperature), float(settings.top_p), settings.ignore_eos, budget)


def _compatible_groups(requests: list[Request]) -> list[list[Request]]:
    """Requests split into groups that can share one generate call, in order of their first arrival."""
    groups: dict[tuple, list[Request]] = {}
    for request in requests:
        groups.setdefault(_group_key(request.settings), []).append(request)
    return list(groups.values())


def _group_settings(requests: list[Request]) -> GenerationSettings:
    """The settings of one generate call for a compatible group: the largest token budget of its rows."""
    first = requests[0].settings
    if len(requests) == 1:
        return first
    return replace(first, max_new_tokens=max(r.settings.max_new_tokens for r in requests))


def continuous_batching_problem(model) -> str | None:
    """Why transformers' continuous batching cannot serve this model here, or None when it may.

    Args:
        model: a loaded causal LM (``OptimizedModel.model``).
    """
    if not hasattr(model, "init_continuous_batching"):
        return "this transformers version has no continuous batching (it arrived in transformers 4.56)"
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in (None, "sdpa", "eager", "paged|eager") and "flash" not in str(impl):
        return f"continuous batching needs sdpa, eager or flash attention; this model uses {impl}"
    return None


class _Continuous:
    """Greedy requests through transformers' ContinuousBatchingManager: each joins the running batch at once.

    The manager runs its own generation thread with a paged KV cache; a router thread here hands each request
    its new tokens, timed where the manager recorded them. Sampled requests are served by the static path,
    one at a time, because the manager applies one set of sampling settings to every request.
    """

    POLL_S = 0.02

    def __init__(self, engine: Engine):
        self.engine = engine
        self.rows: dict[str, _Row] = {}
        self.lock = threading.Lock()
        self.manager = None
        self.failed: str | None = None
        self._ids = itertools.count()
        self._stop = threading.Event()
        self._router: threading.Thread | None = None

    def serve(self, batch: list[Request]) -> None:
        for request in batch:
            if not request.settings.greedy:
                self.engine._run_batch([request])
            else:
                self._add(request)

    def _start(self) -> None:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        engine = self.engine
        problem = continuous_batching_problem(engine.optimized.model)
        if problem:
            raise RuntimeError(problem)
        config = engine._generation_config(GenerationSettings(max_new_tokens=256))
        tokens = engine.batch_size * CONTINUOUS_TOKENS_PER_REQUEST
        cb_config = ContinuousBatchingConfig(
            max_requests_per_batch=engine.batch_size, page_size=CONTINUOUS_PAGE_SIZE,
            num_blocks=-(-tokens // CONTINUOUS_PAGE_SIZE), max_batch_tokens=max(256, 32 * engine.batch_size),
        )
        self.manager = engine.optimized.model.init_continuous_batching(generation_config=config,
                                                                       continuous_batching_config=cb_config)
        self.manager.start()
        self._router = threading.Thread(target=self._route, name="engine-continuous-router", daemon=True)
        self._router.start()

    def _add(self, request: Request) -> None:
        request.started = time.perf_counter()
        row = _Row(request)
        try:
            if self.failed:
                raise RuntimeError(self.failed)
            if self.manager is None:
                self._start()
            rid = f"r{next(self._ids)}"
            with self.lock:
                self.rows[rid] = row
            eos = -1 if request.settings.ignore_eos else sorted(self.engine._eos_ids())
            self.manager.add_request(request.prompt_ids[0].tolist(), request_id=rid,
                                     max_new_tokens=request.settings.max_new_tokens, streaming=True,
                                     record_timestamps=True, eos_token_id=eos)
        except Exception as exc:
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
            self.engine._finish(row, f"continuous batching failed: {self.failed}")

    def _route(self) -> None:
        eos = self.engine._eos_ids()
        while not self._stop.is_set():
            self._cancel_stopped()
            out = self.manager.get_result(timeout=self.POLL_S)
            if out is None:
                fatal = getattr(self.manager.background_thread_status, "fatal_error", None)
                if fatal is not None:
                    self._fail_open(f"continuous batching failed: {fatal}")
                    return
                continue
            with self.lock:
                row = self.rows.get(out.request_id)
                running = sum(r.open for r in self.rows.values())
            if row is None or not row.open:
                continue
            self._deliver(row, out, min(running, self.engine.batch_size))
            if out.error:
                self.engine._finish(row, f"continuous batching failed: {out.error}")
            elif out.is_finished() or row.complete(eos):
                if not out.is_finished():
                    self.manager.cancel_request(out.request_id)
                self.engine._finish(row)
            if not row.open:
                with self.lock:
                    self.rows.pop(out.request_id, None)

    def _deliver(self, row: _Row, out, running: int) -> None:
        if out.lifespan and out.lifespan[0] > 0 and not row.ids:
            row.request.started = max(row.request.started, out.lifespan[0])  # left the manager's queue
        new = out.generated_tokens[len(row.ids):]
        stamps = list(out.timestamps or [])[len(row.ids):]
        now = time.perf_counter()
        for k, token_id in enumerate(new):
            row.add(token_id, stamps[k] if k < len(stamps) else now)
        row.batch_size = max(row.batch_size, running)

    def _cancel_stopped(self) -> None:
        with self.lock:
            stopped = [(rid, row) for rid, row in self.rows.items() if row.open and row.request.cancelled.is_set()]
        for rid, row in stopped:
            self.manager.cancel_request(rid)
            self.engine._finish(row)
            with self.lock:
                self.rows.pop(rid, None)

    def _fail_open(self, error: str) -> None:
        self.failed = error
        with self.lock:
            rows, self.rows = list(self.rows.values()), {}
        for row in rows:
            self.engine._finish(row, error)

    def close(self, timeout_s: float = 600.0) -> None:
        """Let the running requests finish, then stop the manager and the router."""
        deadline = time.perf_counter() + timeout_s
        while self.rows and self._router is not None and self._router.is_alive() and time.perf_counter() < deadline:
            time.sleep(self.POLL_S)
        self._stop.set()
        if self._router is not None:
            self._router.join(timeout=5)
        if self.manager is not None:
            try:
                self.manager.stop(block=True, timeout=10)
                self.manager.destroy() if hasattr(self.manager, "destroy") else None
            except Exception:
                pass
        self._fail_open("engine closed")
