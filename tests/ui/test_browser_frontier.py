"""The Frontier and Roofline & predictor pages in a real headless chromium: they draw their controls and charts."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_roofline_page_measures_this_machine_and_draws_the_predictor(page, app_url, artifacts_dir):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/roofline")
    expect(page.get_by_role("heading", name="Predictor")).to_be_visible(timeout=180_000)
    expect(page.get_by_text("GB/s").first).to_be_visible(timeout=180_000)
    expect(page.get_by_role("button", name="Re-measure this machine")).to_be_visible()
    expect(page.get_by_test_id("stPlotlyChart").first).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.wait_for_timeout(1500)  # let plotly finish drawing before the picture
    page.screenshot(path=str(artifacts_dir / "roofline.png"), full_page=True)


def test_frontier_page_shows_its_grid_and_start(page, app_url, artifacts_dir):
    from playwright.sync_api import expect

    page.goto(f"{app_url}/frontier")
    expect(page.get_by_role("heading", name="Grid")).to_be_visible(timeout=180_000)
    expect(page.get_by_role("button", name="Start")).to_be_visible(timeout=180_000)
    expect(page.get_by_role("heading", name="Speed against quality")).to_be_visible()
    expect(page.get_by_test_id("stException")).to_have_count(0)
    page.screenshot(path=str(artifacts_dir / "frontier.png"), full_page=True)
