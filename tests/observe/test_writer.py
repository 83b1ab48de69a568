"""The history's background writer: a record returns at once, readers of this process see its writes, rows and
listeners keep their order, a failing write or listener never stops the next, the queue is bounded, and a
process that exits right after a request still stores it."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from records import T0, record

from workbench.observe import listeners, writer
from workbench.observe.history import HistoryStore
from workbench.observe.writer import Writer

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def blocked_listener():
    """A listener that holds the writer thread on its first record until released: (entered, release, seen)."""
    entered, release, seen = threading.Event(), threading.Event(), []

    def listener(rec):
        seen.append((rec.recipe_key, threading.current_thread().name))
        entered.set()
        assert release.wait(60), "the test never released the listener"

    listeners.add_listener(listener)
    try:
        yield entered, release, seen
    finally:
        release.set()
        listeners.remove_listener(listener)


@contextlib.contextmanager
def collecting():
    seen = []
    listeners.add_listener(seen.append)
    try:
        yield seen
    finally:
        listeners.remove_listener(seen.append)


def test_a_record_returns_while_a_listener_is_still_busy_with_the_one_before(tmp_path):
    store = HistoryStore(tmp_path / "m.sqlite")
    with blocked_listener() as (entered, release, seen):
        store.add(record("a", T0, 0.1, 0.01))
        assert entered.wait(30)  # the writer is inside the listener, and add() has already returned
        store.add(record("b", T0 + 1, 0.1, 0.01))  # returns although the writer is held
        assert store.flush(timeout=0) is False  # "b" is still queued
        release.set()
        assert store.flush(timeout=30) is True
    assert [r["recipe_key"] for r in store.recent()] == ["a", "b"]
    assert seen[0] == ("a", "history-writer") and [k for k, _ in seen] == ["a", "b"]


def test_a_record_returns_while_another_process_holds_the_database(tmp_path):
    store = HistoryStore(tmp_path / "m.sqlite", busy_timeout_s=120)
    other = sqlite3.connect(store.path)
    other.execute("BEGIN IMMEDIATE")  # the write lock: an insert now waits for it
    try:
        store.add(record("a", T0, 0.1, 0.01))  # returns at once: the insert waits on the writer thread
        assert store.flush(timeout=0) is False
    finally:
        other.rollback()
        other.close()
    assert store.flush(timeout=60) and store.count() == 1 and store.problem is None


def test_readers_of_this_process_see_its_writes_through_any_store_of_the_file(tmp_path):
    path = tmp_path / "m.sqlite"
    writing = HistoryStore(path)
    with blocked_listener() as (entered, release, _):
        writing.add(record("k0", T0, 0.1, 0.01))
        assert entered.wait(30)
        for i in range(1, 50):
            writing.add(record(f"k{i}", T0 + i, 0.1, 0.01))
        reading = HistoryStore(tmp_path / "." / "m.sqlite")  # another store (another page) of the same file
        got = {}
        reader = threading.Thread(target=lambda: got.update(rows=reading.recent(limit=100), n=reading.count()))
        reader.start()
        release.set()
        reader.join(60)
    assert got["n"] == 50 and [r["recipe_key"] for r in got["rows"]] == [f"k{i}" for i in range(50)]
    assert len(writing.after(0)) == 50 and writing.problem is None


def test_rows_and_listeners_keep_the_order_they_were_recorded_in(tmp_path):
    first, second = HistoryStore(tmp_path / "m.sqlite"), HistoryStore(tmp_path / "m.sqlite")
    keys = [f"k{i}" for i in range(1200)]  # more than one batch
    with collecting() as seen:
        for i, key in enumerate(keys):
            (first if i % 3 else second).add(record(key, T0, 0.1, 0.01))  # one time: only the id orders them
        first.flush()
    assert [r["recipe_key"] for r in first.after(0, limit=5000)] == keys
    assert [r.recipe_key for r in seen] == keys


def test_a_listener_that_raises_does_not_stop_later_records(tmp_path):
    calls = []

    def broken(rec):
        calls.append(rec.recipe_key)
        raise RuntimeError("boom")

    store = HistoryStore(tmp_path / "m.sqlite")
    listeners.add_listener(broken)
    try:
        with collecting() as seen:
            for i in range(3):
                store.add(record(f"k{i}", T0 + i, 0.1, 0.01))
            store.flush()
    finally:
        listeners.remove_listener(broken)
    assert calls == ["k0", "k1", "k2"] and [r.recipe_key for r in seen] == ["k0", "k1", "k2"]
    assert store.count() == 3 and store.problem is None


def test_a_failing_write_is_logged_and_the_writer_goes_on(caplog):
    jobs = Writer()
    done = []

    def handler(items):
        if "bad" in items:
            raise OSError("disk on fire")
        done.extend(items)

    jobs.submit("x", handler, "bad")
    assert jobs.flush("x", timeout=30)
    jobs.submit("x", handler, "good")
    assert jobs.flush("x", timeout=30) and done == ["good"]
    assert "writing the request history failed" in caplog.text and "disk on fire" in caplog.text


def test_a_store_that_cannot_be_written_says_so_after_the_rows_it_lost(tmp_path):
    store = HistoryStore(tmp_path / "m.sqlite", busy_timeout_s=0.1)
    other = sqlite3.connect(store.path)
    other.execute("BEGIN IMMEDIATE")
    try:
        store.add(record("lost", T0, 0.1, 0.01))
        assert "cannot be written: another process kept it locked for over 0.1 s" in store.problem  # waits first
    finally:
        other.rollback()
        other.close()
    store.add(record("kept", T0 + 1, 0.1, 0.01))
    assert [r["recipe_key"] for r in store.recent()] == ["kept"]


def test_the_queue_is_bounded_and_says_how_many_rows_it_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "MAX_PENDING", 3)
    store = HistoryStore(tmp_path / "m.sqlite")
    with blocked_listener() as (entered, release, _):
        store.add(record("k0", T0, 0.1, 0.01))
        assert entered.wait(30)  # k0 is out of the queue, in the listener
        for i in range(1, 6):
            store.add(record(f"k{i}", T0 + i, 0.1, 0.01))  # k1-k3 queued, k4 and k5 refused
        release.set()
    assert [r["recipe_key"] for r in store.recent()] == ["k0", "k1", "k2", "k3"]
    assert store.problem.startswith(f"The request history {store.path} is not keeping up: 2 request(s) were not "
                                    "recorded (over")


def test_a_flush_from_a_listener_does_not_wait_for_itself(tmp_path):
    store = HistoryStore(tmp_path / "m.sqlite")
    counts = []
    listener = lambda rec: counts.append(store.count())  # noqa: E731 - a listener that reads the history
    listeners.add_listener(listener)
    try:
        store.add(record("a", T0, 0.1, 0.01))
        assert store.flush(timeout=30)
    finally:
        listeners.remove_listener(listener)
    assert counts == [1]


CHILD = """
import sys
from workbench.observe.history import HistoryStore
from workbench.observe.records import RequestRecord
store = HistoryStore(sys.argv[1], busy_timeout_s=120)
print("opened", flush=True)
sys.stdin.readline()
store.add(RequestRecord("at-exit", "label", 1.0, 10, 3, 0.1, 0.3, 0.0, token_times=[0.1, 0.2, 0.3]))
print("queued", flush=True)
"""


def test_a_process_that_exits_right_after_a_record_still_stores_it(tmp_path):
    path = tmp_path / "m.sqlite"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    other = None
    try:
        assert child.stdout.readline() == "opened\n", child.stderr.read()
        other = sqlite3.connect(path)
        other.execute("BEGIN IMMEDIATE")  # the row cannot be written before the child's script ends
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "queued\n", child.stderr.read()
        other.rollback()  # the child is now at exit, waiting for its row to be written
        assert child.wait(60) == 0
    finally:
        if other is not None:
            other.close()
        if child.poll() is None:
            child.kill()
    assert child.stderr.read() == ""
    (row,) = HistoryStore(path).after(0)
    assert row["recipe_key"] == "at-exit" and row["token_times"] == [0.1, 0.2, 0.3]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_starts_with_an_empty_queue_of_its_own(tmp_path):
    import os

    store = HistoryStore(tmp_path / "m.sqlite")
    with blocked_listener() as (entered, release, _):
        store.add(record("parent", T0, 0.1, 0.01))
        assert entered.wait(30)
        store.add(record("parent-queued", T0 + 1, 0.1, 0.01))
        pid = os.fork()
        if pid == 0:  # the child: its own writer, none of the parent's rows
            code = 1
            try:
                release.set()  # the child's copy of the listener must not hold its own writer
                store.add(record("child", T0 + 2, 0.1, 0.01))
                code = 0 if store.flush(timeout=30) and writer.WRITER.pending() == 0 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        release.set()
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(r["recipe_key"] for r in store.recent()) == ["child", "parent", "parent-queued"]
