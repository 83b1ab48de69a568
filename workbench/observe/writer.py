"""The history's background writer: one thread per process stores rows and tells listeners, so that a SQLite
insert, a Prometheus update or a TensorBoard flush never sits inside a request's measured latency.

Jobs run in the order they were queued (one store's rows keep their order). At most ``MAX_PENDING`` wait: past
that, ``submit`` refuses (the caller drops the row and says so) rather than block a generating thread or let
memory grow. At exit the process waits up to ``EXIT_WAIT_S`` for what is queued, so a CLI run that ends right
after its request still stores it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # rows waiting to be written before new ones are dropped (a locked or stalled database)
BATCH = 500  # most jobs of one store handed to it at once (one transaction)
EXIT_WAIT_S = 10.0


class Writer:
    """A FIFO of ``(key, handler, item)`` jobs run on one daemon thread; consecutive jobs with the same key and
    handler go to ``handler(items)`` together. ``flush(key)`` waits for the jobs of ``key`` queued so far."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque[tuple[int, Hashable, Callable[[list], None], object]] = deque()
        self._seq = 0  # number given to the last job queued
        self._done = 0  # every job numbered up to this one has run (jobs run in order)
        self._last: dict[Hashable, int] = {}  # key -> number of its last job queued
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, handler: Callable[[list], None], item: object) -> bool:
        """Queue ``item`` for ``handler``; False (nothing queued) when ``MAX_PENDING`` jobs already wait."""
        with self._cond:
            if len(self._queue) >= MAX_PENDING:
                return False
            self._seq += 1
            self._queue.append((self._seq, key, handler, item))
            self._last[key] = self._seq
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._start()
        return True

    def flush(self, key: Hashable | None = None, timeout: float | None = None) -> bool:
        """Wait until the jobs of ``key`` (every job, with None) queued before this call have run; False when
        ``timeout`` seconds passed first. Called from the writer's own thread (a listener), it does not wait."""
        if threading.current_thread() is self._thread:
            return False
        with self._cond:
            target = self._seq if key is None else self._last.get(key, 0)
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def pending(self) -> int:
        with self._cond:
            return self._seq - self._done

    def _start(self) -> None:
        thread = threading.Thread(target=self._loop, name="history-writer", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # the interpreter is shutting down: no new thread, so run the job here
            self._thread = None
            self._cond.release()
            try:
                self._drain()
            finally:
                self._cond.acquire()
            return
        self._thread = thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue)
            self._drain()

    def _drain(self) -> None:
        """Run every queued job, a batch of one key and handler at a time."""
        while batch := self._next_batch():
            _, key, handler, _ = batch[0]
            try:
                handler([item for *_, item in batch])
            except Exception:  # a failing write is logged; the writer goes on with the next rows
                log.exception("writing the request history failed")
            with self._cond:
                self._done = batch[-1][0]
                if self._last.get(key) == self._done:
                    del self._last[key]  # nothing of this key is pending: forget it
                self._cond.notify_all()

    def _next_batch(self) -> list:
        with self._cond:
            if not self._queue:
                return []
            batch = [self._queue.popleft()]
            while self._queue and len(batch) < BATCH and self._queue[0][1:3] == batch[0][1:3]:
                batch.append(self._queue.popleft())
            return batch

    def _after_fork(self) -> None:
        """A forked child has no writer thread and owns none of the parent's pending rows: start empty."""
        self.__init__()


WRITER = Writer()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WRITER._after_fork)


@atexit.register
def _flush_at_exit() -> None:
    if not WRITER.flush(timeout=EXIT_WAIT_S):
        log.warning("%d request(s) were not written to the history: it did not answer within %g s of exit",
                    WRITER.pending(), EXIT_WAIT_S)
