"""The What changed and Build a student pages' pieces: build comparison, measurement, student jobs."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import streamlit as st

from ..optimize import distill
from ..recipe import FLOAT_DTYPES, Recipe
from . import cached, changes, charts, jobs, state, widgets
from .units import human_count

REFRESH_S = 1.0  # how often a running job's progress is redrawn


# What changed: build ---------------------------------------------------------------------------------------


def recipe_and_baseline(recipe: Recipe) -> tuple[cached.ModelSlot, cached.ModelSlot]:
    """The ready slots of a recipe and of its baseline (one slot when the recipe is its own baseline)."""
    slots = widgets.require_slots(recipe, recipe.baseline())
    return slots[0], slots[-1]


def build_comparison(optimized, baseline) -> None:
    """What the recipe changed in the model: a table against the baseline, then the build notes."""
    recipe = optimized.recipe
    st.markdown(f"**This recipe** {recipe.label()}  \n**Baseline** {baseline.recipe.label()} — the same model on "
                "the same device, unpruned, undistilled, in full precision")
    if recipe.is_baseline():
        st.info("This recipe is its own baseline: pick a dtype, a pruning method or a distilled variant in the "
                "sidebar to see what each one changes.", icon=":material/info:")
    st.dataframe(changes.build_rows(optimized, baseline), hide_index=True, width="stretch")
    if optimized.notes:
        st.markdown("**Build notes**  \n" + "\n".join(f"- {note}" for note in optimized.notes))


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
            lines.append(f"**This recipe** runs its Linear layers through the backend named above; its note says "
                         f"when that path is fast and when it is not.")
        st.markdown("\n".join(f"- {line}" for line in lines))


# What changed: measurement ---------------------------------------------------------------------------------


def measure_key(recipe: Recipe) -> str:
    return f"measure:{recipe.key()}"


def measurement(optimized, baseline) -> None:
    """The Measure button, the running measurement's progress, and the results kept for this recipe."""
    recipe = optimized.recipe
    registry = cached.job_registry()
    job = registry.get(measure_key(recipe))
    results = state.measurements()
    _collect(job, results, recipe.key())

    running = job is not None and job.running
    button_col, quick_col = st.columns([1, 2], vertical_alignment="center")
    quick = quick_col.checkbox(f"Quick: the first {changes.QUICK_QA} of the 50 QA questions and "
                               f"{changes.QUICK_PROMPTS} of the 20 agreement prompts", key=state.QUICK_MEASURE)
    if button_col.button("Measure speed and quality", icon=":material/speed:", type="primary", disabled=running,
                         width="stretch"):
        registry.start(measure_key(recipe), lambda j: changes.measure_pair(j, optimized, baseline, quick),
                       title=f"Measuring {recipe.label()}")
        st.rerun()  # redraw with the button disabled and the progress bars
    st.caption(f"Both models: {changes.RUNS} runs of {changes.MAX_NEW_TOKENS} new tokens after a warm-up, then "
               "perplexity, QA accuracy and agreement with the baseline's greedy answers. A few minutes for the "
               "embedded model on a laptop CPU; quick takes about a third of that.")
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
        widgets.draw_chart(st.empty(), charts.ratio_figure(changes.ratios(result)), "ratios")


# Build a student -------------------------------------------------------------------------------------------


def student_settings() -> tuple[distill.StudentSpec, int]:
    """Steps and layer ratio of the student to build; the spec names it, so the same settings resume it."""
    steps_col, layers_col = st.columns(2)
    steps = steps_col.number_input("Steps", min_value=1, max_value=10_000, value=distill.DEFAULT_STEPS, step=25,
                                   key=state.STUDENT_STEPS,
                                   help="Optimisation steps in all; a student trained further already is kept.")
    percent = layers_col.slider("Decoder layers removed from the teacher", 10, 90, round(distill.StudentSpec().layers_ratio * 100), 5, format="%d%%",
                                key=state.STUDENT_LAYERS,
                                help="The student starts as the teacher without its least useful layers, then "
                                     "learns to imitate the teacher's next-token distributions.")
    return distill.StudentSpec(layers_ratio=percent / 100), int(steps)


def student_job(teacher: str, spec: distill.StudentSpec) -> jobs.Job | None:
    """The job of the student these settings name, or else the latest student job of this teacher."""
    registry = cached.job_registry()
    own = registry.get(jobs.distill_key(teacher, distill.student_name(teacher, spec)))
    others = registry.jobs(jobs.distill_key(teacher, ""))
    return own or (others[-1] if others else None)


