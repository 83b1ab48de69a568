"""The Monitor page in a real headless chromium against `streamlit run`, over a seeded history: its charts draw,
it refreshes itself, and the app serves Prometheus metrics."""

from __future__ import annotations

import os
import time
import urllib.request

import pytest
from browser import chromium_tab, streamlit_server
from processes import free_port
from records import record, seeded_records

from workbench.observe.history import HistoryStore

pytestmark = pytest.mark.browser


@pytest.fixture
def monitor_server(tmp_path):
    """`streamlit run app.py` with a WORKBENCH_HOME holding a seeded history; yields (app url, metrics url)."""
    home = tmp_path / "home"
    home.mkdir()
    store = HistoryStore(home / "metrics.sqlite")
    for r in seeded_records(start=time.time() - 120):
        store.add(r)
    store.flush()  # on disk before the server, another process, reads it
    metrics_port = free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(home), "WORKBENCH_METRICS_PORT": str(metrics_port)}
    with streamlit_server(tmp_path / "streamlit.log", env) as url:
        yield url, f"http://127.0.0.1:{metrics_port}/metrics", store


def test_monitor_page_draws_its_charts_and_refreshes(monitor_server, artifacts_dir):
    from playwright.sync_api import expect

    url, metrics_url, store = monitor_server
    with chromium_tab(height=2600) as page:  # the whole page in one picture
        page.goto(f"{url}/monitor")
        expect(page.get_by_role("heading", name="Monitor")).to_be_visible(timeout=120_000)
        charts = page.get_by_test_id("stPlotlyChart")
        expect(charts).to_have_count(5, timeout=120_000)
        expect(page.locator(".js-plotly-plot .scatterlayer .trace").first).to_be_attached(timeout=60_000)
        expect(page.get_by_test_id("stMetric").filter(has_text="Requests").first).to_contain_text("86")
        expect(page.get_by_test_id("stDataFrame")).to_be_visible()
        expect(page.get_by_text(metrics_url)).to_be_visible()
        # A request recorded by another process shows up on the next live refresh (every 5 s by default).
        store.add(record("aaaa1111", time.time(), 0.3, 0.05))
        store.flush()
        expect(page.get_by_test_id("stMetric").filter(has_text="Requests").first).to_contain_text(
            "87", timeout=60_000)
        page.wait_for_timeout(1500)  # let plotly finish drawing before the picture
        page.screenshot(path=str(artifacts_dir / "monitor.png"), full_page=True)
    with urllib.request.urlopen(metrics_url, timeout=10) as response:  # the app's own exporter answers
        assert "process_resident_memory_bytes" in response.read().decode()
