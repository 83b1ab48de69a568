"""The request history: every request as one row in ``WORKBENCH_HOME/metrics.sqlite``, shared by every process.

The history never stops an answer: a file that is not a database (or a damaged one) is moved aside as
``metrics.sqlite.damaged-<time>`` and a new one started; a database another process keeps locked past the busy
timeout, a full disk or a read-only folder lose that row, quietly. Either way ``HistoryStore.problem`` says what
happened, for the app and the CLI to show. Rows more than ``WORKBENCH_HISTORY_DAYS`` days (default 30; 0 keeps
them all) older than the newest are deleted when the history is opened and every ``PRUNE_EVERY`` rows written.

Rows are written by the process's background writer (``writer.py``): ``add`` returns at once, off the request's
clock. Within a process a reader sees its own writes: ``recent``, ``count``, ``after`` and ``problem`` first wait
(``flush``) for the rows of the same file still queued, by any store of that file.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from dataclasses import asdict, replace
from pathlib import Path

from .. import store
from ..recipe import Recipe
from . import writer
from .listeners import notify
from .records import RequestRecord, record_of

log = logging.getLogger(__name__)

_PROBLEMS: dict[str, str | None] = {}  # the last problem of each history file in this process, by real path
_COLUMNS = (
    "recipe_key TEXT NOT NULL, recipe_label TEXT, started_at REAL NOT NULL, prompt_tokens INTEGER, "
    "new_tokens INTEGER, ttft_s REAL, tpot_s REAL, e2e_s REAL, decode_tok_s REAL, queue_s REAL, "
    "cache TEXT, finish_reason TEXT, origin TEXT, batch_size INTEGER, token_times TEXT"
)
DAYS_ENV = "WORKBENCH_HISTORY_DAYS"
DEFAULT_DAYS = 30.0
PRUNE_EVERY = 1000  # rows written between two retention passes
BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process's write lock before the row is dropped
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)  # what moves a file aside (not: locked, full, read-only)
READ_WAIT_S = 30.0  # how long a reader waits for this process's queued rows before it reads without them


class HistoryStore:
    """Every request as one row in ``WORKBENCH_HOME/metrics.sqlite``; safe to share between threads.

    Args:
        path: the database file (default ``WORKBENCH_HOME/metrics.sqlite``).
        busy_timeout_s: how long a statement waits for another process's lock.
    """

    def __init__(self, path: str | Path | None = None, busy_timeout_s: float = BUSY_TIMEOUT_S):
        self.path = Path(path) if path else store.home() / "metrics.sqlite"
        self.busy_timeout_s = busy_timeout_s
        self._key = os.path.realpath(self.path)  # every store of one file shares its queue position and problem
        self.retention_days, why = retention_days()
        self._lock = threading.Lock()
        self._ready = False
        self._written = 0
        self._dropped = 0
        if why:
            self._problem = why
        self._run(lambda db: None)  # creates the table and applies the retention

    @property
    def problem(self) -> str | None:
        """The last thing that went wrong with this file in this process, met by this store or another (the
        Monitor page opens one of its own), as one line to show (after this process's queued rows are written)."""
        self.flush(READ_WAIT_S)
        return self._problem

    @property
    def _problem(self) -> str | None:
        return _PROBLEMS.get(self._key)

    @_problem.setter
    def _problem(self, value: str | None) -> None:
        _PROBLEMS[self._key] = value

    @problem.setter
    def problem(self, value: str | None) -> None:
        self._problem = value

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the rows this process queued for this file (by any store) are written and their listeners
        told; False when ``timeout`` seconds passed first."""
        return writer.WRITER.flush(self._key, timeout)

    # -- the database

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
        # WAL without a sync per commit: a row costs well under a millisecond instead of an fsync (~10-20 ms),
        # which would otherwise sit inside every request's completion and every cache hit. A commit is still
        # atomic: a kill loses at most the last rows, never the file.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _setup(self, db: sqlite3.Connection) -> None:
        db.execute(f"CREATE TABLE IF NOT EXISTS requests (id INTEGER PRIMARY KEY, {_COLUMNS})")
        db.execute("CREATE INDEX IF NOT EXISTS requests_recipe ON requests (recipe_key, started_at)")
        db.execute("CREATE INDEX IF NOT EXISTS requests_time ON requests (started_at)")
        self.prune(db)
        self._ready = True

    def _run(self, work, default=None, rows: int = 1):
        """``work(db)`` in one transaction on a fresh connection, under this store's lock. A damaged file is
        moved aside and the work done again on a new one; any other database error (locked, disk full,
        read-only) sets ``problem`` (``rows`` requests lost) and returns ``default``: the history never fails a
        request."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return self._once(work)
                except sqlite3.DatabaseError as exc:
                    if attempt == 1 and getattr(exc, "sqlite_errorcode", None) in _DAMAGED and self._set_aside(exc):
                        continue
                    self._failed(exc, rows)
                except OSError as exc:  # the folder itself cannot be made or read
                    self._failed(exc, rows)
                return default

    def _once(self, work):
        db = self._connect()
        try:
            with db:
                if not self._ready:
                    self._setup(db)
                return work(db)
        finally:
            db.close()

    def _set_aside(self, exc: sqlite3.DatabaseError) -> bool:
        """Move a damaged database (and its WAL files) aside; True when a new one can be started."""
        try:
            aside = store.set_aside(self.path)
            for suffix in ("-wal", "-shm"):
                extra = self.path.with_name(self.path.name + suffix)
                if extra.exists():
                    extra.rename(aside.with_name(aside.name.replace(self.path.name, extra.name, 1)))
        except OSError:
            return False
        self._ready = False
        self._problem = (f"The request history {self.path} could not be read ({exc}); it was moved to {aside.name} "
                         "and a new, empty history started.")
        log.warning(self._problem)
        return True

    def _failed(self, exc: Exception, rows: int = 1) -> None:
        if getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            lost = "that request was" if rows == 1 else f"those {rows} requests were"
            why = (f"another process kept it locked for over {self.busy_timeout_s:g} s; {lost} not "
                   "recorded (it is recorded again once the other process lets go)")
        else:
            why = f"{exc}; requests are not recorded until it can be written (is the disk full or read-only?)"
        self._problem = f"The request history {self.path} cannot be written: {why}"
        log.warning(self._problem)

    # -- writing

    def add(self, rec: RequestRecord) -> None:
        """Queue one request for the background writer and return at once; a history that cannot be written (or
        more than ``writer.MAX_PENDING`` rows waiting) drops it and says so in ``problem``."""
        rec = replace(rec, token_times=list(rec.token_times))  # the caller may go on using its list
        if not writer.WRITER.submit(self._key, self._write, rec):
            self._dropped += 1
            self._problem = (f"The request history {self.path} is not keeping up: {self._dropped} request(s) were "
                             f"not recorded (over {writer.MAX_PENDING} waiting to be written)")
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(self._problem)

    def _write(self, recs: list[RequestRecord]) -> None:
        """On the writer thread: insert the rows in one transaction, then tell the listeners, in order."""
        rows = [_row(rec) for rec in recs]
        names = ", ".join(rows[0])
        marks = ", ".join(f":{k}" for k in rows[0])

        def insert(db: sqlite3.Connection) -> None:
            db.executemany(f"INSERT INTO requests ({names}) VALUES ({marks})", rows)
            before, self._written = self._written, self._written + len(rows)
            if before // PRUNE_EVERY != self._written // PRUNE_EVERY:
                self.prune(db)

        self._run(insert, rows=len(rows))
        for rec in recs:
            notify(rec)

    def record(self, recipe: Recipe, result, origin: str, started_at: float) -> None:
        """Keep one finished request (``serving.GenerationResult``): the serving layer's ``Recorder``."""
        self.add(record_of(recipe, result, origin, started_at))

    def prune(self, db: sqlite3.Connection) -> int:
        """Delete the rows more than the retention older than the newest row (an indexed range); returns how many
        went. Counted from the newest row, not from now, so a history left alone for a while keeps its last
        days; with nothing to delete it only reads, so opening a history to read it takes no write lock."""
        if not self.retention_days:
            return 0
        newest = db.execute("SELECT MAX(started_at) FROM requests").fetchone()[0]
        if newest is None:
            return 0
        cutoff = newest - self.retention_days * 86400
        if db.execute("SELECT 1 FROM requests WHERE started_at < ? LIMIT 1", (cutoff,)).fetchone() is None:
            return 0
        return db.execute("DELETE FROM requests WHERE started_at < ?", (cutoff,)).rowcount

    # -- reading

    def recent(self, limit: int = 200, recipe_key: str | None = None, since: float | None = None) -> list[dict]:
        """Most recent requests, oldest first (read through the time index: no scan of the whole history)."""
        where, args = [], []
        if recipe_key:
            where.append("recipe_key = ?")
            args.append(recipe_key)
        if since is not None:
            where.append("started_at >= ?")
            args.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._rows(f"SELECT * FROM requests {clause} ORDER BY started_at DESC, id DESC LIMIT ?",
                          (*args, limit))
        return list(reversed(rows))

    def count(self) -> int:
        self.flush(READ_WAIT_S)
        return self._run(lambda db: db.execute("SELECT COUNT(*) FROM requests").fetchone()[0], 0)

    def after(self, last_id: int = 0, limit: int = 10_000) -> list[dict]:
        """Rows written after row ``last_id`` (by any process), in the order they were written, with their ``id``."""
        return self._rows("SELECT * FROM requests WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit))

    def _rows(self, query: str, args: tuple) -> list[dict]:
        self.flush(READ_WAIT_S)

        def read(db: sqlite3.Connection) -> list[dict]:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(query, args).fetchall()]

        out = self._run(read, [])
        for r in out:
            r["token_times"] = _token_times(r)
        return out


def _token_times(row: dict) -> list[float]:
    """A row's per-token times; a value that is not a JSON list (written by hand, damaged) is none, with a warning,
    so that one bad row never hides the rows after it."""
    try:
        times = json.loads(row["token_times"] or "[]")
        if isinstance(times, list):
            return times
    except (ValueError, TypeError):
        pass
    log.warning("request %s in the history has unreadable token times; shown without them", row.get("id"))
    return []


def _row(rec: RequestRecord) -> dict:
    row = asdict(rec)
    row["tpot_s"] = rec.tpot_s
    row["decode_tok_s"] = rec.decode_tok_s
    row["token_times"] = json.dumps([round(t, 6) for t in rec.token_times])
    return row


def retention_days() -> tuple[float, str | None]:
    """``WORKBENCH_HISTORY_DAYS`` (0 keeps every row), and a message when its value is not a number of days."""
    raw = os.environ.get(DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_DAYS, None
    try:
        days = float(raw)
        if days >= 0:
            return days, None
    except ValueError:
        pass
    return DEFAULT_DAYS, (f"{DAYS_ENV}={raw!r} is not a number of days (0 keeps every request); "
                          f"keeping {DEFAULT_DAYS:g} days")
