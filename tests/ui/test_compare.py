"""The Compare page: the summary math on plain data, both recipes on tiny engines, and the page driven with AppTest."""

from __future__ import annotations

import json

import pytest
from apps import run_until, tiny_app

from workbench import devices
from workbench.observe.history import HistoryStore
from workbench.recipe import GenerationSettings
from workbench.serving.engine import Engine
from workbench.ui import charts, compare, state

TTFT, TPOT, DECODE, E2E = compare.MEASURES


def answer(ttft_ms, tpot_ms, tok_s, e2e_ms, ids, weight_bytes=1000, label="m"):
    """A side's reply as compare.reply stores it."""
    return {"text": "x", "token_ids": ids, "token_times": [], "error": None, "label": label, "recipe_key": label,
            "weight_bytes": weight_bytes, "backend": "dense fp32",
            "metrics": {"ttft_ms": ttft_ms, "tpot_ms": tpot_ms, "decode_tok_s": tok_s, "e2e_ms": e2e_ms,
                        "new_tokens": len(ids), "prompt_tokens": 5, "finish_reason": "length", "cache": "miss"}}


# The summary math -----------------------------------------------------------------------------------------


def test_speedup_is_a_over_b_for_times_and_b_over_a_for_rates():
    assert compare.speedup(TTFT, 100.0, 50.0) == pytest.approx(2.0)  # B takes half the time: 2× faster
    assert compare.speedup(TPOT, 20.0, 25.0) == pytest.approx(0.8)
    assert compare.speedup(DECODE, 20.0, 30.0) == pytest.approx(1.5)  # B makes 1.5× the tokens per second
    assert compare.speedup(E2E, 300.0, 600.0) == pytest.approx(0.5)
    assert compare.speedup(DECODE, None, 30.0) is None and compare.speedup(TPOT, 20.0, 0.0) is None


def test_speedup_text_reads_faster_slower_or_about_the_same():
    assert compare.speedup_text(2.1) == "2.10× faster"
    assert compare.speedup_text(0.8) == "0.80× — slower"
    assert compare.speedup_text(1.03) == "1.03× — about the same"
    assert compare.speedup_text(None) == "–"


def test_token_agreement_takes_a_as_the_reference_and_pools_prompts():
    assert compare.token_agreement([[1, 2, 3]], [[1, 2, 3]]) == 1.0
    assert compare.token_agreement([[1, 2, 3, 4]], [[1, 2, 9]]) == pytest.approx(0.5)  # B stops early: 2 of A's 4
    assert compare.token_agreement([[1, 2]], [[1, 2, 7, 7]]) == 1.0  # B's extra tokens are past A's answer
    assert compare.token_agreement([[1, 2, 3, 4], [5, 6]], [[1, 0, 3, 4], [0, 0]]) == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        compare.token_agreement([[1]], [[1], [2]])


def test_summary_rows_carry_each_speedup_bytes_and_agreement():
    a = answer(100.0, 20.0, 50.0, 260.0, [1, 2, 3, 4], weight_bytes=540_000_000)
    b = answer(80.0, 10.0, 100.0, 150.0, [1, 2, 3, 9], weight_bytes=135_000_000)
    result = compare.summary(a, b)
    assert result["measures"]["ttft_ms"]["speedup"] == pytest.approx(1.25)
    assert result["measures"]["decode_tok_s"]["speedup"] == pytest.approx(2.0)
    assert result["agreement"] == pytest.approx(0.75) and not result["identical"]
    rows = {r[""]: r for r in compare.summary_rows(result)}
    assert rows["Decode speed (tok/s)"] == {"": "Decode speed (tok/s)", "A": "50.0", "B": "100.0",
                                            "B vs A": "2.00× faster"}
    assert rows["Time to first token (ms)"]["B vs A"] == "1.25× faster"
    assert rows["Weight bytes"]["B vs A"] == "4.00× smaller"
    assert rows["Token agreement (B with A, same position)"]["B"] == "75%"
    bars = {bar["name"]: bar for bar in compare.speedup_bars(result)}
    assert bars["Decode speed"]["ratio"] == pytest.approx(2.0) and bars["Decode speed"]["better"] is True
    assert bars["Fewer weight bytes"]["ratio"] == pytest.approx(4.0)
    level, sentence = compare.verdict(result)
    assert level == "faster" and "B decodes 2.00× faster than A" in sentence and "75% of A's tokens" in sentence


