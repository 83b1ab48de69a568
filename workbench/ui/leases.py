"""Who runs a shared model: the chat's engine, or one measurement alone.

A slot's model is served by one Engine that every browser session chats through. The Benchmark and What
changed pages measure it with engines of their own, and a continuous-batching sweep switches the model's
attention implementation while it runs. So a measurement takes a lease: it waits for the chat replies being
generated, then has the model to itself; chat requests meanwhile end at once with a one-line "busy" error
(answering them would skew the figures, and a reply that waits minutes in silence is worse than a clear
message). Once the lease ends, the chat engine serves again. Nothing here touches Streamlit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext

from ..recipe import GenerationSettings
from ..runtimes.base import LoadedModel, OnToken, Row
from .jobs import JobRefused, JobStopped

POLL_S = 0.1  # how often a waiting lease checks Stop and redraws what it waits for


class ModelBusy(RuntimeError):
    """A chat request reached a model that a measurement holds; the message says who holds it and what to do."""


class SharedModel(LoadedModel):
    """A slot's model as its chat engine sees it: every call runs, unless a lease holds the model.

    Text and token helpers always pass through; ``generate`` and ``nll`` raise ``ModelBusy`` while a lease
    holds the model, and a lease waits for those in progress. Everything else is the model's own.

    Args:
        model: the loaded model (closed by ``close``, after any lease has ended).
    """

    def __init__(self, model: LoadedModel):
        self.inner = model
        self.recipe, self.stats, self.notes = model.recipe, model.stats, model.notes
        self._cond = threading.Condition()
        self._holder: str | None = None
        self._where = ""
        self._since = 0.0
        self._running = 0  # chat engine calls in progress
        self._closed = False

    def __getattr__(self, name: str):
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def busy(self) -> str | None:
        """Who holds the model now (e.g. "Benchmarking m · cpu · fp32"), or None."""
        return self._holder

    # -- what passes through

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return self.inner.encode_chat(messages)

    def tokenize(self, text: str) -> list[int]:
        return self.inner.tokenize(text)

    def decode(self, token_ids: list[int]) -> str:
        return self.inner.decode(token_ids)

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.inner.eos_ids

    @property
    def context_length(self) -> int | None:
        return self.inner.context_length

    @property
    def max_batch_size(self) -> int:
        return self.inner.max_batch_size

    def scheduler_problem(self, scheduler: str) -> str | None:
        return self.inner.scheduler_problem(scheduler)

    def continuous(self, max_requests: int, listener):
        # A slot's engine is static; a batcher would run on its own threads, outside the lease.
        raise RuntimeError("a shared model is served by the static scheduler only")

    # -- what a lease holds back

    def generate(self, rows: Sequence[Row], settings: GenerationSettings, on_token: OnToken) -> None:
        with self._call():
            self.inner.generate(rows, settings, on_token)

    def nll(self, token_ids: list[int], first_target: int) -> float:
        with self._call():
            return self.inner.nll(token_ids, first_target)

    @contextmanager
    def _call(self) -> Iterator[None]:
        with self._cond:
            if self._holder is not None:
                raise ModelBusy(self._busy_message())
            self._running += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def _busy_message(self) -> str:
        where = f" on the {self._where} page" if self._where else ""
        took = time.time() - self._since
        return (f"{self.recipe.label()} is busy: {self._holder} has it to itself (for {took:.0f} s so far) so that "
                f"chat does not disturb its figures; send your message again when it ends, or stop it{where}.")

    # -- the lease

    @contextmanager
    def lease(self, holder: str, where: str = "", stop: Callable[[], bool] | None = None,
              on_wait: Callable[[str], None] | None = None) -> Iterator[LoadedModel]:
        """The model itself, to this caller alone: waits for another lease, then for the chat replies running.

        Args:
            holder: who takes it, as the chat's busy message names it ("Benchmarking m · cpu · fp32").
            where: the page that can stop it ("Benchmark"), for the same message.
            stop: polled while waiting; once True, the wait ends with ``JobStopped``.
            on_wait: told what the lease waits for, each time that changes.
        """
        waiting = _Waiting(on_wait)
        with self._cond:
            while self._holder is not None and not self._closed:
                waiting.say(f"Waiting for {self._holder} to end: it has this model to itself")
                self._check(stop)
                self._cond.wait(POLL_S)
            self._check_open()
            self._holder, self._where, self._since = holder, where, time.time()  # new chat calls are refused
            try:
                while self._running:
                    n = self._running
                    waiting.say(f"Waiting for {n} chat repl{'ies' if n != 1 else 'y'} on this model to finish")
                    self._check(stop)
                    self._cond.wait(POLL_S)
            except BaseException:
                self._end_lease()
                raise
        try:
            yield self.inner
        finally:
            with self._cond:
                self._end_lease()

    def _check(self, stop: Callable[[], bool] | None) -> None:
        if stop is not None and stop():
            raise JobStopped()

    def _check_open(self) -> None:
        if self._closed:
            raise JobRefused(f"{self.recipe.label()} was unloaded to make room for another recipe; reload the page "
                             "to rebuild it")

    def _end_lease(self) -> None:
        self._holder = None
        self._cond.notify_all()

    def close(self) -> None:
        """Refuse new leases, wait for the one running to end, then close the model."""
        with self._cond:
            self._closed = True
            while self._holder is not None:
                self._cond.wait(POLL_S)
        self.inner.close()


class _Waiting:
    """Tells ``on_wait`` what a lease waits for, once per change."""

    def __init__(self, on_wait: Callable[[str], None] | None):
        self.on_wait, self.said = on_wait, None

    def say(self, text: str) -> None:
        if self.on_wait is not None and text != self.said:
            self.said = text
            self.on_wait(text)


def lease(model: LoadedModel, holder: str, where: str = "", stop: Callable[[], bool] | None = None,
          on_wait: Callable[[str], None] | None = None):
    """``model.lease(...)`` for a slot's shared model; any other model (one nobody else serves) as it is.

    Args:
        model: a ``SharedModel`` (a slot's), or a model of the caller's own.
        holder, where, stop, on_wait: as in ``SharedModel.lease``.
    """
    if isinstance(model, SharedModel):
        return model.lease(holder, where, stop, on_wait)
    return nullcontext(model)


@contextmanager
def lease_all(models: Sequence[LoadedModel], holder: str, where: str = "", stop: Callable[[], bool] | None = None,
              on_wait: Callable[[str], None] | None = None) -> Iterator[list[LoadedModel]]:
    """Lease several models (each once, however often it is listed); yields them in the order given.

    Leases are taken in the order of their recipe keys, so two measurements that need the same models never
    wait on each other.
    """
    unique = {id(m): m for m in models}
    held: dict[int, LoadedModel] = {}
    order = sorted(unique.values(), key=lambda m: m.recipe.key())
    with ExitStack() as stack:
        for m in order:
            held[id(m)] = stack.enter_context(lease(m, holder, where, stop, on_wait))
        yield [held[id(m)] for m in models]
