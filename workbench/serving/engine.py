"""One worker thread per loaded model: a request queue, dynamic batching, streaming, and honest token timing.

The runtime reports each token the moment it produces it (after a device sync); here that moment becomes
seconds since the request was submitted, so TTFT includes any time spent waiting in the queue (also reported
on its own as ``queue_s``).

With a batch size above 1 the worker batches dynamically: it takes up to ``batch_size`` waiting requests
(waiting at most ``batch_window_s`` for more to arrive), runs them as one ``generate`` call of the runtime
and streams each request its own tokens, each timed from that request's own start. Requests whose generation
settings differ run in separate calls. A batch runs to its end before the next one starts ("static"
scheduler); the "continuous" scheduler lets requests join a running batch at every decode step, where the
runtime offers it.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

from ..conversation import as_messages, trim_to_fit
from ..recipe import GenerationSettings, check_batch_size
from ..runtimes.base import LoadedModel, answer_complete
from .continuous import ContinuousScheduler
from .options import DEFAULT_BATCH_WINDOW_S, check_scheduler
from .results import GenerationResult, Recorder, TokenEvent

log = logging.getLogger(__name__)
_END = object()


class ContextOverflow(ValueError):
    """A prompt and its token budget do not fit the model's context window; the message says what to change."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context_length: int):
        self.prompt_tokens, self.max_new_tokens, self.context_length = prompt_tokens, max_new_tokens, context_length
        room = context_length - max_new_tokens
        fix = (f"shorten the prompt to under {room:,} tokens or lower max new tokens" if room > 0 else
               f"lower max new tokens below {context_length:,}")
        super().__init__(f"the prompt is {prompt_tokens:,} tokens and max new tokens is {max_new_tokens:,}: together "
                         f"more than the model's context of {context_length:,} tokens; {fix}")


def check_context(prompt_tokens: int, settings: GenerationSettings, context_length: int | None) -> None:
    """Raise ContextOverflow unless the prompt and its token budget fit ``context_length`` (None: unknown)."""
    if context_length and prompt_tokens + settings.max_new_tokens > context_length:
        raise ContextOverflow(prompt_tokens, settings.max_new_tokens, context_length)


class Request:
    """Handle of one submitted request: iterate it for streamed text, call ``result()`` for the outcome."""

    def __init__(self, prompt_ids: list[int], settings: GenerationSettings, decode, origin: str):
        self.prompt_ids = prompt_ids
        self.settings = settings
        self.origin = origin
        self.submitted = time.perf_counter()
        self.submitted_wall = time.time()
        self.started: float | None = None
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._decode = decode
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
            text = self._decode(ids)
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
        # What a server said about the answer beside its text (a remote runtime's ``Served``: token counts, finish
        # reason, network split), set when its stream starts; such a row ends when the runtime is done with it.
        self.served = None

    @property
    def prompt_ids(self) -> list[int]:
        return self.request.prompt_ids

    @property
    def settings(self) -> GenerationSettings:
        return self.request.settings

    @property
    def active(self) -> bool:
        return self.open and not self.request.cancelled.is_set()

    def add(self, token_id: int, now: float) -> None:
        t = now - self.request.submitted
        if self.times and t <= self.times[-1]:
            t = self.times[-1] + 1e-9  # keep times strictly increasing even at clock resolution
        self.ids.append(token_id)
        self.times.append(t)
        self.request._events.put((token_id, t))

    def complete(self, eos: frozenset[int]) -> bool:
        """Whether this row has what it asked for (its own token budget, or EOS) or was stopped. A row a server
        answers ends with its stream (the runtime returns, or reports it finished; a stopped row's stream closes
        at its next chunk), never by counting chunks: the usage report and timings come after the last text."""
        if self.served is not None:
            return False
        return self.request.cancelled.is_set() or answer_complete(self.ids, self.settings, eos)


