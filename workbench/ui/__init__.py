"""The Streamlit user interface: the only part of the workbench that imports streamlit.

``state`` names the session-state keys, ``cached`` holds what every browser session shares (models being
built or served, background jobs), ``widgets`` renders the recipe controls and chat pieces, ``panels`` the What
changed and Build a student pages' pieces, ``compare_view`` the Compare page's. ``jobs`` (work on background
threads), ``changes`` (a recipe against its baseline), ``compare`` (two recipes on the same prompts), ``charts``
(plotly figures) and ``units`` work on plain data and never touch Streamlit.
"""
