"""The Roofline & predictor page's pieces: this machine's figures, the runtimes measured against their bound, and
the predictor's chart of models and formats here and on accelerators."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from .. import bench, frontier, machine, predict, roofline
from ..formats import figure, human_bytes, human_count
from ..recipe import EMBEDDED
from . import charts, jobs, shared

REFRESH_S = 1.0
JOB_KEY = "roofline:efficiency"
MODELS_KEY = "roofline_models"
FORMATS_KEY = "roofline_formats"
PATH_KEY = "roofline_path"
CONTEXT_KEY = "roofline_context"
MEASURED_MODEL = EMBEDDED  # the predictor's efficiencies are measured on the embedded model
MEASURED_CONFIG = None  # its shipped config
DEFAULT_MODELS = ("smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "llama-3.2-1b")
DEFAULT_FORMATS = ("transformers fp32", "llama.cpp q8_0", "llama.cpp q4_0")
ACCELERATORS_SHOWN = ("NVIDIA H100 SXM", "NVIDIA L4", "Apple M2 Max")


# This machine ----------------------------------------------------------------------------------------------------


def machine_panel() -> dict:
    """Bandwidth and peak (measured on the first visit, then cached) and a Re-measure button; returns them."""
    remeasure = st.button("Re-measure this machine", icon=":material/refresh:",
                          help="memory read bandwidth and fp32 matmul peak, a few seconds")
    cached = machine.cached_roofline()
    if cached is None or remeasure:
        bar = st.progress(0.0, text="Measuring memory bandwidth and matmul peak…")
        roof = machine.roofline(remeasure=True)
        bar.progress(1.0, text=f"Measured in {roof['measure_s']:.1f} s")
    else:
        roof = cached
    cols = st.columns(3)
    cols[0].metric("Memory read bandwidth", f"{figure(roof['bandwidth_gb_s'], 1)} GB/s",
                   help=f"best of a few reads of a 1 GiB buffer with {roof['threads']} threads")
    cols[1].metric("fp32 matmul peak", f"{figure(roof['peak_gflops'], 0)} GFLOP/s",
                   help=f"numpy's BLAS on {roof['matmul_n']}×{roof['matmul_n']} matrices")
    cols[2].metric("CPU", roof["fingerprint"]["cpu"], help=f"{roof['threads']} physical cores; figures cached under "
                                                           f"fingerprint {roof['fingerprint_key']}")
    if roof.get("cache_problem"):
        st.warning(roof["cache_problem"], icon=":material/warning:")
    return roof


# Runtimes against their bound --------------------------------------------------------------------------------------


def efficiency_job() -> jobs.Job | None:
    return shared.job_registry().get(JOB_KEY)


def efficiency_controls(roof: dict, job: jobs.Job | None) -> jobs.Job | None:
    """The Measure button (the embedded model under each runtime, in the background)."""
    running = job is not None and job.running
    left, right = st.columns([1, 3], vertical_alignment="center")
    if left.button("Measure the runtimes", icon=":material/speed:", type="primary", disabled=running):
        job = start_efficiency(shared.job_registry(), roof)
        st.rerun()
    right.caption(f"Benchmarks the embedded model under {', '.join(f'{r} {d}' for r, d in roofline.EFFICIENCY_RECIPES)}"
                  f" ({roofline.RUNS} runs of {roofline.MAX_NEW_TOKENS} tokens each, one warm-up excluded). Anything "
                  "else running here (a chat reply) slows the figures.")
    return job


def start_efficiency(registry: jobs.JobRegistry, roof: dict) -> jobs.Job:
    def work(job: jobs.Job) -> dict:
        try:
            return roofline.measure_efficiency(MEASURED_MODEL, roof=roof, on_step=job.on_step,
                                               stop=lambda: job.stopping, config=MEASURED_CONFIG, save=True)
        except bench.BenchStopped:
            raise jobs.JobStopped() from None

    return registry.start(JOB_KEY, work, title="Measuring the runtimes against the roofline")


@st.fragment(run_every=REFRESH_S)
def efficiency_progress(job: jobs.Job) -> None:
    if job.done:
        st.rerun()
    phase = job.metrics.get("phase", "building the models")
    st.progress(job.fraction, text=f"Request {job.step}/{job.total or '…'} — {job.elapsed_s:.0f} s · {phase}")
    st.button("Stop", icon=":material/stop_circle:", on_click=job.stop, disabled=job.stopping)


def efficiency_outcome(job: jobs.Job | None) -> dict | None:
    """This machine's measured efficiencies: a finished job's, else the cached ones."""
    if job is not None and job.done:
        if job.error:
            st.error(job.error)
        elif job.stopped:
            st.info("Measurement stopped; nothing was kept.")
    return roofline.cached_efficiency()


def efficiency_result(report: dict | None) -> None:
    """Achieved decode tok/s against the bound, per runtime, and one sentence on what limits each."""
    measured = [m for m in (report or {}).get("runtimes", {}).values() if "problem" not in m]
    for m in (report or {}).get("runtimes", {}).values():
        if "problem" in m:
            st.info(f"{m['runtime']} {m['dtype']}: not measured — {m['problem']}")
    if not measured:
        st.caption("Not measured on this machine yet: the predictor shows bounds only until it is.")
        return
    st.plotly_chart(achieved_figure(measured), key="roofline_achieved")
    for m in measured:
        st.markdown(f"**{m['runtime']} {m['dtype']}** — {figure(m['achieved_tok_s'], 1)} of "
                    f"{figure(m['bound_tok_s'], 1)} tok/s ({m['efficiency']:.0%}). {m['limit']}")
        if roofline.busy(m):
            st.warning(roofline.busy(m), icon=":material/warning:")


def achieved_figure(measured: list[dict]) -> go.Figure:
    labels = [f"{m['runtime']} {m['dtype']}" for m in measured]
    fig = go.Figure([
        go.Bar(name="bound (bandwidth ÷ bytes per token)", x=labels, y=[m["bound_tok_s"] for m in measured],
               marker_color=charts.SAME_COLOUR),
        go.Bar(name="achieved (median decode tok/s)", x=labels, y=[m["achieved_tok_s"] for m in measured],
               marker_color=charts.PALETTE[0], text=[f"{m['efficiency']:.0%}" for m in measured],
               textposition="outside"),
    ])
    return charts.layout(fig, "Embedded model: achieved decode speed against the memory bound", 360,
                         barmode="group", yaxis_title="tok/s")


# The predictor -----------------------------------------------------------------------------------------------------


def predictor_controls() -> tuple[list[str], list[tuple[str, str]], int]:
    """The models (shipped configs and an optional path or cached hub id), formats and context length chosen."""
    names = predict.shipped_names()
    choices = st.multiselect("Models (shipped configs)", names, default=[n for n in DEFAULT_MODELS if n in names],
                             key=MODELS_KEY)
    other = st.text_input("Another config.json, model directory or cached hub id", key=PATH_KEY).strip()
    options = [f"{r} {f}" for r, formats in predict.RUNTIME_FORMATS.items() for f in formats]
    formats = st.multiselect("Formats", options, default=list(DEFAULT_FORMATS), key=FORMATS_KEY)
    context = st.slider("Tokens already in the KV cache", 0, 8192, predict.DEFAULT_CONTEXT, step=128,
                        key=CONTEXT_KEY)
    return choices + ([other] if other else []), [tuple(f.split(" ", 1)) for f in formats], context


def predictions(models: list[str], formats: list[tuple[str, str]], roof: dict, report: dict | None,
                context: int) -> tuple[list[dict], list[str]]:
    """One row per model, format and place (this machine, each accelerator shown); problems as lines."""
    rows, problems = [], []
    share = roofline.efficiencies(report)
    for source in models:
        try:
            arch = predict.architecture(source)
        except predict.PredictError as exc:
            problems.append(str(exc))
            continue
        here = {(r["runtime"], r["dtype"]): r for r in predict.predict_here(arch, roof["bandwidth_gb_s"],
                                                                           roof["peak_gflops"], share, context)}
        far = predict.predict_accelerators(arch, context)
        for runtime, fmt in formats:
            r = here.get((runtime, fmt))
            if r is None:
                continue
            base = {"model": arch.name, "params": predict.params(arch), "format": f"{runtime} {fmt}",
                    "weights": human_bytes(predict.weight_bytes(arch, runtime, fmt))}
            rows.append({**base, "where": "this machine (bound)", "tok_s": r["bound_tok_s"]})
            if r["expected_tok_s"]:
                rows.append({**base, "where": "this machine (expected)", "tok_s": r["expected_tok_s"]})
            for a in far:
                if a["accelerator"] in ACCELERATORS_SHOWN and a["dtype"] == fmt:
                    rows.append({**base, "where": f"{a['accelerator']} (bound, estimate)", "tok_s": a["bound_tok_s"]})
    return rows, problems


def prediction_figure(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for i, where in enumerate(dict.fromkeys(r["where"] for r in rows)):
        chosen = [r for r in rows if r["where"] == where]
        fig.add_trace(go.Bar(name=where, x=[[r["model"] for r in chosen], [r["format"] for r in chosen]],
                             y=[r["tok_s"] for r in chosen], marker_color=charts.PALETTE[i % len(charts.PALETTE)],
                             hovertemplate="%{x}<br>%{y:.1f} tok/s<extra>" + where + "</extra>"))
    if not rows:
        charts.empty_note(fig, "Pick a model and a format")
    return charts.layout(fig, "Predicted decode tok/s by model and format (log scale)", 460, barmode="group",
                         yaxis=dict(type="log", title="tok/s"), legend_y=-0.25)


def prediction_table(rows: list[dict]) -> None:
    table = pd.DataFrame([{"Model": r["model"], "Parameters": human_count(r["params"]), "Format": r["format"],
                           "Weights": r["weights"], "Where": r["where"], "Decode tok/s": round(r["tok_s"], 1)}
                          for r in rows])
    st.dataframe(table, hide_index=True)


# The predictor against the frontier --------------------------------------------------------------------------------


def frontier_check(roof: dict, report: dict | None) -> None:
    """The embedded model's recipes the frontier measured here (default settings), each with the predictor's tok/s."""
    rows = roofline.against_frontier(frontier.report(None, frontier.SweepSettings())["recipes"], roof, report)
    if not rows:
        st.caption("No frontier sweep with the default settings is stored for this machine: run one on the Frontier "
                   "page (or `workbench sweep`) to check the predictions against it.")
        return
    st.plotly_chart(frontier_figure(rows), key="roofline_vs_frontier")
    table = pd.DataFrame([{
        "Recipe": r["format"], "Measured tok/s": round(r["measured_tok_s"], 1),
        "Predicted tok/s": None if r["predicted_tok_s"] is None else round(r["predicted_tok_s"], 1),
        "Error": None if r["relative_error"] is None else f"{r['relative_error']:+.0%}",
        "Same-run prediction": "basis" if r["basis"] else figure(r["same_run_tok_s"], 1),
        "Same-run error": None if r["basis"] or r["same_run_error"] is None else f"{r['same_run_error']:+.0%}",
        "Bound tok/s": round(r["bound_tok_s"], 1)} for r in rows])
    st.dataframe(table, hide_index=True)
    for r in rows:
        if r.get("not_predicted"):
            st.caption(f"{r['format']}: not predicted — {r['not_predicted']}.")
    st.caption("Predicted = the bound × the runtime's efficiency cached above (measured in another run, so machine "
               "drift between the runs counts against it). Same-run = the bound × the efficiency the sweep's own row "
               f"of the runtime's basis format ({', '.join(f'{r} {d}' for r, d in roofline.EFFICIENCY_RECIPES)}) "
               "reached, so drift drops out and what is left is how well one format's efficiency carries over to "
               "another. The issue's bar is 25%.")


def frontier_figure(rows: list[dict]) -> go.Figure:
    labels = [r["format"] for r in rows]
    fig = go.Figure([
        go.Bar(name="measured by the frontier", x=labels, y=[r["measured_tok_s"] for r in rows],
               marker_color=charts.PALETTE[0]),
        go.Bar(name="predicted (cached efficiency)", x=labels, y=[r["predicted_tok_s"] for r in rows],
               marker_color=charts.PALETTE[1]),
        go.Bar(name="predicted (same-run efficiency)", x=labels,
               y=[None if r["basis"] else r["same_run_tok_s"] for r in rows], marker_color=charts.PALETTE[2]),
    ])
    return charts.layout(fig, "Embedded model: predicted decode tok/s against the frontier's measurement", 380,
                         barmode="group", yaxis_title="tok/s")
