"""Dashboard queries over history rows: per-recipe tables, time series, exports, and the process's memory.

Model latency always comes from cache misses only; answers from the response cache are their own series.
"""

from __future__ import annotations

import csv
import io
import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterable

from ..devices import process_rss_mb
from ..latency import itl, summarize, to_ms

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
                        **{f"{k}_ms": to_ms(s[k]) for k in ("mean", *QUANTILES)}})
    return out


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
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (epoch s, RSS MB)
        self.min_gap_s = min_gap_s
        self._lock = threading.Lock()

    def sample(self) -> list[tuple[float, float]]:
        with self._lock:
            t = time.time()
            if not self.samples or t - self.samples[-1][0] >= self.min_gap_s:
                self.samples.append((t, process_rss_mb()))
            return list(self.samples)

