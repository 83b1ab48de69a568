"""Roofline & predictor: how close the runtimes decode to this machine's memory bound, and what other models and
machines would give, predicted from a config.json alone."""

import streamlit as st

from workbench.ui import navigation, roofline

navigation.require_app()
st.title("Roofline & predictor")
st.markdown(
    "Decoding a token reads every weight once, so **memory bandwidth ÷ bytes per token** bounds decode speed. "
    "This page measures this machine's bandwidth and compute peak, how close each runtime comes to the bound, "
    "and predicts other models from their `config.json` alone: the bound, and the bound × the share each runtime "
    "reached here."
)
roof = roofline.machine_panel()

st.subheader("The runtimes against the bound")
job = roofline.efficiency_controls(roof, roofline.efficiency_job())
if job is not None and job.running:
    roofline.efficiency_progress(job)
report = roofline.efficiency_outcome(job)
roofline.efficiency_result(report)

st.subheader("Predictor")
models, formats, context = roofline.predictor_controls()
rows, problems = roofline.predictions(models, formats, roof, report, context)
for problem in problems:
    st.warning(problem, icon=":material/warning:")
st.plotly_chart(roofline.prediction_figure(rows), key="roofline_predicted")
st.caption("Accelerator figures are bounds from published bandwidth (estimates, cited in workbench/predict.py): "
           "a small model on a GPU usually runs far below it, held back by per-token kernel launches.")
if rows:
    roofline.prediction_table(rows)

st.subheader("Predicted against the frontier")
roofline.frontier_check(roof, report)
