"""The Compare page's pieces: recipe panes A and B, a prompt streamed to both, the summary, the prompt set."""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time

import streamlit as st

from .. import quality
from ..conversation import with_system_prompt
from ..recipe import REMOTE, GenerationSettings
from ..serving.engine import Engine, Request
from . import changes, charts, chat, compare, draw, jobs, recipe_form, shared, state
from .model_loading import POLL_S, model_slot, size_text

PREFIXES = {"a": state.COMPARE_A, "b": state.COMPARE_B}
NAMES = {"a": "A", "b": "B"}
MODES = {compare.SEQUENTIAL: "Sequential — A, then B", compare.CONCURRENT: "Concurrent — both at once"}
REFRESH_S = 1.0  # how often a running prompt set's progress is redrawn
SET_DEFAULT = 5


# Recipe panes ----------------------------------------------------------------------------------------------


def recipe_panes() -> dict[str, Engine | None]:
    """Recipe controls for A and B in two columns, then each model's build progress and card.

    On first visit A is the sidebar recipe's baseline and B the sidebar recipe; the panes keep their choices
    while another page is shown. A pane whose choices cannot run here, or whose build failed, says why in that
    pane. Returns each side's ready engine, or None.
    """
    _restore_or_seed()
    st.button("Reset: A = the sidebar recipe's baseline, B = the sidebar recipe", icon=":material/restart_alt:",
              on_click=_seed_from_sidebar, args=(True,))
    slots, boxes = {}, {}
    for side, column in zip(compare.SIDES, st.columns(2, gap="large")):
        with column, st.container(border=True):
            st.subheader(f"Recipe {NAMES[side]}")
            with st.expander(f"Change recipe {NAMES[side]}", icon=":material/tune:"):
                recipe, problem, trust = recipe_form.recipe_controls(PREFIXES[side])
            _save(PREFIXES[side])
            slots[side] = None if recipe is None else model_slot(recipe, trust)
            boxes[side] = st.empty()
            if problem:  # also outside the expander, which may be closed
                boxes[side].error(f"Recipe {NAMES[side]} cannot run here: {problem}", icon=":material/block:")
            elif recipe is None:
                boxes[side].info(f"Choose a model for recipe {NAMES[side]} under Change recipe {NAMES[side]}.")
    same = st.empty()  # always drawn, so that the elements below keep their places from run to run
    _await_builds(slots, boxes)
    engines = {side: _pane_status(slots[side], boxes[side]) for side in compare.SIDES}
    if slots["a"] is not None and slots["a"] is slots["b"]:
        same.info("A and B are the same recipe (one model answers twice): change one of them to compare two.",
                icon=":material/info:")
    return engines


def _restore_or_seed() -> None:
    saved = st.session_state.get(state.COMPARE_SAVED, {})
    for prefix in PREFIXES.values():
        if state.widget_key(state.MODEL_CHOICE, prefix) in st.session_state:
            continue  # drawn on the previous run: the widgets hold the values
        for key, value in saved.get(prefix, {}).items():
            st.session_state.setdefault(key, value)
    _seed_from_sidebar(overwrite=False)


def _seed_from_sidebar(overwrite: bool) -> None:
    """A = the sidebar recipe's baseline, B = the sidebar recipe; values already set stay unless ``overwrite``."""
    recipe = state.current_recipe()
    if recipe is None:
        return  # the widgets' own defaults
    trust = state.remote_code_allowed()
    for prefix, side_recipe in ((state.COMPARE_A, recipe.baseline()), (state.COMPARE_B, recipe)):
        recipe_form.seed_controls(side_recipe, prefix, trust, overwrite=overwrite)


def _save(prefix: str) -> None:
    # Streamlit forgets a widget's value once a run does not draw it (another page); this copy outlives that.
    saved = st.session_state.setdefault(state.COMPARE_SAVED, {})
    saved[prefix] = {k: v for k, v in st.session_state.items() if k.startswith(prefix + ".")}


