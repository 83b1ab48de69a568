"""The Streamlit app, driven in-process with AppTest: pages render, replies stream with metrics, recipes switch.

Fast tests use the tiny local model directory; tests marked slow load the real embedded model.
"""

from __future__ import annotations

import json

import pytest
from apps import QUESTION, assistant_replies, click, new_app, reply_caption, sidebar_text, tiny_app

from workbench.recipe import Recipe
from workbench.serving.results import GenerationResult
from workbench.ui import charts, chat, state
from workbench.ui.shared import ModelSlot

# Pure helpers ---------------------------------------------------------------------------------------------


def test_token_latencies_start_with_ttft_then_gaps():
    assert charts.token_latencies_ms([0.05, 0.07, 0.10]) == pytest.approx([50.0, 20.0, 30.0])
    assert charts.token_latencies_ms([]) == []


def test_token_latency_figure_marks_ttft():
    fig = charts.token_latency_figure([0.05, 0.07, 0.10])
    ttft = [t for t in fig.data if t.name == "TTFT"][0]
    gaps = [t for t in fig.data if t.name == "inter-token gap"][0]
    assert list(ttft.x) == [0] and ttft.y[0] == pytest.approx(50.0)
    assert list(gaps.x) == [1, 2] and list(gaps.y) == pytest.approx([20.0, 30.0])
    assert charts.token_latency_figure([]).data == ()  # empty: a note, no traces


def test_history_figure_one_colour_per_recipe_and_cache_hits_apart():
    rows = [
        {"recipe_key": "a", "recipe_label": "m · cpu · fp32", "started_at": 1.0, "ttft_s": 0.05, "decode_tok_s": 30.0,
         "cache": "miss"},
        {"recipe_key": "b", "recipe_label": "m · cpu · bf16", "started_at": 2.0, "ttft_s": 0.04, "decode_tok_s": 25.0,
         "cache": "miss"},
        {"recipe_key": "a", "recipe_label": "m · cpu · fp32", "started_at": 3.0, "ttft_s": 0.001,
         "decode_tok_s": None, "cache": "exact"},
    ]
    fig = charts.history_figure(rows)
    names = {t.name for t in fig.data}
    assert names == {"m · cpu · fp32", "m · cpu · bf16", "m · cpu · fp32 (cache exact)"}
    fp32 = [t for t in fig.data if t.name == "m · cpu · fp32"]
    assert len(fp32) == 2  # TTFT and tok/s panels
    assert list(fp32[0].x) == [1] and fp32[0].y[0] == pytest.approx(50.0)
    bf16 = [t for t in fig.data if t.name == "m · cpu · bf16"][0]
    assert bf16.marker.color != fp32[0].marker.color


def test_format_metrics_names_every_figure_and_tolerates_missing_ones():
    line = chat.format_metrics(
        {"ttft_ms": 41.2, "tpot_ms": 22.04, "decode_tok_s": 45.37, "prompt_tokens": 12, "new_tokens": 9,
         "finish_reason": "stopped", "cache": "miss"},
        "embedded · cpu · fp32",
    )
    assert line == "TTFT 41 ms · TPOT 22.0 ms · 45.4 tok/s · 12 prompt → 9 new tokens · stopped · embedded · cpu · fp32"
    one_token = chat.format_metrics({"ttft_ms": 30.0, "tpot_ms": None, "decode_tok_s": None, "prompt_tokens": 5,
                                        "new_tokens": 1, "finish_reason": "eos"})
    assert "TPOT – ms" in one_token and "– tok/s" in one_token


def test_assistant_message_keeps_partial_text_and_metrics():
    result = GenerationResult(text="Par", prompt_tokens=7, new_tokens=2, token_times=[0.1, 0.15], ttft_s=0.1,
                              e2e_s=0.15, queue_s=0.0, finish_reason="stopped")
    message = chat.assistant_message(result, "embedded · cpu · fp32")
    assert message["content"] == "Par" and message["metrics"]["finish_reason"] == "stopped"
    assert message["metrics"]["ttft_ms"] == pytest.approx(100.0) and message["token_times"] == [0.1, 0.15]


# The model slot -------------------------------------------------------------------------------------------


def test_model_slot_builds_in_the_background_and_serves(tiny_model_dir):
    slot = ModelSlot(Recipe(model=str(tiny_model_dir), device="cpu"))
    assert slot.wait(120) and slot.ready and not slot.failed, slot.error
    assert (slot.stage, slot.fraction) == ("Ready", 1.0)
    result = slot.engine.generate("hello")
    assert result.new_tokens > 0 and result.ttft_s is not None
    slot.release()
    assert slot.engine is None and not slot.ready


def test_model_slot_reports_a_bad_source_as_one_line(tmp_path):
    slot = ModelSlot(Recipe(model=str(tmp_path / "missing-model"), device="cpu"))
    assert slot.wait(60) and slot.failed and not slot.ready
    assert "no such model directory" in slot.error and "\n" not in slot.error


# The app with the tiny model ------------------------------------------------------------------------------


def test_other_model_without_a_source_asks_for_one():
    at = new_app(**{state.MODEL_CHOICE: state.OTHER_MODEL}).run()
    assert not at.exception
    assert any("Enter a Hugging Face hub id" in i.value for i in at.sidebar.info)
    assert not at.chat_input  # no model, no chat


def test_nonexistent_model_path_shows_an_error_not_a_traceback(tmp_path):
    at = tiny_app(tmp_path / "no-such-model").run()
    assert not at.exception
    assert any("no such model directory or file" in e.value for e in at.error)


def test_directory_without_config_shows_an_error(tmp_path):
    at = tiny_app(tmp_path).run()
    assert not at.exception
    assert any("holds no config.json" in e.value for e in at.error)


