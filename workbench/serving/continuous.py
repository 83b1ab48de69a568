"""The continuous scheduler: greedy requests join the runtime's running batch at once; sampled ones run alone.

The runtime's continuous batcher applies one set of sampling settings to every request, so sampled requests
are served by the static path, one at a time, and so are greedy requests longer (prompt and answer) than the
batcher reserves for one request. The batcher is started with the first greedy request; if it cannot start,
that request ends with the error; if it fails, every request it was serving ends with it, and the next request
starts a fresh batcher.
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
        self.rows: set = set()  # rows handed to the batcher and not finished yet
        self.lock = threading.Lock()

    def serve(self, batch: list) -> None:
        for request in batch:
            if request.settings.greedy:
                self._add(request)
            else:
                self.engine.run_batch([request])

    def _add(self, request) -> None:
        try:
            if self.batcher is not None and self.batcher.failed:
                self._drop_batcher()  # it has ended its own rows with its error; a fresh one serves the next
            if self.batcher is None:
                self.batcher = self.engine.model.continuous(self.engine.batch_size, self)
        except Exception as exc:
            self.engine.finish(self.engine.new_row(request), f"continuous batching failed: {type(exc).__name__}: "
                                                             f"{exc}")
            return
        if len(request.prompt_ids) + request.settings.max_new_tokens > self.batcher.tokens_per_request:
            self.engine.run_batch([request])  # longer than a batch row's reserved KV cache: served on its own
            return
        row = self.engine.new_row(request)
        with self.lock:
            self.rows.add(row)
        try:
            self.batcher.add(row)
        except Exception as exc:
            self.finished(row, f"continuous batching failed: {type(exc).__name__}: {exc}")

    def _drop_batcher(self) -> None:
        batcher, self.batcher = self.batcher, None
        try:
            batcher.close(0)
        except Exception:  # it has failed already; what matters is that its rows were ended
            pass

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
