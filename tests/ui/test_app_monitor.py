"""The Monitor page in AppTest: charts, table and filters over a seeded history; a helpful empty state; the
app's exporter, and a clear warning when its port is taken."""

from __future__ import annotations

import csv
import io
import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from apps import APP
from records import record, seeded_records
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from workbench.observe import dashboard, listeners
from workbench.observe.history import HistoryStore
from workbench.ui import monitor, state

PAGE = "pages/monitor.py"


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A WORKBENCH_HOME of this test's own, so the history holds only what the test writes."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return tmp_path


def seed_history(now: float) -> None:
    store = HistoryStore()
    for r in seeded_records(start=now - 120):
        store.add(r)
    store.flush()  # rows are written on the history's writer thread


def monitor_app(**session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in session.items():
        at.session_state[key] = value
    at.session_state[state.MONITOR_LIVE] = False  # one run per call; live refresh is the fragment's timer
    at.run()
    return at.switch_page(PAGE).run()


def plotly_titles(at: AppTest) -> list[str]:
    import json

    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def test_monitor_shows_charts_table_and_exports_for_a_seeded_history(home):
    seed_history(time.time())
    at = monitor_app()
    assert not at.exception, at.exception
    titles = plotly_titles(at)
    assert "Latency over time" in titles and "Distribution of model latency" in titles
    assert any(t.startswith("Model throughput") for t in titles)
    assert "Where answers came from (requests)" in titles and "Memory of the app's process" in titles
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Requests"] == "86" and metrics["From the model"] == "80"
    assert metrics["Cache hit rate"] == f"{6 / 86:.0%}"
    table = at.dataframe[0].value
    assert set(table["recipe"]) == {"recipe aaaa1111", "recipe bbbb2222"}
    hits = table[table["series"] == "cache hit"]
    assert list(hits["recipe"]) == ["recipe aaaa1111"] and list(hits["n"]) == [6]
    assert len(at.get("download_button")) == 2


def test_exports_are_built_when_clicked_not_at_every_refresh(home, monkeypatch):
    seed_history(time.time())
    built, deferred = [], {}
    for name in ("rows_csv", "rows_json"):
        real = getattr(dashboard, name)
        monkeypatch.setattr(dashboard, name, lambda *a, _real=real, _name=name, **k: built.append(_name) or _real(*a, **k))
    add_deferred = MediaFileManager.add_deferred

    def keep(self, data, mimetype, coordinates, file_name=None, **kwargs):  # what a click on the button would run
        deferred[file_name.rsplit(".", 1)[1]] = data
        return add_deferred(self, data, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add_deferred", keep)
    at = monitor_app()
    at.run()  # what the live dashboard does every few seconds
    assert not at.exception, at.exception
    assert not built and all(b.proto.deferred_file_id for b in at.get("download_button"))
    rows = list(csv.DictReader(io.StringIO(deferred["csv"]())))
    assert built == ["rows_csv"] and len(rows) == 86 and {r["recipe_key"] for r in rows} == {"aaaa1111", "bbbb2222"}
    exported = json.loads(deferred["json"]())
    assert built == ["rows_csv", "rows_json"]
    assert len(exported["requests"]) == 86 and exported["window"] == "Last 24 hours" and exported["exported_at"]


def test_monitor_filters_by_recipe_origin_and_window(home):
    seed_history(time.time())
    at = monitor_app()
    at.multiselect(key=state.MONITOR_RECIPES).set_value(["bbbb2222"]).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert set(table["recipe"]) == {"recipe bbbb2222"}
    assert {m.label: m.value for m in at.metric}["Requests"] == "40"
    at.multiselect(key=state.MONITOR_RECIPES).set_value([]).run()
    at.multiselect(key=state.MONITOR_ORIGINS).set_value(["chat"]).run()
    assert set(at.dataframe[0].value["recipe"]) == {"recipe aaaa1111"}
    at.selectbox(key=state.MONITOR_WINDOW).set_value("Last 15 minutes").run()
    assert {m.label: m.value for m in at.metric}["Requests"] == "46"  # every seeded request is 2 minutes old


def test_monitor_old_history_outside_the_window_says_how_to_widen_it(home):
    seed_history(time.time() - 10 * 86400)
    at = monitor_app()
    assert not at.exception, at.exception
    assert any("Widen the time window" in i.value for i in at.info)
    at.selectbox(key=state.MONITOR_WINDOW).set_value("All time").run()
    assert {m.label: m.value for m in at.metric}["Requests"] == "86"


def test_monitor_with_an_empty_history_explains_what_to_do(home):
    at = monitor_app()
    assert not at.exception, at.exception
    assert not at.error
    info = " ".join(i.value for i in at.info)
    assert "No requests recorded yet" in info and "workbench bench" in info
    assert len(at.get("plotly_chart")) == 0


def test_a_damaged_history_is_moved_aside_and_the_page_says_so(home):
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state[state.MONITOR_LIVE] = False
    at.run()
    (home / "metrics.sqlite").unlink(missing_ok=True)
    (home / "metrics.sqlite").write_bytes(b"this is not a database" * 100)  # damaged after the app opened it
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    (warning,) = [w.value for w in at.warning if "request history" in w.value]
    assert "could not be read" in warning and "moved to metrics.sqlite.damaged-" in warning
    assert any("No requests recorded yet" in i.value for i in at.info)
    assert list(home.glob("metrics.sqlite.damaged-*"))


def test_a_history_problem_shows_once_beside_the_dashboard(home, monkeypatch):
    seed_history(time.time())
    monkeypatch.setenv("WORKBENCH_HISTORY_DAYS", "forever")
    at = monitor_app()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning if "WORKBENCH_HISTORY_DAYS" in w.value]
    assert len(warnings) == 1 and "is not a number of days" in warnings[0]
    assert {m.label: m.value for m in at.metric}["Requests"] == "86"


def test_the_app_serves_prometheus_metrics_of_new_requests(home):
    monitor.metrics_exporter.clear()
    try:
        at = monitor_app()
        handle = monitor.metrics_exporter()
        assert handle.url and handle.url.startswith("http://127.0.0.1:")
        assert any(handle.url in c.value for c in at.caption)
        store = HistoryStore()
        store.add(record("iiii9999", time.time(), 0.2, 0.05))
        store.flush()  # listeners are told on the history's writer thread
        with urllib.request.urlopen(handle.url, timeout=10) as response:
            body = response.read().decode()
        assert 'workbench_ttft_seconds_count{label="recipe iiii9999",recipe="iiii9999"} 1.0' in body
    finally:
        _release_exporter()


def test_a_port_in_use_is_a_warning_and_the_page_still_works(home, monkeypatch):
    seed_history(time.time())
    monitor.metrics_exporter.clear()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("WORKBENCH_METRICS_PORT", str(taken.getsockname()[1]))
        try:
            at = monitor_app()
            assert not at.exception, at.exception
            warning = " ".join(w.value for w in at.warning)
            assert "cannot listen on 127.0.0.1" in warning and "WORKBENCH_METRICS_PORT" in warning
            assert len(at.get("plotly_chart")) >= 4
        finally:
            _release_exporter()


def _release_exporter() -> None:
    """Stop counting into the exporters this test made (their listeners stay registered otherwise)."""
    handle = monitor.metrics_exporter()
    listeners.remove_listener(handle.exporter.record)
    monitor.metrics_exporter.clear()
