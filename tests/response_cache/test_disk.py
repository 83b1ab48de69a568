"""The response cache on disk: storing, policies, stats, TTL, eviction, semantic matches, a broken directory."""

import json
import os
import pickle
import sqlite3
import sys
import time
from dataclasses import replace

import diskcache
import numpy as np
import pytest
from answers import GREEDY, QUESTION, RECIPE, SameVector, answer, ask, asides

from workbench.recipe import GenerationSettings
from workbench.response_cache import embedder as embedding
from workbench.response_cache.answers import usable_policy
from workbench.response_cache.disk import ResponseCache, ScopedPolicy
from workbench.response_cache.embedder import CacheUnavailable
from workbench.response_cache.keys import DEFAULT_THRESHOLD, CachePolicy, exact_key


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
    monkeypatch.setattr(embedding, "embedding_model_dir", lambda: None)
    monkeypatch.setattr(embedding, "_embedder", None)
    policy, embed, notice = usable_policy(CachePolicy(semantic=True))
    assert not policy.semantic and embed is None
    assert "all-MiniLM-L6-v2" in notice and embedding.EMBEDDING_INSTALL in notice
    with pytest.raises(CacheUnavailable):
        responses.lookup(RECIPE.key(), QUESTION, GREEDY, CachePolicy(semantic=True))
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, policy).kind == "exact"


def test_embedding_model_is_found_without_importing_its_package():
    found = embedding.embedding_model_dir()
    assert found is not None and (found / "model.safetensors").is_file()
    assert embedding.EMBEDDING_PACKAGE not in sys.modules


@pytest.mark.slow
def test_semantic_on_the_real_minilm_model(responses):
    embed = embedding.embedder()
    vectors = embed.encode(["Is coffee good for you?", "Is coffee not good for you?"])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    negated = float(vectors[0] @ vectors[1])
    assert negated >= DEFAULT_THRESHOLD  # the known false hit the guard exists for
    policy = CachePolicy(semantic=True)
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())  # indexed without an embedding: embedded on lookup
    responses.store(RECIPE.key(), ask("Is coffee good for you?"), GREEDY, answer("Yes."), embed=embed)
    hit = responses.lookup(RECIPE.key(), ask("What's the capital city of France?"), GREEDY, policy, embed)
    assert hit is not None and hit.kind == "semantic" and hit.similarity >= DEFAULT_THRESHOLD
    assert hit.matched_question == QUESTION[0]["content"] and "Paris" in hit.entry["text"]
    assert responses.lookup(RECIPE.key(), ask("Is coffee not good for you?"), GREEDY, policy, embed) is None
    assert responses.lookup(RECIPE.key(), ask("What is the capital of Germany?"), GREEDY, policy, embed) is None


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
    (aside,) = asides(directory)
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
    assert "moved to" in responses.problem and len(asides(responses.directory)) == 1
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None  # the fresh cache is empty, and works
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).kind == "exact"


def test_a_pickled_value_is_refused_not_loaded(responses):
    key = exact_key(RECIPE.key(), QUESTION, GREEDY)
    with diskcache.Cache(responses.directory) as raw:
        raw.set(key, {"text": "from a pickle"})  # diskcache pickles a dict
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None  # a damaged entry: a miss
    assert "a value stored as a pickle (never unpickled)" in responses.stats()["problem"]


# Rows crafted in the database: nothing is unpickled, nothing outside the cache folder is read or deleted -------


class Boom:
    """Unpickling this creates a directory: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def craft_row(directory, key, *, raw=True, mode=diskcache.core.MODE_RAW, filename=None, value=None) -> None:
    """Write one row straight into a diskcache database, as a tampered cache directory would hold it."""
    with sqlite3.connect(directory / "cache.db") as db:
        db.execute("INSERT INTO Cache (key, raw, store_time, access_time, size, mode, filename, value) "
                   "VALUES (?, ?, ?, ?, 0, ?, ?, ?)", (key, int(raw), time.time(), time.time(), mode, filename, value))


def victim(tmp_path):
    """A file outside the cache folder holding a valid stored answer: a hit if it were ever read."""
    path = tmp_path / "outside" / "victim.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"text": "read from outside", "token_ids": [1], "prompt_tokens": 1, "e2e_s": 1.0}))
    return path


@pytest.mark.parametrize("name", ["absolute", "dot-dot", "link"])
def test_a_row_naming_a_file_outside_the_cache_is_a_miss_and_that_file_is_never_read_or_deleted(
        responses, tmp_path, name):
    outside = victim(tmp_path)
    if name == "link":
        (responses.directory / "ab").symlink_to(outside.parent, target_is_directory=True)
    filename = {"absolute": str(outside), "dot-dot": f"../outside/{outside.name}", "link": f"ab/{outside.name}"}[name]
    craft_row(responses.directory, exact_key(RECIPE.key(), QUESTION, GREEDY), mode=diskcache.core.MODE_TEXT,
              filename=filename)
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None
    problem = responses.stats()["problem"]
    assert "refuses to read" in problem and "outside the cache folder" in problem and "Clear cache" in problem
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer())  # replaces the row: its file is not removed
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).entry["text"] == answer().text
    craft_row(responses.directory, "a:another", mode=diskcache.core.MODE_BINARY, filename=filename)
    responses.set_size_limit(0.0001)  # culls every row
    craft_row(responses.directory, "a:and-another", mode=diskcache.core.MODE_TEXT, filename=filename)
    responses.clear()
    assert outside.is_file() and "read from outside" in outside.read_text()


def test_a_key_stored_as_a_pickle_is_never_unpickled(responses, tmp_path):
    marker = tmp_path / "unpickled"
    craft_row(responses.directory, pickle.dumps(Boom(marker)), raw=False, value=json.dumps({"text": "x"}))
    stats = responses.stats()  # counting the entries reads every key
    assert stats["entries"] == 0 and "a key stored as a pickle (never unpickled)" in stats["problem"]
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).kind == "exact"
    assert responses.stats()["entries"] == 1
    responses.clear()
    assert not marker.exists()
    with pytest.raises(TypeError, match="keys are text"):
        responses._cache.set(("a", "tuple"), "x")  # diskcache would pickle this key


# Scopes ----------------------------------------------------------------------------------------------------


def test_a_scoped_answer_is_found_only_under_its_scope(responses):
    mine, theirs = ScopedPolicy(scope="session-1"), ScopedPolicy(scope="session-2")
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), mine)
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, mine).kind == "exact"
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, theirs) is None
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY) is None  # nor by a caller without a scope (the CLI)
    assert responses.store(RECIPE.key(), QUESTION, GREEDY, answer("Shared."))
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).entry["text"] == "Shared."
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, mine).entry["text"] == answer().text
    assert responses.stats()["entries"] == 2


def test_a_semantic_match_is_among_the_same_scope_s_questions_only(responses):
    embed, paraphrase = SameVector(), ask("Which city is the capital of France?")
    mine = ScopedPolicy(semantic=True, scope="session-1")
    theirs = replace(mine, scope="session-2")
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), mine, embed=embed)
    assert responses.lookup(RECIPE.key(), paraphrase, GREEDY, theirs, embed) is None  # their question stays theirs
    assert responses.lookup(RECIPE.key(), paraphrase, GREEDY, CachePolicy(semantic=True), embed) is None
    hit = responses.lookup(RECIPE.key(), paraphrase, GREEDY, mine, embed)
    assert hit.kind == "semantic" and hit.matched_question == QUESTION[0]["content"]
    assert usable_policy(theirs)[0].scope == "session-2"  # the policy this process can honour keeps the scope
