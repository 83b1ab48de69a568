"""Chat with a server in a real headless chromium: the sidebar's model field takes the URL of an OpenAI-compatible
server on loopback (``workbench serve``'s app on the tiny model), and the reply's metrics show the network split."""

from __future__ import annotations

import pytest
from browser import MODEL_WAIT_MS, send
from servers import tiny_server  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_chat_with_a_server_shows_the_network_split(tiny_server, page, artifacts_dir):
    from playwright.sync_api import expect

    server, name = tiny_server
    sidebar = page.get_by_test_id("stSidebar")
    model = sidebar.get_by_test_id("stSelectbox").filter(has_text="Model").first
    expect(model).to_be_visible(timeout=60_000)
    model.click()
    page.get_by_role("option", name="Other…", exact=True).click()
    typed = sidebar.get_by_test_id("stTextInput").first.locator("input")
    expect(typed).to_be_visible(timeout=30_000)
    typed.fill(server.url)
    typed.press("Enter")
    expect(sidebar.get_by_test_id("stSelectbox").filter(has_text="Server model")).to_be_visible(timeout=60_000)
    expect(sidebar).to_contain_text("runs its own weights and kernels")
    expect(sidebar).to_contain_text("— parameters · — of weights", timeout=MODEL_WAIT_MS)
    box = page.get_by_test_id("stChatInput").locator("textarea")
    expect(box).to_be_editable(timeout=MODEL_WAIT_MS)
    send(page, "What is the capital of France?")
    reply = page.get_by_test_id("stChatMessage").filter(has_text="TTFT")
    expect(reply).to_be_visible(timeout=120_000)
    expect(reply).to_contain_text("= network")
    expect(reply).to_contain_text("server prefill")
    expect(reply).to_contain_text(f"{name} at 127.0.0.1")
    page.wait_for_timeout(1000)  # let plotly finish drawing before the picture
    page.screenshot(path=str(artifacts_dir / "chat-server.png"), full_page=True)
