"""The Frontier page's pieces: the grid editor, the sweep job with its progress and ETA, the speed-up × quality
chart with its Pareto frontier, the "fastest within N points" sentence, and loading a recipe into the sidebar."""

from __future__ import annotations

import functools
import math

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.errors import StreamlitAPIException

from .. import frontier
from ..recipe import DTYPES, PRUNE_METHODS, RUNTIMES, Recipe, RecipeError
from . import jobs, recipe_form, shared, state

# Session-state keys of this page.
GRID = "frontier.grid"  # the grid editor
ROUNDS = "frontier.rounds"
RUNS = "frontier.runs"
TOKENS = "frontier.max_new_tokens"
EVAL_TOKENS = "frontier.max_eval_tokens"
QA_LIMIT = "frontier.qa_limit"  # 0 = every question
AGREEMENT_PROMPTS = "frontier.agreement_prompts"  # 0 = every prompt
AGREEMENT_TOKENS = "frontier.agreement_tokens"
WITHIN = "frontier.within"
AXIS = "frontier.axis"
CHART = "frontier.chart"
PICK = "frontier.pick"  # the recipe key chosen in the selectbox (or by clicking a point)
LAST_POINT = "frontier.last_point"  # the chart's last selected point, so that a new click wins over the selectbox
LOADED = "frontier.loaded"  # label of the recipe last loaded into the sidebar

REFRESH_S = 1.0
FRONTIER_COLOUR = "#e8590c"
POINT_COLOUR = "#3b5bdb"


def grid_editor(recipe: Recipe) -> list[Recipe] | None:
    """The grid as an editable table (one row per recipe) on the sidebar's model and device; None if a row is bad."""
    rows = frontier.grid_rows(frontier.load_grid(model=recipe.model, device=recipe.device))
    edited = st.data_editor(
        pd.DataFrame(rows), key=GRID, num_rows="dynamic", hide_index=True, width="stretch",
        column_config={
            "runtime": st.column_config.SelectboxColumn("runtime", options=list(RUNTIMES), required=True),
            "dtype": st.column_config.SelectboxColumn("dtype", options=list(DTYPES), required=True),
            "backend": st.column_config.TextColumn("backend", help="auto = the default kernel path of the dtype"),
            "prune": st.column_config.SelectboxColumn("pruning", options=list(PRUNE_METHODS)),
            "ratio": st.column_config.NumberColumn("ratio", min_value=0.0, max_value=0.9, step=0.05),
            "variant": st.column_config.TextColumn("variant", help="none, a public student or one built here"),
        })
    try:
        recipes = frontier.recipes_from_rows(edited.to_dict("records"), recipe.model, recipe.device)
    except frontier.GridError as exc:
        st.error(f"Grid {exc}", icon=":material/block:")
        return None
    if not recipes:
        st.info("Add at least one recipe to the grid.")
        return None
    return recipes


def settings_controls() -> frontier.SweepSettings:
    """How each recipe is measured; defaults from ``frontier.SweepSettings``."""
    d = frontier.SweepSettings()
    cols = st.columns(4)
    rounds = cols[0].number_input("Rounds", 1, 10, d.rounds, key=ROUNDS,
                                  help="Interleaved rounds over all recipes: drift of the machine hits every recipe "
                                       "alike. Decode tok/s is the median of the rounds.")
    runs = cols[1].number_input("Requests per round", 1, 20, d.runs, key=RUNS,
                                help=f"Measured requests per recipe and round, after {d.warmup} warm-up.")
    tokens = cols[2].number_input("Tokens per request", 2, 256, d.max_new_tokens, step=4, key=TOKENS,
                                  help="Every timed request generates exactly this many tokens.")
    eval_tokens = cols[3].number_input("Perplexity tokens", 16, 8192, d.max_eval_tokens or 1024, step=64,
                                       key=EVAL_TOKENS, help="Perplexity on the first N tokens of the evaluation text.")
    cols = st.columns(4)
    qa = cols[0].number_input("QA questions (0 = all)", 0, 1000, d.qa_limit or 0, key=QA_LIMIT,
                              help="QA accuracy on the first N questions.")
    prompts = cols[1].number_input("Agreement prompts (0 = all)", 0, 1000, d.agreement_prompts or 0,
                                   key=AGREEMENT_PROMPTS, help="Agreement with the baseline on the first N prompts.")
    agree = cols[2].number_input("Agreement tokens", 1, 256, d.agreement_tokens, key=AGREEMENT_TOKENS,
                                 help="Greedy tokens per prompt compared with the baseline's.")
    return frontier.SweepSettings(rounds=int(rounds), runs=int(runs), warmup=d.warmup, max_new_tokens=int(tokens),
                                  max_eval_tokens=int(eval_tokens), qa_limit=int(qa) or None,
                                  agreement_tokens=int(agree), agreement_prompts=int(prompts) or None)


