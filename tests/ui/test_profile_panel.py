"""The profiler panel in-process (AppTest) on the tiny model: the button profiles a turn and the page shows the
stacked bar, the module and op tables and where the trace is."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from workbench.ui import profile_panel

TIMEOUT_S = 180


def panel_script(model_dir: str) -> None:
    import streamlit as st

    from workbench import runtimes
    from workbench.recipe import Recipe
    from workbench.ui import profile_panel

    @st.cache_resource
    def model(path: str):
        return runtimes.build(Recipe(model=path, device="cpu"))

    profile_panel.draw_panel(model(model_dir))


def test_profile_one_turn_shows_the_parts_tables_and_trace(tiny_model_dir, own_home):
    at = AppTest.from_function(panel_script, kwargs={"model_dir": str(tiny_model_dir)}, default_timeout=TIMEOUT_S)
    at.run()
    assert not at.exception
    assert not at.session_state[profile_panel.RESULTS]  # nothing is profiled before the button
    at.number_input(key=profile_panel.MAX_NEW_TOKENS).set_value(8)
    at.button(key=profile_panel.BUTTON).click().run()
    assert not at.exception and not at.error
    (report,) = at.session_state[profile_panel.RESULTS].values()
    assert report["new_tokens"] == 8 and abs(report["unaccounted_ms"]) <= 0.10 * report["e2e_ms"]
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    figure = json.loads(charts[0].proto.spec)
    names = [trace["name"] for trace in figure["data"]]
    assert names[-1] == "unaccounted" and "prefill (prompt forward)" in names
    assert len(at.dataframe) == 2  # per module kind, top ops
    modules = set(at.dataframe[0].value["module"])
    assert {"attention", "mlp", "lm_head", "norms", "python/dispatch"} <= modules
    text = " ".join(m.value for m in at.markdown)
    assert "ui.perfetto.dev" in text and report["trace"] in text and Path(report["trace"]).exists()
    assert any("tensorboard --logdir" in c.value for c in at.code)
    at.run()  # a rerun redraws the kept profile without profiling again
    assert len(at.get("plotly_chart")) == 1 and at.session_state[profile_panel.RESULTS] == {report["recipe_key"]:
                                                                                              report}
