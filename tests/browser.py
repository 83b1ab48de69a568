"""The app under `streamlit run` on a free localhost port, and Debian's chromium to drive it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from processes import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MODEL_WAIT_MS = 600_000  # the first visit may convert the embedded GGUF


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
        stop(server)


@contextlib.contextmanager
def chromium_tab(url: str | None = None, height: int = 1200):
    """A tab of Debian's headless chromium (skips the test when chromium is missing), at ``url`` if given."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); the browser tests drive Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1440, "height": height})
            if url:
                tab.goto(url)
            yield tab
        finally:
            browser.close()


def send(page, text: str) -> None:
    """Type a message into the page's chat input and send it."""
    box = page.get_by_test_id("stChatInput").locator("textarea")
    box.fill(text)
    box.press("Enter")
