"""Hand-made history records with known latencies, for the monitoring tests."""

from __future__ import annotations

import numpy as np

from workbench.observe.history import HistoryStore
from workbench.observe.records import RequestRecord

T0 = 1_700_000_000.0


def record(key: str, t: float, ttft: float, gap: float, tokens: int = 5, cache: str = "miss", queue: float = 0.01,
           origin: str = "chat") -> RequestRecord:
    """A request whose tokens come ``gap`` seconds apart after ``ttft``."""
    times = [ttft + i * gap for i in range(tokens)]
    return RequestRecord(key, f"recipe {key}", t, 12, tokens, ttft, times[-1], queue, cache=cache, origin=origin,
                         token_times=times)


def seeded_records(start: float = T0) -> list[RequestRecord]:
    """Two recipes with known latencies, and cache hits for the first whose latencies are far lower."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(40):
        out.append(record("aaaa1111", start + i, float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.02, 0.08))))
        out.append(record("bbbb2222", start + i + 0.5, float(rng.uniform(0.05, 0.3)), 0.012, tokens=9, origin="cli"))
    out += [record("aaaa1111", start + 50 + i, 0.0005, 0.0001, cache="exact", queue=0.0) for i in range(5)]
    out.append(record("aaaa1111", start + 60, 0.0004, 0.0001, cache="semantic", queue=0.0))
    return out


def seed(store: HistoryStore, records: list[RequestRecord]) -> list[dict]:
    for r in records:
        store.add(r)
    return store.recent(limit=10_000)