def test_a_slower_b_and_identical_answers_are_said_plainly():
    a = answer(50.0, 10.0, 100.0, 100.0, [4, 5, 6])
    b = answer(100.0, 20.0, 50.0, 200.0, [4, 5, 6])
    level, sentence = compare.verdict(compare.summary(a, b))
    assert level == "slower" and "0.50× A's speed" in sentence and "2.00× as long" in sentence
    assert "token for token the same" in sentence
    one_token = answer(50.0, None, None, 50.0, [4])
    result = compare.summary(one_token, one_token)
    assert result["measures"]["tpot_ms"]["speedup"] is None
    assert compare.verdict(result)[0] == "same"
    assert "Decode speed" not in {bar["name"] for bar in compare.speedup_bars(result)}


def test_live_metrics_follow_the_metric_definitions():
    live = compare.live_metrics([0.1, 0.2, 0.4])
    assert live["ttft_ms"] == pytest.approx(100.0)
    assert live["tpot_ms"] == pytest.approx(150.0)  # (0.4 - 0.1) / (3 - 1)
    assert live["decode_tok_s"] == pytest.approx(2 / 0.3)
    assert compare.live_metrics([0.1])["tpot_ms"] is None
    assert compare.live_metrics([]) == {"new_tokens": 0, "ttft_ms": None, "tpot_ms": None, "decode_tok_s": None}


def test_set_summary_compares_medians_and_pools_agreement():
    side = lambda ttft, tok_s, ids: {"label": "m", "recipe_key": "k", "weight_bytes": 100,  # noqa: E731
                                     "ttft_ms": ttft, "tpot_ms": [v and 1000 / v for v in tok_s], "decode_tok_s": tok_s,
                                     "e2e_ms": [t + 100 for t in ttft], "token_ids": ids}
    result = {"a": side([10.0, 30.0, 20.0], [10.0, 20.0, 30.0], [[1, 2], [3, 4]]),
              "b": side([5.0, 15.0, 10.0], [40.0, None, 60.0], [[1, 2], [3, 0]]),
              "prompts": ["p", "q", "r"], "mode": "sequential", "max_new_tokens": 8, "measured_at": 0.0}
    summary = compare.set_summary(result)
    assert summary["measures"]["ttft_ms"]["a"] == 20.0 and summary["measures"]["ttft_ms"]["b"] == 10.0
    assert summary["measures"]["ttft_ms"]["speedup"] == pytest.approx(2.0)
    assert summary["measures"]["decode_tok_s"]["speedup"] == pytest.approx(50.0 / 20.0)  # None dropped
    assert summary["agreement"] == pytest.approx(3 / 4)
    rows = {r[""]: r for r in compare.summary_rows(summary, ", median")}
    assert "Time to first token (ms, median)" in rows


def test_distribution_figure_has_one_box_per_recipe_and_measure():
    samples = {"A": {"ttft_ms": [10.0, 12.0], "decode_tok_s": [30.0, None]},
               "B": {"ttft_ms": [5.0, 6.0], "decode_tok_s": [50.0, 55.0]}}
    fig = charts.distribution_figure(samples, [("ttft_ms", "TTFT (ms)"), ("decode_tok_s", "tok/s")])
    assert [(t.name, len(t.y)) for t in fig.data] == [("A", 2), ("A", 1), ("B", 2), ("B", 2)]
    assert [t.showlegend for t in fig.data] == [True, False, True, False]


# Both recipes on tiny engines -----------------------------------------------------------------------------


def test_merged_events_interleave_two_requests_until_both_end(tiny_model, history):
    engine = Engine(tiny_model, history)
    try:
        settings = GenerationSettings(max_new_tokens=5, ignore_eos=True)
        handles = [engine.submit("hello", settings), engine.submit("world", settings)]
        seen = [item for item in compare.merged_events(handles, 0.05) if item is not None]
        assert sorted(i for i, _ in seen) == [0] * 5 + [1] * 5
        assert [e.index for i, e in seen if i == 1] == [0, 1, 2, 3, 4]
    finally:
        engine.close()


