"""The Build a student page's pieces: the student's settings, its background job, progress and result."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from ..formats import duration, human_count
from ..optimize import variants
from ..recipe import DEFAULT_STUDENT_STEPS, StudentSpec
from . import charts, draw, jobs, shared, state

REFRESH_S = 1.0  # how often a running job's progress is redrawn


def student_settings() -> tuple[StudentSpec, int]:
    """Steps and layer ratio of the student to build; the spec names it, so the same settings resume it."""
    steps_col, layers_col = st.columns(2)
    steps = steps_col.number_input("Steps", min_value=1, max_value=10_000, value=DEFAULT_STUDENT_STEPS, step=25,
                                   key=state.STUDENT_STEPS,
                                   help="Optimisation steps in all; a student trained further already is kept.")
    percent = layers_col.slider("Decoder layers removed from the teacher", 10, 90,
                                round(StudentSpec().layers_ratio * 100), 5, format="%d%%",
                                key=state.STUDENT_LAYERS,
                                help="The student starts as the teacher without its least useful layers, then "
                                     "learns to imitate the teacher's next-token distributions.")
    return StudentSpec(layers_ratio=percent / 100), int(steps)


def student_job(teacher: str, spec: StudentSpec) -> jobs.Job | None:
    """The job of the student these settings name, or else the latest student job of this teacher."""
    registry = shared.job_registry()
    own = registry.get(jobs.distill_key(teacher, variants.student_name(teacher, spec)))
    others = registry.jobs(jobs.distill_key(teacher, ""))
    return own or (others[-1] if others else None)


def student_controls(teacher: str, spec: StudentSpec, steps: int, job: jobs.Job | None) -> jobs.Job | None:
    """Start (or resume) and Stop buttons; returns the job to show."""
    registry = shared.job_registry()
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
                f"about {duration(metrics['eta_s'])} left")
    elif metrics.get("stage"):
        text = f"The {metrics['stage']}… ({job.elapsed_s:.0f} s)"
    else:
        text = f"Loading the teacher… ({job.elapsed_s:.0f} s)"
    st.progress(job.fraction, text=text)
    steps, losses = _losses(job)
    draw.chart(st.empty(), charts.loss_figure(steps, losses), "loss-live")


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
    draw.chart(st.empty(), charts.loss_figure(steps, losses), "loss-final")


def students_table(teacher: str) -> None:
    """The students of this teacher built here so far."""
    built = variants.list_students(teacher)
    if not built:
        st.caption("No student of this model has been built here yet.")
        return
    rows = [{
        "Student": s["name"],
        "Layers removed": f"{s['spec']['layers_ratio']:.0%}",
        "Steps": s["steps"],
        "Loss": f"{s['first_loss']:.3f} → {s['loss']:.3f}" if s.get("loss") is not None else "–",
        "Parameters": f"{human_count(s['params'])} ({s['params'] / s['teacher_params']:.0%} of the teacher)",
        "Last run took": duration(s["seconds"]),
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
