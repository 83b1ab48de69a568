"""The app in a real headless chromium against `streamlit run`: a chat reply, its metrics and charts, and Stop."""

from __future__ import annotations

import pytest
from browser import MODEL_WAIT_MS, send

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_chat_reply_streams_with_metrics_and_charts(page, artifacts_dir):
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stChatInput").locator("textarea")).to_be_editable(timeout=MODEL_WAIT_MS)
    send(page, "What is the capital of France?")
    reply = page.get_by_test_id("stChatMessage").filter(has_text="Paris")
    expect(reply).to_be_visible(timeout=120_000)
    expect(reply.get_by_text("TTFT")).to_be_visible(timeout=120_000)  # the metrics line follows the last token
    expect(reply).to_contain_text("tok/s")
    charts = page.get_by_test_id("stPlotlyChart")
    expect(charts.first).to_be_visible()
    expect(charts).to_have_count(2)
    expect(page.get_by_test_id("stSidebar")).to_contain_text("backend: dense fp32")
    page.wait_for_timeout(1000)  # let plotly finish drawing before the picture
    page.screenshot(path=str(artifacts_dir / "chat.png"), full_page=True)


def test_stop_keeps_the_partial_reply_and_its_metrics(page, artifacts_dir):
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stChatInput").locator("textarea")).to_be_editable(timeout=MODEL_WAIT_MS)
    send(page, "Count from 1 to 300, writing every number as a word.")
    stop = page.get_by_test_id("stChatMessage").get_by_role("button", name="Stop")  # not the header's Stop
    expect(stop).to_be_visible(timeout=120_000)
    page.wait_for_timeout(1500)  # let a few tokens stream
    stop.click()
    replies = page.get_by_test_id("stChatMessage")
    expect(replies.last).to_contain_text("stopped", timeout=60_000)
    expect(replies.last).to_contain_text("TTFT")
    expect(stop).to_have_count(0)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(artifacts_dir / "chat-stopped.png"), full_page=True)


def test_repeated_question_is_replayed_from_the_cache(page, artifacts_dir):
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stChatInput").locator("textarea")).to_be_editable(timeout=MODEL_WAIT_MS)
    send(page, "What is the capital of France?")
    expect(page.get_by_test_id("stChatMessage").get_by_text("TTFT")).to_be_visible(timeout=120_000)
    page.get_by_role("button", name="Clear chat").click()
    expect(page.get_by_test_id("stChatMessage")).to_have_count(0, timeout=30_000)
    send(page, "What is the capital of France?")
    reply = page.get_by_test_id("stChatMessage").filter(has_text="Paris").last
    expect(reply).to_contain_text("cached", timeout=60_000)
    expect(reply).to_contain_text("looked up in")
    page.get_by_test_id("stSidebar").get_by_text("Response cache").click()
    expect(page.get_by_test_id("stSidebar")).to_contain_text("1 exact + 0 semantic")
    page.wait_for_timeout(1000)
    page.screenshot(path=str(artifacts_dir / "chat-cached.png"), full_page=True)