class Engine:
    """Serves one loaded model; a single worker thread serves the request queue, in batches of up to ``batch_size``.

    Args:
        model: the loaded model (from ``runtimes.build``); the engine does not close it.
        history: where finished requests are recorded (None = not recorded).
        batch_size: most requests run together (default: the recipe's ``batch_size``).
        batch_window_s: how long the worker waits for more requests before it runs a batch that is not full.
        scheduler: "static" (a batch runs to its end before the next starts) or "continuous" (requests join
            a running batch at each decode step; see ``LoadedModel.scheduler_problem``).
    """

    def __init__(self, model: LoadedModel, history: Recorder | None = None, batch_size: int | None = None,
                 batch_window_s: float = DEFAULT_BATCH_WINDOW_S, scheduler: str = "static"):
        self.scheduler = check_scheduler(scheduler)
        self.model: LoadedModel | None = model
        self.history = history
        self.batch_size = check_batch_size(model.recipe.batch_size if batch_size is None else batch_size)
        self.recipe = replace(model.recipe, batch_size=self.batch_size)  # what every result and row is keyed by
        self.batch_window_s = max(0.0, float(batch_window_s))
        self.batches: list[int] = []  # the size of every generate call run so far (static scheduler)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._state = threading.Lock()  # orders submit's check-and-enqueue against close
        self._in_hand: list[Request] = []  # requests the worker took from the queue and has not finished yet
        self._eos = model.eos_ids
        self._context_length = model.context_length
        self._decode = model.decode
        self._continuous = ContinuousScheduler(self) if scheduler == "continuous" else None
        self._worker = threading.Thread(target=self._serve, name=f"engine-{self.recipe.key()}", daemon=True)
        self._worker.start()

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Prompt token ids of a conversation, using the model's chat template when it has one."""
        return self._live().encode_chat(messages)

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
        settings = settings or GenerationSettings()
        prompt_ids = self.encode_chat(as_messages(messages))
        check_context(len(prompt_ids), settings, self._context_length)
        request = Request(prompt_ids, settings, self._decode, origin)
        request.record = record
        with self._state:  # a close in between would leave the request behind the worker's stop marker
            if self._closed:
                raise RuntimeError("engine is closed")
            self._queue.put(request)
        return request

    def fit(self, messages: list[dict], settings: GenerationSettings) -> tuple[list[dict], int]:
        """The conversation trimmed to the model's context: its latest turns that leave room for the answer.

        Returns the turns to send (the system message kept) and how many earlier turns were left out; a
        conversation whose last message alone is too long is returned whole, and ``submit`` refuses it.
        """
        if not self._context_length:
            return messages, 0
        budget = self._context_length - settings.max_new_tokens
        return trim_to_fit(messages, lambda turns: len(self.encode_chat(turns)), budget)

    def generate(self, messages: list[dict] | str, settings: GenerationSettings | None = None,
                 origin: str = "cli") -> GenerationResult:
        """Submit and wait for the whole answer."""
        return self.submit(messages, settings, origin).result()

    def close(self) -> None:
        """Stop the worker after the requests already queued and let go of the model (its owner closes it)."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._worker.join(timeout=60)

    def _live(self) -> LoadedModel:
        model = self.model
        if model is None:
            raise RuntimeError("engine is closed")
        return model

    # Worker --------------------------------------------------------------------------------------------------

    def _serve(self) -> None:
        error = "engine closed before this request ran"
        try:
            self._serve_queue()
        except Exception as exc:  # a bug here must not leave anyone waiting
            log.exception("the engine worker of %s failed", self.recipe.label())
            error = f"the engine stopped: {type(exc).__name__}: {exc}"
        finally:
            with self._state:
                self._closed = True  # from now on submit refuses, so the queue only drains
            try:
                if self._continuous is not None:
                    self._continuous.close()
            finally:
                self._fail_queued(error)
                self.model = None  # let the model be freed once its owner lets go too

    def _serve_queue(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                return
            self._in_hand = [request]
            batch, closing = self._collect(request)
            self._in_hand = batch
            if self._continuous is not None:
                self._continuous.serve(batch)
            else:
                for group in _compatible_groups(batch):
                    self.run_batch(group)
            self._in_hand = []
            if closing:
                return

    def _fail_queued(self, error: str) -> None:
        """End every request still queued or in the worker's hands with ``error``: none is left waiting for a worker
        that has gone."""
        for request in self._in_hand:
            if not request.done.is_set():
                self.finish(self.new_row(request), error)
        self._in_hand = []
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                return
            if request is not None:
                self.finish(self.new_row(request), error)

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

    def run_batch(self, requests: list[Request]) -> None:
        """Run compatible requests as one generate call of the runtime; every one of them ends with a result."""
        started = time.perf_counter()
        rows = []
        for request in requests:
            request.started = started
            rows.append(_Row(request))
            rows[-1].batch_size = len(requests)
        self.batches.append(len(requests))
        error = None
        try:
            self.model.generate(rows, _group_settings(requests),
                                lambda i, token_id, now: self.token(rows[i], token_id, now))
        except Exception as exc:  # a failed batch must not kill the worker
            error = f"{type(exc).__name__}: {exc}"
        for row in rows:
            if row.open:
                self.finish(row, error)

    def new_row(self, request: Request) -> _Row:
        """A row for a request that starts now (the continuous scheduler's)."""
        request.started = time.perf_counter()
        return _Row(request)

    def token(self, row: _Row, token_id: int, now: float) -> None:
        """A token the runtime produced for a row at ``now`` (perf_counter); finishes the row once it is complete."""
        if not row.open:
            return
        row.add(token_id, now)
        if row.complete(self._eos):
            self.finish(row)

    def finish(self, row: _Row, error: str | None = None) -> None:
        """Hand a request its result: record it, end its stream, wake whoever waits on it."""
        if not row.open:
            return
        row.open = False
        request = row.request
        result = self._result(request, row.ids, row.times, error, row.batch_size, row.served)
        if self.history is not None and request.record:
            self._record(request, result)  # before done: queued for the history's writer, whose readers wait for it
        request._result = result
        request._events.put(_END)
        request.done.set()

    def _result(self, request: Request, ids: list[int], times: list[float], error: str | None,
                batch_size: int = 1, served=None) -> GenerationResult:
        eos = self._eos
        if served is not None:
            error = served.error or error  # the server's own words for what went wrong with this row
        if error:
            reason = "error"
        elif served is not None and served.finish_reason and not request.cancelled.is_set():
            reason = served.finish_reason
        elif request.cancelled.is_set() and len(ids) < request.settings.max_new_tokens and not (ids and ids[-1] in eos):
            reason = "stopped"
        elif ids and ids[-1] in eos and not request.settings.ignore_eos:
            reason = "eos"
        else:
            reason = "length"
        return GenerationResult(
            text=self._decode(ids),
            prompt_tokens=len(request.prompt_ids) if served is None else served.prompt_tokens,
            new_tokens=len(ids) if served is None or served.per_chunk else served.completion_tokens,
            token_times=list(times),
            ttft_s=times[0] if times else None,
            e2e_s=times[-1] if times else None,
            queue_s=request.started - request.submitted,
            recipe_key=self.recipe.key(),
            finish_reason=reason,
            error=error,
            token_ids=list(ids),
            batch_size=batch_size,
            network=None if served is None else dict(served.network),
            per_chunk=served is not None and served.per_chunk,
            cut=served is not None and served.cut,
        )

    def _record(self, request: Request, result: GenerationResult) -> None:
        try:
            self.history.record(self.recipe, result, request.origin, request.submitted_wall)
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
