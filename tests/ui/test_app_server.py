"""The app as a client of an OpenAI-compatible server: the sidebar's model field takes a URL, Chat answers from
the server with its network split, Compare puts a server in B, and what goes wrong is one clear message.

The servers are real, on loopback (``tests/servers.py``): ``workbench serve``'s app on the tiny model, and one
whose stream is cut mid-answer.
"""

from __future__ import annotations

import pytest
from apps import QUESTION, assistant_replies, new_app, reply_caption, sidebar_text, tiny_app
from servers import CUT_MODEL, CUT_WORDS, cut_server, running, serving, tiny_server, unreachable_url  # noqa: F401 (fixtures)

from workbench.observe.history import HistoryStore
from workbench.ui import chat, state

KEY = "sk-ui-test-5e4d3c2b1a"


def server_app(url: str, **session):
    return new_app(**{state.MODEL_CHOICE: state.OTHER_MODEL, state.MODEL_OTHER: url, state.MAX_NEW_TOKENS: 8,
                      **session})


def sidebar_errors(at) -> list[str]:
    return [e.value for e in at.sidebar.error]


# The metrics line of a server's reply ----------------------------------------------------------------------


def test_a_servers_ttft_is_split_into_network_queue_and_server_prefill():
    metrics = {"ttft_ms": 41.2, "tpot_ms": 5.0, "decode_tok_s": 200.0, "prompt_tokens": 9, "new_tokens": 8,
               "finish_reason": "length", "cache": "miss", "queue_ms": 0.4, "per_chunk": False, "cut": False,
               "network": {"request_ms": 1.5, "network_ms": 10.5, "server_prefill_ms": 28.0, "connect_ms": 0.3}}
    line = chat.format_metrics(metrics)
    assert line.startswith("TTFT 41 ms = network 12 ms + queue 0.4 ms + server prefill 28 ms · TPOT 5.0 ms · ")
    assert "8 new tokens" in line
    queued = dict(metrics, network={**metrics["network"], "server_queue_ms": 3.0, "network_ms": 7.5})
    assert chat.format_metrics(queued).startswith("TTFT 41 ms = network 9.0 ms + queue 0.4 ms + server queue 3.0 ms "
                                                  "+ server prefill 28 ms")


def test_without_server_timings_the_split_is_connect_headers_and_first_chunk_and_chunks_are_counted():
    metrics = {"ttft_ms": 80.0, "tpot_ms": 12.0, "decode_tok_s": 83.3, "prompt_tokens": 0, "new_tokens": 3,
               "finish_reason": "error", "cache": "miss", "queue_ms": 0.1, "per_chunk": True, "cut": True,
               "network": {"connect_ms": 1.2, "headers_ms": 30.0, "first_chunk_ms": 75.0, "server_prefill_ms": None,
                           "network_ms": None, "reused_connection": False}}
    line = chat.format_metrics(metrics)
    assert "TTFT 80 ms (connect 1.2 ms · headers 30 ms · first chunk 75 ms)" in line
    assert "TPOT 12.0 ms per chunk" in line and "83.3 chunks/s" in line and "3 new chunks" in line
    assert line.endswith(chat.CUT)
    reused = dict(metrics, network={**metrics["network"], "reused_connection": True, "connect_ms": 0.0})
    assert "(connection reused · headers" in chat.format_metrics(reused)


# The sidebar with a URL --------------------------------------------------------------------------------------


def test_a_url_in_the_model_field_asks_the_server_and_hides_the_local_controls(tiny_server):
    server, name = tiny_server
    at = server_app(server.url).run()
    assert not at.exception, at.exception
    assert [s.label for s in at.sidebar.selectbox] == ["Model", "Server model"]
    assert at.selectbox(key=state.REMOTE_MODEL).options == [f"{name} (first listed)"]
    assert at.text_input(key=state.API_KEY_ENV).label == "API key variable"
    shown = sidebar_text(at)
    assert "runs its own weights and kernels" in shown
    recipe = at.session_state[state.RECIPE]
    assert (recipe.runtime, recipe.model, recipe.remote_model) == ("remote", server.url, name)
    # The model card: a server does not say its model's size, which reads "—", never 0.
    assert "— parameters · — of weights" in shown and "runtime remote" in shown
    assert not sidebar_errors(at)


def test_an_unreachable_server_is_one_clear_error(tiny_model_dir):
    url = unreachable_url()
    at = server_app(url).run()
    assert not at.exception
    errors = sidebar_errors(at)
    assert len(errors) == 1 and errors[0].startswith(f"cannot reach the server at {url}")
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    assert at.session_state[state.RECIPE] is None and not at.chat_input
    assert at.text_input(key=state.REMOTE_MODEL_TYPED).label == "Server model"  # the text fallback
    assert any(b.label == "Ask the server again" for b in at.sidebar.button)


def test_a_url_that_is_not_a_servers_is_one_clear_error():
    at = server_app("http://user:secret@127.0.0.1:1/v1").run()
    assert not at.exception
    (error,) = sidebar_errors(at)
    assert "must not hold credentials" in error and "secret" not in error


