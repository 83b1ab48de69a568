"""The recipe frontier: grids, resume (only what is missing is measured), the Pareto set, machines kept apart."""

from __future__ import annotations

import json

import pytest

from workbench import frontier
from workbench.recipe import PruneSpec, Recipe


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))


def grid(model_dir) -> list[Recipe]:
    model = str(model_dir)
    return [Recipe(model=model, device="cpu"), Recipe(model=model, device="cpu", dtype="bf16"),
            Recipe(model=model, device="cpu", prune=PruneSpec("layers", 0.5))]


class StubMeasure:
    """Counts calls; speed and quality follow from the recipe so the report can be checked."""

    def __init__(self, stop_after: int | None = None):
        self.calls: list[tuple[str, bool, bool]] = []
        self.stop_after = stop_after

    def stop(self) -> bool:
        return self.stop_after is not None and len(self.calls) >= self.stop_after

    def __call__(self, recipe, settings, *, with_quality, baseline_tokens, is_baseline, stop=None, progress=None):
        self.calls.append((recipe.key(), with_quality, baseline_tokens is not None))
        fast = {"fp32": 10.0, "bf16": 12.0}[recipe.dtype] * (2 if recipe.prune.method == "layers" else 1)
        speed = {"decode_tok_s": fast, "ttft_ms": 100.0 / fast, "tpot_ms": 1000 / fast, "e2e_ms": 1.0,
                 "peak_rss_mb": 100.0, "measured_at": 0.0}
        q = None
        if with_quality:
            q = {"perplexity": 10.0, "qa_accuracy": 0.3 if recipe.prune.method == "layers" else 0.6,
                 "agreement": 1.0 if is_baseline else 0.8}
            if is_baseline:
                q["greedy_tokens"] = [[1, 2, 3]]
        return {"speed": speed, "quality": q, "model": {"weight_bytes": 1000, "backend": "stub"}}


def test_resume_measures_only_what_is_missing(tiny_model_dir):
    recipes = grid(tiny_model_dir)
    settings = frontier.SweepSettings(rounds=2, runs=1)
    first = StubMeasure(stop_after=4)
    out = frontier.run_sweep(recipes, settings, measure=first, stop=first.stop)
    assert out["stopped"] and out["measured"] == 4
    # Interleaved: every recipe's round 1 (with quality, the baseline first), then round 2.
    keys = [r.key() for r in recipes]
    assert [c[0] for c in first.calls] == keys + keys[:1]
    assert [c[1] for c in first.calls] == [True, True, True, False]
    assert first.calls[1][2] and first.calls[2][2]  # the others were given the baseline's greedy tokens

    second = StubMeasure()
    out = frontier.run_sweep(recipes, settings, measure=second)
    assert [c[0] for c in second.calls] == keys[1:]  # only the two missing round-2 items
    assert not any(c[1] for c in second.calls)  # quality is stored already
    assert out["measured"] == 2 and not out["stopped"] and all(r["rounds"] == 2 for r in out["recipes"])

    third = StubMeasure()
    frontier.run_sweep(recipes, settings, measure=third)
    assert third.calls == []  # nothing missing

    more = StubMeasure()
    frontier.run_sweep(recipes, frontier.SweepSettings(rounds=3, runs=1), measure=more)
    assert [c[0] for c in more.calls] == keys  # one more round each, the stored ones kept

    stale = StubMeasure()
    frontier.run_sweep(recipes, frontier.SweepSettings(rounds=1, runs=2), measure=stale)
    assert [c[0] for c in stale.calls] == keys and all(c[1] for c in stale.calls)  # other settings: again


def test_a_failing_recipe_is_reported_and_not_stored(tiny_model_dir):
    recipes = grid(tiny_model_dir)
    stub = StubMeasure()

    def measure(recipe, settings, **kw):
        if recipe.dtype == "bf16":
            raise RuntimeError("no bf16 kernel")
        return stub(recipe, settings, **kw)

    out = frontier.run_sweep(recipes, frontier.SweepSettings(rounds=2, runs=1), measure=measure)
    assert [f["reason"] for f in out["failed"]] == ["RuntimeError: no bf16 kernel"]
    assert len(stub.calls) == 4 and recipes[1].label() in out["missing"]


