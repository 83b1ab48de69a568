"""Request records, summaries (percentiles), the request history in SQLite, and the monitoring built on it:
per-recipe tables and time series, a Prometheus exporter, and optional TensorBoard scalars.

Definitions (as AIPerf / vLLM define them): TTFT = first token time - request start;
TPOT = (e2e - TTFT) / (new_tokens - 1); ITL = every gap between tokens; E2E = last token - request start;
decode tok/s = (new_tokens - 1) / (e2e - TTFT).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
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
        _notify(rec)

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


def now() -> float:
    return time.time()


# ---- listeners: every record any HistoryStore of this process writes ------------------------------------

log = logging.getLogger(__name__)
_listeners: list[Callable[[RequestRecord], None]] = []
_listeners_lock = threading.Lock()
_env_listeners_added = False


def add_listener(listener: Callable[[RequestRecord], None]) -> None:
    """Call ``listener(record)`` after every record written by any HistoryStore of this process (once per
    listener, however often it is added). A listener that raises is logged and never loses the record."""
    with _listeners_lock:
        if listener not in _listeners:
            _listeners.append(listener)


def remove_listener(listener: Callable[[RequestRecord], None]) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _notify(rec: RequestRecord) -> None:
    _add_env_listeners()
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener(rec)
        except Exception:
            log.exception("a request-record listener failed")


def _add_env_listeners() -> None:
    """Listeners switched on by environment variables (TensorBoard), added on the first record of the process."""
    global _env_listeners_added
    if _env_listeners_added:
        return
    _env_listeners_added = True
    logdir = tensorboard_dir_from_env()
    if logdir is None:
        return
    try:
        add_listener(TensorBoardWriter(logdir).record)
    except ImportError as exc:
        log.warning("%s is set but TensorBoard is not installed (pip install .[tensorboard]): %s",
                    TENSORBOARD_ENV, exc)


def record_from_row(row: dict) -> RequestRecord:
    """A history row (``HistoryStore.recent``/``after``) back as a RequestRecord; missing fields take defaults."""
    given = {f.name: row[f.name] for f in fields(RequestRecord) if row.get(f.name) is not None}
    return RequestRecord(**{"ttft_s": None, "e2e_s": None, "queue_s": None, **given})


# ---- monitoring: per-recipe tables and time series over history rows -----------------------------------

MEASURES = (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl", "ITL"), ("e2e_s", "E2E"), ("queue_s", "Queue"))
QUANTILES = ("p50", "p90", "p95", "p99")


def is_cache_hit(row: dict) -> bool:
    """True for an answer served from the response cache ("exact"/"semantic"): not model latency."""
    return (row.get("cache") or "miss") != "miss"


def recipe_name(row: dict) -> str:
    return row.get("recipe_label") or row["recipe_key"]


def filter_rows(rows: Iterable[dict], recipe_keys: Iterable[str] | None = None, since: float | None = None,
                origins: Iterable[str] | None = None) -> list[dict]:
    """The rows of the given recipes (by key), started at or after ``since``, from the given origins;
    None means no filter on that field."""
    keys = set(recipe_keys) if recipe_keys is not None else None
    kinds = set(origins) if origins is not None else None
    return [r for r in rows
            if (keys is None or r["recipe_key"] in keys)
            and (since is None or r["started_at"] >= since)
            and (kinds is None or (r.get("origin") or "") in kinds)]


def recipes_of(rows: Iterable[dict]) -> dict[str, str]:
    """Recipe key -> label, in order of first appearance."""
    out: dict[str, str] = {}
    for r in rows:
        out.setdefault(r["recipe_key"], recipe_name(r))
    return out


def _values(rows: list[dict], measure: str) -> list[float]:
    if measure == "itl":
        return [gap for r in rows for gap in itl(r.get("token_times") or [])]
    return [r.get(measure) for r in rows]


def summary_table(rows: list[dict]) -> list[dict]:
    """Per recipe and measure: n, mean, p50, p90, p95, p99 in milliseconds.

    Model latency (TTFT, TPOT, ITL = every token gap, E2E, queue) comes from cache misses only; answers from the
    response cache get their own row (series "cache hit", E2E), so they never pass for model latency.

    Args:
        rows: history rows (``HistoryStore.recent``).

    Returns:
        One dict per row: ``recipe``, ``recipe_key``, ``series`` ("model" | "cache hit"), ``measure``, ``n``,
        ``mean_ms``, ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms`` (None when n is 0).
    """
    out = []
    for key, label in recipes_of(rows).items():
        mine = [r for r in rows if r["recipe_key"] == key]
        misses = [r for r in mine if not is_cache_hit(r)]
        hits = [r for r in mine if is_cache_hit(r)]
        parts = [("model", name, _values(misses, measure)) for measure, name in MEASURES] if misses else []
        if hits:
            parts.append(("cache hit", "E2E", _values(hits, "e2e_s")))
        for series, name, values in parts:
            s = summarize(values)
            out.append({"recipe": label, "recipe_key": key, "series": series, "measure": name, "n": s["n"],
                        **{f"{k}_ms": _ms(s[k]) for k in ("mean", *QUANTILES)}})
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def cache_table(rows: list[dict]) -> list[dict]:
    """Per recipe: ``requests``, ``model`` (cache misses), ``exact`` and ``semantic`` hits, ``hit_rate``."""
    out = []
    for key, label in recipes_of(rows).items():
        outcomes = [r.get("cache") or "miss" for r in rows if r["recipe_key"] == key]
        hits = sum(o != "miss" for o in outcomes)
        out.append({"recipe": label, "recipe_key": key, "requests": len(outcomes), "model": len(outcomes) - hits,
                    "exact": outcomes.count("exact"), "semantic": outcomes.count("semantic"),
                    "hit_rate": hits / len(outcomes)})
    return out


def cache_hit_rate(rows: list[dict]) -> float | None:
    """Share of requests answered from the response cache (None without requests)."""
    return sum(map(is_cache_hit, rows)) / len(rows) if rows else None


_BUCKETS_S = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 86400, 7 * 86400)


def bucket_seconds(span_s: float, buckets: int = 40) -> int:
    """A round bucket width that cuts ``span_s`` into about ``buckets`` buckets or fewer."""
    return next((b for b in _BUCKETS_S if b * buckets >= span_s), _BUCKETS_S[-1])


def finished_at(row: dict) -> float:
    """Wall-clock time the request ended: submitted + queue + e2e."""
    return row["started_at"] + (row.get("queue_s") or 0.0) + (row.get("e2e_s") or 0.0)


def throughput_series(rows: list[dict], bucket_s: float | None = None) -> list[dict]:
    """Model throughput over time per recipe: tokens generated (cache misses) and requests finished per second,
    in buckets of ``bucket_s`` seconds by the time each request finished (default: a round width for the span).

    Returns:
        One dict per recipe and bucket that saw a request: ``recipe``, ``recipe_key``, ``t`` (bucket start,
        epoch seconds), ``bucket_s``, ``tokens_per_s``, ``requests_per_s``.
    """
    misses = [r for r in rows if not is_cache_hit(r)]
    if not misses:
        return []
    ends = [finished_at(r) for r in misses]
    width = bucket_s or bucket_seconds(max(ends) - min(ends))
    buckets: dict[tuple[str, float], list[dict]] = {}
    for r, end in zip(misses, ends):
        buckets.setdefault((r["recipe_key"], math.floor(end / width) * width), []).append(r)
    labels = recipes_of(misses)
    return [{"recipe": labels[key], "recipe_key": key, "t": t, "bucket_s": width,
             "tokens_per_s": sum(r.get("new_tokens") or 0 for r in group) / width,
             "requests_per_s": len(group) / width}
            for (key, t), group in sorted(buckets.items(), key=lambda item: (item[0][1], item[0][0]))]


EXPORT_FIELDS = ("id", "recipe_key", "recipe_label", "started_at", "origin", "cache", "finish_reason",
                 "prompt_tokens", "new_tokens", "ttft_s", "tpot_s", "e2e_s", "decode_tok_s", "queue_s",
                 "batch_size", "token_times")


def rows_csv(rows: list[dict]) -> str:
    """History rows as CSV (seconds; ``token_times`` as a JSON list)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "token_times": json.dumps(r.get("token_times") or [])})
    return out.getvalue()


