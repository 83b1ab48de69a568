"""Which recipe to ship: a grid of recipes measured for speed and quality here, and their Pareto frontier."""

import streamlit as st

from workbench import frontier as sweep
from workbench.ui import frontier, model_loading, navigation, state

navigation.require_app()
st.title("Frontier")
st.markdown(
    "Every recipe buys speed with some quality. This page measures a grid of recipes on this machine — decode "
    "speed, TTFT, weight bytes, peak memory, then perplexity, QA accuracy and agreement with the baseline — and "
    "draws the **Pareto frontier**: the recipes no other recipe beats on both speed and quality."
)
recipe = state.current_recipe()
if recipe is None:
    st.info("Choose a model and device in the sidebar: the grid runs on them.")
    st.stop()
model_loading.require_local(recipe, "A grid of recipes (dtypes, pruning, variants)")

st.subheader("Grid")
recipes = frontier.grid_editor(recipe)
settings = frontier.settings_controls()
runnable, skipped = frontier.checked(recipes)
job = frontier.sweep_controls(recipe, recipes, settings, runnable, frontier.sweep_job(recipe))
if job is not None and job.running:
    frontier.sweep_progress(job)
frontier.sweep_outcome(job)

st.subheader("Speed against quality")
within, axis = frontier.quality_controls()
if runnable:
    frontier.results(sweep.report(runnable, settings, within=within, axis=axis, skipped=skipped))