@pytest.mark.parametrize("mode", [compare.SEQUENTIAL, compare.CONCURRENT])
def test_prompt_set_answers_every_prompt_on_both_and_records_them(tiny_model, history, mode):
    engine = Engine(tiny_model, history)  # the same engine as A and B: it answers each prompt twice
    steps = []
    try:
        result = compare.run_prompt_set((engine, engine), ["one", "two", "three"],
                                        GenerationSettings(max_new_tokens=6, ignore_eos=True), mode,
                                        on_step=lambda i, n, m: steps.append((i, n, m["text"])))
    finally:
        engine.close()
    assert steps[-1] == (3, 3, "Prompt 3 of 3") and result["prompts"] == ["one", "two", "three"]
    for side in compare.SIDES:
        assert len(result[side]["ttft_ms"]) == 3 and all(v > 0 for v in result[side]["ttft_ms"])
        assert all(len(ids) == 6 for ids in result[side]["token_ids"])
    assert compare.set_summary(result)["agreement"] == 1.0  # greedy: the same model repeats itself
    rows = history.recent()
    assert len(rows) == 6 and {r["origin"] for r in rows} == {"compare"}  # the warm-up is not recorded


def test_prompt_set_stops_after_the_current_answers(tiny_model, history):
    engine = Engine(tiny_model, history)
    try:
        result = compare.run_prompt_set((engine, engine), ["one", "two", "three"],
                                        GenerationSettings(max_new_tokens=4), stop=lambda: True)
    finally:
        engine.close()
    assert result["prompts"] == [] and result["a"]["ttft_ms"] == []


# The page, driven with AppTest ----------------------------------------------------------------------------


def compare_app(model_dir, **session):
    at = tiny_app(model_dir, **{state.MAX_NEW_TOKENS: 8, **session})
    at.switch_page("pages/compare.py")
    return at.run()


def pane_captions(at) -> str:
    return " ".join(c.value for c in at.caption)


def summary_table(at) -> dict[str, dict]:
    return {row[""]: row for row in at.dataframe[0].value.to_dict("records")}


def test_compare_defaults_to_the_sidebar_baseline_against_the_sidebar_recipe(tiny_model_dir):
    at = compare_app(tiny_model_dir, **{state.DTYPE: "int8"})
    assert not at.exception
    assert at.title[0].value == "Compare"
    assert at.selectbox(key="compare.a.dtype").value == "fp32"
    assert at.selectbox(key="compare.b.dtype").value == "int8"
    assert at.selectbox(key="compare.b.backend").value == "torch-dynamic"
    shown = pane_captions(at)
    assert "cpu · fp32** · " in shown and "cpu · int8 · torch-dynamic** · " in shown
    assert "backend: PyTorch dynamic int8" in shown
    assert any("never share this machine's CPU cores" in c.value for c in at.caption)  # sequential by default
    assert at.chat_input and not at.chat_input[0].disabled


def test_a_prompt_streams_to_both_panes_then_the_summary(tiny_model_dir, workbench_home):
    at = compare_app(tiny_model_dir, **{state.DTYPE: "int8"})
    before = len([r for r in HistoryStore().recent(limit=10_000) if r["origin"] == "compare"])
    at.chat_input[0].set_value("hello there").run()
    assert not at.exception
    metrics = [(m.label, m.value) for m in at.metric]
    assert [label for label, _ in metrics] == ["TTFT", "TPOT", "Decode tok/s"] * 2
    assert all(float(value.removesuffix(" ms")) > 0 for _, value in metrics)
    captions = [c.value for c in at.caption if "new tokens" in c.value]
    assert len(captions) == 2 and all("TTFT" in c and "8 new tokens" in c for c in captions)
    table = summary_table(at)
    assert set(table) >= {"Time to first token (ms)", "Time per output token (ms)", "Decode speed (tok/s)",
                          "End to end (ms)", "Weight bytes", "Token agreement (B with A, same position)"}
    assert table["Decode speed (tok/s)"]["B vs A"] != "–"
    assert table["Weight bytes"]["B vs A"].endswith("smaller")  # int8 Linear layers against fp32
    assert table["Token agreement (B with A, same position)"]["B"].endswith("%")
    assert any("B decodes" in m.value for m in [*at.success, *at.warning, *at.info])
    figures = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [f["layout"]["title"]["text"] for f in figures]
    assert titles == ["A: per-token latency", "B: per-token latency", "Speed-up of B over A"]
    assert len(figures[0]["data"][0]["y"]) == 7  # 8 tokens: 7 gaps after the first
    rows = [r for r in HistoryStore().recent(limit=10_000) if r["origin"] == "compare"]
    assert len(rows) - before == 2  # one recorded request per side; the warm-ups are not recorded
    assert [r["recipe_label"].split(" · ")[2] for r in rows[-2:]] == ["fp32", "int8"]  # A, then B

    at.run()  # the turn stays, drawn from the session
    assert not at.exception and len(summary_table(at)) == len(table)
    at.chat_input[0].set_value("and again").run()
    assert not at.exception
    assert len([m for m in at.chat_message if m.name == "user"]) == 2