def rows_json(rows: list[dict], **extra) -> str:
    """History rows and their per-recipe summary as one JSON document (``extra`` keys added at the top)."""
    return json.dumps({**extra, "summary": summary_table(rows), "cache": cache_table(rows),
                       "requests": [{k: r.get(k) for k in EXPORT_FIELDS} for r in rows]}, indent=2)


class MemorySampler:
    """Resident memory of this process over time: ``sample()`` appends a reading at most every ``min_gap_s``."""

    def __init__(self, max_samples: int = 2000, min_gap_s: float = 1.0):
        from collections import deque

        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (epoch s, RSS MB)
        self.min_gap_s = min_gap_s
        self._lock = threading.Lock()

    def sample(self) -> list[tuple[float, float]]:
        from .devices import process_rss_mb

        with self._lock:
            t = time.time()
            if not self.samples or t - self.samples[-1][0] >= self.min_gap_s:
                self.samples.append((t, process_rss_mb()))
            return list(self.samples)


# ---- Prometheus -----------------------------------------------------------------------------------------

DEFAULT_METRICS_PORT = 9464
METRICS_PORT_ENV = "WORKBENCH_METRICS_PORT"  # a port, 0 for any free one, or "off"
METRICS_HOST_ENV = "WORKBENCH_METRICS_HOST"  # default 127.0.0.1: only this machine can scrape
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5,
                   10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                 0.5, 1.0, 2.0)


