"""The What changed page's pieces: the build against its baseline, and speed and quality measured side by side."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from .. import quality
from ..recipe import FLOAT_DTYPES, Recipe
from . import changes, charts, draw, jobs, shared, state
from .model_loading import require_slots

REFRESH_S = 1.0  # how often a running job's progress is redrawn


# What changed: build ---------------------------------------------------------------------------------------


def recipe_and_baseline(recipe: Recipe) -> tuple[shared.ModelSlot, shared.ModelSlot]:
    """The ready slots of a recipe and of its baseline (one slot when the recipe is its own baseline)."""
    slots = require_slots(recipe, recipe.baseline())
    return slots[0], slots[-1]


def build_comparison(model, baseline) -> None:
    """What the recipe changed in the model: a table against the baseline, then the build notes.

    Args:
        model: the recipe's ``LoadedModel``.
        baseline: the baseline's.
    """
    recipe = model.recipe
    st.markdown(f"**This recipe** {recipe.label()}  \n**Baseline** {baseline.recipe.label()} — the same model on "
                "the same device, unpruned, undistilled, in full precision")
    if recipe.is_baseline():
        st.info("This recipe is its own baseline: pick a dtype, a pruning method or a distilled variant in the "
                "sidebar to see what each one changes.", icon=":material/info:")
    st.dataframe(changes.build_rows(model, baseline), hide_index=True, width="stretch")
    if model.notes:
        st.markdown("**Build notes**  \n" + "\n".join(f"- {note}" for note in model.notes))


def why_not_faster(recipe: Recipe) -> None:
    """Why fewer parameters or fewer bytes do not always mean faster answers, for this recipe."""
    with st.expander("Why a smaller model can still be slower", icon=":material/help:"):
        lines = [
            "**Batch-1 decoding is bound by memory and overhead, not arithmetic.** Each new token reads every "
            "weight once and does only a couple of operations per weight; what sets the speed is how fast the "
            "weights stream from memory and the fixed cost of each layer's kernel calls.",
            "**The kernel path decides.** Fewer bytes help only when a kernel reads them in their small form. "
            "Zeros left by unstructured or 2:4 pruning are multiplied like any other number by dense kernels; "
            "int4, nf4 and fp4 weights are unpacked to float before every matmul unless a fused kernel exists; "
            "fp16 and bf16 have slow matmul kernels on many CPUs.",
            "**Removing structure is what pays.** Fewer decoder layers, narrower MLPs or a distilled student do "
            "less work per token on any kernel, at a cost in quality that the measurement below shows.",
        ]
        if recipe.dtype not in FLOAT_DTYPES:
            lines.append("**This recipe** runs its Linear layers through the backend named above; its note says "
                         "when that path is fast and when it is not.")
        st.markdown("\n".join(f"- {line}" for line in lines))


# What changed: measurement ---------------------------------------------------------------------------------


def measure_key(recipe: Recipe) -> str:
    return f"measure:{recipe.key()}"


def measurement(model, baseline) -> None:
    """The Measure button, the running measurement's progress, and the results kept for this recipe."""
    recipe = model.recipe
    registry = shared.job_registry()
    job = registry.get(measure_key(recipe))
    results = state.measurements()
    _collect(job, results, recipe.key())

    running = job is not None and job.running
    button_col, quick_col = st.columns([1, 2], vertical_alignment="center")
    quick = quick_col.checkbox(f"Quick: the first {changes.QUICK_QA} of the {len(quality.load_qa())} QA questions and "
                               f"{changes.QUICK_PROMPTS} of the 20 agreement prompts", key=state.QUICK_MEASURE)
    if button_col.button("Measure speed and quality", icon=":material/speed:", type="primary", disabled=running,
                         width="stretch"):
        registry.start(measure_key(recipe), lambda j: changes.measure_pair(j, model, baseline, quick),
                       title=f"Measuring {recipe.label()}")
        st.rerun()  # redraw with the button disabled and the progress bars
    st.caption(f"Both models: {changes.RUNS} runs of {changes.MAX_NEW_TOKENS} new tokens after a warm-up, then "
               "perplexity, QA accuracy and agreement with the baseline's greedy answers. A few minutes for the "
               "embedded model on a laptop CPU; quick takes about a third of that. Meanwhile the measurement has "
               "both models to itself: chat messages sent to them are told they are busy, and a chat reply being "
               "written is finished first.")
    others = [j for j in registry.running("distill:") + registry.running("measure:") if j.key != measure_key(recipe)]
    if others:
        st.warning(f"{others[0].title} is running on this machine: speed measured now shares the CPU with it.",
                   icon=":material/warning:")

    if running:
        _measure_progress(job)
    elif job is not None and job.error:
        st.error(job.error)
    elif job is not None and job.stopped and recipe.key() not in results:
        st.info("Measurement stopped; nothing was kept.")
    if recipe.key() in results and not running:
        measured(results[recipe.key()])


def _collect(job, results: dict, key: str) -> None:
    """Keep a finished job's result in this session, unless the session holds a newer one."""
    if job is None or not job.done or not isinstance(job.result, dict):
        return
    if key not in results or results[key]["measured_at"] < job.result["measured_at"]:
        results[key] = job.result


@st.fragment(run_every=REFRESH_S)
def _measure_progress(job: jobs.Job) -> None:
    if job.done:
        st.rerun()  # the whole page, which now shows the result
    for phase, name in (("speed", "Speed"), ("quality", "Quality")):
        step, total, metrics = job.phases.get(phase, (0, 0, {}))
        st.progress(step / total if total else 0.0, text=metrics.get("text") or f"{name}: waiting")
    st.button("Stop measuring", icon=":material/stop_circle:", on_click=job.stop, disabled=job.stopping)


def measured(result: dict) -> None:
    """The measured figures: when and how, one plain sentence on speed, the side-by-side table and ratio chart."""
    when = datetime.fromtimestamp(result["measured_at"]).strftime("%H:%M:%S")
    scope = "quick" if result["quick"] else "full"
    st.caption(
        f"Measured on this machine at {when} ({scope}): medians of {result['runs']} runs of exactly "
        f"{result['max_new_tokens']} new tokens, warm-up excluded; perplexity on the first {result['eval_tokens']} "
        f"tokens of the evaluation text; QA on {result['qa_n']} questions; agreement on {result['prompts_n']} "
        "prompts. Anything else running here (a chat, a student being built) slows the models it overlaps."
    )
    busy = changes.busy_note(result)
    if busy:
        st.warning(busy, icon=":material/speed:")
    level, verdict = changes.verdict(result)
    show = {"slower": st.warning, "faster": st.success, "same": st.info}[level]
    show(verdict, icon={"slower": ":material/trending_down:", "faster": ":material/trending_up:",
                         "same": ":material/trending_flat:"}[level])
    table_col, chart_col = st.columns([3, 2], gap="large")
    with table_col:
        st.dataframe(changes.measured_rows(result, changes.device_word(result["device"])), hide_index=True,
                     width="stretch")
    with chart_col:
        draw.chart(st.empty(), charts.ratio_figure(changes.ratios(result)), "ratios")
