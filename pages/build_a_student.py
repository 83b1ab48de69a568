"""Build a smaller student of the sidebar's model by distillation, on a background job that survives reruns."""

import streamlit as st

from workbench.recipe import DEFAULT_STUDENT_STEPS, model_label
from workbench.ui import model_loading, navigation, student

navigation.require_app()
st.title("Build a student")
recipe = model_loading.require_recipe()
model_loading.require_local(recipe, "Distilling a student")
teacher = recipe.model
st.markdown(
    f"A student of **{model_label(teacher)}** starts as the teacher without some of its decoder layers, then learns "
    "to imitate the teacher's next-token distributions on text the teacher writes. Finished, it is a distilled "
    "variant you can pick in the sidebar and measure on the What changed page."
)
st.caption(
    f"On a CPU each step takes a few seconds ({DEFAULT_STUDENT_STEPS} steps: several minutes for the embedded model), "
    "and before the first step the teacher writes its training text (about 2 minutes for the embedded model). Progress "
    "is checkpointed; Stop, then Start with the same settings, resumes."
)

spec, steps = student.student_settings()
job = student.student_controls(teacher, spec, steps, student.student_job(teacher, spec))
if job is not None:
    student.student_progress(job)

st.subheader("Students of this model")
student.students_table(teacher)
