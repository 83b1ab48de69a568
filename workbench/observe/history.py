"""The request history: every request as one row in ``WORKBENCH_HOME/metrics.sqlite``, shared by every process."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import asdict
from pathlib import Path

from .. import store
from ..recipe import Recipe
from .listeners import notify
from .records import RequestRecord, record_of

_COLUMNS = (
    "recipe_key TEXT NOT NULL, recipe_label TEXT, started_at REAL NOT NULL, prompt_tokens INTEGER, "
    "new_tokens INTEGER, ttft_s REAL, tpot_s REAL, e2e_s REAL, decode_tok_s REAL, queue_s REAL, "
    "cache TEXT, finish_reason TEXT, origin TEXT, batch_size INTEGER, token_times TEXT"
)


class HistoryStore:
    """Every request as one row in ``WORKBENCH_HOME/metrics.sqlite``; safe to share between threads."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else store.home() / "metrics.sqlite"
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, {_COLUMNS})")
            db.execute("CREATE INDEX IF NOT EXISTS requests_recipe ON requests (recipe_key, started_at)")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        # WAL without a sync per commit: a row costs well under a millisecond instead of an fsync (~10-20 ms),
        # which would otherwise sit inside every request's completion and every cache hit.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def add(self, rec: RequestRecord) -> None:
        row = asdict(rec)
        row["tpot_s"] = rec.tpot_s
        row["decode_tok_s"] = rec.decode_tok_s
        row["token_times"] = json.dumps([round(t, 6) for t in rec.token_times])
        names = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._lock, self._connect() as db:
            db.execute(f"INSERT INTO requests ({names}) VALUES ({marks})", row)
        notify(rec)

    def record(self, recipe: Recipe, result, origin: str, started_at: float) -> None:
        """Keep one finished request (``serving.GenerationResult``): the serving layer's ``Recorder``."""
        self.add(record_of(recipe, result, origin, started_at))

    def recent(self, limit: int = 200, recipe_key: str | None = None, since: float | None = None) -> list[dict]:
        """Most recent requests, oldest first."""
        where, args = [], []
        if recipe_key:
            where.append("recipe_key = ?")
            args.append(recipe_key)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock, self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(
                f"SELECT * FROM requests {clause} ORDER BY started_at DESC, id DESC LIMIT ?", (*args, limit)
            ).fetchall()
        out = [dict(r) for r in reversed(rows)]
        for r in out:
            r["token_times"] = json.loads(r["token_times"] or "[]")
        return out

    def count(self) -> int:
        with self._lock, self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]

    def after(self, last_id: int = 0, limit: int = 10_000) -> list[dict]:
        """Rows written after row ``last_id`` (by any process), in the order they were written, with their ``id``."""
        with self._lock, self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute("SELECT * FROM requests WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
        out = [dict(r) for r in rows]
        for r in out:
            r["token_times"] = json.loads(r["token_times"] or "[]")
        return out

