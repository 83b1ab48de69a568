"""The continuous scheduler: greedy requests join the runtime's running batch at once; sampled ones run alone.

The runtime's continuous batcher applies one set of sampling settings to every request, so sampled requests
are served by the static path, one at a time. The batcher is started with the first greedy request; if it
cannot start (or fails), every request it would have served ends with that error.
"""

from __future__ import annotations

import threading


class ContinuousScheduler:
    """The engine's side of a continuous batch: its rows, and what the runtime's batcher reports about them.

    Args:
        engine: the ``Engine`` whose requests this serves (its ``new_row``, ``token``, ``finish`` and
            ``run_batch``).
    """

    def __init__(self, engine):
        self.engine = engine
        self.batcher = None
        self.failed: str | None = None
        self.rows: set = set()  # rows handed to the batcher and not finished yet
        self.lock = threading.Lock()

    def serve(self, batch: list) -> None:
        for request in batch:
            if not request.settings.greedy:
                self.engine.run_batch([request])
            else:
                self._add(request)

    def _add(self, request) -> None:
        row = self.engine.new_row(request)
        try:
            self.failed = self.failed or (self.batcher.failed if self.batcher is not None else None)
            if self.failed:
                raise RuntimeError(self.failed)
            if self.batcher is None:
                self.batcher = self.engine.model.continuous(self.engine.batch_size, self)
            with self.lock:
                self.rows.add(row)
            self.batcher.add(row)
        except Exception as exc:
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
            self.finished(row, f"continuous batching failed: {self.failed}")

    # ContinuousListener: called from the batcher's thread.

    def admitted(self, row, t: float) -> None:
        if not row.ids:
            row.request.started = max(row.request.started, t)  # left the batcher's queue

    def token(self, row, token_id: int, t: float) -> None:
        with self.lock:
            running = sum(r.open for r in self.rows)
        row.batch_size = max(row.batch_size, min(running, self.engine.batch_size))
        self.engine.token(row, token_id, t)

    def finished(self, row, error: str | None) -> None:
        with self.lock:
            self.rows.discard(row)
        self.engine.finish(row, error)

    def close(self, timeout_s: float = 600.0) -> None:
        """Let the running requests finish, then stop the batcher."""
        if self.batcher is not None:
            self.batcher.close(timeout_s)
        with self.lock:
            rows, self.rows = list(self.rows), set()
        for row in rows:
            self.engine.finish(row, "engine closed")