def student_controls(teacher: str, spec: distill.StudentSpec, steps: int, job: jobs.Job | None) -> jobs.Job | None:
    """Start (or resume) and Stop buttons; returns the job to show."""
    registry = cached.job_registry()
    busy = registry.running("distill:")
    start_col, stop_col, _ = st.columns([1, 1, 3])
    if start_col.button("Start", icon=":material/play_arrow:", type="primary", disabled=bool(busy),
                        width="stretch", help="Builds the student, or resumes it from its last checkpoint."):
        jobs.start_distill(registry, teacher, spec, steps)
        st.rerun()  # redraw with Start disabled, Stop enabled and the progress bar
    running = job is not None and job.running
    stop_col.button("Stop", icon=":material/stop_circle:", disabled=not running or job.stopping, width="stretch",
                    on_click=job.stop if running else None, help="Ends after the current step and checkpoints.")
    if busy and not running:
        st.info(f"{busy[0].title} is running; one student at a time.", icon=":material/hourglass_top:")
    return job


def student_progress(job: jobs.Job) -> None:
    """A running student job (redrawn every second), or a finished one's result."""
    if job.running:
        _student_running(job)
        return
    if job.error:
        st.error(job.error)
        return
    student_result(job)


@st.fragment(run_every=REFRESH_S)
def _student_running(job: jobs.Job) -> None:
    if job.done:
        st.rerun()  # the whole page: the sidebar lists the new student
    metrics = job.metrics
    if job.stopping:
        text = "Stopping after the current step, then checkpointing…"
    elif metrics.get("stage") == "distilling":
        text = (f"Step {job.step} of {job.total} · loss {metrics['loss']:.4f} · "
                f"about {_duration(metrics['eta_s'])} left")
    elif metrics.get("stage"):
        text = f"The {metrics['stage']}… ({job.elapsed_s:.0f} s)"
    else:
        text = f"Loading the teacher… ({job.elapsed_s:.0f} s)"
    st.progress(job.fraction, text=text)
    steps, losses = _losses(job)
    widgets.draw_chart(st.empty(), charts.loss_figure(steps, losses), "loss-live")


def student_result(job: jobs.Job) -> None:
    """The student a finished (or stopped) job published: name, size against the teacher, its loss curve."""
    result = job.result
    if not isinstance(result, dict):
        st.info("Stopped before the first step; nothing was saved.")
        return
    name, params, teacher = result["name"], result["params"], result["teacher_params"]
    stopped = f"Stopped at step {result['steps']}; " if job.stopped else ""
    st.success(
        f"{stopped}**{name}** is ready: {human_count(params)} parameters, {params / teacher:.0%} of the teacher's "
        f"{human_count(teacher)}, after {_steps(result['steps'])} (loss {result['first_loss']:.3f} → "
        f"{result['loss']:.3f}). It is listed under Distilled variant in the sidebar.",
        icon=":material/school:",
    )
    if st.button(f"Chat with {name}", icon=":material/chat:", on_click=state.use_variant, args=(name,),
                 help="Selects it as the sidebar's distilled variant and opens the chat, which continues on it."):
        st.switch_page("pages/chat.py")
    steps, losses = _losses(job)
    widgets.draw_chart(st.empty(), charts.loss_figure(steps, losses), "loss-final")


def students_table(teacher: str) -> None:
    """The students of this teacher built here so far."""
    built = distill.list_students(teacher)
    if not built:
        st.caption("No student of this model has been built here yet.")
        return
    rows = [{
        "Student": s["name"],
        "Layers removed": f"{s['spec']['layers_ratio']:.0%}",
        "Steps": s["steps"],
        "Loss": f"{s['first_loss']:.3f} → {s['loss']:.3f}" if s.get("loss") is not None else "–",
        "Parameters": f"{human_count(s['params'])} ({s['params'] / s['teacher_params']:.0%} of the teacher)",
        "Last run took": _duration(s["seconds"]),
    } for s in built]
    st.dataframe(rows, hide_index=True, width="stretch")


def _losses(job: jobs.Job) -> tuple[list[int], list[float]]:
    """Every loss of the student: from its saved progress when it is published, else this run's steps."""
    path = job.result.get("path") if isinstance(job.result, dict) else None
    progress = Path(path) / "progress.json" if path else None
    if progress is not None and progress.is_file():
        losses = json.loads(progress.read_text())["losses"]
        return list(range(1, len(losses) + 1)), losses
    pairs = [(i, m["loss"]) for i, m in job.history if "loss" in m]
    return [i for i, _ in pairs], [loss for _, loss in pairs]


def _steps(n: int) -> str:
    return "1 step" if n == 1 else f"{n} steps"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
