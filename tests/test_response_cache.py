"""The response cache: keys, exact and semantic hits, the negation guard, eviction, TTL, a broken directory,
replays recorded in the history, the CLI and the chat page.

Fast tests store hand-made results (or answers of the tiny model); the semantic test on the real
all-MiniLM-L6-v2 model is marked slow.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace

import diskcache
import numpy as np
import pytest
from test_app import assistant_replies, reply_caption, tiny_app
from test_app import navigation_pages  # noqa: F401  (autouse fixture: keeps AppTest on st.navigation)

from workbench import cache, cli
from workbench.cache import CachePolicy, ResponseCache
from workbench.engine import Engine, GenerationResult, GenerationSettings
from workbench.metrics import HistoryStore
from workbench.recipe import PruneSpec, Recipe
from workbench.ui import state

GREEDY = GenerationSettings(max_new_tokens=16)
RECIPE = Recipe(model="embedded", device="cpu")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def answer(text: str = "Paris is the capital of France.", finish_reason: str = "eos", error: str | None = None,
           e2e_s: float = 1.5) -> GenerationResult:
    ids = list(range(10, 10 + len(text.split())))
    times = list(np.linspace(0.1, e2e_s, len(ids)))
    return GenerationResult(text=text, prompt_tokens=12, new_tokens=len(ids), token_times=times, ttft_s=times[0],
                            e2e_s=times[-1], queue_s=0.0, recipe_key=RECIPE.key(), finish_reason=finish_reason,
                            error=error, token_ids=ids)


def ask(text: str, system: str | None = None, earlier: list[dict] | None = None) -> list[dict]:
    turns = ([{"role": "system", "content": system}] if system else []) + (earlier or [])
    return turns + [{"role": "user", "content": text}]


class SameVector:
    """An embedder that scores every pair of questions 1.0: only the guards and the context tell them apart."""

    def encode(self, texts):
        return np.tile(np.eye(384, dtype=np.float32)[0], (len(texts), 1))


@pytest.fixture
def responses(tmp_path):
    c = ResponseCache(tmp_path / "responses")
    yield c
    c.close()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return ["--model", str(tiny_model_dir)]


def run_cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# Keys --------------------------------------------------------------------------------------------------------


RECIPE_CHANGES = [
    dict(model="HuggingFaceTB/SmolLM2-135M-Instruct"), dict(device="cuda"), dict(dtype="bf16"),
    dict(dtype="int8", backend="torch-dynamic"), dict(prune=PruneSpec("magnitude", 0.5)),
    dict(prune=PruneSpec("magnitude", 0.3)), dict(prune=PruneSpec("magnitude", 0.5, "wanda")),
    dict(variant="student-x"), dict(batch_size=4),
]
SETTING_CHANGES = [dict(max_new_tokens=17), dict(temperature=0.7), dict(top_p=0.9), dict(seed=3),
                   dict(ignore_eos=True)]


@pytest.mark.parametrize("change", RECIPE_CHANGES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_any_recipe_change_changes_the_key_and_misses(responses, change):
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    other = replace(RECIPE, **change)
    assert other.key() != RECIPE.key()
    assert cache.exact_key(other.key(), QUESTION, GREEDY) != cache.exact_key(RECIPE.key(), QUESTION, GREEDY)
    assert responses.lookup(other.key(), QUESTION, GREEDY) is None
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).kind == "exact"


@pytest.mark.parametrize("change", SETTING_CHANGES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_any_generation_setting_change_changes_the_key_and_misses(responses, change):
    policy = CachePolicy(cache_sampled=True)  # so that temperature and top-p changes are looked up at all
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), policy)
    other = replace(GREEDY, **change)
    assert cache.exact_key(RECIPE.key(), QUESTION, other) != cache.exact_key(RECIPE.key(), QUESTION, GREEDY)
    assert responses.lookup(RECIPE.key(), QUESTION, other, policy) is None
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, policy) is not None


def test_an_earlier_turn_or_the_system_prompt_changes_the_key(responses):
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    responses.store(RECIPE.key(), ask("And Spain?", earlier=earlier), GREEDY, answer("Madrid."))
    assert responses.lookup(RECIPE.key(), ask("And Spain?", earlier=earlier), GREEDY).entry["text"] == "Madrid."
    changed = [earlier[0], {"role": "assistant", "content": "Hello there!"}]
    assert responses.lookup(RECIPE.key(), ask("And Spain?", earlier=changed), GREEDY) is None
    assert responses.lookup(RECIPE.key(), ask("And Spain?"), GREEDY) is None
    assert responses.lookup(RECIPE.key(), ask("And Spain?", "Be brief.", earlier), GREEDY) is None


def test_model_key_changes_when_the_weights_change_under_the_same_name(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"weights v1")
    recipe = Recipe(model=str(model_dir), device="cpu")
    first = cache.model_key(recipe)
    assert first.startswith(recipe.key()) and cache.model_key(recipe) == first  # stable while nothing changes
    (model_dir / "model.safetensors").write_bytes(b"weights v2, trained further")
    assert cache.model_key(recipe) != first
    assert cache.model_key(Recipe(model="org/hub-model", device="cpu")) == Recipe(model="org/hub-model",
                                                                                  device="cpu").key()


# Storing and replaying -----------------------------------------------------------------------------------------


def test_hit_replays_the_answer_and_is_recorded_apart_from_model_latency(responses, tmp_path):
    history = HistoryStore(tmp_path / "metrics.sqlite")
    pieces = ["Paris", " is", " the", " capital", " of", " France."]
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), pieces=pieces, model={"params": 1})
    hit = responses.lookup(RECIPE.key(), QUESTION, GREEDY)
    assert hit.kind == "exact" and hit.entry["model"] == {"params": 1} and hit.lookup_s > 0
    assert hit.saved_s == pytest.approx(1.5 - hit.lookup_s)
    replay = cache.ReplayRequest(hit, RECIPE, GREEDY, "chat", history)
    events = list(replay)
    assert [e.text for e in events] == pieces and [e.index for e in events] == list(range(6))
    result = replay.result()
    assert result.cache == "exact" and result.text == "Paris is the capital of France." and result.new_tokens == 6
    assert result.ttft_s == pytest.approx(hit.lookup_s) and result.e2e_s == pytest.approx(hit.lookup_s)
    assert result.tpot_s is None and result.decode_tok_s is None  # a replay claims no decode speed
    (row,) = history.recent()
    assert row["cache"] == "exact" and row["origin"] == "chat" and row["decode_tok_s"] is None


@pytest.mark.parametrize("finish, error", [("stopped", None), ("error", "boom")])
def test_stopped_or_failed_answers_are_not_stored(responses, finish, error):
    assert not responses.store(RECIPE.key(), QUESTION, GREEDY, answer(finish_reason=finish, error=error))
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None


def test_sampled_answers_are_cached_only_when_enabled(responses):
    sampled = GenerationSettings(max_new_tokens=16, temperature=0.8, seed=1)
    assert not responses.store(RECIPE.key(), QUESTION, sampled, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, sampled) is None
    assert responses.stats()["entries"] == 0 and responses.stats()["lookups"] == 0  # not even looked up
    enabled = CachePolicy(cache_sampled=True)
    assert responses.store(RECIPE.key(), QUESTION, sampled, answer(), enabled)
    assert responses.lookup(RECIPE.key(), QUESTION, sampled, enabled).kind == "exact"
    assert responses.lookup(RECIPE.key(), QUESTION, sampled) is None  # the default policy still skips it


def test_disabled_policy_neither_stores_nor_looks_up(responses):
    off = CachePolicy(enabled=False)
    assert not responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), off)
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, off) is None
    assert responses.stats()["lookups"] == 0


def test_stats_count_hits_misses_and_time_saved_and_clear_resets_them(responses):
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer(e2e_s=2.0))
    responses.store(RECIPE.key(), ask("Capital of Italy?"), GREEDY, answer("Rome."))
    for _ in range(3):
        assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is not None
    stats = responses.stats()
    assert stats["entries"] == 2 and stats["hits"] == {"exact": 3, "semantic": 0} and stats["misses"] == 1
    assert stats["hit_rate"] == pytest.approx(0.75) and 5.9 < stats["saved_s"] <= 6.0
    assert stats["size_bytes"] > 0 and stats["problem"] is None
    assert responses.clear() == 2
    after = responses.stats()
    assert after["entries"] == 0 and after["lookups"] == 0 and after["hit_rate"] is None
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None


def test_ttl_expires_an_answer(responses):
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), CachePolicy(ttl_s=0.5))
    responses.store(RECIPE.key(), ask("Capital of Italy?"), GREEDY, answer("Rome."))  # no TTL
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is not None
    time.sleep(1.0)
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None
    assert responses.lookup(RECIPE.key(), ask("Capital of Italy?"), GREEDY) is not None
    assert responses.stats()["entries"] == 1


def test_size_limit_evicts_the_least_recently_used(tmp_path):
    limit_mb = 0.5
    responses = ResponseCache(tmp_path / "responses", size_limit_mb=limit_mb)
    big = "word " * 4000  # ~20 kB per answer, 50 answers ~ 1 MB: twice the limit
    questions = [ask(f"Question number {i}?") for i in range(50)]
    responses.store(RECIPE.key(), questions[0], GREEDY, answer(big))
    for i, q in enumerate(questions[1:], 1):
        assert responses.lookup(RECIPE.key(), questions[0], GREEDY) is not None  # keep the first one in use
        responses.store(RECIPE.key(), q, GREEDY, answer(big))
    stats = responses.stats()
    assert stats["entries"] < 50
    assert stats["size_bytes"] <= limit_mb * 2**20 * 1.2  # culled back under the limit, give or take a set
    assert responses.lookup(RECIPE.key(), questions[0], GREEDY) is not None  # recently used: kept
    assert responses.lookup(RECIPE.key(), questions[1], GREEDY) is None  # oldest unused: evicted
    assert responses.lookup(RECIPE.key(), questions[-1], GREEDY) is not None  # newest: kept
    responses.set_size_limit(0.1)  # shrinking evicts at once
    assert responses.stats()["entries"] < stats["entries"]
    responses.close()


# Semantic matching and its guards -------------------------------------------------------------------------------


@pytest.mark.parametrize("a, b, why", [
    ("Is coffee good for you?", "Is coffee not good for you?", "different negation"),
    ("Is it safe?", "Isn't it safe?", "different negation"),
    ("Can I go?", "I cannot go?", "different negation"),
    ("Should I never do it?", "Should I always do it?", "different negation"),
    ("What is 2 + 2?", "What is 2 + 3?", "different numbers"),
    ("Give me three tips.", "Give me 4 tips.", "different numbers"),
    ("Give me three tips.", "Give me 3 tips.", None),
    ("Is coffee good for you?", "Is coffee good for me?", None),
    ("Is it not safe?", "Is it really not safe?", None),
    ("Isn't it safe?", "Is it not safe?", None),  # the same negation, written two ways
])
def test_same_meaning_guard(a, b, why):
    assert cache.same_meaning_guard(a, b) == why


def test_semantic_hit_needs_same_context_and_no_guard_conflict(responses):
    embed = SameVector()
    policy = CachePolicy(semantic=True, threshold=0.9)
    responses.store(RECIPE.key(), ask("Is coffee good for you?"), GREEDY, answer("Yes, in moderation."))
    hit = responses.lookup(RECIPE.key(), ask("Is coffee healthy for you?"), GREEDY, policy, embed)
    assert hit.kind == "semantic" and hit.similarity == pytest.approx(1.0)
    assert hit.matched_question == "Is coffee good for you?" and hit.entry["text"] == "Yes, in moderation."
    # Similar enough, but the negation flips the meaning: no hit.
    assert responses.lookup(RECIPE.key(), ask("Is coffee not good for you?"), GREEDY, policy, embed) is None
    # Same question, other context: another system prompt, earlier turn, recipe or settings.
    assert responses.lookup(RECIPE.key(), ask("Is coffee healthy?", "Be brief."), GREEDY, policy, embed) is None
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert responses.lookup(RECIPE.key(), ask("Is coffee healthy?", earlier=earlier), GREEDY, policy, embed) is None
    other = replace(RECIPE, dtype="bf16").key()
    assert responses.lookup(other, ask("Is coffee healthy?"), GREEDY, policy, embed) is None
    assert responses.lookup(RECIPE.key(), ask("Is coffee healthy?"), replace(GREEDY, max_new_tokens=8), policy,
                            embed) is None
    # Exact-only policy: no semantic hit.
    assert responses.lookup(RECIPE.key(), ask("Is coffee healthy for you?"), GREEDY) is None
    assert responses.stats()["hits"]["semantic"] == 1


def test_missing_embedding_model_turns_semantic_off_with_a_message_and_exact_still_works(responses, monkeypatch):
    monkeypatch.setattr(cache, "embedding_model_dir", lambda: None)
    monkeypatch.setattr(cache, "_embedder", None)
    policy, embed, notice = cache.usable_policy(CachePolicy(semantic=True))
    assert not policy.semantic and embed is None
    assert "all-MiniLM-L6-v2" in notice and cache.EMBEDDING_INSTALL in notice
    with pytest.raises(cache.CacheUnavailable):
        responses.lookup(RECIPE.key(), QUESTION, GREEDY, CachePolicy(semantic=True))
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, policy).kind == "exact"


def test_embedding_model_is_found_without_importing_its_package():
    found = cache.embedding_model_dir()
    assert found is not None and (found / "model.safetensors").is_file()
    assert cache.EMBEDDING_PACKAGE not in sys.modules


@pytest.mark.slow
def test_semantic_on_the_real_minilm_model(responses):
    embed = cache.embedder()
    vectors = embed.encode(["Is coffee good for you?", "Is coffee not good for you?"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    negated = float(vectors[0] @ vectors[1])
    assert negated >= cache.DEFAULT_THRESHOLD  # the known false hit the guard exists for
    policy = CachePolicy(semantic=True)
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())  # indexed without an embedding: embedded on lookup
    responses.store(RECIPE.key(), ask("Is coffee good for you?"), GREEDY, answer("Yes."), embed=embed)
    hit = responses.lookup(RECIPE.key(), ask("What's the capital city of France?"), GREEDY, policy, embed)
    assert hit is not None and hit.kind == "semantic" and hit.similarity >= cache.DEFAULT_THRESHOLD
    assert hit.matched_question == QUESTION[0]["content"] and "Paris" in hit.entry["text"]
    assert responses.lookup(RECIPE.key(), ask("Is coffee not good for you?"), GREEDY, policy, embed) is None
    assert responses.lookup(RECIPE.key(), ask("What is the capital of Germany?"), GREEDY, policy, embed) is None


# A broken cache directory ---------------------------------------------------------------------------------------


def _asides(directory):
    return sorted(p for p in directory.parent.iterdir() if p.name.startswith(f"{directory.name}.corrupt-"))


@pytest.mark.parametrize("damage", ["garbage database", "a file in its place"])
def test_broken_directory_is_set_aside_and_a_fresh_cache_works(tmp_path, damage):
    directory = tmp_path / "responses"
    if damage == "garbage database":
        directory.mkdir()
        (directory / "cache.db").write_bytes(b"this is not a database" * 100)
    else:
        directory.write_text("not a directory")
    responses = ResponseCache(directory)
    assert responses.available
    assert "could not be opened" in responses.problem and "moved to" in responses.problem
    (aside,) = _asides(directory)
    assert aside.exists() and directory.is_dir()
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).kind == "exact"
    responses.close()


def test_damage_found_at_a_lookup_sets_the_directory_aside_too(responses, monkeypatch):
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())

    def malformed(*args, **kwargs):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(responses._cache, "get", malformed)
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None  # a miss, not a crash
    assert "moved to" in responses.problem and len(_asides(responses.directory)) == 1
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None  # the fresh cache is empty, and works
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).kind == "exact"


def test_a_pickled_value_is_refused_not_loaded(responses):
    key = cache.exact_key(RECIPE.key(), QUESTION, GREEDY)
    with diskcache.Cache(responses.directory) as raw:
        raw.set(key, {"text": "from a pickle"})  # diskcache pickles a dict
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None
    assert "unpickle" in responses.problem


def test_cli_cache_stats_reports_a_broken_directory_without_a_traceback(capsys, workbench_home, monkeypatch,
                                                                       tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    (tmp_path / "responses").mkdir()
    (tmp_path / "responses" / "cache.db").write_bytes(b"\x00garbage" * 512)
    code, out, err = run_cli(capsys, "cache", "stats", "--json")
    assert code == 0 and "Traceback" not in err
    assert err.startswith("workbench: warning: The response cache in") and "moved to" in err
    assert json.loads(out)["entries"] == 0 and len(_asides(tmp_path / "responses")) == 1


# Through the engine, the CLI and a new process ------------------------------------------------------------------


def test_submit_misses_then_replays_the_engine_answer(tiny_optimized, tmp_path):
    history = HistoryStore(tmp_path / "metrics.sqlite")
    responses = ResponseCache(tmp_path / "responses")
    engine = Engine(tiny_optimized, history)
    try:
        first = cache.submit(engine, responses, "Tell me a story.", GREEDY)
        streamed = "".join(e.text for e in first)
        miss = first.result()
        assert miss.cache == "miss" and first.stored and first.hit is None
        again = cache.submit(engine, responses, "Tell me a story.", GREEDY)
        assert "".join(e.text for e in again) == streamed == miss.text
        hit = again.result()
        assert hit.cache == "exact" and hit.token_ids == miss.token_ids and hit.prompt_tokens == miss.prompt_tokens
        bypass = cache.submit(engine, responses, "Tell me a story.", GREEDY, CachePolicy(enabled=False))
        assert bypass.result().cache == "miss"
    finally:
        engine.close()
    assert [r["cache"] for r in history.recent()] == ["miss", "exact", "miss"]


def run_module(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "workbench", *map(str, argv)], capture_output=True, text=True,
                          timeout=600, env=env or os.environ.copy())


def test_hit_after_restart_in_a_new_process_and_no_cache_bypasses(tiny, tmp_path):
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path)}
    prompt = ["--prompt", "Say something new.", "--max-new-tokens", 7, "--json"]
    first = run_module("generate", *tiny, *prompt, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_module("generate", *tiny, *prompt, env=env)  # a new process reads the cache from disk
    assert second.returncode == 0, second.stderr[-2000:]
    miss, hit = json.loads(first.stdout), json.loads(second.stdout)
    assert miss["cache"] == "miss" and miss["cache_hit"] is None
    assert hit["cache"] == "exact" and hit["text"] == miss["text"] and hit["new_tokens"] == miss["new_tokens"]
    assert hit["model"] == miss["model"] and hit["recipe_key"] == miss["recipe_key"]
    assert hit["cache_hit"]["kind"] == "exact" and hit["cache_hit"]["lookup_ms"] > 0
    assert "Building" not in second.stderr and "Ready" not in second.stderr  # no model was built for the hit
    bypass = run_module("generate", *tiny, *prompt, "--no-cache", env=env)
    assert bypass.returncode == 0 and json.loads(bypass.stdout)["cache"] == "miss"
    stats = json.loads(run_module("cache", "stats", "--json", env=env).stdout)
    assert stats["hits"]["exact"] == 1 and stats["misses"] == 1 and stats["entries"] == 1  # --no-cache: no lookup
    cleared = run_module("cache", "clear", "--json", env=env)
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["cleared"] == 1
    rows = [r["cache"] for r in HistoryStore(tmp_path / "metrics.sqlite").recent()]
    assert rows == ["miss", "exact", "miss"]


def test_cli_cache_stats_and_clear_text(capsys, tiny):
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Cache this one.", "--max-new-tokens", 5)
    assert code == 0 and "cache miss" in out
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Cache this one.", "--max-new-tokens", 5)
    assert code == 0 and out.rstrip().splitlines()[-1].startswith("[cache exact hit · lookup ")
    code, out, _ = run_cli(capsys, "cache", "stats")
    assert code == 0 and "hit rate" in out and "model time saved" in out
    code, out, _ = run_cli(capsys, "cache", "clear")
    assert code == 0 and out.startswith("removed ")
    code, out, _ = run_cli(capsys, "cache", "stats", "--json")
    assert json.loads(out)["entries"] == 0


def test_cli_cache_needs_an_action(capsys):
    code, out, err = run_cli(capsys, "cache", "flush")
    assert code == 2 and out == "" and err.startswith("workbench: error: action: invalid choice")


# The chat page ----------------------------------------------------------------------------------------------------


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
    [b for b in at.button if b.label == "Clear chat"][0].click().run()
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
    [b for b in at.button if b.label == "Clear chat"][0].click().run()
    at.chat_input[0].set_value("Is this answer cached?").run()
    (fresh,) = assistant_replies(at)
    assert "TTFT" in reply_caption(fresh) and "cached" not in reply_caption(fresh)
    at.toggle(key=state.CACHE_ENABLED).set_value(True).run()
    at.button(key=state.CACHE_CLEAR).click().run()
    assert "**0** answers" in " ".join(c.value for c in at.sidebar.caption)


def test_chat_with_a_broken_cache_directory_warns_and_still_answers(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    (tmp_path / "responses").mkdir()
    (tmp_path / "responses" / "cache.db").write_bytes(b"\x00garbage" * 512)
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run()
    assert not at.exception
    assert any("could not be opened" in w.value for w in at.sidebar.warning)
    at.chat_input[0].set_value("Still there?").run()
    assert not at.exception and len(assistant_replies(at)) == 1


def test_semantic_toggle_without_the_embedding_model_says_how_to_install_it(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(cache, "embedding_model_dir", lambda: None)
    monkeypatch.setattr(cache, "_embedder", None)
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4, state.CACHE_SEMANTIC: True}).run()
    assert not at.exception
    assert any(cache.EMBEDDING_INSTALL in w.value for w in at.sidebar.warning)
    at.chat_input[0].set_value("Semantic, please.").run()
    assert not at.exception and len(assistant_replies(at)) == 1
    assert any("all-MiniLM-L6-v2" in w.value for w in at.warning)


def test_chat_semantic_hit_names_the_matched_question_and_similarity(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 5, state.CACHE_SEMANTIC: True}).run()
    at.chat_input[0].set_value("How many legs does a spider have?").run()
    [b for b in at.button if b.label == "Clear chat"][0].click().run()
    at.chat_input[0].set_value("How many legs do spiders have?").run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    caption = reply_caption(reply)
    assert "**cached** (semantic)" in caption and "matched “How many legs does a spider have?”" in caption
    similarity = float(caption.split("(similarity ")[1].split(")")[0])
    assert cache.DEFAULT_THRESHOLD <= similarity < 1.0
    assert HistoryStore().recent(limit=1)[0]["cache"] == "semantic"
    at.slider(key=state.CACHE_THRESHOLD).set_value(0.99).run()  # stricter than this pair's similarity
    [b for b in at.button if b.label == "Clear chat"][0].click().run()
    at.toggle(key=state.CACHE_SEMANTIC).set_value(False).run()
    assert not at.sidebar.slider  # the threshold shows only with semantic matching on
    at.toggle(key=state.CACHE_SEMANTIC).set_value(True).run()
    assert at.slider(key=state.CACHE_THRESHOLD).value == 0.99  # and keeps its value meanwhile
    at.chat_input[0].set_value("How many legs do spiders have?").run()
    (reply,) = assistant_replies(at)
    assert "cached" not in reply_caption(reply) and "TTFT" in reply_caption(reply)


def test_cli_semantic_flag_reuses_a_reworded_question(capsys, tiny):
    ask_cli = ["generate", *tiny, "--max-new-tokens", 4, "--json"]
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why is the sky blue?")
    assert code == 0 and json.loads(out)["cache"] == "miss"
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why does the sky look blue?")
    assert code == 0 and json.loads(out)["cache"] == "miss"  # exact only by default: the model answers
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why does the sky appear blue?", "--semantic")
    report = json.loads(out)
    assert code == 0 and report["cache"] == "semantic"
    assert report["cache_hit"]["matched_question"] in ("Why is the sky blue?", "Why does the sky look blue?")
    assert report["cache_hit"]["similarity"] >= cache.DEFAULT_THRESHOLD
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why isn't the sky blue?", "--semantic")
    assert code == 0 and json.loads(out)["cache"] == "miss"  # the negation guard