def job_key(recipe: Recipe) -> str:
    return f"frontier:{recipe.model}:{recipe.device}"


def sweep_job(recipe: Recipe) -> jobs.Job | None:
    return shared.job_registry().get(job_key(recipe))


def start_sweep(registry: jobs.JobRegistry, recipe: Recipe, recipes: list[Recipe],
                settings: frontier.SweepSettings) -> jobs.Job:
    """Measure what is missing of the grid on a background job; its result is ``frontier.run_sweep``'s report."""

    def work(job: jobs.Job) -> dict:
        return frontier.run_sweep(recipes, settings, on_step=job.on_step, stop=lambda: job.stopping)

    return registry.start(job_key(recipe), work, title=f"Measuring the frontier of {recipe.label().split(' · ')[0]}")


def sweep_controls(recipe: Recipe, recipes: list[Recipe] | None, settings: frontier.SweepSettings,
                   runnable: list[Recipe], job: jobs.Job | None) -> jobs.Job | None:
    """The Start button and what it will measure; returns the running or last job."""
    running = job is not None and job.running
    records = _records(runnable, settings)
    missing = frontier.plan(runnable, records, settings.rounds) if runnable else []
    col, note = st.columns([1, 3], vertical_alignment="center")
    if col.button("Start", icon=":material/play_arrow:", type="primary", width="stretch",
                  disabled=running or recipes is None or not missing):
        job = start_sweep(shared.job_registry(), recipe, recipes, settings)
        st.rerun()
    with_quality = sum(1 for _, r in missing if records[r.key()]["quality"] is None)
    note.caption(f"{len(missing)} item(s) to measure (a recipe's round each; {with_quality} with quality); "
                 "what is stored for this machine with these settings is reused. Each recipe is built and measured "
                 "in this server's process: its peak RSS includes the models the app holds.")
    others = [j for j in shared.job_registry().running() if j.key != job_key(recipe)]
    if others:
        st.warning(f"{others[0].title} is running on this machine: figures measured now share the CPU with it.",
                   icon=":material/warning:")
    return job


def _records(runnable: list[Recipe], settings: frontier.SweepSettings) -> dict[str, dict]:
    machine = frontier.fingerprint()
    mid = frontier.fingerprint_id(machine)
    return {r.key(): frontier.usable(frontier.load_record(mid, r.key()), settings)
            or frontier.new_record(r, machine, mid, settings) for r in runnable}


@st.fragment(run_every=REFRESH_S)
def sweep_progress(job: jobs.Job) -> None:
    """The running sweep's progress bar, ETA and Stop; the whole page reruns once it ends."""
    if job.done:
        st.rerun()
    m = job.metrics
    text = f"{job.step}/{job.total or '…'} measured — {job.elapsed_s:.0f} s"
    if m.get("label"):
        verb = "measuring" if m.get("phase") == "measuring" else "last"
        text += f" · {verb}: {short(m['label'])} (round {m.get('round')})"
        if m.get("quality"):
            q = m["quality"]
            text += f" · quality: {q['stage']} {q['done']}/{q['of']}"
    if m.get("eta_s") is not None:
        text += f" · about {m['eta_s'] / 60:.1f} min left"
    st.progress(job.fraction, text=text)
    st.button("Stop", icon=":material/stop_circle:", on_click=job.stop, disabled=job.stopping,
              help="Ends the sweep; every finished recipe round is kept and Start resumes from there.")


def sweep_outcome(job: jobs.Job | None) -> None:
    if job is None or job.running:
        return
    if job.error:
        st.error(job.error)
    elif job.stopped or (isinstance(job.result, dict) and job.result.get("stopped")):
        st.info("Sweep stopped; every finished recipe round is stored, and Start measures only the rest.")
    if isinstance(job.result, dict):
        for f in job.result.get("failed", []):
            st.warning(f"{short(f['label'])} failed: {f['reason']}", icon=":material/warning:")


