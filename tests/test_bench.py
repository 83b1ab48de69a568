"""bench.run_bench / sweep on a tiny random model: structure, warm-up excluded, exact lengths, throughput."""

import statistics
import pytest

from workbench import bench
from workbench.latency import summarize
from workbench.observe.history import HistoryStore
from workbench.recipe import GenerationSettings, Recipe, RecipeError

RUNS, WARMUP, TOKENS = 4, 2, 10
SUMMARY_KEYS = {"n", "mean", "p50", "p90", "p99"}


@pytest.fixture(scope="module")
def recipe(tiny_model_dir):
    return Recipe(model=str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="module")
def measured(recipe, tmp_path_factory):
    steps = []
    history = HistoryStore(tmp_path_factory.mktemp("bench-history") / "metrics.sqlite")
    # ignore_eos is left False on purpose: the benchmark must force it.
    entry = bench.run_bench(recipe, GenerationSettings(max_new_tokens=TOKENS), runs=RUNS, warmup=WARMUP,
                            on_step=lambda i, total, m: steps.append((i, total, m)), history=history)
    return entry, steps, history


def test_entry_structure(measured, recipe):
    entry, _, _ = measured
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms"):
        assert SUMMARY_KEYS <= entry[key].keys()
    assert set(entry["decode_tok_s"]) == {"median", "min", "max"}
    assert set(entry["model"]) == {"params", "nonzero_params", "weight_bytes", "build_s", "backend", "threads"}
    assert entry["recipe"] == recipe.to_dict() and entry["recipe_key"] == recipe.key()
    assert entry["batch_size"] == 1 and entry["max_new_tokens"] == TOKENS
    assert entry["peak_rss_mb"] > 0 and entry["bandwidth_gb_s"] > 0


def test_n_equals_runs_and_warmup_is_excluded(measured):
    entry, steps, history = measured
    assert entry["runs"] == RUNS and entry["warmup"] == WARMUP and len(entry["per_run"]) == RUNS
    assert entry["ttft_ms"]["n"] == entry["tpot_ms"]["n"] == entry["e2e_ms"]["n"] == RUNS
    assert entry["itl_ms"]["n"] == RUNS * (TOKENS - 1)
    assert [(i, total) for i, total, _ in steps] == [(i, RUNS + WARMUP) for i in range(1, RUNS + WARMUP + 1)]
    assert [m["phase"] for _, _, m in steps] == ["warmup"] * WARMUP + ["measure"] * RUNS
    # The history holds the measured runs only, as "bench" requests.
    rows = history.recent()
    assert len(rows) == RUNS and {r["origin"] for r in rows} == {"bench"}
    measured_ttft = [m["ttft_ms"] for _, _, m in steps[WARMUP:]]
    assert [r["ttft_ms"] for r in entry["per_run"]] == measured_ttft


def test_every_run_generates_exactly_max_new_tokens(measured):
    entry, steps, history = measured
    assert [r["new_tokens"] for r in entry["per_run"]] == [TOKENS] * RUNS
    assert {r["finish_reason"] for r in entry["per_run"]} == {"length"}
    assert all(m["new_tokens"] == TOKENS for _, _, m in steps)
    assert [r["new_tokens"] for r in history.recent()] == [TOKENS] * RUNS


def test_throughput_is_tokens_over_wall_time(measured):
    entry, _, _ = measured
    assert entry["new_tokens"] == RUNS * TOKENS
    assert entry["throughput_tok_s"] == pytest.approx(entry["new_tokens"] / entry["wall_s"])
    # The wall time covers every measured request end to end, so it is at least the sum of their E2E.
    e2e_total_s = sum(r["e2e_ms"] for r in entry["per_run"]) / 1000
    assert entry["wall_s"] >= e2e_total_s * 0.999
    assert entry["throughput_tok_s"] <= entry["new_tokens"] / (e2e_total_s * 0.999)


def test_summaries_agree_with_the_runs(measured):
    entry, _, _ = measured
    runs = entry["per_run"]
    decode = [r["decode_tok_s"] for r in runs]
    assert entry["decode_tok_s"]["median"] == pytest.approx(statistics.median(decode), rel=1e-3)
    assert entry["decode_tok_s"]["min"] == pytest.approx(min(decode), rel=1e-3)
    assert entry["decode_tok_s"]["max"] == pytest.approx(max(decode), rel=1e-3)
    for key in ("ttft_ms", "e2e_ms", "tpot_ms"):
        expected = summarize([r[key] for r in runs])  # per-run values are already in ms (rounded to µs)
        for stat in ("mean", "p50", "p90", "p99"):
            assert entry[key][stat] == pytest.approx(expected[stat], abs=1e-2)


def test_bad_batch_sizes_and_concurrency_are_refused_before_building(recipe):
    # A missing model would fail the build; the bad input must be refused first.
    with pytest.raises(RecipeError) as info:
        bench.sweep([Recipe(model="/no/such/model", device="cpu")], [1, 0], GenerationSettings())
    assert info.value.field == "batch-size" and "from 1 to 256" in str(info.value)
    with pytest.raises(RecipeError) as info:
        bench.sweep([Recipe(model="/no/such/model", device="cpu")], [1, 4], GenerationSettings(), concurrency=0)
    assert info.value.field == "concurrency"
    with pytest.raises(RecipeError) as info:
        bench.sweep([Recipe(model="/no/such/model", device="cpu")], [4], GenerationSettings(), schedulers=["magic"])
    assert info.value.field == "scheduler" and "continuous" in str(info.value)


@pytest.mark.parametrize("runs, warmup, field", [(0, 1, "runs"), (2, -1, "warmup")])
def test_run_counts_are_checked(recipe, runs, warmup, field):
    with pytest.raises(RecipeError) as info:
        bench.run_bench(recipe, GenerationSettings(), runs=runs, warmup=warmup)
    assert info.value.field == field


def test_sweep_reuses_a_built_model_and_returns_one_entry_per_recipe_and_batch_size(recipe, tiny_model):
    entries = bench.sweep([recipe], [1], GenerationSettings(max_new_tokens=3), runs=1, warmup=0,
                          model=tiny_model)
    assert len(entries) == 1
    assert entries[0]["model"]["build_s"] == tiny_model.stats.to_dict()["build_s"]
    assert entries[0]["per_run"][0]["new_tokens"] == 3


def test_evaluate_gets_the_built_model_after_the_timed_runs(recipe, tiny_model):
    seen = []

    def evaluate(model):
        seen.append((model, len(steps)))
        return {"perplexity": 12.5, "qa_accuracy": 0.25}

    steps = []
    entry = bench.run_bench(recipe, GenerationSettings(max_new_tokens=3), runs=2, warmup=1,
                            on_step=lambda i, total, m: steps.append(i), model=tiny_model, evaluate=evaluate)
    assert entry["quality"] == {"perplexity": 12.5, "qa_accuracy": 0.25}
    assert seen == [(tiny_model, 3)]  # after the warm-up and both measured runs
    (no_eval,) = bench.sweep([recipe], [1], GenerationSettings(max_new_tokens=2), runs=1, warmup=0,
                             model=tiny_model)
    assert "quality" not in no_eval
