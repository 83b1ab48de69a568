"""The Benchmark page's load test: request rates (Poisson arrivals), TTFT / TPOT objectives and goodput, against a
server on loopback (``tests/servers.py``), driven with AppTest."""

from __future__ import annotations

import json
import math

import pytest
from apps import new_app, run_until
from servers import tiny_server  # noqa: F401 (a fixture)

from workbench.recipe import RecipeError
from workbench.ui import benchmark, charts, state


def load_entry(rate, p50, p99, batch=1, good=None):
    percentiles = {"n": 3, "mean": p50, "p50": p50, "p90": p99, "p95": p99, "p99": p99}
    return {"batch_size": batch, "scheduler": "continuous",
            "load": {"mode": "poisson", "request_rate": rate, "achieved_rate": 1.9,
                     "requests": {"scheduled": 3, "sent": 3, "finished": 3, "failed": 0, "cut": 0},
                     "ttft_ms": percentiles, "tpot_ms": percentiles, "e2e_ms": percentiles,
                     "throughput_tok_s": 50.0, "request_throughput": 2.0, "goodput": good, "errors": []}}


def test_request_rates_are_parsed_and_a_bad_one_names_the_input():
    assert benchmark.parse_rates("") == ()
    assert benchmark.parse_rates("0.5, 2,inf, 2") == (0.5, 2.0, math.inf)
    for bad in ("fast", "0", "-1"):
        with pytest.raises(RecipeError) as caught:
            benchmark.parse_rates(bad)
        assert caught.value.field == "request-rate"


def test_rate_figure_has_ttft_p50_and_p99_per_rate_and_the_load_table_goodput():
    entries = [load_entry(0.5, 40.0, 60.0), load_entry(math.inf, 90.0, 300.0)]
    fig = charts.rate_figure(entries)
    assert [t.name for t in fig.data] == ["TTFT p50", "TTFT p99"]
    assert list(fig.data[0].x) == ["0.5/s", "all at once"] and list(fig.data[1].y) == [60.0, 300.0]
    good = {"ttft_slo_ms": 100.0, "tpot_slo_ms": None, "requests_ok": 2, "share": 2 / 3, "req_s": 1.33}
    (row,) = benchmark.load_rows([load_entry(2.0, 40.0, 60.0, good=good)])
    assert (row["rate"], row["TTFT p99 ms"], row["goodput share"], row["goodput req/s"]) == ("2/s", 60, "67%", 1.33)
    assert charts.rate_figure([]).layout.annotations  # nothing measured: a note


def benchmark_app(url: str, **session):
    at = new_app(**{state.MODEL_CHOICE: state.OTHER_MODEL, state.MODEL_OTHER: url, **session})
    at.switch_page("pages/benchmark.py")
    return at.run()


def test_a_bad_load_setting_is_one_line_and_nothing_runs(tiny_server):
    server, _ = tiny_server
    at = benchmark_app(server.url, **{state.BENCH_RATES: "fast"})
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("Request rate (req/s): not a number of requests per second: 'fast'")
    assert next(b for b in at.button if b.label == "Run benchmark").disabled
    at.text_input(key=state.BENCH_RATES).set_value("2").run()
    at.number_input(key=state.BENCH_TTFT_SLO).set_value(0.0).run()
    assert [e.value for e in at.error] == ["TTFT objective (ms): the TTFT objective must be a number of milliseconds "
                                           "above 0, got 0.0"]


def test_the_benchmark_page_load_tests_a_server_at_two_rates_with_goodput(tiny_server, own_home):
    server, name = tiny_server
    at = benchmark_app(server.url, **{state.BENCH_BATCH_SIZES: [1], state.BENCH_TOKENS: 4, state.BENCH_CONCURRENCY: 4,
                                      state.BENCH_RATES: "20, inf", state.BENCH_NUM_REQUESTS: 3,
                                      state.BENCH_TTFT_SLO: 60_000.0})
    assert not at.exception and not at.error
    assert any("one streamed request to the server" in m.value for m in at.markdown)
    assert any("8 requests of 4 tokens" in c.value for c in at.caption)  # (1 warm-up + 3) x 2 rates
    next(b for b in at.button if b.label == "Run benchmark").click().run()
    run_until(at, lambda a: any(s.value == "This sweep" for s in a.subheader))
    assert not at.error
    rows = at.dataframe[0].value.to_dict("records")
    assert [r["rate"] for r in rows] == ["20/s", "all at once"]
    assert all(r["finished"] == 3 and r["TTFT p99 ms"] >= r["TTFT p50 ms"] > 0 for r in rows)
    assert all(r["goodput share"] == "100%" for r in rows)  # a minute's objective: every request meets it
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert "Time to first token against the request rate" in titles
    assert any(c.value.startswith("Goodput: the finished requests that meet TTFT ≤ 60000 ms") for c in at.caption)
    assert any("Poisson arrivals at 20/s, all at once" in c.value for c in at.caption)
