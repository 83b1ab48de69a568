"""The Streamlit user interface: the only part of the workbench that imports streamlit.

``state`` names the session-state keys and ``shared`` holds what every browser session shares (models being
built or served, background jobs, the response cache). The sidebar is ``recipe_form`` and ``cache_panel``;
``model_loading`` builds the models a page needs, with progress, and draws the model card; ``navigation``
keeps every page inside app.py's navigation. Each page has its pieces: ``chat``, ``what_changed``,
``compare_view``, ``student``, ``monitor``, ``benchmark``. ``jobs`` (work on background threads), ``changes``
(a recipe against its baseline), ``compare`` (two recipes on the same prompts), ``charts`` and
``monitor_charts`` (plotly figures) work on plain data and never touch Streamlit; ``draw`` puts a figure on
the page.
"""
