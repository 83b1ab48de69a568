"""Fixtures of the app's tests: AppTest kept on st.navigation, and a served app with a browser tab on it."""

from __future__ import annotations

import os

import pytest
from browser import chromium_tab, streamlit_server
from streamlit.runtime.pages_manager import PagesManager


@pytest.fixture(autouse=True)
def navigation_pages(monkeypatch):
    """Keep AppTest on st.navigation across reruns.

    AppTest resets ``PagesManager.uses_pages_directory`` before every run, and a ``pages/`` folder next to
    app.py then switches it to the legacy folder mode, which runs the page file without app.py (no sidebar).
    A real server sets the flag to False once, at the first ``st.navigation`` call, and keeps it.
    """
    init = PagesManager.__init__

    def v2_init(self, *args, **kwargs):
        PagesManager.uses_pages_directory = False
        init(self, *args, **kwargs)

    monkeypatch.setattr(PagesManager, "__init__", v2_init)


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    """A WORKBENCH_HOME of this test's own (cache, history), and models built afresh for it.

    A model's slot outlives a test and records into the history of the home it was built under: the slots are
    released before and after, so that neither this test nor a later one records into another's history.
    """
    from workbench.ui import shared

    home = tmp_path / "home"
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    shared.model_slot.clear()
    yield home
    shared.model_slot.clear()


@pytest.fixture
def app_url(tmp_path):
    """`streamlit run app.py` on a free localhost port, sharing this test session's WORKBENCH_HOME."""
    from workbench.response_cache.disk import ResponseCache

    ResponseCache().clear()  # every reply here comes from the model unless the test repeats a question itself
    with streamlit_server(tmp_path / "streamlit.log", dict(os.environ)) as url:
        yield url


@pytest.fixture
def page(app_url):
    """A chromium tab on the served app."""
    with chromium_tab(app_url) as tab:
        yield tab
