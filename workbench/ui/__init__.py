"""The Streamlit user interface: the only part of the workbench that imports streamlit.

``state`` names the session-state keys, ``cached`` holds the models shared by every browser session,
``widgets`` renders the sidebar and chat pieces, ``charts`` builds plotly figures from plain data.
"""