def _await_builds(slots: dict[str, shared.ModelSlot | None], boxes: dict) -> None:
    pending = {side: slot for side, slot in slots.items() if slot is not None and not slot.done}
    if not pending:
        return
    while True:
        for side, slot in pending.items():
            boxes[side].progress(slot.fraction, text=f"Building {slot.recipe.label()}: {slot.stage} — "
                                                     f"{slot.elapsed_s:.1f} s")
        if all(slot.wait(POLL_S / len(pending)) for slot in pending.values()):
            break
    for side in pending:
        boxes[side].empty()


def _pane_status(slot: shared.ModelSlot | None, box) -> Engine | None:
    if slot is None:
        return None  # the controls said why (no model entered, or a combination that cannot run)
    if slot.error:
        box.error(slot.error, icon=":material/error:")
        return None
    engine = slot.engine
    if engine is None or engine.model is None:
        box.warning("This model was just unloaded to make room for another recipe; reload the page to rebuild it.")
        return None
    stats = engine.model.stats
    box.caption(f"**{slot.recipe.label()}** · {size_text(stats)} · backend: {stats.backend} · "
                f"{'reached' if slot.recipe.runtime == REMOTE else 'built'} in {stats.build_s:.1f} s")
    return engine


# Run settings ----------------------------------------------------------------------------------------------


def run_settings() -> tuple[GenerationSettings | None, str]:
    """Generation settings shared by A and B, and the run order; a note on what each order means."""
    settings = chat.generation_settings()
    mode = st.radio("Run order", list(MODES), key=state.COMPARE_MODE, format_func=MODES.get, horizontal=True)
    if mode == compare.SEQUENTIAL:
        st.caption("A answers first, then B: the two never share this machine's CPU cores while they are timed.")
    else:
        st.warning("Both models run at the same time and share the CPU cores: each one's figures include the "
                   "slowdown the other causes, so they are not each model's own speed.", icon=":material/warning:")
    return settings, mode


# One prompt (or a conversation) to both ---------------------------------------------------------------------


def turns() -> list[dict]:
    """This session's compared turns, once a turn that a click just stopped has been stored."""
    done = st.session_state.get(state.COMPARE_TURN_DONE)
    if done is not None and not done.is_set():
        with st.spinner("Keeping the stopped answers…"):
            done.wait(compare.RESULT_TIMEOUT_S)
    return st.session_state.setdefault(state.COMPARE_TURNS, [])


def clear_turns() -> None:
    st.session_state[state.COMPARE_TURNS] = []


def conversation_controls() -> bool:
    """Whether earlier turns are sent too (each model sees its own earlier answers), and a Clear button."""
    keep_col, clear_col = st.columns([5, 1], vertical_alignment="center")
    keep = keep_col.checkbox("Continue the conversation: each model also sees the earlier prompts and its own "
                             "earlier answers", key=state.COMPARE_CONTINUE)
    clear_col.button("Clear", icon=":material/delete:", on_click=clear_turns, width="stretch")
    return keep


def show_turns(stored: list[dict]) -> None:
    """The compared turns: each prompt, then A's and B's answers side by side; the latest with charts and summary."""
    for i, turn in enumerate(stored):
        latest = i == len(stored) - 1
        with st.chat_message("user"):
            st.markdown(turn["prompt"])
        for side, column in zip(compare.SIDES, st.columns(2, gap="large")):
            with column:
                pane = _Pane(side, turn.get("labels", {}).get(side, ""))
                _draw_final(pane, turn.get(side), f"turn-{i}", charts_too=latest)
        if latest:
            show_summary(turn)


