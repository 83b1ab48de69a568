"""Build a smaller student of the sidebar's model by distillation, on a background job that survives reruns."""

import streamlit as st

from workbench.optimize.distill import DEFAULT_STEPS
from workbench.recipe import model_label
from workbench.ui import panels, widgets

widgets.require_app()
st.title("Build a student")
teacher = widgets.require_recipe().model
st.markdown(
    f"A student of **{model_label(teacher)}** starts as the teacher without some of its decoder layers, then learns "
    "to imitate the teacher's next-token distributions on text the teacher writes. Finished, it is a distilled "
    "variant you can pick in the sidebar and measure on the What changed page."
)
st.caption(
    f"On a CPU each step takes a few seconds ({DEFAULT_STEPS} steps: several minutes for the embedded model), and "
    "before the first step the teacher writes its training text (about 2 minutes for the embedded model). Progress "
    "is checkpointed; Stop, then Start with the same settings, resumes."
)

spec, steps = panels.student_settings()
job = panels.student_controls(teacher, spec, steps, panels.student_job(teacher, spec))
if job is not None:
    panels.student_progress(job)

st.subheader("Students of this model")
panels.students_table(teacher)
