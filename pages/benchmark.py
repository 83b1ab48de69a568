"""Batching under load: simulated users against the sidebar's recipe at several batch sizes, measured here."""

import streamlit as st

from workbench.ui import benchmark, model_loading, navigation

navigation.require_app()
st.title("Benchmark")
recipe = model_loading.require_recipe()
(slot,) = model_loading.require_slots(recipe)
model_loading.model_card(slot)
st.markdown(benchmark.intro(recipe))

spec = benchmark.sweep_settings(slot.model)
job = benchmark.sweep_controls(slot.model, spec, benchmark.sweep_job(recipe))
if job is not None and job.running:
    benchmark.sweep_progress(job)
report = benchmark.sweep_outcome(job)
if report is not None:
    st.subheader("This sweep")
    benchmark.sweep_result(report)

with st.expander("Earlier sweeps on this machine", expanded=report is None):
    benchmark.earlier_sweeps(exclude=report["name"] if report else None)