def compare_turn(engines: dict[str, Engine], prompt: str, settings: GenerationSettings, mode: str,
                 keep: bool) -> dict:
    """Send a prompt to A and B, stream both answers with their live figures, then store and summarise the turn.

    A Stop button shows while they stream; clicking it (or anything else) ends this run, and the ``finally``
    stops both requests after their current token and keeps the partial answers.
    """
    stored = st.session_state.setdefault(state.COMPARE_TURNS, [])
    messages = {side: _messages(stored, side, prompt, keep) for side in compare.SIDES}
    turn = {"prompt": prompt, "mode": mode, "greedy": settings.greedy,
            "labels": {side: engines[side].recipe.label() for side in compare.SIDES}}
    stored.append(turn)
    done = threading.Event()
    st.session_state[state.COMPARE_TURN_DONE] = done
    with st.chat_message("user"):
        st.markdown(prompt)
    panes = {}
    for side, column in zip(compare.SIDES, st.columns(2, gap="large")):
        with column:
            panes[side] = _Pane(side, turn["labels"][side])
    stop_box = st.empty()
    handles: dict[str, Request] = {}
    try:
        _warm_up(engines, panes)
        stop_box.button("Stop", key=state.COMPARE_STOP, icon=":material/stop_circle:", help="End both answers now.")
        if mode == compare.CONCURRENT:
            for side in compare.SIDES:
                handles[side] = engines[side].submit(messages[side], settings, origin=compare.ORIGIN)
            _stream(handles, panes)
        else:
            panes["b"].text.markdown("_waits until A has answered (sequential)…_")
            for side in compare.SIDES:
                handles[side] = engines[side].submit(messages[side], settings, origin=compare.ORIGIN)
                _stream({side: handles[side]}, panes)
    except RuntimeError as exc:  # an engine closed by an eviction since this run looked it up
        turn["error"] = f"A model is no longer loaded ({exc}); reload the page to rebuild it."
    finally:
        # Reached on completion and on interruption alike; no Streamlit calls (each would raise again).
        try:
            for side, handle in handles.items():
                handle.stop()
                turn[side] = _finished(handle, engines[side])
        finally:
            done.set()
    stop_box.empty()
    if turn.get("error"):
        st.error(turn["error"])
    for side in compare.SIDES:
        _draw_final(panes[side], turn.get(side), f"turn-{len(stored) - 1}", charts_too=True)
    show_summary(turn)
    return turn


def _messages(stored: list[dict], side: str, prompt: str, keep: bool) -> list[dict]:
    history = []
    if keep:
        for turn in stored:
            if turn.get(side):
                history += [{"role": "user", "content": turn["prompt"]},
                            {"role": "assistant", "content": turn[side]["text"]}]
    history.append({"role": "user", "content": prompt})
    return with_system_prompt(history, st.session_state.get(state.SYSTEM_PROMPT))


def _warm_up(engines: dict[str, Engine], panes: dict) -> None:
    for side in compare.SIDES:
        if not compare.is_warm(engines[side]):
            panes[side].text.markdown("_warming up (one short request, not timed or recorded)…_")
            compare.warm_up(engines[side])
            panes[side].text.empty()


class _Pane:
    """The placeholders of one side's answer: text, live figures, per-token chart."""

    def __init__(self, side: str, label: str):
        self.side = side
        st.markdown(f"**{NAMES[side]}** · {label}")
        self.text = st.empty()
        self.figures = st.empty()
        self.chart = st.empty()
        self.footer = st.empty()  # the finished answer's figures in one line, or its error
        self.keys = (f"compare-{side}-live-{i}" for i in itertools.count())


def _stream(handles: dict[str, Request], panes: dict[str, _Pane]) -> None:
    sides = list(handles)
    texts = {side: "" for side in sides}
    times: dict[str, list[float]] = {side: [] for side in sides}
    drawn_at = {side: 0.0 for side in sides}
    for item in compare.merged_events([handles[side] for side in sides], POLL_S):
        if item is None:  # every pass makes a Streamlit call: that is where a click interrupts this loop
            for side in sides:
                if not times[side]:
                    panes[side].text.markdown("_waiting for the first token…_")
            continue
        i, event = item
        side = sides[i]
        texts[side] += event.text
        times[side].append(event.t)
        pane = panes[side]
        pane.text.markdown(texts[side] + " ▌")
        _draw_figures(pane, compare.live_metrics(times[side]))
        if time.monotonic() - drawn_at[side] >= chat.CHART_EVERY_S:
            draw.chart(pane.chart, charts.token_latency_figure(
                times[side], f"{NAMES[side]}: per-token latency (streaming)"), next(pane.keys))
            drawn_at[side] = time.monotonic()