def test_a_server_is_refused_when_the_operator_has_not_allowed_servers(tiny_server, monkeypatch):
    server, _ = tiny_server
    monkeypatch.setenv("WORKBENCH_ALLOW_SERVERS", "0")
    at = server_app(server.url).run()
    assert not at.exception
    errors = " ".join(sidebar_errors(at))
    assert "is a server" in errors and "WORKBENCH_ALLOW_SERVERS=1" in errors
    assert at.session_state[state.RECIPE] is None and not at.chat_input


def test_switching_from_a_local_model_to_a_server_and_back(tiny_model_dir, tiny_server):
    server, _ = tiny_server
    at = tiny_app(tiny_model_dir).run()
    assert at.session_state[state.RECIPE].runtime == "transformers"
    assert "remote" not in at.selectbox(key=state.RUNTIME).options  # a server is chosen by its URL
    at.text_input(key=state.MODEL_OTHER).set_value(server.url).run()
    assert not at.exception and at.session_state[state.RECIPE].runtime == "remote"
    at.text_input(key=state.MODEL_OTHER).set_value(str(tiny_model_dir)).run()
    assert not at.exception and at.session_state[state.RECIPE].runtime == "transformers"
    assert [s.label for s in at.sidebar.selectbox][:2] == ["Model", "Runtime"]


# Chat --------------------------------------------------------------------------------------------------------


def test_chat_answers_from_the_server_with_its_network_split(tiny_server, own_home):
    server, name = tiny_server
    at = server_app(server.url).run()
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception, at.exception
    (reply,) = assistant_replies(at)
    line = reply_caption(reply)
    assert "= network" in line and "server prefill" in line and "8 new tokens" in line, line
    assert not reply.error
    rows = [r for r in HistoryStore().recent(limit=100) if r["origin"] == "chat"]
    assert len(rows) == 1 and name in rows[0]["recipe_label"] and "remote" in rows[0]["recipe_label"]


def test_the_api_key_is_read_from_the_named_variable_and_kept_nowhere(tiny_model, own_home, monkeypatch):
    monkeypatch.setenv("UI_TEST_SERVER_KEY", KEY)
    with serving(tiny_model, api_key=KEY) as (server, _):
        refused = server_app(server.url).run()  # no variable named: the server asks for a key
        (error,) = sidebar_errors(refused)
        assert "asks for an API key (HTTP 401)" in error
        at = server_app(server.url, **{state.API_KEY_ENV: "UI_TEST_SERVER_KEY"}).run()
        assert not at.exception and not sidebar_errors(at)
        at.chat_input[0].set_value(QUESTION).run()
        assert not at.exception
        assert "= network" in reply_caption(assistant_replies(at)[0])
    assert at.session_state[state.RECIPE].api_key_env == "UI_TEST_SERVER_KEY"
    assert all(KEY not in repr(at.session_state[k]) for k in at.session_state)
    for path in own_home.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


def test_a_stream_cut_mid_answer_is_kept_and_marked(cut_server, own_home):
    at = server_app(cut_server.url).run()
    assert at.session_state[state.RECIPE].remote_model == CUT_MODEL
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception, at.exception
    (reply,) = assistant_replies(at)
    assert reply.markdown[0].value == "".join(CUT_WORDS).strip()
    assert "stream cut" in reply_caption(reply) and "3 new chunks" in reply_caption(reply)
    (warning,) = reply.warning
    assert "the partial answer is kept" in warning.value


# Compare -----------------------------------------------------------------------------------------------------


def test_compare_a_local_recipe_in_a_with_a_server_in_b(tiny_model_dir, tiny_server, own_home):
    server, name = tiny_server
    b = {state.widget_key(state.MODEL_CHOICE, state.COMPARE_B): state.OTHER_MODEL,
         state.widget_key(state.MODEL_OTHER, state.COMPARE_B): server.url}
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 8, **b})
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "cpu · fp32** · " in captions and f"{name} at 127.0.0.1" in captions
    assert "— parameters · — of weights" in captions and "backend: remote server" in captions
    at.chat_input[0].set_value("hello there").run()
    assert not at.exception, at.exception
    lines = [c.value for c in at.caption if "new tokens" in c.value]
    assert len(lines) == 2 and "= network" not in lines[0] and "= network" in lines[1]
    table = {row[""]: row for row in at.dataframe[0].value.to_dict("records")}
    assert table["Weight bytes"]["B"] == "–" and table["Weight bytes"]["B vs A"] == "–"
    assert table["Decode speed (tok/s)"]["B vs A"] != "–"


@pytest.mark.parametrize("page", ["pages/what_changed.py", "pages/build_a_student.py", "pages/frontier.py"])
def test_pages_that_need_a_model_run_here_say_so_for_a_server(tiny_server, page):
    server, _ = tiny_server
    at = server_app(server.url)
    at.switch_page(page).run()
    assert not at.exception, at.exception
    assert any("needs a model run here" in i.value for i in at.info)
