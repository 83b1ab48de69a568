"""The request history: rows written, filtered and read back, and the Recorder the serving layer calls."""

import math
import sqlite3

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


# Damage, locks, retention -----------------------------------------------------------------------------------


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_new_history_started(tmp_path):
    path = tmp_path / "metrics.sqlite"
    path.write_bytes(b"this is not a database, it is text " * 200)
    store = HistoryStore(path)
    (aside,) = tmp_path.glob("metrics.sqlite.damaged-*")
    assert store.problem == (f"The request history {path} could not be read (file is not a database); it was moved "
                             f"to {aside.name} and a new, empty history started.")
    store.add(_record("a", 1000.0))
    assert store.count() == 1 and aside.read_bytes().startswith(b"this is not a database")


def test_damage_found_while_reading_sets_the_file_aside_too(tmp_path):
    path = tmp_path / "metrics.sqlite"
    store = HistoryStore(path)
    for i in range(300):
        store.add(_record("a", 1000.0 + i))
    store.flush()  # on disk before it is damaged
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xff" * (len(data) - 4096)  # every page after the first overwritten
    path.write_bytes(bytes(data))
    fresh = HistoryStore(path)  # the schema page reads; the rows' pages do not
    (aside,) = tmp_path.glob("metrics.sqlite.damaged-*")
    assert fresh.problem.startswith(f"The request history {path} could not be read (database disk image is malformed)")
    fresh.add(_record("b", 2000.0))
    assert [r["recipe_key"] for r in fresh.recent()] == ["b"]


def test_a_locked_history_drops_the_row_quietly_and_says_why(tmp_path):
    path = tmp_path / "metrics.sqlite"
    store = HistoryStore(path, busy_timeout_s=0.2)
    store.add(_record("a", 1000.0))
    store.flush()  # written before the other process takes the lock
    other = sqlite3.connect(path)
    other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    other.execute("INSERT INTO requests (recipe_key, started_at) VALUES ('x', 1.0)")
    try:
        store.record(Recipe(device="cpu"), GenerationResult(text="Hi", prompt_tokens=3, new_tokens=1, token_times=[0.1],
                                                            ttft_s=0.1, e2e_s=0.1, queue_s=0.0, finish_reason="eos"),
                     "chat", 1001.0)
        assert "another process kept it locked for over 0.2 s; that request was not recorded" in store.problem
        assert [r["recipe_key"] for r in store.recent()] == ["a"]  # reading still works under a write lock
    finally:
        other.rollback()
        other.close()
    store.add(_record("c", 1002.0))
    assert store.count() == 2


def test_rows_older_than_the_retention_are_deleted_on_open(tmp_path, monkeypatch):
    path = tmp_path / "metrics.sqlite"
    store = HistoryStore(path)
    day = 86400.0
    for age_days in (40, 31, 29, 1, 0):
        store.add(_record(f"{age_days}d", 1e9 - age_days * day))
    monkeypatch.setenv("WORKBENCH_HISTORY_DAYS", "0")
    assert HistoryStore(path).count() == 5  # 0 keeps every row
    monkeypatch.setenv("WORKBENCH_HISTORY_DAYS", "30")
    assert [r["recipe_key"] for r in HistoryStore(path).recent()] == ["29d", "1d", "0d"]  # counted from the newest
    monkeypatch.setenv("WORKBENCH_HISTORY_DAYS", "a month")
    kept = HistoryStore(path)
    assert kept.retention_days == 30 and "WORKBENCH_HISTORY_DAYS='a month' is not a number of days" in kept.problem


def test_recent_reads_through_the_time_index_without_sorting_the_history(tmp_path):
    store = HistoryStore(tmp_path / "metrics.sqlite")
    db = sqlite3.connect(store.path)
    for clause in ("", "WHERE started_at >= 5"):
        plan = " ".join(row[-1] for row in db.execute(
            f"EXPLAIN QUERY PLAN SELECT * FROM requests {clause} ORDER BY started_at DESC, id DESC LIMIT 10"))
        assert "USING INDEX requests_time" in plan and "TEMP B-TREE" not in plan, plan
    db.close()


def test_a_problem_met_by_one_store_is_told_by_every_store_of_the_file(tmp_path):
    path = tmp_path / "metrics.sqlite"
    first = HistoryStore(path)
    path.write_bytes(b"not a database " * 100)  # damaged after the first store opened it
    first.count()
    assert "was moved to" in first.problem
    assert HistoryStore(path).problem == first.problem  # a page that opens its own store learns it too
    assert HistoryStore(tmp_path / "other.sqlite").problem is None
