"""Monitor: latency, throughput, cache hits and memory over time, from the request history, refreshed live."""

import streamlit as st

from workbench.ui import monitor, navigation

navigation.require_app()
st.title("Monitor")
monitor.exporter_status()

rows = monitor.history_rows()
if rows is None:
    st.stop()
if not rows:
    monitor.empty_history()
    st.stop()
monitor.dashboard(monitor.filters(rows))