def quality_controls() -> tuple[float, str]:
    cols = st.columns([3, 2])
    within = cols[0].slider("Quality points a recipe may lose", 0.0, 30.0, frontier.DEFAULT_WITHIN, 0.5, key=WITHIN)
    axis = cols[1].radio("Quality axis", list(frontier.QUALITY_AXES), key=AXIS, horizontal=True,
                         format_func=lambda a: frontier.QUALITY_AXES[a])
    return within, axis


def results(report: dict) -> None:
    """The sentence, the chart, the table, and what was skipped or kept apart."""
    rows = report["recipes"]
    st.caption(f"Measured on {frontier.describe_machine(report['machine'])} (machine {report['machine_id']}).")
    if not rows:
        st.info("Nothing measured for this grid on this machine yet: press Start.")
    else:
        st.markdown(f"**{report['within']['sentence']}**")
        event = st.plotly_chart(figure(rows, report["frontier"], report["axis"]), key=CHART, on_select="rerun",
                                selection_mode="points", config={"displaylogo": False})
        _follow_click(event)
        st.dataframe(table_rows(rows, report["frontier"]), hide_index=True, width="stretch")
        pick(rows)
    for s in report["skipped"]:
        st.caption(f"Skipped {short(s['label'])}: {s['reason']}")
    if report["missing"]:
        st.caption("Not measured yet: " + "; ".join(short(m) for m in report["missing"]))
    for other in report["other_machines"]:
        with st.expander(f"Measured on another machine or other library versions: {other['described']}"):
            st.caption("Kept apart: these figures are not comparable with this machine's and are not in the chart.")
            st.dataframe(table_rows(other["recipes"], other["frontier"]), hide_index=True, width="stretch")


def figure(rows: list[dict], front: list[dict], axis: str) -> go.Figure:
    """Speed-up over the baseline against quality points; the Pareto frontier drawn as a line."""
    points = [r for r in rows if r.get("speedup") is not None and r.get(f"{axis}_points") is not None]
    fig = go.Figure()
    errors = [frontier.interval_points(r["quality"], axis) for r in points]
    error_y = None
    if any(errors):
        error_y = dict(type="data", symmetric=False,
                       array=[(e[1] - r[f"{axis}_points"]) if e else 0 for e, r in zip(errors, points)],
                       arrayminus=[(r[f"{axis}_points"] - e[0]) if e else 0 for e, r in zip(errors, points)])
    fig.add_trace(go.Scatter(
        x=[r["speedup"] for r in points], y=[r[f"{axis}_points"] for r in points], mode="markers+text",
        text=[point_label(r["label"]) for r in points], textposition=label_positions(points, axis),
        customdata=[r["key"] for r in points], hovertext=[short(r["label"]) for r in points],
        marker=dict(size=11, color=[FRONTIER_COLOUR if r["key"] in {f["key"] for f in front} else POINT_COLOUR
                                    for r in points]),
        error_y=error_y, name="recipes",
        hovertemplate="%{hovertext}<br>%{x:.2f}× the baseline's decode tok/s<br>%{y:.1f} points<extra></extra>"))
    fig.add_trace(go.Scatter(x=[f["speedup"] for f in front], y=[f["quality_points"] for f in front],
                             mode="lines", line=dict(color=FRONTIER_COLOUR, width=2, shape="hv"),
                             name="Pareto frontier", hoverinfo="skip"))
    fig.update_layout(xaxis=dict(title="speed-up over the baseline (decode tok/s, log scale)", type="log"),
                      yaxis_title=f"{frontier.QUALITY_AXES[axis]} (points)", height=460,
                      margin=dict(l=10, r=10, t=30, b=10), legend=dict(orientation="h", y=1.08))
    return fig


def point_label(label: str) -> str:
    """A chart point's label: the recipe without its model, device and thread count (the hover has them)."""
    parts = short(label).split(" · ")
    kept = [p for p in parts[1:] if not p.endswith((" threads", " thread"))] if len(parts) > 1 else parts
    return " · ".join(kept) or short(label)


