"""LLM Latency Workbench: the recipe sidebar shared by every page, then the chosen page."""

from pathlib import Path

import streamlit as st

from workbench.ui import cache_panel, monitor, recipe_form

st.set_page_config(page_title="LLM Latency Workbench", page_icon=":material/speed:", layout="wide")
st.logo(str(Path(__file__).parent / "assets" / "logo.svg"), size="large")

pages = [
    st.Page("pages/chat.py", title="Chat", icon=":material/chat:", default=True),
    st.Page("pages/what_changed.py", title="What changed", icon=":material/compare_arrows:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/view_column_2:"),
    st.Page("pages/build_a_student.py", title="Build a student", icon=":material/school:"),
    st.Page("pages/monitor.py", title="Monitor", icon=":material/monitoring:"),
    st.Page("pages/benchmark.py", title="Benchmark", icon=":material/stacked_line_chart:"),
    st.Page("pages/frontier.py", title="Frontier", icon=":material/scatter_plot:"),
    st.Page("pages/roofline.py", title="Roofline & predictor", icon=":material/memory:"),
]
navigation = st.navigation(pages)
recipe_form.recipe_sidebar()
cache_panel.cache_sidebar()
monitor.metrics_exporter()  # Prometheus /metrics from the first visit on, once per server process
navigation.run()