def test_concurrent_mode_warns_that_the_figures_overlap(tiny_model_dir):
    at = compare_app(tiny_model_dir, **{state.DTYPE: "int8", state.COMPARE_MODE: compare.CONCURRENT})
    assert not at.exception
    assert any("share the CPU cores" in w.value for w in at.warning)
    at.chat_input[0].set_value("hello").run()
    assert not at.exception
    assert len([m for m in at.metric if m.label == "TTFT"]) == 2
    assert any("Run concurrently" in c.value for c in at.caption)


def test_a_combination_that_cannot_run_is_a_message_in_its_pane(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(devices, "mps_available", lambda: True)  # a device with no quantization backend
    at = compare_app(tiny_model_dir, **{state.DEVICE: "cpu", "compare.b.device": "mps", "compare.b.dtype": "int4"})
    assert not at.exception
    assert any("no backend runs int4 on mps" in e.value for e in at.error)
    assert any(e.value.startswith("Recipe B cannot run here") for e in at.error)  # outside the closed expander
    assert "cpu · fp32** · " in pane_captions(at)  # A still builds and says so
    assert at.chat_input[0].disabled
    assert any("Both recipes need a ready model" in i.value for i in at.info)


def test_pane_choices_survive_a_visit_to_another_page(tiny_model_dir):
    at = compare_app(tiny_model_dir)
    at.selectbox(key="compare.b.prune_method").set_value("layers").run()
    assert not at.exception and "layers 0.5" in pane_captions(at)
    at.switch_page("pages/chat.py").run()
    assert not at.exception
    at.switch_page("pages/compare.py").run()
    assert not at.exception
    assert at.selectbox(key="compare.b.prune_method").value == "layers"
    reset = next(b for b in at.button if b.label.startswith("Reset"))
    reset.click().run()
    assert not at.exception and at.selectbox(key="compare.b.prune_method").value == "none"


def test_the_prompt_set_runs_in_the_background_and_shows_distributions(tiny_model_dir):
    at = compare_app(tiny_model_dir, **{state.DTYPE: "int8", state.COMPARE_SET_SIZE: 3,
                                        state.COMPARE_SET_TOKENS: 6})
    next(b for b in at.button if b.label == "Run the prompt set").click().run()
    assert not at.exception
    run_until(at, lambda a: any("on 3 prompts" in s.value for s in a.subheader))
    table = summary_table(at)
    assert "Decode speed (tok/s, median)" in table and table["Weight bytes"]["B vs A"].endswith("smaller")
    figures = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec)
               for c in at.get("plotly_chart")}
    boxes = figures["Per prompt, per recipe"]["data"]
    assert len(boxes) == 6 and all(len(box["y"]) == 3 for box in boxes if box["y"] is not None)
    assert [box["name"] for box in boxes] == ["A"] * 3 + ["B"] * 3


def test_models_built_at_once_all_get_their_weights(tiny_model_dir):
    """A and B build on threads of their own; loading must not hand one another's empty (meta) weights."""
    from workbench.recipe import Recipe
    from workbench.ui.shared import ModelSlot

    for _ in range(2):
        slots = [ModelSlot(Recipe(model=str(tiny_model_dir), device="cpu", dtype=dtype))
                 for dtype in ("fp32", "int8", "bf16", "int4")]
        for slot in slots:
            assert slot.wait(120) and slot.ready, slot.error
            assert slot.model.stats.nonzero_params > 0
            slot.release()


def test_the_same_recipe_in_both_panes_is_pointed_out(tiny_model_dir):
    at = compare_app(tiny_model_dir)  # the sidebar recipe is its own baseline: A and B are one model
    assert not at.exception
    assert any("A and B are the same recipe" in i.value for i in at.info)
    at.chat_input[0].set_value("hello").run()  # one engine answers twice, in turn
    assert not at.exception and len([m for m in at.metric if m.label == "TTFT"]) == 2
    assert summary_table(at)["Token agreement (B with A, same position)"]["B"] == "100%"
