"""Build a smaller student of the sidebar's model by distillation, on a background job that survives reruns."""

import streamlit as st

from workbench.recipe import model_label
from workbench.ui import model_loading, navigation, student

navigation.require_app()
st.title("Build a student")
recipe = model_loading.require_recipe()
model_loading.require_local(recipe, "Distilling a student")
teacher = recipe.model
st.markdown(
    f"A student of **{model_label(teacher)}** starts as the teacher without some of its decoder layers, then heals by "
    "learning to imitate the teacher on text the teacher writes: its next-token distributions and, if you weight "
    "them, what each of its layers outputs. Finished, it is a distilled variant you can pick in the sidebar, and its "
    "card shows what it kept and what it buys: quality beside the teacher's and the unhealed student's, and its "
    "speed-up under each runtime, measured here."
)
st.caption(
    "Before training the teacher writes its training text and computes its targets once (a few minutes on a CPU for "
    "the embedded model; shared by students asking for the same text). The budget counts training only; held-out "
    "perplexity is checked ten times along the way. Progress is checkpointed: Stop, then Start with the same "
    "settings, resumes. A GPU is used when there is one."
)

spec, minutes = student.student_settings()
job = student.student_controls(teacher, spec, minutes, student.student_job(teacher, spec))
if job is not None:
    student.student_progress(job)

st.subheader("Students of this model")
student.students_table(teacher)
