"""What the sidebar's recipe changed against its baseline: the build, then speed and quality measured here."""

import streamlit as st

from workbench.ui import panels, widgets

widgets.require_app()
st.title("What changed")
recipe = widgets.require_recipe()
slot, baseline = panels.recipe_and_baseline(recipe)
widgets.model_card(slot, notes=False)  # the notes are on this page, in full

panels.build_comparison(slot.optimized, baseline.optimized)
panels.why_not_faster(recipe)

st.subheader("Measured on this machine")
panels.measurement(slot.optimized, baseline.optimized)
