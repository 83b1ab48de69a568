"""Dashboard queries over history rows: per-recipe tables, cache outcomes, throughput series, filters, exports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from records import T0

from workbench.observe import dashboard
from workbench.observe.dashboard import cache_table, summary_table, throughput_series


def test_summary_percentiles_match_numpy_and_keep_cache_hits_apart(seeded):
    _, rows = seeded
    table = {(t["recipe_key"], t["series"], t["measure"]): t for t in summary_table(rows)}
    misses = [r for r in rows if r["recipe_key"] == "aaaa1111" and r["cache"] == "miss"]
    for measure, field in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("E2E", "e2e_s"), ("Queue", "queue_s")):
        values = np.array([r[field] for r in misses]) * 1000
        entry = table[("aaaa1111", "model", measure)]
        assert entry["n"] == 40
        assert entry["mean_ms"] == pytest.approx(values.mean())
        for q in (50, 90, 95, 99):
            assert entry[f"p{q}_ms"] == pytest.approx(np.percentile(values, q))
    gaps = np.concatenate([np.diff(r["token_times"]) for r in misses]) * 1000
    itl = table[("aaaa1111", "model", "ITL")]
    assert itl["n"] == 40 * 4 and itl["p90_ms"] == pytest.approx(np.percentile(gaps, 90))
    hits = table[("aaaa1111", "cache hit", "E2E")]
    hit_e2e = np.array([r["e2e_s"] for r in rows if r["cache"] != "miss"]) * 1000
    assert hits["n"] == 6 and hits["p50_ms"] == pytest.approx(np.percentile(hit_e2e, 50))
    # The hits' sub-millisecond latencies never reach the model's figures.
    assert table[("aaaa1111", "model", "TTFT")]["p50_ms"] > 100 > hits["p99_ms"]
    assert ("bbbb2222", "cache hit", "E2E") not in table
    assert table[("bbbb2222", "model", "TPOT")]["p50_ms"] == pytest.approx(12.0)


def test_cache_table_counts_outcomes_per_recipe(seeded):
    _, rows = seeded
    by_key = {c["recipe_key"]: c for c in cache_table(rows)}
    assert by_key["aaaa1111"] == {"recipe": "recipe aaaa1111", "recipe_key": "aaaa1111", "requests": 46,
                                  "model": 40, "exact": 5, "semantic": 1, "hit_rate": pytest.approx(6 / 46)}
    assert by_key["bbbb2222"]["hit_rate"] == 0.0
    assert dashboard.cache_hit_rate(rows) == pytest.approx(6 / 86)
    assert dashboard.cache_hit_rate([]) is None


def test_throughput_counts_model_tokens_per_bucket():
    rows = [dict(recipe_key="k", recipe_label="k", started_at=T0 + s, queue_s=0.0, e2e_s=1.0, new_tokens=n,
                 cache=c) for s, n, c in ((0, 10, "miss"), (3, 20, "miss"), (12, 30, "miss"), (13, 99, "exact"))]
    series = throughput_series(rows, bucket_s=10)
    assert [(s["t"] - T0, s["tokens_per_s"], s["requests_per_s"]) for s in series] == [
        (0, pytest.approx(3.0), pytest.approx(0.2)), (10, pytest.approx(3.0), pytest.approx(0.1))]
    assert throughput_series([r for r in rows if r["cache"] != "miss"]) == []
    assert dashboard.bucket_seconds(60) == 5 and dashboard.bucket_seconds(86400) == 3600


def test_filters_and_exports(seeded):
    _, rows = seeded
    assert {r["recipe_key"] for r in dashboard.filter_rows(rows, ["bbbb2222"])} == {"bbbb2222"}
    assert {r["origin"] for r in dashboard.filter_rows(rows, origins=["cli"])} == {"cli"}
    assert len(dashboard.filter_rows(rows, since=T0 + 50)) == 6
    csv_text = dashboard.rows_csv(rows)
    lines = csv_text.splitlines()
    assert lines[0].startswith("id,recipe_key,") and len(lines) == len(rows) + 1
    doc = json.loads(dashboard.rows_json(rows, window="All time"))
    assert doc["window"] == "All time" and len(doc["requests"]) == len(rows)
    assert doc["requests"][0]["token_times"] == rows[0]["token_times"]
    assert {s["measure"] for s in doc["summary"]} >= {"TTFT", "TPOT", "E2E"}