def _finished(handle: Request, engine: Engine) -> dict:
    try:
        return compare.reply(handle.result(timeout=compare.RESULT_TIMEOUT_S), engine)
    except TimeoutError:
        return {"text": "", "metrics": None, "token_times": [], "token_ids": [],
                "error": "The model did not stop in time; this answer is incomplete and has no figures."}


def _draw_figures(pane: _Pane, figures: dict) -> None:
    def num(key: str, fmt: str, unit: str) -> str:
        return "–" if figures.get(key) is None else f"{format(figures[key], fmt)} {unit}"

    with pane.figures.container():
        ttft, tpot, rate = st.columns(3)
        ttft.metric("TTFT", num("ttft_ms", ".0f", "ms"))
        tpot.metric("TPOT", num("tpot_ms", ".1f", "ms"))
        rate.metric("Decode tok/s", num("decode_tok_s", ".1f", "").strip())


def _draw_final(pane: _Pane, answer: dict | None, key: str, charts_too: bool) -> None:
    if answer is None:
        pane.text.info("No answer: the comparison was stopped before this model started.")
        return
    pane.text.markdown(answer["text"] or "_(no text)_")
    if answer.get("error"):
        pane.footer.error(answer["error"])
    if not answer.get("metrics"):
        return
    if charts_too:
        _draw_figures(pane, answer["metrics"])
        title = f"{NAMES[pane.side]}: per-token latency"
        draw.chart(pane.chart, charts.token_latency_figure(answer["token_times"], title),
                           f"compare-{pane.side}-{key}")
    if not answer.get("error"):
        pane.footer.caption(chat.format_metrics(answer["metrics"]))


def show_summary(turn: dict) -> None:
    """B against A for one turn: the verdict, a table of figures with speed-ups, and a speed-up chart."""
    a, b = turn.get("a"), turn.get("b")
    if not (a and b and a.get("metrics") and b.get("metrics")):
        st.info("The summary needs both answers; this comparison was stopped before both finished.")
        return
    result = compare.summary(a, b)
    st.subheader("B against A")
    _summary_body(result, "", f"summary-{id(turn)}")
    notes = []
    if turn["mode"] == compare.CONCURRENT:
        notes.append("Run concurrently: both answers shared the CPU, so each one's figures include the other's load.")
    if not turn.get("greedy", True):
        notes.append("Sampled (temperature > 0): answers differ by chance too, so agreement is not a quality measure.")
    for answer in (a, b):
        if answer["metrics"].get("finish_reason") == "stopped":
            notes.append("An answer was stopped early: its figures cover the tokens it produced.")
            break
    for note in notes:
        st.caption(note)


def _summary_body(result: dict, of: str, key: str) -> None:
    level, sentence = compare.verdict(result)
    show = {"slower": st.warning, "faster": st.success, "same": st.info}[level]
    show(sentence, icon={"slower": ":material/trending_down:", "faster": ":material/trending_up:",
                         "same": ":material/trending_flat:"}[level])
    table_col, chart_col = st.columns([3, 2], gap="large")
    table_col.dataframe(compare.summary_rows(result, of), hide_index=True, width="stretch")
    st.caption("Speed-up = how many times faster B is: A's time ÷ B's for TTFT, TPOT and end to end, B's tok/s ÷ "
               "A's for decode speed. Agreement = share of A's generated tokens that B repeats at the same position.")
    with chart_col:
        draw.chart(st.empty(), charts.ratio_figure(compare.speedup_bars(result), "Speed-up of B over A",
                                                           reference="A"), key)


# The prompt set --------------------------------------------------------------------------------------------


