"""The Compare page in a real headless chromium: one prompt streams into both panes, then the summary."""

from __future__ import annotations

import pytest
from browser import MODEL_WAIT_MS

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def choose(page, side: str, label: str, option: str) -> None:
    """Open "Change recipe A" (or B) and pick ``option`` in its selectbox ``label``."""
    expander = page.get_by_test_id("stExpander").filter(has_text=f"Change recipe {side}")
    from playwright.sync_api import expect

    select = expander.get_by_test_id("stSelectbox").filter(has_text=label).first
    if not select.is_visible():  # closed: open it (it stays open across reruns)
        expander.get_by_text(f"Change recipe {side}").click()
        expect(select).to_be_visible()
        page.wait_for_timeout(500)  # the expander's opening animation
    select.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_compare_streams_both_panes_then_the_summary(page, artifacts_dir):
    from playwright.sync_api import expect

    box = page.get_by_test_id("stChatInput").locator("textarea")
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)  # the chat page's model is built
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare").click()
    expect(page.get_by_role("heading", name="Recipe B")).to_be_visible(timeout=60_000)
    expect(box).to_have_count(1, timeout=MODEL_WAIT_MS)
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)  # both models built
    choose(page, "B", "dtype", "int8 (quantized)")
    expect(page.get_by_text("backend: PyTorch dynamic int8")).to_be_visible(timeout=MODEL_WAIT_MS)
    expect(box).to_have_count(1, timeout=60_000)  # a rerun's stale elements are gone
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)

    box.fill("What is the capital of France?")
    box.press("Enter")
    stop = page.get_by_test_id("stButton").filter(has_text="Stop")
    expect(stop).to_be_visible(timeout=120_000)  # shown while the answers stream
    summary = page.get_by_role("heading", name="B against A")
    expect(summary).to_be_visible(timeout=300_000)
    metrics = page.get_by_test_id("stMetric")
    expect(metrics).to_have_count(6)  # TTFT, TPOT and decode speed in each pane
    expect(metrics.filter(has_text="TTFT")).to_have_count(2)
    expect(page.get_by_text("Paris").first).to_be_visible()
    expect(page.get_by_test_id("stPlotlyChart")).to_have_count(3)  # both panes' per-token latency, the speed-up
    expect(page.get_by_test_id("stDataFrame")).to_have_count(1)
    page.set_viewport_size({"width": 1440, "height": 2400})  # the page scrolls inside itself: show all of it
    page.wait_for_timeout(1500)  # let plotly finish drawing before the picture
    page.screenshot(path=str(artifacts_dir / "compare.png"), full_page=True)


def test_compare_transformers_against_llama_cpp(page, artifacts_dir):
    from playwright.sync_api import expect

    from workbench.runtimes import llamacpp

    if llamacpp.problem():
        pytest.skip(llamacpp.problem())
    box = page.get_by_test_id("stChatInput").locator("textarea")
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare").click()
    expect(page.get_by_role("heading", name="Recipe B")).to_be_visible(timeout=60_000)
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)
    choose(page, "B", "Runtime", "llama.cpp")
    expect(box).to_have_count(1, timeout=60_000)
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)
    choose(page, "B", "dtype", "q4_0 (4-bit blocks)")
    expect(page.get_by_text("backend: llama.cpp q4_0 (Q4_0")).to_be_visible(timeout=MODEL_WAIT_MS)
    expect(box).to_have_count(1, timeout=60_000)
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)

    box.fill("What is the capital of France?")
    box.press("Enter")
    summary = page.get_by_role("heading", name="B against A")
    expect(summary).to_be_visible(timeout=300_000)
    expect(page.get_by_test_id("stMetric").filter(has_text="TTFT")).to_have_count(2)
    expect(page.get_by_text("Paris").first).to_be_visible()
    expect(page.get_by_test_id("stAlert").filter(has_text="B decodes")).to_be_visible()
    page.set_viewport_size({"width": 1440, "height": 2400})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(artifacts_dir / "compare-llamacpp.png"), full_page=True)
