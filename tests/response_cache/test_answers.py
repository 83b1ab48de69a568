"""Answering through the cache: a hit replays as a stream recorded apart, a miss is stored when it ends."""

import pytest
from answers import GREEDY, QUESTION, RECIPE, answer

from workbench.observe.history import HistoryStore
from workbench.response_cache.answers import CachedAnswers, ReplayRequest
from workbench.response_cache.disk import ResponseCache, ScopedPolicy
from workbench.response_cache.keys import CachePolicy
from workbench.serving.engine import Engine


def test_hit_replays_the_answer_and_is_recorded_apart_from_model_latency(responses, tmp_path):
    history = HistoryStore(tmp_path / "metrics.sqlite")
    pieces = ["Paris", " is", " the", " capital", " of", " France."]
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), pieces=pieces, model={"params": 1})
    hit = responses.lookup(RECIPE.key(), QUESTION, GREEDY)
    assert hit.kind == "exact" and hit.entry["model"] == {"params": 1} and hit.lookup_s > 0
    assert hit.saved_s == pytest.approx(1.5 - hit.lookup_s)
    replay = ReplayRequest(hit, RECIPE, GREEDY, "chat", history)
    events = list(replay)
    assert [e.text for e in events] == pieces and [e.index for e in events] == list(range(6))
    result = replay.result()
    assert result.cache == "exact" and result.text == "Paris is the capital of France." and result.new_tokens == 6
    assert result.ttft_s == pytest.approx(hit.lookup_s) and result.e2e_s == pytest.approx(hit.lookup_s)
    assert result.tpot_s is None and result.decode_tok_s is None  # a replay claims no decode speed
    (row,) = history.recent()
    assert row["cache"] == "exact" and row["origin"] == "chat" and row["decode_tok_s"] is None


def test_submit_misses_then_replays_the_engine_answer(tiny_model, tmp_path):
    history = HistoryStore(tmp_path / "metrics.sqlite")
    responses = ResponseCache(tmp_path / "responses")
    engine = Engine(tiny_model, history)
    try:
        first = CachedAnswers(responses).ask(engine, "Tell me a story.", GREEDY)
        streamed = "".join(e.text for e in first)
        miss = first.result()
        assert miss.cache == "miss" and first.stored and first.hit is None
        again = CachedAnswers(responses).ask(engine, "Tell me a story.", GREEDY)
        assert "".join(e.text for e in again) == streamed == miss.text
        hit = again.result()
        assert hit.cache == "exact" and hit.token_ids == miss.token_ids and hit.prompt_tokens == miss.prompt_tokens
        bypass = CachedAnswers(responses, CachePolicy(enabled=False)).ask(engine, "Tell me a story.", GREEDY)
        assert bypass.result().cache == "miss"
    finally:
        engine.close()
    assert [r["cache"] for r in history.recent()] == ["miss", "exact", "miss"]


def test_a_session_s_answers_are_replayed_to_that_session_only(tiny_model, tmp_path):
    history = HistoryStore(tmp_path / "metrics.sqlite")
    responses = ResponseCache(tmp_path / "responses")
    engine = Engine(tiny_model, history)
    try:
        for scope in ("session-1", "session-2", "session-1"):
            handle = CachedAnswers(responses, ScopedPolicy(scope=scope)).ask(engine, "Tell me a secret.", GREEDY)
            handle.result()
        cli = CachedAnswers(responses).ask(engine, "Tell me a secret.", GREEDY)  # no scope: the shared space
        cli.result()
    finally:
        engine.close()
    assert [r["cache"] for r in history.recent()] == ["miss", "miss", "exact", "miss"]
