"""The question-pair measurement: the pair files, the cache's decision on each pair, and the real figures."""

import json
from collections import Counter

import numpy as np
import pytest
from answers import SameVector

from workbench.response_cache import pairs
from workbench.response_cache.keys import DEFAULT_THRESHOLD

# Measured on the real model with benchmarks/semantic_guard.py: 47 of the 66 paraphrases hit at the default (0.71);
# the rest are worded with non-synonyms WordNet does not link ("symptoms" / "signs"), or reorder their nouns. The
# floor leaves room for 4 paraphrases whose similarity or wording the guard reads differently on another version
# of torch or of the WordNet data, and still fails a guard that refuses paraphrases wholesale.
HIT_RATE_FLOOR = 0.65


class Scaled:
    """An embedder whose vectors give every two different texts the cosine similarity ``similarity``: a shared
    component of weight sqrt(similarity), and one of its own for each text."""

    def __init__(self, similarity):
        self.similarity = similarity

    def encode(self, texts):
        eye = np.eye(384, dtype=np.float32)
        return np.stack([np.sqrt(self.similarity) * eye[0] + np.sqrt(1 - self.similarity) * eye[1 + i]
                         for i in range(len(texts))])


@pytest.fixture(autouse=True)
def fresh_scores():
    pairs._scores.clear()
    pairs.panel_summary.cache_clear()
    yield
    pairs._scores.clear()
    pairs.panel_summary.cache_clear()


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_project_set_has_enough_varied_pairs():
    found = pairs.load_pairs()
    labels = Counter(p.label for p in found)
    assert len(found) >= 100 and 0.35 <= labels["paraphrase"] / len(found) <= 0.65
    kinds = Counter(p.kind for p in found if p.label == "near_miss")
    assert {"antonym", "comparative", "swapped roles", "changed entity", "unit", "number", "negation"} <= set(kinds)
    assert all(p.kind == "paraphrase" for p in found if p.label == "paraphrase")
    assert len({(p.a, p.b) for p in found}) == len(found)
    asked = {(p.a, p.b): p.label for p in found}
    assert asked[("Is coffee good for your health?", "Is coffee bad for your health?")] == "near_miss"
    assert asked[("Is coffee good for your health?", "Is coffee harmful to your health?")] == "near_miss"
    assert asked[("Which is bigger, the Sun or the Moon?", "Which is smaller, the Sun or the Moon?")] == "near_miss"
    assert asked[("Is coffee bad for your health?", "Is coffee harmful to your health?")] == "paraphrase"
    for held_out in pairs.HELDOUT:
        assert pairs.load_pairs(held_out) and not {(p.a, p.b) for p in pairs.load_pairs(held_out)} & set(asked)


@pytest.mark.parametrize("line, message", [
    ("not json", "question_pairs.jsonl:2: not a question pair"),
    ('{"a": "x", "b": "y", "label": "paraphrase"}', "question_pairs.jsonl:2: not a question pair"),
    ('{"a": "x", "b": "y", "label": "same", "kind": "paraphrase"}', "label must be one of paraphrase, near_miss"),
])
def test_a_malformed_pair_file_names_the_line(tmp_path, line, message):
    path = tmp_path / "question_pairs.jsonl"
    path.write_text('{"a": "x", "b": "y", "label": "paraphrase", "kind": "paraphrase"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        pairs.load_pairs(path)


def test_measure_decides_as_the_cache_does(tmp_path):
    path = write(tmp_path / "pairs.jsonl", [
        {"a": "Is coffee bad for you?", "b": "Is coffee harmful for you?", "label": "paraphrase", "kind": "paraphrase"},
        {"a": "Why is the sky blue?", "b": "Why does the sky look blue?", "label": "paraphrase", "kind": "paraphrase"},
        {"a": "Is coffee good for you?", "b": "Is coffee bad for you?", "label": "near_miss", "kind": "antonym"},
        {"a": "What is 2 + 2?", "b": "What is 2 + 3?", "label": "near_miss", "kind": "number"},
    ])
    m = pairs.measure(0.9, path, SameVector())  # every similarity 1.0: only the guard decides
    assert (m["hits"], m["n_paraphrases"], m["hit_rate"]) == (2, 2, 1.0)
    assert (m["false_hits"], m["n_near_misses"], m["false_hit_rate"]) == (0, 2, 0.0)
    assert m["misses_by_kind"] == {"antonym": {"pairs": 1, "false_hits": 0}, "number": {"pairs": 1, "false_hits": 0}}
    pairs._scores.clear()
    below = pairs.measure(0.9, path, Scaled(0.8))  # every similarity 0.8: nothing reaches the threshold
    assert below["hits"] == 0 and below["paraphrase_misses"] == {"below the threshold": 2}
    assert pairs.measure(0.75, path)["hits"] == 2  # scored once per file: the same similarities, another threshold


def test_a_guard_that_lets_a_near_miss_through_is_counted_as_a_false_hit(tmp_path, monkeypatch):
    path = write(tmp_path / "pairs.jsonl", [
        {"a": "Is coffee good for you?", "b": "Is coffee bad for you?", "label": "near_miss", "kind": "antonym"}])
    monkeypatch.setattr(pairs, "same_meaning_guard", lambda q, c: None if q.endswith("bad for you?") else "no")
    m = pairs.measure(0.9, path, SameVector())  # one way round hits: that is enough to serve a wrong answer
    assert m["false_hits"] == 1 and m["false_hit_pairs"] == ["Is coffee good for you? | Is coffee bad for you?"]
    assert m["misses_by_kind"]["antonym"] == {"pairs": 1, "false_hits": 1}


def test_panel_summary_says_what_is_missing_instead_of_failing(tmp_path):
    line = pairs.panel_summary(0.8, tmp_path / "absent.jsonl")
    assert line.startswith("Not measured on the project's question pairs (FileNotFoundError")


@pytest.mark.slow
def test_real_model_no_false_hits_at_the_default_threshold():
    m = pairs.measure(DEFAULT_THRESHOLD)
    assert m["false_hits"] == 0, m["false_hit_pairs"]
    assert m["hit_rate"] >= HIT_RATE_FLOOR, m["paraphrase_misses"]
    line = pairs.panel_summary(DEFAULT_THRESHOLD)
    assert line.startswith(f"On the project's {m['n_paraphrases'] + m['n_near_misses']} question pairs")
    assert f"{m['hit_rate']:.0%} of the {m['n_paraphrases']} paraphrases hit, no false hits" in line
