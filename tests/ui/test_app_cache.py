"""The response cache on the Chat page: a repeated prompt is replayed and recorded apart; the sidebar panel; answers
kept per session; the shared size limit changed only by a user, and only where the server allows it."""

import json

from apps import assistant_replies, click, reply_caption, tiny_app
from streamlit.testing.v1 import AppTest

from workbench.observe.history import HistoryStore
from workbench.response_cache import embedder as embedding
from workbench.response_cache.disk import DEFAULT_SIZE_LIMIT_MB, ResponseCache, responses_dir
from workbench.response_cache.keys import DEFAULT_THRESHOLD
from workbench.ui import shared, state


def test_chat_repeated_prompt_is_cached_and_recorded_as_a_hit(tiny_model_dir):
    ResponseCache().clear()  # counters start at zero; other tests share this session's cache
    history = HistoryStore()
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 6}).run()
    assert not at.exception
    assert [t.label for t in at.sidebar.toggle] == ["Answer repeated prompts from the cache",
                                                    "Also match similar questions (semantic)",
                                                    "Cache sampled answers (temperature > 0)"]
    at.chat_input[0].set_value("Is this answer cached?").run()
    (first,) = assistant_replies(at)
    assert "TTFT" in reply_caption(first) and "cached" not in reply_caption(first)
    click(at, "Clear chat").run()
    at.chat_input[0].set_value("Is this answer cached?").run()
    assert not at.exception
    (again,) = assistant_replies(at)
    caption = reply_caption(again)
    assert "**cached** (exact) · looked up in" in caption and "6 tokens replayed from the cache" in caption
    assert "TPOT" not in caption and "tok/s" not in caption  # no model latency claimed for a replay
    assert again.markdown[0].value == first.markdown[0].value
    rows = history.recent(limit=2)
    assert [r["cache"] for r in rows] == ["miss", "exact"] and all(r["origin"] == "chat" for r in rows)
    sidebar = " ".join(c.value for c in at.sidebar.caption)
    assert "1 exact + 0 semantic" in sidebar and "hit rate" in sidebar and "model time saved" in sidebar
    history_chart = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert any("(cache exact)" in trace.get("name", "") for trace in history_chart["data"])  # its own series

    at.toggle(key=state.CACHE_ENABLED).set_value(False).run()  # off: the model answers again
    click(at, "Clear chat").run()
    at.chat_input[0].set_value("Is this answer cached?").run()
    (fresh,) = assistant_replies(at)
    assert "TTFT" in reply_caption(fresh) and "cached" not in reply_caption(fresh)
    at.toggle(key=state.CACHE_ENABLED).set_value(True).run()
    at.button(key=state.CACHE_CLEAR).click().run()
    assert "**0** answers" in " ".join(c.value for c in at.sidebar.caption)


def test_chat_with_a_broken_cache_directory_warns_and_still_answers(tiny_model_dir, own_home):
    (own_home / "responses").mkdir(parents=True)
    (own_home / "responses" / "cache.db").write_bytes(b"\x00garbage" * 512)
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run()
    assert not at.exception
    assert any("could not be opened" in w.value for w in at.sidebar.warning)
    at.chat_input[0].set_value("Still there?").run()
    assert not at.exception and len(assistant_replies(at)) == 1


def test_semantic_toggle_without_the_embedding_model_says_how_to_install_it(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(embedding, "embedding_model_dir", lambda: None)
    monkeypatch.setattr(embedding, "_embedder", None)
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4, state.CACHE_SEMANTIC: True}).run()
    assert not at.exception
    assert any(embedding.EMBEDDING_INSTALL in w.value for w in at.sidebar.warning)
    at.chat_input[0].set_value("Semantic, please.").run()
    assert not at.exception and len(assistant_replies(at)) == 1
    assert any("all-MiniLM-L6-v2" in w.value for w in at.warning)