def test_report_rows_speedups_and_sentence(tiny_model_dir):
    recipes = grid(tiny_model_dir)
    out = frontier.run_sweep(recipes, frontier.SweepSettings(rounds=1, runs=1), measure=StubMeasure(), within=5)
    by_dtype = {(r["recipe"]["dtype"], r["recipe"]["prune"]["method"]): r for r in out["recipes"]}
    assert out["recipes"][0]["baseline"] and out["recipes"][0]["speedup"] == 1.0
    assert by_dtype[("bf16", "none")]["speedup"] == pytest.approx(1.2)
    assert by_dtype[("fp32", "layers")]["speedup"] == pytest.approx(2.0)
    assert by_dtype[("fp32", "layers")]["qa_delta"] == pytest.approx(-30)
    # bf16 keeps QA (60%) at 1.2x; layer pruning is faster but loses 30 points.
    assert out["within"]["recipe_key"] == recipes[1].key()
    assert "1.20×" in out["within"]["sentence"] and "+0 points" in out["within"]["sentence"]
    wide = frontier.report(frontier.check_grid(recipes)[0], frontier.SweepSettings(rounds=1, runs=1), within=40)
    assert wide["within"]["recipe_key"] == recipes[2].key()
    assert [f["key"] for f in out["frontier"]] == [recipes[1].key(), recipes[2].key()]
    json.dumps(out)  # the CLI prints it as it is


def row(key, speedup, qa, baseline=False):
    return {"key": key, "label": key, "speedup": speedup, "qa_points": qa, "baseline": baseline, "quality": {}}


def test_pareto_set_of_a_hand_made_table():
    rows = [row("base", 1.0, 60, True), row("a", 1.5, 60), row("b", 1.2, 55), row("c", 3.0, 40), row("d", 2.0, 58),
            row("e", 3.0, 35), row("f", 0.9, 61), row("g", 2.0, 58), row("h", None, 70)]
    # base is beaten by a (faster, as good); b by a; e by c; d and g tie (neither beats the other); h has no speed.
    assert [r["key"] for r in frontier.pareto(rows)] == ["f", "a", "d", "g", "c"]
    assert frontier.pareto([]) == []


def test_fastest_within_n_points():
    rows = [row("base", 1.0, 60, True), row("a", 1.5, 57), row("c", 3.0, 40)]
    sentence, key = frontier.fastest_within(rows, 5)
    assert key == "a" and sentence.startswith("Fastest recipe within 5 points of the baseline's QA accuracy 60%: a")
    assert frontier.fastest_within(rows, 25)[1] == "c"
    sentence, key = frontier.fastest_within(rows, 1)
    assert key == "base" and sentence.startswith("No recipe within 1 points")
    assert frontier.fastest_within([row("a", 2.0, 50)], 5) == (
        "The baseline has no measured quality yet: nothing to compare with.", None)


def test_another_machines_results_are_kept_apart(tiny_model_dir, monkeypatch):
    recipes = grid(tiny_model_dir)
    settings = frontier.SweepSettings(rounds=1, runs=1)
    real = frontier.fingerprint()
    other = {**real, "cpu": "Some Other CPU", "libraries": {**real["libraries"], "torch": "0.0-other"}}
    monkeypatch.setattr(frontier, "fingerprint", lambda: other)
    frontier.run_sweep(recipes, settings, measure=StubMeasure())
    monkeypatch.setattr(frontier, "fingerprint", lambda: real)

    here = StubMeasure()
    out = frontier.run_sweep(recipes[:2], settings, measure=here)
    assert len(here.calls) == 2  # nothing measured elsewhere counts as measured here
    assert {r["key"] for r in out["recipes"]} == {r.key() for r in recipes[:2]}
    (apart,) = out["other_machines"]
    assert apart["machine"]["cpu"] == "Some Other CPU" and "Some Other CPU" in apart["described"]
    assert len(apart["recipes"]) == 3 and apart["machine_id"] != out["machine_id"]


