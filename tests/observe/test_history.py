"""The request history: rows written, filtered and read back, and the Recorder the serving layer calls."""

import math

import pytest

from workbench.observe.history import HistoryStore
from workbench.observe.records import RequestRecord, record_from_row
from workbench.recipe import Recipe
from workbench.serving.results import GenerationResult


def _record(key, t, ttft=0.1):
    return RequestRecord(key, f"label {key}", t, 10, 3, ttft, ttft + 0.2, 0.0,
                         token_times=[ttft, ttft + 0.1, ttft + 0.2])


def test_history_filters_and_orders(tmp_path):
    store = HistoryStore(tmp_path / "m.sqlite")
    for i, key in enumerate(["a", "b", "a", "a"]):
        store.add(_record(key, 1000.0 + i, ttft=0.1 * (i + 1)))
    assert store.count() == 4
    rows = store.recent(limit=2)
    assert [r["started_at"] for r in rows] == [1002.0, 1003.0]  # most recent, oldest first
    only_a = store.recent(recipe_key="a")
    assert [r["recipe_key"] for r in only_a] == ["a", "a", "a"]
    assert [r["started_at"] for r in store.recent(since=1002.5)] == [1003.0]
    assert math.isclose(only_a[0]["tpot_s"], 0.1)
    assert only_a[0]["decode_tok_s"] == pytest.approx(10.0)


def test_a_finished_result_is_recorded_with_its_recipe_origin_and_figures(tmp_path):
    store = HistoryStore(tmp_path / "m.sqlite")
    recipe = Recipe(device="cpu", dtype="bf16", batch_size=4)
    result = GenerationResult(text="Paris.", prompt_tokens=12, new_tokens=3, token_times=[0.2, 0.3, 0.4],
                              ttft_s=0.2, e2e_s=0.4, queue_s=0.05, cache="miss", finish_reason="eos", batch_size=3)
    store.record(recipe, result, "cli", started_at=1234.5)
    (row,) = store.after(0)
    assert (row["recipe_key"], row["recipe_label"], row["origin"], row["started_at"]) == (
        recipe.key(), recipe.label(), "cli", 1234.5)
    assert (row["prompt_tokens"], row["new_tokens"], row["batch_size"], row["cache"]) == (12, 3, 3, "miss")
    assert row["tpot_s"] == pytest.approx(result.tpot_s) and row["token_times"] == [0.2, 0.3, 0.4]
    again = record_from_row(row)
    assert again.tpot_s == pytest.approx(result.tpot_s) and again.queue_s == pytest.approx(0.05)
