"""Driving the app in-process with Streamlit's AppTest: starting it on a model, reading what it shows, waiting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from workbench.ui import state

APP = str(Path(__file__).resolve().parents[1] / "app.py")
TIMEOUT_S = 600  # a first run converts the embedded GGUF (tens of seconds on a small CPU)
QUESTION = "What is the capital of France?"
POLL_S = 0.5
JOB_TIMEOUT_S = 240  # a measurement, a sweep or a small student on the tiny model takes seconds


def new_app(**session) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    for key, value in session.items():
        at.session_state[key] = value
    return at


def tiny_app(model_dir: Path, **session) -> AppTest:
    return new_app(**{state.MODEL_CHOICE: state.OTHER_MODEL, state.MODEL_OTHER: str(model_dir), **session})


def assistant_replies(at: AppTest) -> list:
    return [m for m in at.chat_message if m.name == "assistant"]


def reply_caption(message) -> str:
    return " ".join(c.value for c in message.caption)


def sidebar_text(at: AppTest) -> str:
    return " ".join([m.value for m in at.sidebar.markdown] + [c.value for c in at.sidebar.caption])


def click(at: AppTest, label: str) -> AppTest:
    """Click the first button whose label starts with ``label`` (the caller reruns)."""
    return next(b for b in at.button if b.label.startswith(label)).click()


def build_table(at: AppTest) -> dict[str, dict]:
    """The What changed page's build table, by row name."""
    return {row[""]: row for row in at.dataframe[0].value.to_dict("records")}


def run_until(at: AppTest, done, timeout_s: float = JOB_TIMEOUT_S) -> AppTest:
    """Rerun the app until ``done(at)`` holds: what a browser's polling fragment does every second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception
        if done(at):
            return at
        time.sleep(POLL_S)
    pytest.fail("the background job did not finish in time")
