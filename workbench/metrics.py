"""Request records, summaries (percentiles), and the request history in SQLite.

Definitions (as AIPerf / vLLM define them): TTFT = first token time - request start;
TPOT = (e2e - TTFT) / (new_tokens - 1); ITL = every gap between tokens; E2E = last token - request start;
decode tok/s = (new_tokens - 1) / (e2e - TTFT).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import cache


@dataclass
class RequestRecord:
    recipe_key: str
    recipe_label: str
    started_at: float  # wall clock (epoch seconds) when the request was submitted
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    e2e_s: float | None
    queue_s: float
    cache: str = "miss"  # "miss" | "exact" | "semantic"
    finish_reason: str = "eos"  # "eos" | "length" | "stopped" | "error"
    origin: str = "chat"  # "chat" | "cli" | "bench" | ...
    batch_size: int = 1  # how many requests ran together in the worker
    token_times: list[float] = field(default_factory=list)

    @property
    def tpot_s(self) -> float | None:
        return tpot(self.new_tokens, self.ttft_s, self.e2e_s)

    @property
    def decode_tok_s(self) -> float | None:
        return decode_tok_s(self.new_tokens, self.ttft_s, self.e2e_s)


def tpot(new_tokens: int, ttft_s: float | None, e2e_s: float | None) -> float | None:
    if new_tokens < 2 or ttft_s is None or e2e_s is None or e2e_s <= ttft_s:
        return None
    return (e2e_s - ttft_s) / (new_tokens - 1)


def decode_tok_s(new_tokens: int, ttft_s: float | None, e2e_s: float | None) -> float | None:
    per_token = tpot(new_tokens, ttft_s, e2e_s)
    return None if per_token is None else 1.0 / per_token


def itl(token_times: list[float]) -> list[float]:
    """Every gap between consecutive tokens."""
    return [b - a for a, b in zip(token_times, token_times[1:])]


def summarize(values) -> dict:
    """n, mean, std, p50, p90, p95, p99 of the values (None and NaN dropped); empty -> n=0 and None."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    arr = arr[~np.isnan(arr)]
    keys = ("mean", "std", "p50", "p90", "p95", "p99")
    if arr.size == 0:
        return {"n": 0, **{k: None for k in keys}}
    p50, p90, p95, p99 = np.percentile(arr, [50, 90, 95, 99])
    return {
        "n": int(arr.size),
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
    }


_COLUMNS = (
    "recipe_key TEXT NOT NULL, recipe_label TEXT, started_at REAL NOT NULL, prompt_tokens INTEGER, "
    "new_tokens INTEGER, ttft_s REAL, tpot_s REAL, e2e_s REAL, decode_tok_s REAL, queue_s REAL, "
    "cache TEXT, finish_reason TEXT, origin TEXT, batch_size INTEGER, token_times TEXT"
)


class HistoryStore:
    """Every request as one row in ``WORKBENCH_HOME/metrics.sqlite``; safe to share between threads."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache.home() / "metrics.sqlite"
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


def now() -> float:
    return time.time()
