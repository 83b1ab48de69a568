import math

import numpy as np
import pytest

from workbench.metrics import HistoryStore, RequestRecord, decode_tok_s, itl, summarize, tpot


def test_summary_matches_numpy():
    rng = np.random.default_rng(0)
    data = rng.lognormal(size=257)
    s = summarize(list(data))
    assert s["n"] == 257
    assert s["mean"] == pytest.approx(data.mean())
    assert s["std"] == pytest.approx(data.std(ddof=1))
    for q in (50, 90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(data, q))


def test_summary_drops_missing_values_and_handles_empty():
    assert summarize([1.0, None, float("nan"), 3.0])["n"] == 2
    empty = summarize([])
    assert empty["n"] == 0 and empty["p50"] is None
    one = summarize([2.0])
    assert one["std"] == 0.0 and one["p99"] == 2.0


def test_definitions():
    # 5 tokens: first at 0.5 s, last at 1.3 s -> 4 gaps of 0.2 s.
    times = [0.5, 0.7, 0.9, 1.1, 1.3]
    assert tpot(5, 0.5, 1.3) == pytest.approx(0.2)
    assert decode_tok_s(5, 0.5, 1.3) == pytest.approx(5.0)
    assert itl(times) == pytest.approx([0.2] * 4)
    assert tpot(1, 0.5, 0.5) is None and decode_tok_s(1, 0.5, 0.5) is None
    assert tpot(0, None, None) is None


def _record(key, t, ttft=0.1):
    return RequestRecord(key, f"label {key}", t, 10, 3, ttft, ttft + 0.2, 0.0, token_times=[ttft, ttft + 0.1, ttft + 0.2])


def test_history_filters_and_orders(tmp_path):
    store = HistoryStore(tmp_path / "m.sqlite")
    for i, key in enumerate(["a", "b", "a", "a"]):
        store.add(_record(key, 1000.0 + i, ttft=0.1 * (i + 1)))
    assert store.count() == 4
    rows = store.recent(limit=2)
    assert [r["started_at"] for r in rows] == [1002.0, 1003.0]  # most recent, oldest first
    only_a = store.recent(recipe_key="a")
    assert [r["recipe_key"] for r in only_a] == ["a", "a", "a"]
    assert [r["started_at"] for r in store.recent(since=1002.5)] == [1003.0]
    assert math.isclose(only_a[0]["tpot_s"], 0.1)
    assert only_a[0]["decode_tok_s"] == pytest.approx(10.0)
