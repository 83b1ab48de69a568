"""The Roofline & predictor page: this machine's figures, the runtimes measured against their bound (on the tiny
model here), and the predictor's chart of shipped configs, this machine against accelerators."""

from __future__ import annotations

from pathlib import Path

import pytest
from apps import run_until
from streamlit.testing.v1 import AppTest

from workbench import frontier, machine, roofline
from workbench.recipe import Recipe
from workbench.ui import roofline as page

PAGE = Path(__file__).resolve().parents[2] / "pages" / "roofline.py"


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The page inside a navigation of its own (app.py lists its pages), in a home whose machine is measured."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    machine.roofline(size_bytes=64 << 20, matmul_n=256)
    entry = tmp_path / "app.py"
    entry.write_text("import streamlit as st\n"
                     f"st.navigation([st.Page({str(PAGE)!r}, title='Roofline & predictor')]).run()\n")
    return AppTest.from_file(str(entry), default_timeout=300)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_the_page_shows_the_machine_and_predicts_the_shipped_models(app):
    at = app.run()
    assert not at.exception
    shown = metrics(at)
    assert shown["Memory read bandwidth"].endswith("GB/s") and shown["fp32 matmul peak"].endswith("GFLOP/s")
    assert "Not measured on this machine yet" in " ".join(c.value for c in at.caption)
    chart = at.get("plotly_chart")
    assert len(chart) == 1  # the predictor's (no runtime measured yet)
    table = at.dataframe[0].value
    assert set(table["Model"]) >= {"SmolLM2-135M", "Qwen2.5-0.5B"}
    assert {"this machine (bound)", "NVIDIA H100 SXM (bound, estimate)"} <= set(table["Where"])
    at.multiselect(key=page.MODELS_KEY).set_value(["phi-3-mini"]).run()
    assert set(at.dataframe[0].value["Model"]) == {"Phi-3-mini-4k"}
    at.text_input(key=page.PATH_KEY).input("nobody/not-cached").run()
    assert not at.exception and "huggingface-cli download" in at.warning[0].value
    assert "No frontier sweep with the default settings" in " ".join(c.value for c in at.caption)


def test_the_frontier_measured_here_is_drawn_against_the_prediction(app):
    print_ = frontier.fingerprint()
    for dtype, tok_s in (("q4_0", 80.0), ("q8_0", 60.0)):
        record = frontier.new_record(Recipe(runtime="llama.cpp", device="cpu", dtype=dtype), print_,
                                     frontier.fingerprint_id(print_), frontier.SweepSettings())
        record["rounds"] = [{"decode_tok_s": tok_s, "prompt_tokens": 30}]
        frontier.save_record(record)
    at = app.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2  # the predictor's and the frontier check's
    table = at.dataframe[-1].value.set_index("Recipe")
    assert table["Measured tok/s"].to_dict() == {"llama.cpp q4_0": 80.0, "llama.cpp q8_0": 60.0}
    assert table["Same-run prediction"]["llama.cpp q4_0"] == "basis"
    assert float(table["Same-run prediction"]["llama.cpp q8_0"]) > 0


def test_re_measure_measures_the_machine_again(app):
    at = app.run()
    before = machine.cached_roofline()["measured_at"]
    next(b for b in at.button if b.label.startswith("Re-measure")).click().run()
    assert not at.exception
    assert machine.cached_roofline()["measured_at"] > before


def test_measuring_the_runtimes_draws_achieved_against_bound_with_a_sentence_each(app, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(page, "MEASURED_MODEL", str(tiny_model_dir))
    monkeypatch.setattr(page, "MEASURED_CONFIG", str(tiny_model_dir))
    at = app.run()
    next(b for b in at.button if b.label.startswith("Measure the runtimes")).click().run()
    assert not at.exception
    run_until(at, lambda a: len(a.get("plotly_chart")) == 2)
    report = roofline.cached_efficiency()
    measured = [m for m in report["runtimes"].values() if "problem" not in m]
    assert measured and all(m["achieved_tok_s"] > 0 for m in measured)
    text = " ".join(m.value for m in at.markdown)
    for m in measured:
        assert f"**{m['runtime']} {m['dtype']}**" in text and m["limit"] in text
