"""The What changed page: the build against its baseline, the measurement side by side, and its plain words."""

from __future__ import annotations

import json

import pytest
from apps import (QUESTION, assistant_replies, build_table, click, new_app, reply_caption, run_until, sidebar_text,
                  tiny_app)

from workbench.ui import changes, charts, state


# Comparison figures, from plain data ----------------------------------------------------------------------


def result(recipe: dict, baseline: dict) -> dict:
    return {"recipe_key": "k", "label": "m · cpu · int8", "baseline_label": "m · cpu · fp32", "device": "cpu",
            "measured_at": 0.0, "quick": True, "runs": 3, "max_new_tokens": 64, "eval_tokens": 512, "qa_n": 10,
            "prompts_n": 10, "recipe": recipe, "baseline": baseline}


SLOWER = result(
    {"decode_tok_s": 41.0, "ttft_ms": 60.0, "tpot_ms": 24.4, "bandwidth_gb_s": 5.5, "weight_bytes": 135_000_000,
     "perplexity": 12.0, "qa_accuracy": 0.3, "agreement": 0.8},
    {"decode_tok_s": 50.0, "ttft_ms": 50.0, "tpot_ms": 20.0, "bandwidth_gb_s": 27.0, "weight_bytes": 540_000_000,
     "perplexity": 10.0, "qa_accuracy": 0.4, "agreement": 1.0},
)


def test_a_slower_recipe_is_called_slower_in_plain_words():
    level, sentence = changes.verdict(SLOWER)
    assert level == "slower" and "0.82× — slower than baseline on this CPU" in sentence
    rows = {r[""]: r for r in changes.measured_rows(SLOWER, changes.device_word("cpu"))}
    assert rows["Decode speed (tok/s, median and range)"]["Change"] == "0.82× — slower than baseline on this CPU"
    assert rows["Weight bytes"]["Change"] == "4.00× smaller"
    assert rows["Perplexity (lower is better)"]["Change"] == "+20.0% — worse"
    assert rows["QA accuracy"]["Change"] == "-10 points — worse"


def test_ratios_are_recipe_over_baseline_coloured_by_better_or_worse():
    by_name = {r["name"]: r for r in changes.ratios(SLOWER)}
    assert set(by_name) == {"Decode speed", "Time to first token", "Weight bytes", "Perplexity", "QA accuracy"}
    assert by_name["Decode speed"]["ratio"] == pytest.approx(0.82) and by_name["Decode speed"]["better"] is False
    assert by_name["Weight bytes"]["ratio"] == pytest.approx(0.25) and by_name["Weight bytes"]["better"] is True
    assert by_name["Perplexity"]["better"] is False and by_name["Time to first token"]["better"] is False
    zero_qa = result({**SLOWER["recipe"], "qa_accuracy": 0.0}, {**SLOWER["baseline"], "qa_accuracy": 0.0})
    assert "QA accuracy" not in {r["name"] for r in changes.ratios(zero_qa)}  # no ratio to a zero
    fig = charts.ratio_figure(changes.ratios(SLOWER))
    assert {t.name for t in fig.data} == {"better than baseline", "worse than baseline"}


def test_the_range_of_runs_shows_and_a_busy_machine_is_flagged():
    spread = result({**SLOWER["recipe"], "decode_tok_s_range": (39.0, 43.5)}, SLOWER["baseline"])
    rows = {r[""]: r for r in changes.measured_rows(spread)}
    assert rows["Decode speed (tok/s, median and range)"]["This recipe"] == "41.0 (39.0–43.5)"
    assert rows["Decode speed (tok/s, median and range)"]["Baseline"] == "50.0"
    assert changes.busy_note({**SLOWER, "load_before": 0.3, "cpus": 2}) is None
    assert "load 3.9 on 2 cores" in changes.busy_note({**SLOWER, "load_before": 3.9, "cpus": 2})


def test_about_the_same_speed_says_so():
    same = result({**SLOWER["recipe"], "decode_tok_s": 49.0}, SLOWER["baseline"])
    level, sentence = changes.verdict(same)
    assert level == "same" and "about the same" in sentence


# The What changed page ------------------------------------------------------------------------------------


def test_what_changed_renders_and_measures_side_by_side(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.DTYPE: "int8"})
    at.switch_page("pages/what_changed.py").run()
    assert not at.exception
    assert at.title[0].value == "What changed"
    table = build_table(at)
    assert table["Kernel path"]["This recipe"].startswith("PyTorch dynamic int8")
    assert table["Kernel path"]["Baseline"] == "dense fp32 (PyTorch CPU)"
    assert table["Weight bytes"]["Change"].endswith("smaller")
    assert any("Why a smaller model can still be slower" in e.label for e in at.expander)

    at.checkbox(key=state.QUICK_MEASURE).check()
    click(at, "Measure speed and quality").run()
    assert not at.exception
    run_until(at, lambda a: len(a.dataframe) == 2)
    measured = {r[""]: r for r in at.dataframe[1].value.to_dict("records")}
    for row in ("Decode speed (tok/s, median and range)", "Time to first token (ms, median)", "Weight bytes",
                "Perplexity (lower is better)", "QA accuracy"):
        assert measured[row]["Baseline"] != "–" and measured[row]["This recipe"] != "–"
    assert any("Measured on this machine at" in c.value and "QA on 10 questions" in c.value for c in at.caption)
    verdicts = [m.value for m in [*at.warning, *at.success, *at.info] if "Decode speed" in m.value]
    assert verdicts and ("than baseline on this CPU" in verdicts[0] or "about the same" in verdicts[0])
    ratio_chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {bar["y"][0] for bar in ratio_chart["data"]} <= {"Decode speed", "Time to first token", "Weight bytes",
                                                           "Perplexity", "QA accuracy"}

    at.run()  # the results persist across reruns, kept under the recipe's key
    assert len(at.dataframe) == 2 and len(at.session_state[state.MEASUREMENTS]) == 1


# The real embedded model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_recipe_from_the_sidebar_answers_a_chat_message():
    at = new_app(**{state.CACHE_ENABLED: False}).run()  # the model answers, not the cache
    at.selectbox(key=state.DTYPE).set_value("int8").run()
    assert not at.exception
    assert "· cpu · int8 · torch-dynamic" in sidebar_text(at) and "backend: PyTorch dynamic int8" in sidebar_text(at)
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    assert reply.markdown[0].value.strip()
    assert "int8" in reply_caption(reply) and "TTFT" in reply_caption(reply)
