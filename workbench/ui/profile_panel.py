"""The What changed page's profiler panel: where one chat turn's time goes, as a stacked bar and tables.

``draw(model)`` draws it. The turn runs with the model leased (chat is told the model is busy meanwhile), through
``workbench.profile``; the result is kept in this session per recipe, so a rerun redraws it without profiling.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from ..profile import PART_LABELS, PART_ORDER, profile_turn
from ..recipe import GenerationSettings
from ..response_cache.answers import CachedAnswers
from ..response_cache.disk import responses_dir
from . import draw, leases, shared, state
from .jobs import JobRefused, JobStopped

# Session keys of this panel (named once, as state.py names the others).
RESULTS = "profile.results"  # recipe key -> the latest TurnProfile.to_dict() of this session
PROMPT = "profile.prompt"
MAX_NEW_TOKENS = "profile.max_new_tokens"
BUTTON = "profile.run"
DEFAULT_PROMPT = "What is the capital of France?"
DEFAULT_MAX_NEW_TOKENS = 32
UNACCOUNTED_COLOR = "#bdbdbd"


def draw_panel(model) -> None:
    """The panel: prompt and budget, the "Profile one turn" button, then this recipe's latest profile.

    Args:
        model: the recipe's ``LoadedModel`` (a slot's shared model is leased for the turn).
    """
    st.markdown("#### Where one turn's time goes")
    st.caption("One chat turn (greedy) with its wall time split into the response-cache lookup, tokenizing, the "
               "engine's queue, prefill, decode steps, sampling and detokenizing; a warm-up turn runs first and is "
               "not counted. Under transformers a second turn runs under torch.profiler for the per-module table "
               "and a trace you can open in Perfetto or TensorBoard.")
    prompt_col, tokens_col, button_col = st.columns([4, 1, 1], vertical_alignment="bottom")
    prompt = prompt_col.text_input("Prompt of the turn", value=DEFAULT_PROMPT, key=PROMPT)
    max_new = tokens_col.number_input("New tokens", min_value=1, max_value=512, value=DEFAULT_MAX_NEW_TOKENS,
                                      key=MAX_NEW_TOKENS)
    results = st.session_state.setdefault(RESULTS, {})
    key = model.recipe.key()
    if button_col.button("Profile one turn", icon=":material/timer:", key=BUTTON, width="stretch"):
        if not prompt.strip():
            st.error("The prompt is empty: type the message of the turn to profile.")
        else:
            report = _profile(model, prompt, GenerationSettings(max_new_tokens=int(max_new)))
            if report is not None:
                results[key] = report
    if key in results:
        show(results[key])


def _profile(model, prompt: str, settings: GenerationSettings) -> dict | None:
    """Run the turn with the model leased; its report, or None after saying on the page why it could not run."""
    answers = CachedAnswers(shared.response_cache(str(responses_dir())), state.cache_policy())
    messages = [{"role": "user", "content": prompt}]
    lookup = None
    if answers.applies_to(settings):
        def lookup() -> str:
            hit = answers.lookup(model.recipe, messages, settings)
            return hit.kind if hit is not None else "miss"

    bar = st.progress(0.0, text="Profiling one turn")

    def on_step(i: int, total: int, metrics: dict) -> None:
        bar.progress(min(1.0, i / total) if total else 0.0, text=f"Profiling: {metrics.get('stage', '')}")

    holder = f"Profiling {model.recipe.label()}"
    try:
        with st.spinner("Profiling one turn…"):
            with leases.lease(model, holder, "What changed",
                              on_wait=lambda text: bar.progress(0.0, text=text)) as own:
                report = profile_turn(own, prompt, settings, lookup=lookup, on_step=on_step).to_dict()
    except (JobRefused, JobStopped, RuntimeError, ValueError) as exc:
        bar.empty()
        st.error(f"Profiling failed: {exc}")
        return None
    bar.empty()
    return report


def show(report: dict) -> None:
    """A profile: the verdict line, the stacked bar of the parts, the modules and ops tables, the trace."""
    e2e = report["e2e_ms"]
    accounted = report["accounted_share"]
    st.caption(f"{report['prompt_tokens']} prompt tokens, {report['new_tokens']} new tokens, cache "
               f"{report['cache']}: E2E {e2e:,.1f} ms measured; the parts account for {accounted:.1%} of it "
               f"({report['unaccounted_ms']:,.1f} ms unaccounted, between the timed parts).")
    draw.chart(st.empty(), parts_figure(report), f"profile-parts-{report['recipe_key']}")
    for note in report.get("notes", []):
        st.info(note, icon=":material/info:")
    steps = report["decode_steps"]
    if steps["n"]:
        st.caption(f"Decode steps: {steps['n']}, mean {steps['mean_ms']:.2f} ms, median {steps['p50_ms']:.2f} ms, "
                   f"slowest {steps['max_ms']:.2f} ms.")
    if report.get("counters"):
        c = report["counters"]
        st.markdown(f"**llama.cpp's own counters**: prompt eval {c['prompt_eval_ms']:,.1f} ms for "
                    f"{c['prompt_eval_tokens']} tokens; eval {c['eval_ms']:,.1f} ms for {c['eval_tokens']} runs.")
    if report.get("modules"):
        modules_col, ops_col = st.columns(2, gap="large")
        with modules_col:
            st.markdown("**Per module kind** (under torch.profiler, which slows every op)")
            st.dataframe(module_rows(report["modules"]), hide_index=True, width="stretch")
        with ops_col:
            st.markdown("**Top ops by self time**")
            st.dataframe(report["ops"], hide_index=True, width="stretch")
    if report.get("trace"):
        trace_help(report)


def part_rows(report: dict) -> list[dict]:
    """(label, ms) of every part in order, then the unaccounted rest."""
    rows = [{"part": PART_LABELS.get(name, name), "ms": report["parts"][name]} for name in PART_ORDER
            if name in report["parts"]]
    rows.append({"part": "unaccounted", "ms": report["unaccounted_ms"]})
    return rows


def parts_figure(report: dict) -> go.Figure:
    """One horizontal bar of the turn, stacked by part (the unaccounted rest in grey, at the end)."""
    fig = go.Figure()
    for row in part_rows(report):
        grey = row["part"] == "unaccounted"
        fig.add_bar(y=["this turn"], x=[max(0.0, row["ms"])], name=row["part"], orientation="h",
                    marker_color=UNACCOUNTED_COLOR if grey else None,
                    hovertemplate=f"{row['part']}: {row['ms']:,.2f} ms<extra></extra>")
    fig.update_layout(barmode="stack", height=200, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"One turn: {report['e2e_ms']:,.1f} ms", xaxis_title="ms",
                      legend=dict(orientation="h", y=-0.4))
    return fig


def module_rows(modules: list[dict]) -> list[dict]:
    return [{"module": m["name"], "calls": m["calls"], "ms": m["ms"],
             "share of turn": None if m["share"] is None else f"{m['share']:.1%}"} for m in modules]


def trace_help(report: dict) -> None:
    """Where the trace is, and how to open it in Perfetto and TensorBoard."""
    traces = report.get("traces", {})
    lines = [f"Trace: `{report['trace']}`: open it at https://ui.perfetto.dev (Open trace file) or chrome://tracing."]
    if traces.get("tensorboard"):
        lines.append("TensorBoard (with the torch-tb-profiler plugin, PyTorch Profiler tab):")
    st.markdown("  \n".join(lines))
    if traces.get("tensorboard"):
        st.code(f"tensorboard --logdir {traces['tensorboard']}", language="bash")
    if traces.get("phases") and traces.get("phases") != report["trace"]:
        st.caption(f"The phases alone, as a trace: `{traces['phases']}`")
