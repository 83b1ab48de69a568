"""The app in a real headless chromium against `streamlit run`: a chat reply, its metrics and charts, and Stop."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL_WAIT_MS = 600_000  # the first visit may convert the embedded GGUF

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamlit_command() -> list[str]:
    script = Path(sys.executable).with_name("streamlit")  # .venv/bin/streamlit next to .venv/bin/python
    return [str(script)] if script.exists() else [sys.executable, "-m", "streamlit"]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"streamlit did not become healthy in {timeout_s} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def streamlit_server(log: Path, env: dict[str, str]):
    """`streamlit run app.py` on a free localhost port with ``env``; yields its url once it is healthy."""
    port = free_port()
    command = [*streamlit_command(), "run", "app.py", "--server.headless", "true", "--server.port", str(port),
               "--server.address", "127.0.0.1"]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def app_url(tmp_path):
    """`streamlit run app.py` on a free localhost port, sharing this test session's WORKBENCH_HOME."""
    from workbench.cache import ResponseCache

    ResponseCache().clear()  # every reply here comes from the model unless the test repeats a question itself
    with streamlit_server(tmp_path / "streamlit.log", dict(os.environ)) as url:
        yield url


@pytest.fixture
def page(app_url):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser test drives Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1440, "height": 1200})
            tab.goto(app_url)
            yield tab
        finally:
            browser.close()


def send(page, text: str) -> None:
    box = page.get_by_test_id("stChatInput").locator("textarea")
    box.fill(text)
    box.press("Enter")


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
