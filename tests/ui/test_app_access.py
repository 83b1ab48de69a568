"""Hostile input through the app: what the operator has not allowed is refused with a message that names the variable
that allows it, and a tampered response cache is never unpickled nor read or emptied outside its folder."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import time
from pathlib import Path

import diskcache
import pytest
from apps import assistant_replies, click, new_app, reply_caption, tiny_app
from streamlit.testing.v1 import AppTest

from workbench import catalog
from workbench.recipe import GenerationSettings
from workbench.response_cache.disk import ResponseCache
from workbench.response_cache.keys import exact_key, model_key
from workbench.ui import state

HUB_ID = catalog.HUB_MODELS[1].model  # a catalog hub id
TEACHER, STUDENT = "HuggingFaceTB/SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"  # a public pair


def sidebar_errors(at: AppTest) -> str:
    return " ".join(e.value for e in at.sidebar.error)


def monitor_app(**session) -> AppTest:
    """The app on the Monitor page, which builds no model: the sidebar's checks alone."""
    at = new_app(**{state.MONITOR_LIVE: False, **session})
    at.switch_page("pages/monitor.py")
    return at.run()


# Typed paths, downloads, remote code ----------------------------------------------------------------------


@pytest.mark.parametrize("typed", ["tiny", "/etc/passwd.gguf", "../../somewhere/else", "~/models/x"])
def test_a_typed_path_is_refused_when_paths_are_off(tiny_model_dir, monkeypatch, typed):
    monkeypatch.setenv("WORKBENCH_ALLOW_PATHS", "0")
    at = tiny_app(tiny_model_dir if typed == "tiny" else Path(typed)).run()
    assert not at.exception
    assert "is a local path" in sidebar_errors(at) and "WORKBENCH_ALLOW_PATHS=1" in sidebar_errors(at)
    assert at.session_state[state.RECIPE] is None and not at.chat_input  # nothing built, nothing to chat with
    assert any("cannot run here" in w.value for w in at.warning)
    assert at.text_input(key=state.MODEL_OTHER).label == "Hub id"


def test_a_path_is_refused_where_the_model_is_built_too(tiny_model_dir, monkeypatch):
    """Defence in depth: whatever drew the recipe, the page that builds its model refuses it."""
    monkeypatch.setenv("WORKBENCH_ALLOW_PATHS", "0")

    def page(model_dir: str):
        from workbench.recipe import Recipe
        from workbench.ui import model_loading

        model_loading.model_slot(Recipe(model=model_dir, device="cpu"), True)

    at = AppTest.from_function(page, args=(str(tiny_model_dir),), default_timeout=60).run()
    assert not at.exception
    assert "WORKBENCH_ALLOW_PATHS=1" in " ".join(e.value for e in at.error)


def test_a_hub_id_not_cached_is_refused_when_downloads_are_off_and_cached_ones_still_load(monkeypatch):
    monkeypatch.setenv("WORKBENCH_ALLOW_DOWNLOADS", "no")
    monkeypatch.setattr(catalog, "hub_cached", lambda repo_id: repo_id == TEACHER)
    at = monitor_app(**{state.MODEL_CHOICE: state.OTHER_MODEL, state.MODEL_OTHER: "some-org/not-downloaded"})
    assert not at.exception
    errors = sidebar_errors(at)
    assert "some-org/not-downloaded is not in this server's Hugging Face cache" in errors
    assert "WORKBENCH_ALLOW_DOWNLOADS=1" in errors and at.session_state[state.RECIPE] is None

    at.selectbox(key=state.MODEL_CHOICE).set_value(TEACHER).run()  # in the cache: allowed
    assert not at.exception and not at.sidebar.error and at.session_state[state.RECIPE].model == TEACHER
    at.selectbox(key=state.VARIANT).set_value(STUDENT.rsplit("/", 1)[1]).run()  # its public student is not
    assert f"{STUDENT} is not in this server's Hugging Face cache" in sidebar_errors(at)
    assert at.session_state[state.RECIPE] is None

    at.selectbox(key=state.MODEL_CHOICE).set_value("embedded").run()  # the embedded model always works
    assert not at.exception and not at.sidebar.error and at.session_state[state.RECIPE].model == "embedded"


