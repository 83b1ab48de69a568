"""Latency figures as AIPerf / vLLM define them, and their summaries. Pure functions of token times.

TTFT = first token time - request start; TPOT = (E2E - TTFT) / (new_tokens - 1); ITL = every gap between
consecutive tokens; E2E = last token - request start; decode tok/s = (new_tokens - 1) / (E2E - TTFT).
"""

from __future__ import annotations

import numpy as np


def tpot(new_tokens: int, ttft_s: float | None, e2e_s: float | None) -> float | None:
    """Time per output token after the first; None with fewer than 2 tokens."""
    if new_tokens < 2 or ttft_s is None or e2e_s is None or e2e_s <= ttft_s:
        return None
    return (e2e_s - ttft_s) / (new_tokens - 1)


def decode_tok_s(new_tokens: int, ttft_s: float | None, e2e_s: float | None) -> float | None:
    """The steady decoding speed, 1 / TPOT; None with fewer than 2 tokens."""
    per_token = tpot(new_tokens, ttft_s, e2e_s)
    return None if per_token is None else 1.0 / per_token


def itl(token_times: list[float]) -> list[float]:
    """Every gap between consecutive tokens."""
    return [b - a for a, b in zip(token_times, token_times[1:])]


class LatencyFigures:
    """TPOT and decode speed of a record with ``new_tokens``, ``ttft_s`` and ``e2e_s`` (a result, a history row)."""

    new_tokens: int
    ttft_s: float | None
    e2e_s: float | None

    @property
    def tpot_s(self) -> float | None:
        return tpot(self.new_tokens, self.ttft_s, self.e2e_s)

    @property
    def decode_tok_s(self) -> float | None:
        return decode_tok_s(self.new_tokens, self.ttft_s, self.e2e_s)


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


def to_ms(seconds: float | None) -> float | None:
    """Seconds as milliseconds; None stays None."""
    return None if seconds is None else seconds * 1000
