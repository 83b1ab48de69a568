"""The Frontier page, driven with AppTest on the tiny model: measure a small grid, see the frontier and the
sentence, load a recipe into the sidebar; a second visit measures nothing (everything is stored)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apps import TIMEOUT_S, run_until
from streamlit.testing.v1 import AppTest

from workbench import frontier as sweep
from workbench.recipe import Recipe
from workbench.ui import frontier, shared, state

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "frontier.py")


@pytest.fixture
def small_grid(tmp_path, monkeypatch, own_home):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"blocks": [{"dtype": ["fp32"], "prune": [{"method": "none"},
                                                                         {"method": "layers", "ratio": 0.5}]},
                                           {"dtype": ["int8"], "backend": ["no-such-backend"]}]}))
    monkeypatch.setenv(sweep.GRID_ENV, str(path))
    return path


def page(model_dir) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT_S)
    at.session_state[state.RECIPE] = Recipe(model=str(model_dir), device="cpu")
    return at


def set_fast(at: AppTest) -> None:
    for key, value in ((frontier.ROUNDS, 1), (frontier.RUNS, 1), (frontier.TOKENS, 4), (frontier.EVAL_TOKENS, 32),
                       (frontier.QA_LIMIT, 2), (frontier.AGREEMENT_PROMPTS, 2), (frontier.AGREEMENT_TOKENS, 4)):
        at.number_input(key=key).set_value(value)
    at.run()


def test_frontier_page_measures_the_grid_and_loads_a_recipe(tiny_model_dir, small_grid):
    at = page(tiny_model_dir)
    at.run()
    assert not at.exception and not at.error
    assert any("Nothing measured" in i.value for i in at.info)
    assert any("Skipped" in c.value and "no-such-backend" in c.value for c in at.caption)
    set_fast(at)
    assert any("2 item(s) to measure" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Start").click().run()
    assert not at.exception
    job = shared.job_registry().jobs("frontier:")[-1]
    try:
        run_until(at, lambda a: any("0 item(s) to measure" in c.value for c in a.caption), timeout_s=480)
    except BaseException:  # say where the job stood
        print(f"frontier job: running={job.running} error={job.error!r} step={job.step}/{job.total} "
              f"metrics={job.metrics!r}")
        raise
    assert any("recipe within" in m.value for m in at.markdown)
    assert not at.error
    assert len(at.get("plotly_chart")) == 1
    table = at.dataframe[-1].value.to_dict("records")
    assert [r["speed-up"] for r in table][0] == 1.0 and len(table) == 2
    assert all(r["decode tok/s"] > 0 for r in table) and any(r["frontier"] for r in table)
    # Choose the pruned recipe and load it into the sidebar's controls.
    keys = [r.key() for r in sweep.check_grid(sweep.load_grid(model=str(tiny_model_dir), device="cpu"))[0]]
    at.selectbox(key=frontier.PICK).set_value(keys[1]).run()
    next(b for b in at.button if b.label == "Load into the sidebar").click().run()
    assert not at.exception
    assert at.session_state[state.PRUNE_METHOD] == "layers" and at.session_state[state.PRUNE_RATIO] == 50
    assert any("Loaded into the sidebar" in c.value for c in at.caption)
    # Everything is stored: a new visit has nothing to measure.
    again = page(tiny_model_dir)
    again.run()
    set_fast(again)
    assert any("0 item(s) to measure" in c.value for c in again.caption)
    assert next(b for b in again.button if b.label == "Start").disabled


def test_another_machines_results_are_shown_apart(tiny_model_dir, small_grid, monkeypatch):
    recipes = sweep.load_grid(model=str(tiny_model_dir), device="cpu")
    real = sweep.fingerprint()
    monkeypatch.setattr(sweep, "fingerprint", lambda: {**real, "cpu": "Elsewhere CPU 9000"})

    def measure(recipe, settings, **kw):
        return {"speed": {"decode_tok_s": 5.0, "ttft_ms": 1.0, "tpot_ms": 1.0, "e2e_ms": 1.0, "peak_rss_mb": 1.0},
                "quality": {"qa_accuracy": 0.5, "agreement": 1.0, "perplexity": 9.0}, "model": {"weight_bytes": 10}}

    sweep.run_sweep(recipes, sweep.SweepSettings(rounds=1), measure=measure)
    monkeypatch.setattr(sweep, "fingerprint", lambda: real)
    at = page(tiny_model_dir)
    at.run()
    assert not at.exception
    assert any("another machine" in e.label and "Elsewhere CPU 9000" in e.label for e in at.expander)
    assert any("Nothing measured" in i.value for i in at.info)  # not mixed into this machine's chart