def test_chat_semantic_hit_names_the_matched_question_and_similarity(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 5, state.CACHE_SEMANTIC: True}).run()
    measured = [c.value for c in at.sidebar.caption if "question pairs at similarity 0.8" in c.value]
    assert measured and "no false hits" in measured[0]  # the guard, measured at this threshold
    at.chat_input[0].set_value("How many legs does a spider have?").run()
    click(at, "Clear chat").run()
    at.chat_input[0].set_value("How many legs do spiders have?").run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    caption = reply_caption(reply)
    assert "**cached** (semantic)" in caption and "matched “How many legs does a spider have?”" in caption
    similarity = float(caption.split("(similarity ")[1].split(")")[0])
    assert DEFAULT_THRESHOLD <= similarity < 1.0
    assert HistoryStore().recent(limit=1)[0]["cache"] == "semantic"
    at.slider(key=state.CACHE_THRESHOLD).set_value(0.99).run()  # stricter than this pair's similarity
    click(at, "Clear chat").run()
    at.toggle(key=state.CACHE_SEMANTIC).set_value(False).run()
    assert not at.sidebar.slider  # the threshold shows only with semantic matching on
    at.toggle(key=state.CACHE_SEMANTIC).set_value(True).run()
    assert at.slider(key=state.CACHE_THRESHOLD).value == 0.99  # and keeps its value meanwhile
    at.chat_input[0].set_value("How many legs do spiders have?").run()
    (reply,) = assistant_replies(at)
    assert "cached" not in reply_caption(reply) and "TTFT" in reply_caption(reply)


def test_with_a_cache_per_session_no_session_replays_or_shows_another_s_question(tiny_model_dir, own_home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_SCOPE", "session")
    def session() -> AppTest:
        return tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 5, state.CACHE_SEMANTIC: True}).run()

    mine = session()
    assert any("kept per browser session" in c.value for c in mine.sidebar.caption)
    mine.chat_input[0].set_value("How many legs does a spider have?").run()
    for question in ("How many legs does a spider have?", "How many legs do spiders have?"):
        theirs = session()  # another browser session each time
        theirs.chat_input[0].set_value(question).run()
        assert not theirs.exception
        (reply,) = assistant_replies(theirs)
        assert "cached" not in reply_caption(reply) and "TTFT" in reply_caption(reply)  # the model answered them
    click(mine, "Clear chat").run()
    mine.chat_input[0].set_value("How many legs do spiders have?").run()  # my own question, worded differently
    caption = reply_caption(assistant_replies(mine)[0])
    assert "**cached** (semantic)" in caption and "matched “How many legs does a spider have?”" in caption
    assert "Every session together: **3** answers" in " ".join(c.value for c in mine.sidebar.caption)


def test_the_size_limit_changes_only_when_a_user_changes_it(tiny_model_dir, own_home):
    first, second = (tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run() for _ in range(2))
    responses = shared.response_cache(str(responses_dir()))
    first.number_input(key=state.CACHE_SIZE_MB).set_value(512).run()
    assert responses.size_limit_mb == 512
    second.run()  # another session's rerun leaves it as it is, and shows it
    assert responses.size_limit_mb == 512 and second.number_input(key=state.CACHE_SIZE_MB).value == 512
    assert "of 536.9 MB" in " ".join(c.value for c in second.sidebar.caption)  # 512 MiB


def test_on_a_per_session_server_the_shared_size_limit_and_clear_are_the_operator_s(tiny_model_dir, own_home, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE_SCOPE", "session")
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run()
    at.chat_input[0].set_value("Kept?").run()
    responses = shared.response_cache(str(responses_dir()))
    size = at.number_input(key=state.CACHE_SIZE_MB)
    assert size.disabled and at.button(key=state.CACHE_CLEAR).disabled
    assert any("WORKBENCH_ALLOW_CACHE_SETTINGS=1" in c.value for c in at.sidebar.caption)
    assert size.value == DEFAULT_SIZE_LIMIT_MB and responses.stats()["entries"] == 1

    monkeypatch.setenv("WORKBENCH_ALLOW_CACHE_SETTINGS", "1")  # the operator allows them
    at.run()
    assert not at.button(key=state.CACHE_CLEAR).disabled
    at.button(key=state.CACHE_CLEAR).click().run()
    assert responses.stats()["entries"] == 0