def test_grid_blocks_expand_and_bad_grids_say_why(tmp_path, tiny_model_dir):
    data = {"model": "embedded", "device": "cpu", "blocks": [
        {"runtime": "transformers", "dtype": ["fp32", "bf16"], "prune": [{"method": "none"}, {"method": "2:4"}]},
        {"dtype": ["fp32"]},  # a repeat of the first recipe: dropped
    ]}
    recipes = frontier.expand(data, model=str(tiny_model_dir))
    assert [(r.dtype, r.prune.method) for r in recipes] == [("fp32", "none"), ("fp32", "2:4"), ("bf16", "none"),
                                                            ("bf16", "2:4")]
    assert all(r.model == str(tiny_model_dir) for r in recipes)
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"blocks": [{"dtype": ["fp33"]}]}))
    with pytest.raises(frontier.GridError, match="block 1: unknown dtype 'fp33'"):
        frontier.load_grid(path)
    path.write_text("{")
    with pytest.raises(frontier.GridError, match="not valid JSON"):
        frontier.load_grid(path)
    with pytest.raises(frontier.GridError, match="keys among"):
        frontier.expand({"blocks": [{"dtypes": ["fp32"]}]})
    assert len(frontier.load_grid()) >= 5  # the default grid reads


def test_recipes_that_cannot_run_here_are_skipped_with_the_reason(tiny_model_dir):
    model = str(tiny_model_dir)
    runnable, skipped = frontier.check_grid([Recipe(model=model, device="cpu"),
                                             Recipe(model=model, device="cpu", dtype="int8", backend="nope")])
    assert [r.dtype for r in runnable] == ["fp32"]
    assert skipped[0]["reason"].startswith("--backend: ")
    rows = frontier.grid_rows(runnable)
    assert frontier.recipes_from_rows(rows + [{}], model, "cpu") == [Recipe(model=model, device="cpu")]


def test_sweep_of_the_tiny_model_end_to_end(tiny_model_dir, monkeypatch):
    """The real measure on the tiny model: figures stored, a second run measures nothing."""
    model = str(tiny_model_dir)
    recipes = [Recipe(model=model, device="cpu"), Recipe(model=model, device="cpu", prune=PruneSpec("layers", 0.5))]
    settings = frontier.SweepSettings(rounds=1, runs=1, warmup=0, max_new_tokens=4, max_eval_tokens=64, qa_limit=2,
                                      agreement_tokens=4, agreement_prompts=2)
    calls = []
    real = frontier.measure_recipe

    def counting(recipe, *args, **kwargs):
        calls.append(recipe.key())
        return real(recipe, *args, **kwargs)

    steps = []
    out = frontier.run_sweep(recipes, settings, measure=counting, on_step=lambda i, n, m: steps.append((i, n, m)))
    assert len(calls) == 2 and out["measured"] == 2
    base, pruned = out["recipes"] if out["recipes"][0]["baseline"] else out["recipes"][::-1]
    assert base["speedup"] == 1.0 and pruned["speedup"] > 0
    assert base["decode_tok_s"] > 0 and base["weight_bytes"] > pruned["weight_bytes"] > 0
    assert base["perplexity"] > 1 and base["agreement"] == 1.0 and 0 <= pruned["agreement"] <= 1
    assert base["peak_rss_mb"] > 0 and base["ttft_ms"] > 0
    low, high = base["quality"]["qa_accuracy_ci"]  # quality's intervals pass through
    assert low <= base["qa_accuracy"] <= high and "agreement_ci" in pruned["quality"]
    assert steps[-1][0] == steps[-1][1] == 2 and steps[-1][2]["eta_s"] == 0
    again = []
    frontier.run_sweep(recipes, settings, measure=lambda r, *a, **k: again.append(r) or real(r, *a, **k))
    assert again == []