def set_key(engines: dict[str, Engine]) -> str:
    return "compare-set:" + ":".join(engines[side].recipe.key() for side in compare.SIDES)


def prompt_set(engines: dict[str, Engine | None], settings: GenerationSettings | None, mode: str) -> None:
    """Compare A and B on the first N prompts of the evaluation set, on a background job; then distributions."""
    prompts = quality.load_prompts()
    n_col, tokens_col = st.columns(2)
    n = n_col.slider("Prompts", 1, len(prompts), min(SET_DEFAULT, len(prompts)), key=state.COMPARE_SET_SIZE,
                     help=f"The first prompts of the {len(prompts)} in assets/eval/prompts.txt.")
    tokens = tokens_col.number_input("Max new tokens per answer", min_value=2, max_value=1024, value=64, step=16,
                                     key=state.COMPARE_SET_TOKENS)
    ready = all(engines.values()) and settings is not None
    if not ready:
        st.info("Both recipes need a ready model (see above) to run the prompt set.")
        return
    key = set_key(engines)
    registry = shared.job_registry()
    job = registry.get(key)
    results = st.session_state.setdefault(state.COMPARE_SET_RESULTS, {})
    if job is not None and job.done and isinstance(job.result, dict) and job.result.get("prompts"):
        if key not in results or results[key]["measured_at"] < job.result["measured_at"]:
            results[key] = job.result
    running = job is not None and job.running
    set_settings = dataclasses.replace(settings, max_new_tokens=int(tokens))
    if st.button("Run the prompt set", icon=":material/playlist_play:", type="primary", disabled=running):
        pair = (engines["a"], engines["b"])
        chosen = prompts[:n]
        registry.start(key, lambda j: compare.run_prompt_set(pair, chosen, set_settings, mode, on_step=j.on_step,
                                                             stop=lambda: j.stopping),
                       title=f"Comparing A and B on {n} prompts")
        st.rerun()  # redraw with the button disabled and the progress bar
    st.caption(f"Each prompt goes to A and to B ({MODES[mode].split(' — ')[0].lower()} order), after one "
               "untimed warm-up request per model; every answer is recorded in the request history.")
    if running:
        _set_progress(job)
    elif job is not None and job.error:
        st.error(job.error)
    if key in results and not running:
        show_set(results[key])


@st.fragment(run_every=REFRESH_S)
def _set_progress(job: jobs.Job) -> None:
    if job.done:
        st.rerun()  # the whole page: the results replace the progress bar
    text = job.metrics.get("text") or f"Warming up the models… ({job.elapsed_s:.0f} s)"
    bar_col, stop_col = st.columns([5, 1], vertical_alignment="center")
    bar_col.progress(job.fraction, text="Stopping after the current answers…" if job.stopping else text)
    stop_col.button("Stop", key="compare.set_stop", icon=":material/stop_circle:", on_click=job.stop,
                    disabled=job.stopping, width="stretch")


def show_set(result: dict) -> None:
    """A prompt set's results: medians with speed-ups, then each measure's distribution per recipe."""
    summary = compare.set_summary(result)
    n = len(result["prompts"])
    st.subheader(f"B against A on {n} prompt{'s' if n != 1 else ''}")
    when = time.strftime("%H:%M:%S", time.localtime(result["measured_at"]))
    st.caption(f"Measured at {when}, {result['mode']} order, up to {result['max_new_tokens']} new tokens per "
               f"answer. A: {result['a']['label']} · B: {result['b']['label']}")
    busy = changes.busy_note(result)
    if busy:
        st.warning(busy, icon=":material/speed:")
    _summary_body(summary, ", median", "set-summary")
    samples = {NAMES[side]: {m.key: result[side][m.key] for m in compare.MEASURES} for side in compare.SIDES}
    measures = [(m.key, f"{m.name} ({m.unit})") for m in compare.DISTRIBUTIONS]
    draw.chart(st.empty(), charts.distribution_figure(samples, measures, "Per prompt, per recipe"),
                       "set-distribution")