def exporter_address_from_env() -> tuple[str, int | None]:
    """(host, port) of the app's exporter from ``WORKBENCH_METRICS_HOST``/``WORKBENCH_METRICS_PORT``;
    port None when switched off. Raises ValueError naming the variable when the port is not a number."""
    host = os.environ.get(METRICS_HOST_ENV) or "127.0.0.1"
    text = (os.environ.get(METRICS_PORT_ENV) or str(DEFAULT_METRICS_PORT)).strip().lower()
    if text in ("off", "none", "no", "false"):
        return host, None
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{METRICS_PORT_ENV} must be a port number (0-65535) or 'off', got {text!r}")
    return host, port


class PrometheusExporter:
    """Request metrics as Prometheus histograms and counters, labelled by ``recipe`` (the key) and ``label``.

    Histograms (seconds): ``workbench_ttft_seconds``, ``workbench_tpot_seconds``, ``workbench_itl_seconds``
    (every token gap), ``workbench_e2e_seconds``, ``workbench_queue_seconds`` from cache misses only, and
    ``workbench_cache_hit_e2e_seconds`` for answers from the response cache. Counters: ``workbench_requests_total``
    (by ``cache`` and ``origin``), ``workbench_generated_tokens_total``, ``workbench_prompt_tokens_total``,
    ``workbench_cache_hits_total`` (by ``kind``). Process metrics (RSS, CPU) come with them.

    Args:
        registry: where the metrics live; default a registry of this exporter's own.
        process_metrics: also export ``process_*`` (resident memory, CPU seconds) of this process.
    """

    def __init__(self, registry=None, process_metrics: bool = True):
        from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("recipe", "label")

        def histogram(name, doc, buckets):
            return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

        self.ttft = histogram("workbench_ttft_seconds", "Time to first token of model requests", LATENCY_BUCKETS)
        self.tpot = histogram("workbench_tpot_seconds", "Time per output token of each model request", TOKEN_BUCKETS)
        self.itl = histogram("workbench_itl_seconds", "Every gap between consecutive generated tokens", TOKEN_BUCKETS)
        self.e2e = histogram("workbench_e2e_seconds", "End-to-end latency of model requests", LATENCY_BUCKETS)
        self.queue = histogram("workbench_queue_seconds", "Time a request waited before the model took it",
                               LATENCY_BUCKETS)
        self.cache_e2e = histogram("workbench_cache_hit_e2e_seconds", "End-to-end latency of answers from the "
                                   "response cache", LATENCY_BUCKETS)
        self.requests = Counter("workbench_requests", "Requests recorded", (*labels, "cache", "origin"),
                                registry=self.registry)
        self.generated_tokens = Counter("workbench_generated_tokens", "Tokens generated by the model (cache misses)",
                                        labels, registry=self.registry)
        self.prompt_tokens = Counter("workbench_prompt_tokens", "Prompt tokens of model requests", labels,
                                     registry=self.registry)
        self.cache_hits = Counter("workbench_cache_hits", "Answers served from the response cache",
                                  (*labels, "kind"), registry=self.registry)
        if process_metrics:
            ProcessCollector(registry=self.registry)

    def record(self, rec: RequestRecord) -> None:
        """Count one request and observe its latencies (model latency only for cache misses)."""
        labels = (rec.recipe_key, rec.recipe_label or rec.recipe_key)
        cache = rec.cache or "miss"
        self.requests.labels(*labels, cache, rec.origin or "").inc()
        for kind in ("exact", "semantic"):  # a zero series per recipe, so that hit-rate queries have data
            self.cache_hits.labels(*labels, kind)
        self.generated_tokens.labels(*labels)
        if cache != "miss":
            self.cache_hits.labels(*labels, cache).inc()
            _observe(self.cache_e2e, labels, rec.e2e_s)
            return
        self.generated_tokens.labels(*labels).inc(max(rec.new_tokens or 0, 0))
        self.prompt_tokens.labels(*labels).inc(max(rec.prompt_tokens or 0, 0))
        _observe(self.ttft, labels, rec.ttft_s)
        _observe(self.tpot, labels, rec.tpot_s)
        _observe(self.e2e, labels, rec.e2e_s)
        _observe(self.queue, labels, rec.queue_s)
        for gap in itl(rec.token_times or []):
            _observe(self.itl, labels, gap)

    def serve(self, port: int = DEFAULT_METRICS_PORT, host: str = "127.0.0.1"):
        """Serve ``/metrics`` over HTTP on a daemon thread; returns the server (``server_address[1]`` is the
        port, useful with port 0). Raises OSError when the port is taken."""
        from prometheus_client import start_http_server

        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server

    def text(self) -> str:
        """What ``/metrics`` serves, as text."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


def _observe(histogram, labels: tuple[str, str], value: float | None) -> None:
    if value is not None and not math.isnan(value):
        histogram.labels(*labels).observe(value)


class HistoryFollower:
    """Feeds an exporter with the rows any process writes to a history store (``workbench metrics-server``).

    Args:
        store: the history to follow.
        exporter: what each new row is recorded into.
        from_start: replay the rows already there (True) or only those written from now on.
    """

    def __init__(self, store: HistoryStore, exporter: PrometheusExporter, from_start: bool = True):
        self.store, self.exporter = store, exporter
        self.last_id = 0
        if not from_start:
            rows = store.recent(limit=1)
            self.last_id = rows[-1]["id"] if rows else 0

    def poll(self) -> int:
        """Record every row written since the last poll; returns how many."""
        count = 0
        while rows := self.store.after(self.last_id):
            for row in rows:
                self.exporter.record(record_from_row(row))
                self.last_id = row["id"]
            count += len(rows)
        return count

    def run(self, stop: threading.Event, interval_s: float = 2.0) -> None:
        """Poll until ``stop`` is set; a failed read is logged and retried on the next poll."""
        while not stop.is_set():
            try:
                self.poll()
            except sqlite3.Error as exc:
                log.warning("reading the request history failed: %s", exc)
            stop.wait(interval_s)


# ---- TensorBoard (optional: pip install .[tensorboard]) -------------------------------------------------

TENSORBOARD_ENV = "WORKBENCH_TENSORBOARD"  # "1" -> WORKBENCH_HOME/tensorboard, or a directory


def tensorboard_dir_from_env() -> Path | None:
    """Where TensorBoard scalars go when ``WORKBENCH_TENSORBOARD`` is set (None when unset or "0"/"off")."""
    value = (os.environ.get(TENSORBOARD_ENV) or "").strip()
    if value.lower() in ("", "0", "off", "false", "no"):
        return None
    if value.lower() in ("1", "on", "true", "yes"):
        return cache.home() / "tensorboard"
    return Path(value).expanduser()


class TensorBoardWriter:
    """The exporter's figures as TensorBoard scalars, one step per request of a recipe.

    Tags: ``ttft_ms/<recipe>``, ``tpot_ms/…``, ``e2e_ms/…``, ``queue_ms/…``, ``decode_tok_s/…``,
    ``new_tokens/…`` for cache misses; ``cache_hit_e2e_ms/…`` for cache hits; ``cache_hit/…`` (1 or 0) for both.

    Args:
        logdir: the TensorBoard log directory.
    """

    def __init__(self, logdir: str | Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.logdir = Path(logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.steps: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, rec: RequestRecord) -> None:
        name = _tag(rec.recipe_label or rec.recipe_key)
        hit = (rec.cache or "miss") != "miss"
        if hit:
            scalars = {"cache_hit_e2e_ms": _ms(rec.e2e_s)}
        else:
            scalars = {"ttft_ms": _ms(rec.ttft_s), "tpot_ms": _ms(rec.tpot_s), "e2e_ms": _ms(rec.e2e_s),
                       "queue_ms": _ms(rec.queue_s), "decode_tok_s": rec.decode_tok_s,
                       "new_tokens": float(rec.new_tokens or 0)}
        scalars["cache_hit"] = float(hit)
        with self._lock:
            step = self.steps[name] = self.steps.get(name, 0) + 1
            for tag, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(f"{tag}/{name}", value, step, walltime=rec.started_at)
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _tag(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in text)