def test_hub_id_offers_remote_code_and_explains_an_offline_miss(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = new_app(**{state.MODEL_CHOICE: state.OTHER_MODEL, state.MODEL_OTHER: "example-org/not-cached-model"}).run()
    assert not at.exception
    assert [c.label for c in at.checkbox] == ["Allow remote code (trust_remote_code)"]
    assert at.checkbox[0].value is False
    assert any("not in the local Hugging Face cache" in e.value for e in at.error)


def test_tiny_model_chat_reply_has_metrics_and_charts(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 8}).run()
    assert not at.exception
    assert "cpu · fp32" in sidebar_text(at) and "backend: dense fp32" in sidebar_text(at)
    assert not at.checkbox  # remote code is a hub-only option

    at.chat_input[0].set_value("hello there").run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    caption = reply_caption(reply)
    for figure in ("TTFT", "TPOT", "tok/s", "prompt →", "8 new tokens", "max new tokens reached"):
        assert figure in caption
    assert len(at.get("plotly_chart")) == 2  # live per-token chart and history chart

    click(at, "Clear chat").run()
    assert not at.exception and not at.chat_message


def test_history_chart_reads_the_store_so_it_survives_a_restart(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run()
    at.chat_input[0].set_value("remember me").run()
    assert not at.exception
    fresh = tiny_app(tiny_model_dir).run()  # a new session: empty transcript, same history store
    assert not fresh.exception and not fresh.chat_message
    history = json.loads(fresh.get("plotly_chart")[1].proto.spec)
    assert any(tiny_model_dir.name in trace.get("name", "") for trace in history["data"])


# The app with the real embedded model ---------------------------------------------------------------------


@pytest.mark.slow
def test_chat_page_renders_with_the_embedded_model():
    at = new_app().run()
    assert not at.exception
    assert at.title[0].value == "Chat"
    labels = [s.label for s in at.sidebar.selectbox]
    assert labels == ["Model", "Runtime", "Device", "dtype", "Pruning", "Distilled variant"]
    assert "SmolLM2-135M-Instruct (embedded) · cpu · fp32" in sidebar_text(at)
    assert at.chat_input


@pytest.mark.slow
def test_chat_reply_names_paris_with_metrics():
    at = new_app(**{state.CACHE_ENABLED: False}).run()  # the model answers, not the cache
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    assert "Paris" in reply.markdown[0].value
    caption = reply_caption(reply)
    assert "TTFT" in caption and "TPOT" in caption and "tok/s" in caption and "new tokens" in caption


@pytest.mark.slow
def test_switching_dtype_rebuilds_the_model():
    at = new_app(**{state.CACHE_ENABLED: False}).run()  # the model answers, not the cache
    assert "backend: dense fp32" in sidebar_text(at)
    at.selectbox(key=state.DTYPE).set_value("bf16").run()
    assert not at.exception
    shown = sidebar_text(at)
    assert "· cpu · bf16" in shown and "backend: dense bf16" in shown
    assert any("bf16" in i.value for i in at.sidebar.info)  # the build note about CPU bf16 kernels
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    assert reply.markdown[0].value.strip()
    assert "bf16" in reply_caption(reply) and "TTFT" in reply_caption(reply)


def test_a_message_longer_than_the_context_is_an_error_in_the_transcript_and_the_chat_goes_on(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 8}).run()
    at.chat_input[0].set_value("why " * 600).run()  # the tiny model's context is 512 tokens
    assert not at.exception
    (refused,) = assistant_replies(at)
    assert "Not sent" in refused.error[0].value and "context of 512" in refused.error[0].value
    assert at.session_state[state.MESSAGES][0]["content"] == "why " * 600  # the user's text is kept
    at.chat_input[0].set_value("after a refused message").run()  # asked nowhere else: the model answers
    assert not at.exception
    answered = assistant_replies(at)[-1]
    assert not answered.error and "8 new tokens" in reply_caption(answered)


def test_a_conversation_longer_than_the_context_leaves_out_its_oldest_turns_and_says_so(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 200}).run()
    notices = []
    for turn in range(6):
        at.chat_input[0].set_value(f"turn {turn}: " + "tell me more about latency " * 12).run()
        assert not at.exception
        notices += [i.value for i in at.info if "left out of this turn's prompt" in i.value]
        assert not assistant_replies(at)[-1].error
        if notices:
            break
    assert notices, "six long turns never needed trimming"
    assert len(at.session_state[state.MESSAGES]) == 2 * (turn + 1)  # the transcript keeps every turn


def test_a_message_of_control_characters_nuls_and_emoji_is_answered(tiny_model_dir):
    # A browser sends only valid UTF-8 (undecodable bytes are refused by the engine: tests/serving); anything valid
    # is a message like another.
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run()
    at.chat_input[0].set_value("\x00\x1b[31m\u202e 🚀 <script>alert(1)</script> {{ m }} %s").run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    assert not reply.error and "4 new tokens" in reply_caption(reply)


def test_the_chat_page_says_when_a_measurement_has_the_model_to_itself(tiny_model_dir):
    from workbench.ui import shared

    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run()
    slot = shared.model_slot(at.session_state[state.RECIPE], False)
    with slot.model.lease("Benchmarking tiny", "Benchmark"):
        at.run()
        assert any("Benchmarking tiny has this model to itself" in i.value for i in at.info)
        at.chat_input[0].set_value("while it is measured").run()
        assert not at.exception
        assert "is busy" in assistant_replies(at)[-1].error[0].value
    at.run()
    assert not any("has this model to itself" in i.value for i in at.info)
