"""Pages run inside app.py's navigation, with the recipe sidebar."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager


def require_app() -> None:
    """Make sure this page runs inside app.py's navigation (with the recipe sidebar), not on its own.

    Until a script calls ``st.navigation``, Streamlit treats a ``pages/`` folder as its older multipage layout;
    so the first visit to a fresh server through a page's URL (a bookmark of /recipe) would run that page
    without app.py. Switching the flag that ``st.navigation`` sets and rerunning sends it through app.py,
    onto the same page (both layouts name a page by its URL path).
    """
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()

