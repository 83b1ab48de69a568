"""The Build a student page's pieces: the student's settings, its background job, progress and result."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from ..formats import duration, human_count
from ..optimize import variants
from .. import student_card
from ..optimize import corpus
from ..recipe import DEFAULT_STUDENT_MINUTES, LAYER_CHOICES, StudentSpec
from . import charts, draw, jobs, shared, state

REFRESH_S = 1.0  # how often a running job's progress is redrawn


# What the page's card measures (all dev questions, 1024 perplexity tokens, 3 timing rounds per runtime).
CARD_OPTIONS: dict = {}


def student_settings() -> tuple[StudentSpec, float]:
    """The student to build and its budget in minutes; the spec names the student, so the same settings resume it."""
    default = StudentSpec()
    minutes_col, layers_col = st.columns(2)
    minutes = minutes_col.number_input(
        "Training budget (minutes)", min_value=0.1, max_value=600.0, value=DEFAULT_STUDENT_MINUTES, step=5.0,
        format="%.1f", key=state.STUDENT_MINUTES,
        help="Minutes of training in all, summed over runs: a student trained for less resumes. Writing the teacher's "
             "training text and its targets comes first and is not counted.")
    percent = layers_col.slider("Decoder layers removed from the teacher", 10, 90,
                                round(default.layers_ratio * 100), 5, format="%d%%",
                                key=state.STUDENT_LAYERS,
                                help="The student starts as the teacher without some of its layers, then learns to "
                                     "imitate the teacher.")
    with st.expander("Healing signals and starting point"):
        choice_col, prompts_col = st.columns(2)
        choice = choice_col.selectbox(
            "Layers dropped by", LAYER_CHOICES, index=LAYER_CHOICES.index(default.layer_choice),
            key=state.STUDENT_LAYER_CHOICE,
            help="similarity: each layer whose output is most like its input; angular: the contiguous block of least "
                 "angular distance (Gromov et al., 2024); loss: the layers whose removal raises the loss least, "
                 "measured.")
        prompts = prompts_col.number_input(
            "Training prompts", min_value=1, max_value=max(len(corpus.read_prompts(corpus.PROMPTS)), 1), value=default.prompts, step=64,
            key=state.STUDENT_PROMPTS, help="Prompts the teacher answers to make the training text (from the top of "
                                            "the project's prompt file; none is in an evaluation set).")
        layers_col, attention_col = st.columns(2)
        layers_weight = layers_col.number_input(
            "Mapped-layer loss weight", min_value=0.0, max_value=100.0, value=default.layers_weight, step=0.5,
            key=state.STUDENT_LAYERS_WEIGHT,
            help="Each student layer's output against the teacher layer it was copied from (TinyBERT). 0 = off.")
        attention_weight = attention_col.number_input(
            "Attention loss weight", min_value=0.0, max_value=100.0, value=default.attention_weight, step=0.5,
            key=state.STUDENT_ATTENTION_WEIGHT,
            help="Mapped layers' attention distributions (MiniLM); runs the teacher every step, so each step is "
                 "slower. 0 = off.")
        st.caption("The KL term on the teacher's next-token distribution (its top-64 logits, computed once per "
                   "training text) always counts with weight 1.")
    spec = StudentSpec(layers_ratio=percent / 100, layer_choice=choice, prompts=int(prompts),
                       layers_weight=float(layers_weight), attention_weight=float(attention_weight))
    return spec, float(minutes)


def student_job(teacher: str, spec: StudentSpec) -> jobs.Job | None:
    """The job of the student these settings name, or else the latest student job of this teacher."""
    registry = shared.job_registry()
    own = registry.get(jobs.distill_key(teacher, variants.student_name(teacher, spec)))
    others = registry.jobs(jobs.distill_key(teacher, ""))
    return own or (others[-1] if others else None)


def student_controls(teacher: str, spec: StudentSpec, minutes: float, job: jobs.Job | None) -> jobs.Job | None:
    """Start (or resume) and Stop buttons; returns the job to show."""
    registry = shared.job_registry()
    busy = registry.running("distill:")
    start_col, stop_col, _ = st.columns([1, 1, 3])
    if start_col.button("Start", icon=":material/play_arrow:", type="primary", disabled=bool(busy),
                        width="stretch", help="Builds the student, or resumes it from its last checkpoint."):
        jobs.start_distill(registry, teacher, spec, minutes, card=dict(CARD_OPTIONS))
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
        ppl = f" · held-out perplexity {metrics['heldout_ppl']:.2f}" if "heldout_ppl" in metrics else ""
        done = (f"{duration(job.step)} of {duration(job.total)}" if metrics.get("unit") == "s"
                else f"of {job.total}")
        text = (f"Step {metrics['step']} · {done} · loss {metrics['loss']:.4f}{ppl} · "
                f"about {duration(metrics['eta_s'])} left")
    elif metrics.get("stage"):
        count = f" {job.step} of {job.total}," if job.total else ""
        text = f"The {metrics['stage']}…{count} ({job.elapsed_s:.0f} s)"
    else:
        text = f"Loading the teacher… ({job.elapsed_s:.0f} s)"
    training = metrics.get("stage") == "distilling" or not str(metrics.get("stage", "")).startswith("card")
    st.progress(job.fraction if training or job.total else 1.0, text=text)
    parts, evals = _live_curves(job)
    draw.chart(st.empty(), charts.student_curves_figure(parts, evals), "student-live")


def student_result(job: jobs.Job) -> None:
    """The student a finished (or stopped) job published: name, size against the teacher, its card and curves."""
    result = job.result
    if not isinstance(result, dict):
        st.info("Stopped before the first step; nothing was saved.")
        return
    name, params, teacher = result["name"], result["params"], result["teacher_params"]
    stopped = f"Stopped at step {result['steps']}; " if job.stopped else ""
    trained = result.get("train_seconds")
    st.success(
        f"{stopped}**{name}** is ready: {human_count(params)} parameters, {params / teacher:.0%} of the teacher's "
        f"{human_count(teacher)}, after {_steps(result['steps'])}"
        f"{f' ({duration(trained)} of training)' if trained else ''}, loss {result['first_loss']:.3f} → "
        f"{result['loss']:.3f}. It is listed under Distilled variant in the sidebar.",
        icon=":material/school:",
    )
    if st.button(f"Chat with {name}", icon=":material/chat:", on_click=state.use_variant, args=(name,),
                 help="Selects it as the sidebar's distilled variant and opens the chat, which continues on it."):
        st.switch_page("pages/chat.py")
    student_card_view(job.key.split(":", 2)[1], name)


def student_card_view(teacher: str, name: str, key: str = "student-final") -> None:
    """A built student's card: quality of teacher, unhealed and healed student; speed-up per runtime; its curves
    (``key`` names its chart, unique within a run)."""
    path = variants.find_student(teacher, name)
    if path is None:
        return
    meta = json.loads((path / "recipe.json").read_text())["student"]
    card = student_card.read_card(teacher, name)
    st.subheader(f"Card of {name}")
    if card is None:
        st.info("No card yet (quality beside the teacher's and the unhealed student's, speed-up per runtime): it is "
                "measured when training reaches its budget. Start again with the same settings to finish.",
                icon=":material/info:")
    else:
        if card["steps"] != meta["steps"]:
            st.warning(f"Measured at step {card['steps']}; the student has trained to step {meta['steps']} since.")
        st.dataframe(card_quality_rows(card), hide_index=True, width="stretch")
        st.dataframe(card_speed_rows(card), hide_index=True, width="stretch")
        st.caption(f"Quality under transformers fp32 ({_qa_caption(card)}). Speed: decode tokens/s, "
                   f"{card['settings']['rounds']} interleaved rounds of {card['settings']['speed_tokens']} tokens "
                   f"each, medians; {card['machine']}. A speed-up below 1× means the student is slower here.")
    progress = json.loads((path / "progress.json").read_text())
    draw.chart(st.empty(), charts.student_curves_figure(progress.get("parts") or {"kl": progress["losses"]},
                                                        progress.get("evals", []),
                                                        progress.get("teacher_heldout_ppl")), key)


def card_quality_rows(card: dict) -> list[dict]:
    names = {"teacher": "Teacher", "unhealed": "Student before healing", "healed": "Student, healed"}
    rows = []
    for who, label in names.items():
        q = card["quality"][who]
        rows.append({"Model": label,
                     "QA accuracy": f"{q['qa_accuracy']:.0%} ({q['qa_correct']}/{q['qa_n']})"
                     if q.get("qa_accuracy") is not None else "–",
                     "Perplexity": f"{q['perplexity']:.2f}" if q.get("perplexity") is not None else "–",
                     "Agreement with the teacher": f"{q['agreement']:.2f}" if q.get("agreement") is not None else "–"})
    return rows


def card_speed_rows(card: dict) -> list[dict]:
    rows = []
    for runtime, speed in card["speed"].items():
        if "error" in speed:
            rows.append({"Runtime": runtime, "Teacher tok/s": "–", "Student tok/s": "–",
                         "Speed-up": f"not measured: {speed['error']}"})
        else:
            rows.append({"Runtime": runtime, "Teacher tok/s": f"{speed['teacher_tok_s']:.1f}",
                         "Student tok/s": f"{speed['student_tok_s']:.1f}", "Speed-up": f"{speed['speedup']:.2f}×"})
    return rows


def _qa_caption(card: dict) -> str:
    settings = card["settings"]
    qa = f"first {settings['qa_limit']} dev questions" if settings.get("qa_limit") else "the dev questions"
    return (f"{qa}; perplexity on {settings['max_eval_tokens'] or 'all'} tokens of the evaluation text; agreement: "
            f"greedy tokens matching the teacher's on {settings['agreement_prompts']} prompts")


def students_table(teacher: str) -> None:
    """The students of this teacher built here so far, and the card of the one chosen."""
    built = variants.list_students(teacher)
    if not built:
        st.caption("No student of this model has been built here yet.")
        return
    rows = [{
        "Student": s["name"],
        "Layers removed": f"{s['spec']['layers_ratio']:.0%}",
        "Steps": s["steps"],
        "Loss": f"{s['first_loss']:.3f} → {s['loss']:.3f}" if s.get("loss") is not None else "–",
        "Held-out perplexity": _heldout_cell(s),
        "Parameters": f"{human_count(s['params'])} ({s['params'] / s['teacher_params']:.0%} of the teacher)",
        "Trained for": duration(s.get("train_seconds") or s["seconds"]),
    } for s in built]
    st.dataframe(rows, hide_index=True, width="stretch")
    chosen = st.selectbox("Card of a student", [s["name"] for s in built], index=None, key=state.STUDENT_CARD,
                          placeholder="Choose a student to see its card",
                          help="What it kept and what it buys, as measured here when it reached its budget: quality "
                               "beside the teacher's and the unhealed student's, speed-up per runtime, and its "
                               "training curves.")
    if chosen is not None:
        student_card_view(teacher, chosen, key="student-chosen")


def _live_curves(job: jobs.Job) -> tuple[dict[str, list[float]], list[dict]]:
    """This run's loss terms and held-out checks so far, from the job's progress history."""
    parts: dict[str, list[float]] = {}
    evals = []
    for _, m in job.history:
        if m.get("stage") != "distilling":
            continue
        for part, value in (m.get("parts") or {"kl": m["loss"]}).items():
            parts.setdefault(part, []).append(value)
        if "heldout_ppl" in m:
            evals.append({"step": m["step"], "heldout_ppl": m["heldout_ppl"]})
    first = next((m["step"] for _, m in job.history if m.get("stage") == "distilling"), 1)
    if first > 1:  # resumed: pad the curves so that they start at the step this run did
        parts = {k: [None] * (first - 1) + v for k, v in parts.items()}
    return parts, evals


def _heldout_cell(student: dict) -> str:
    evals = student.get("evals") or []
    if len(evals) < 2:
        return "–"
    return f"{evals[0]['heldout_ppl']:.2f} → {evals[-1]['heldout_ppl']:.2f}"


def _steps(n: int) -> str:
    return "1 step" if n == 1 else f"{n} steps"
