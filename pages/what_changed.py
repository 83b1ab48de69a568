"""What the sidebar's recipe changed against its baseline: the build, then speed and quality measured here."""

import streamlit as st

from workbench.ui import model_loading, navigation, profile_panel, what_changed

navigation.require_app()
st.title("What changed")
recipe = model_loading.require_recipe()
model_loading.require_local(recipe, "Measuring what a recipe changed against its baseline")
slot, baseline = what_changed.recipe_and_baseline(recipe)
model_loading.model_card(slot, notes=False)  # the notes are on this page, in full

what_changed.build_comparison(slot.model, baseline.model)
what_changed.why_not_faster(recipe)

st.subheader("Measured on this machine")
what_changed.measurement(slot.model, baseline.model)

profile_panel.draw_panel(slot.model)