def label_positions(points: list[dict], axis: str) -> list[str]:
    """Beside a point, clear of its interval's bar: to the right, or to the left where the next point (by
    speed-up) is near at a similar level, and for the fastest point (its label would leave the chart)."""
    near = 0.12  # of a decade on the log axis
    order = sorted(range(len(points)), key=lambda i: points[i]["speedup"])
    where = ["middle right"] * len(points)
    for prev, i in zip(order, order[1:]):
        close = abs(math.log10(points[i]["speedup"] / points[prev]["speedup"])) < near
        if close and abs(points[i][f"{axis}_points"] - points[prev][f"{axis}_points"]) < 8:
            where[prev] = "middle left"
    if order:
        where[order[-1]] = "middle left"
    return where


def table_rows(rows: list[dict], front: list[dict]) -> list[dict]:
    on = {f["key"] for f in front}

    def num(value, digits=1):
        return None if value is None else round(value, digits)

    return [{"recipe": short(r["label"]), "frontier": r["key"] in on, "speed-up": num(r["speedup"], 2),
             "decode tok/s": num(r["decode_tok_s"]), "TTFT ms": num(r["ttft_ms"], 0),
             "weights MB": num((r["weight_bytes"] or 0) / 1e6) if r["weight_bytes"] else None,
             "peak RSS MB": num(r["peak_rss_mb"], 0), "perplexity": num(r["perplexity"], 2),
             "QA %": num(r["qa_points"], 0), "QA 95% interval": _interval(r, "qa"),
             "agreement %": num(r["agreement_points"], 0), "agreement 95% interval": _interval(r, "agreement"),
             "rounds": r["rounds"]}
            for r in rows]


def _interval(row: dict, axis: str) -> str | None:
    ci = frontier.interval_points(row["quality"], axis)
    return None if ci is None else f"{ci[0]:.0f}–{ci[1]:.0f}"


def _follow_click(event) -> None:
    """A newly clicked point becomes the selectbox's choice (drawn after the chart, so it may still be set)."""
    points = (getattr(event, "selection", None) or {}).get("points", []) if event else []
    key = points[0].get("customdata") if points else None
    if isinstance(key, list):
        key = key[0] if key else None
    if key and key != st.session_state.get(LAST_POINT):
        st.session_state[LAST_POINT] = key
        st.session_state[PICK] = key


def pick(rows: list[dict]) -> None:
    """Choose a recipe (or click its point) and load it into the sidebar: then Chat and Compare use it."""
    labels = {r["key"]: short(r["label"]) for r in rows}
    if st.session_state.get(PICK) not in labels:
        st.session_state.pop(PICK, None)
    cols = st.columns([3, 2], vertical_alignment="bottom")
    key = cols[0].selectbox("Recipe", list(labels), format_func=labels.get, key=PICK,
                            help="Or click its point in the chart.")
    chosen = next(r for r in rows if r["key"] == key)
    cols[1].button("Load into the sidebar", icon=":material/input:", on_click=load_recipe, args=(chosen["recipe"],),
                   width="stretch")
    if st.session_state.get(LOADED):
        st.caption(f"Loaded into the sidebar: {st.session_state[LOADED]}.")
        links = st.columns(2)
        try:
            links[0].page_link("pages/chat.py", label="Chat with it", icon=":material/chat:")
            links[1].page_link("pages/compare.py", label="Compare it with the baseline",
                               icon=":material/view_column_2:")
        except StreamlitAPIException:  # the page runs outside app.py's navigation (a test of the page alone)
            links[0].caption("Open Chat or Compare: they use the sidebar's recipe.")


def load_recipe(data: dict) -> None:
    """Button callback (before the sidebar is drawn): the sidebar's controls take the recipe's values."""
    try:
        recipe = Recipe.from_dict(data)
    except RecipeError as exc:
        st.session_state[LOADED] = None
        st.toast(f"This recipe cannot be loaded: {exc}")
        return
    recipe_form.seed_controls(recipe, state.RECIPE_PREFIX, overwrite=True)
    st.session_state[LOADED] = short(recipe.label())


@functools.lru_cache(maxsize=256)
def short(label: str) -> str:
    """A recipe label without its model (every recipe of a grid has the same one)."""
    parts = label.split(" · ")
    return " · ".join(parts[1:]) if len(parts) > 1 else label


def checked(recipes: list[Recipe] | None) -> tuple[list[Recipe], list[dict]]:
    """The grid's runnable recipes (baseline first) and those skipped; nothing runnable: shown, empty lists."""
    if not recipes:
        return [], []
    try:
        return frontier.check_grid(recipes)
    except frontier.GridError as exc:
        st.error(str(exc), icon=":material/block:")
        return [], []
