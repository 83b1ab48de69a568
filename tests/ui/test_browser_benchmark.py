"""The Benchmark page in a real headless chromium: a small sweep, its progress bar, chart and table."""

from __future__ import annotations

import pytest
from browser import MODEL_WAIT_MS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def set_number(page, label: str, value: int) -> None:
    from playwright.sync_api import expect

    box = page.get_by_test_id("stNumberInput").filter(has_text=label).locator("input")
    # While a rerun is drawing, the input of the run before may still be on the page beside the new one (stale,
    # gone when the run ends): fill it once it is the only one.
    expect(box).to_have_count(1, timeout=120_000)
    box.fill(str(value))
    box.press("Enter")


def test_benchmark_page_runs_a_small_sweep(page, app_url, artifacts_dir):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/benchmark")
    expect(page.get_by_role("button", name="Run benchmark")).to_be_enabled(timeout=MODEL_WAIT_MS)
    # Each change reruns the page, which may redraw the inputs under the next fill: wait for each to show.
    set_number(page, "Tokens per answer", 4)
    expect(page.get_by_text("requests of 4 tokens")).to_be_visible(timeout=120_000)
    set_number(page, "Requests per user", 1)
    # (1 warm-up + 1 measured) x 16 users (the default) x 3 batch sizes
    expect(page.get_by_text("96 requests of 4 tokens")).to_be_visible(timeout=120_000)
    page.get_by_role("button", name="Run benchmark").click()
    expect(page.get_by_test_id("stProgress").first).to_be_visible(timeout=30_000)
    expect(page.get_by_role("heading", name="This sweep")).to_be_visible(timeout=600_000)
    expect(page.get_by_text("the tokens per second of batch 1").first).to_be_visible()
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible()
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.wait_for_timeout(1500)  # let plotly finish drawing before the picture
    page.screenshot(path=str(artifacts_dir / "benchmark.png"), full_page=True)
