"""The latency definitions and their summaries."""

from dataclasses import dataclass

import numpy as np
import pytest

from workbench.latency import LatencyFigures, decode_tok_s, itl, summarize, to_ms, tpot


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
    assert to_ms(0.25) == 250.0 and to_ms(None) is None


def test_every_record_type_gets_the_same_figures_from_the_mixin():
    @dataclass
    class Record(LatencyFigures):
        new_tokens: int
        ttft_s: float | None
        e2e_s: float | None

    record = Record(5, 0.5, 1.3)
    assert record.tpot_s == pytest.approx(0.2) and record.decode_tok_s == pytest.approx(5.0)
    assert Record(1, 0.5, 0.5).tpot_s is None