def test_remote_code_off_shows_no_checkbox_and_a_tick_in_the_session_counts_for_nothing(monkeypatch):
    session = {state.MODEL_CHOICE: HUB_ID, state.TRUST_REMOTE_CODE: True}
    at = monitor_app(**session)
    assert [c.label for c in at.sidebar.checkbox] == ["Allow remote code (trust_remote_code)"]  # allowed on loopback
    assert at.session_state[state.REMOTE_CODE_ALLOWED] is True

    monkeypatch.setenv("WORKBENCH_ALLOW_REMOTE_CODE", "false")
    at = monitor_app(**session)
    assert not at.exception and not at.sidebar.checkbox
    assert any("WORKBENCH_ALLOW_REMOTE_CODE=1" in c.value for c in at.sidebar.caption)
    assert at.session_state[state.REMOTE_CODE_ALLOWED] is False


def test_remote_code_allowed_is_false_whatever_the_session_says_when_the_server_does_not_allow_it(monkeypatch):
    def page():
        import streamlit as st

        from workbench.ui import state

        st.session_state[state.REMOTE_CODE_ALLOWED] = True
        st.write(f"allowed={state.remote_code_allowed()}")

    assert AppTest.from_function(page).run().markdown[0].value == "allowed=True"
    monkeypatch.setenv("WORKBENCH_ALLOW_REMOTE_CODE", "0")
    assert AppTest.from_function(page).run().markdown[0].value == "allowed=False"


def test_a_value_that_means_nothing_is_a_warning_and_counts_as_off(monkeypatch):
    monkeypatch.setenv("WORKBENCH_ALLOW_REMOTE_CODE", "sure")
    at = monitor_app(**{state.MODEL_CHOICE: HUB_ID})
    assert not at.exception and not at.sidebar.checkbox
    assert any("WORKBENCH_ALLOW_REMOTE_CODE='sure'" in w.value for w in at.sidebar.warning)


# A tampered response cache --------------------------------------------------------------------------------


class Boom:
    """Unpickling this creates a directory: proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def craft_row(directory: Path, key, *, raw=True, mode=diskcache.core.MODE_RAW, filename=None, value=None) -> None:
    """Write one row straight into the response cache's database, as a tampered cache directory would hold it."""
    with sqlite3.connect(directory / "cache.db") as db:
        db.execute("INSERT INTO Cache (key, raw, store_time, access_time, size, mode, filename, value) "
                   "VALUES (?, ?, ?, ?, 0, ?, ?, ?)", (key, int(raw), time.time(), time.time(), mode, filename, value))


def test_a_tampered_cache_is_a_warning_and_nothing_outside_it_is_unpickled_read_or_deleted(
        tiny_model_dir, own_home, tmp_path):
    home = own_home
    question = "Is this cache honest?"
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 4}).run()
    recipe = at.session_state[state.RECIPE]
    ResponseCache().close()  # the database exists (the app opened it too)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"text": "read from outside", "token_ids": [1], "prompt_tokens": 1, "e2e_s": 1.0}))
    marker = tmp_path / "unpickled"
    key = exact_key(model_key(recipe), [{"role": "user", "content": question}], GenerationSettings(max_new_tokens=4))
    craft_row(home / "responses", key, mode=diskcache.core.MODE_TEXT, filename=str(outside))
    craft_row(home / "responses", "a:dot-dot", mode=diskcache.core.MODE_TEXT, filename="../../outside.json")
    craft_row(home / "responses", pickle.dumps(Boom(marker)), raw=False, value="{}")

    at.chat_input[0].set_value(question).run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    assert "TTFT" in reply_caption(reply) and "read from outside" not in reply.markdown[0].value  # from the model
    warning = " ".join(w.value for w in at.sidebar.warning)
    assert "refuses to read" in warning and "a key stored as a pickle (never unpickled)" in warning
    assert "outside the cache folder" in warning
    click(at, "Clear chat").run()
    at.chat_input[0].set_value(question).run()  # the model's answer replaced the crafted row: a real hit
    assert "**cached** (exact)" in reply_caption(assistant_replies(at)[0])
    at.button(key=state.CACHE_CLEAR).click().run()  # deletes every row, and no file outside
    assert not at.exception and "**0** answers" in " ".join(c.value for c in at.sidebar.caption)
    assert not marker.exists() and "read from outside" in outside.read_text()
