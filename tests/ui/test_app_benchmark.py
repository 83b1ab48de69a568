"""The Benchmark page and the sidebar's batch size, driven with AppTest on the tiny model."""

from __future__ import annotations

from apps import run_until, tiny_app

from workbench import bench
from workbench.observe.history import HistoryStore
from workbench.ui import charts, shared, state

def entry(scheduler, batch, throughput, ttft, e2e50, e2e99):
    summary = lambda v: {"n": 4, "mean": v, "p50": v, "p90": v, "p99": v}  # noqa: E731
    return {"scheduler": scheduler, "batch_size": batch, "throughput_tok_s": throughput, "ttft_ms": summary(ttft),
            "e2e_ms": {**summary(e2e50), "p99": e2e99}, "tpot_ms": summary(10.0), "peak_rss_mb": 100.0,
            "batches": {"mean": batch, "max": batch}, "queue_ms": summary(1.0)}


def test_batching_figure_has_one_line_per_measure_and_scheduler():
    entries = [entry("static", 1, 10, 100, 1000, 1200), entry("static", 4, 30, 300, 2000, 2600),
               entry("continuous", 1, 11, 90, 950, 1100), entry("continuous", 4, 35, 200, 1800, 2000)]
    fig = charts.batching_figure(entries)
    names = [t.name for t in fig.data]
    assert names == [f"{m} · {s}" for s in ("static", "continuous") for m in ("TTFT p50", "E2E p50", "E2E p99")]
    static_e2e99 = fig.data[2]
    assert list(static_e2e99.x) == [10, 30] and list(static_e2e99.y) == [1200, 2600]
    assert list(static_e2e99.text) == ["batch 1", "batch 4"]
    assert charts.batching_figure([]).layout.annotations  # an empty sweep says so


def test_tradeoff_names_the_throughput_gained_and_the_latency_paid():
    slow = {**entry("static", 16, 62, 400, 2500, 3000), "tpot_ms": {"n": 4, "p50": 27.0}}
    lines = bench.tradeoff([entry("static", 1, 10, 100, 1000, 1200), slow, entry("static", 4, 25, 100, 270, 300)])
    assert lines == [
        "static, batch 4: 2.5× the tokens per second of batch 1; each token 1.0× slower to come (TPOT p50); "
        "each request 0.27× as long from submit to last token (E2E p50, queueing included).",
        "static, batch 16: 6.2× the tokens per second of batch 1; each token 2.7× slower to come (TPOT p50); "
        "each request 2.5× as long from submit to last token (E2E p50, queueing included).",
    ]


def test_benchmark_page_runs_a_sweep_and_saves_it(tiny_model_dir):
    at = tiny_app(tiny_model_dir)
    at.run()
    at.switch_page("pages/benchmark.py").run()
    assert not at.exception and not at.error
    at.multiselect(key=state.BENCH_BATCH_SIZES).set_value([1, 4])
    at.slider(key=state.BENCH_CONCURRENCY).set_value(4)
    at.number_input(key=state.BENCH_TOKENS).set_value(8)
    at.number_input(key=state.BENCH_RUNS).set_value(1)
    at.run()
    assert any("16 requests of 8 tokens" in c.value for c in at.caption)  # (1 + 1) x 4 users x 2 batch sizes
    before = len(bench.load_sweeps(limit=1000))
    next(b for b in at.button if b.label == "Run benchmark").click().run()
    assert not at.exception
    run_until(at, lambda a: any(s.value == "This sweep" for s in a.subheader))
    assert not at.error
    (table, *_) = at.dataframe
    rows = table.value.to_dict("records")
    assert [r["batch size"] for r in rows] == [1, 4] and all(r["throughput tok/s"] > 0 for r in rows)
    assert rows[0]["ran in batches of (mean)"] == 1 and rows[1]["ran in batches of (mean)"] > 1
    assert any("batch 4:" in m.value and "tokens per second" in m.value for m in at.markdown)
    assert len(at.get("plotly_chart")) >= 1
    saved = bench.load_sweeps(limit=1000)
    assert len(saved) == before + 1 and saved[0]["batch_sizes"] == [1, 4] and saved[0]["concurrency"] == 4
    # The measured requests are in the history with the batch size each one ran in.

    rows = [r for r in HistoryStore().recent(limit=50) if r["origin"] == "bench"]
    assert max(r["batch_size"] for r in rows) > 1


def test_sidebar_batch_size_reaches_the_recipe_and_the_engine(tiny_model_dir):
    at = tiny_app(tiny_model_dir)
    at.run()
    at.select_slider(key=state.BATCH_SIZE).set_value(4).run()
    assert not at.exception
    recipe = at.session_state[state.RECIPE]
    assert recipe.batch_size == 4 and "batch 4" in recipe.label()
    slot = shared.model_slot(recipe, False)
    assert slot.wait(120) and slot.engine.batch_size == 4
