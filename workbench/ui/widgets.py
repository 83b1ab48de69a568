"""Streamlit pieces shared by pages: the recipe sidebar, model loading, generation settings, chat turns."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator

import streamlit as st

from .. import catalog, devices, loading, optimize
from ..engine import Engine, GenerationResult, GenerationSettings, Request, TokenEvent
from ..metrics import HistoryStore
from ..recipe import EMBEDDED, FLOAT_DTYPES, Recipe, RecipeError
from . import cached, charts, state

POLL_S = 0.2  # how often a waiting script wakes to redraw progress (and to let Stop interrupt it)
CHART_EVERY_S = 0.4  # minimum time between two redraws of the live latency chart
RESULT_TIMEOUT_S = 300.0  # a stopped request ends after its current token; this bounds a stuck one
FINISH_REASONS = {"eos": "ended (EOS)", "length": "max new tokens reached", "stopped": "stopped", "error": "error"}
_END = object()


# Recipe sidebar ---------------------------------------------------------------------------------------------


def recipe_sidebar() -> Recipe | None:
    """Draw the recipe controls in the sidebar; store and return the resolved recipe (None if invalid)."""
    with st.sidebar:
        st.header("Recipe")
        model = _model_input()
        device = st.selectbox("Device", devices.available_devices(), key=state.DEVICE,
                              help="Only devices present on this machine are listed; auto picks the fastest.")
        dtype = st.selectbox("dtype", FLOAT_DTYPES, key=state.DTYPE, help="Weight and activation precision.")
        trust = False
        if model and _is_hub_id(model):
            trust = st.checkbox("Allow remote code (trust_remote_code)", key=state.TRUST_REMOTE_CODE,
                                help="Some hub models ship their own Python code. Allow it only if you trust "
                                     "the model's authors.")
        recipe = _resolve_recipe(model, device, dtype)
    st.session_state[state.RECIPE] = recipe
    st.session_state[state.REMOTE_CODE_ALLOWED] = trust
    return recipe


def _model_input() -> str | None:
    options = [EMBEDDED, *(m.model for m in catalog.HUB_MODELS), state.OTHER_MODEL]
    choice = st.selectbox("Model", options, key=state.MODEL_CHOICE, format_func=_model_option_label)
    if choice != state.OTHER_MODEL:
        return choice
    typed = st.text_input("Hub id, model directory or .gguf file", key=state.MODEL_OTHER,
                          placeholder="org/name, /path/to/model or /path/to/file.gguf").strip()
    if not typed:
        st.info("Enter a Hugging Face hub id, a local model directory or a local .gguf file.")
        return None
    return typed


def _model_option_label(model: str) -> str:
    if model == EMBEDDED:
        return catalog.EMBEDDED_NAME
    if model == state.OTHER_MODEL:
        return "Other…"
    return model if catalog.hub_cached(model) else f"{model} (not downloaded)"


def _is_hub_id(model: str) -> bool:
    try:
        return loading.resolve_source(model).kind == "hub"
    except loading.ModelSourceError:
        return False


def _resolve_recipe(model: str | None, device: str, dtype: str) -> Recipe | None:
    if model is None:
        return None
    try:
        # Resolved ("auto" device and backend made concrete) so the cache key names what really runs.
        recipe = optimize.resolve(Recipe(model=model, device=device, dtype=dtype))
    except RecipeError as exc:
        st.error(str(exc))
        return None
    if device == "auto":
        st.caption(f"auto → {recipe.device}")
    return recipe


# Model loading ----------------------------------------------------------------------------------------------


def require_engine() -> Engine:
    """The engine of the sidebar's recipe; while it builds, show progress; on failure, an error and stop."""
    recipe = state.current_recipe()
    if recipe is None:
        st.info("Choose a model in the sidebar to start.")
        st.stop()
    slot = cached.model_slot(recipe, state.remote_code_allowed())
    if not slot.done:
        _await_build(slot)
    if slot.error:
        st.error(slot.error)
        st.stop()
    if slot.engine is None:  # released between our lookup and now (another session switched recipes)
        st.warning("This model was just unloaded to make room for another recipe; reload the page to rebuild it.")
        st.stop()
    model_card(slot)
    return slot.engine


def _await_build(slot: cached.ModelSlot) -> None:
    # Blocks this run (the page needs the model) but redraws every POLL_S, which also lets a sidebar change
    # interrupt the wait; the build itself carries on in the background.
    bar = st.progress(slot.fraction, text=_build_text(slot))
    while not slot.wait(POLL_S):
        bar.progress(slot.fraction, text=_build_text(slot))
    bar.empty()


def _build_text(slot: cached.ModelSlot) -> str:
    return f"Building {slot.recipe.label()}: {slot.stage} — {slot.elapsed_s:.1f} s"


def model_card(slot: cached.ModelSlot) -> None:
    """The loaded model in the sidebar: recipe label and key, parameters, weight bytes, build time, notes."""
    optimized = slot.optimized
    if optimized is None:
        return
    recipe, stats = optimized.recipe, optimized.stats
    with st.sidebar:
        st.divider()
        st.subheader("Loaded model")
        st.markdown(
            f"**{recipe.label()}**  \nrecipe key `{recipe.key()}`  \n"
            f"{human_count(stats.params)} parameters · {human_bytes(stats.weight_bytes)} of weights  \n"
            f"built in {stats.build_s:.1f} s · backend: {stats.backend}"
        )
        for note in optimized.notes:
            st.info(note, icon=":material/info:")


def human_count(n: int) -> str:
    """134515008 -> '134.5 M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """538060032 -> '538.1 MB' (decimal units, as disk and download sizes are given)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# Generation settings ----------------------------------------------------------------------------------------


def generation_settings() -> GenerationSettings | None:
    """Generation controls in an expander; the validated settings, or None after showing what is wrong."""
    with st.expander("Generation settings", icon=":material/tune:"):
        left, right = st.columns(2)
        max_new = left.number_input("Max new tokens", min_value=1, max_value=8192, value=256, step=32,
                                    key=state.MAX_NEW_TOKENS)
        seed = right.number_input("Seed (blank = random)", min_value=0, value=None, step=1, key=state.SEED)
        temperature = left.slider("Temperature (0 = greedy)", 0.0, 2.0, 0.0, 0.05, key=state.TEMPERATURE)
        top_p = right.slider("Top-p", 0.05, 1.0, 1.0, 0.05, key=state.TOP_P, disabled=temperature == 0,
                             help="Only used when sampling (temperature > 0).")
        st.text_area("System prompt", key=state.SYSTEM_PROMPT, height=80,
                     placeholder="Optional, e.g. You are a concise assistant.")
    try:
        return GenerationSettings(max_new_tokens=int(max_new), temperature=float(temperature), top_p=float(top_p),
                                  seed=None if seed is None else int(seed))
    except RecipeError as exc:
        st.error(f"{exc.field}: {exc}")
        return None


def conversation(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The role/content list the model sees: an optional system message, then the transcript."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system_prompt and system_prompt.strip():
        turns.insert(0, {"role": "system", "content": system_prompt.strip()})
    return turns


# Chat ------------------------------------------------------------------------------------------------------


def chat_transcript(messages: list[dict]) -> None:
    """Draw the stored messages; each assistant reply with its metrics."""
    for message in messages:
        with st.chat_message(message["role"]):
            st.markdown(message["content"] or "_(no text)_")
            if message["role"] == "assistant":
                reply_footer(message)


def reply_footer(message: dict) -> None:
    """The line under an assistant reply: its metrics, or the error that ended it."""
    if message.get("error"):
        st.error(message["error"])
    if message.get("metrics"):
        st.caption(format_metrics(message["metrics"], message.get("recipe_label")))


def format_metrics(metrics: dict, recipe_label: str | None = None) -> str:
    """One line of a reply's metrics (``GenerationResult.metrics()``), e.g. 'TTFT 41 ms · TPOT 22.0 ms · …'."""

    def num(key: str, fmt: str) -> str:
        return "–" if metrics.get(key) is None else format(metrics[key], fmt)

    parts = [
        f"TTFT {num('ttft_ms', '.0f')} ms",
        f"TPOT {num('tpot_ms', '.1f')} ms",
        f"{num('decode_tok_s', '.1f')} tok/s",
        f"{metrics['prompt_tokens']} prompt → {metrics['new_tokens']} new tokens",
        FINISH_REASONS.get(metrics.get("finish_reason"), str(metrics.get("finish_reason"))),
    ]
    if metrics.get("cache", "miss") != "miss":
        parts.append(f"cache {metrics['cache']} hit")
    if recipe_label:
        parts.append(recipe_label)
    return " · ".join(parts)


def assistant_message(result: GenerationResult, recipe_label: str) -> dict:
    """The transcript entry of a finished (or stopped) reply."""
    return {
        "role": "assistant",
        "content": result.text,
        "metrics": result.metrics(),
        "token_times": list(result.token_times),
        "recipe_label": recipe_label,
        "error": result.error,
    }


def last_token_times(messages: list[dict]) -> list[float]:
    """Token times of the latest assistant reply, or [] before the first."""
    for message in reversed(messages):
        if message["role"] == "assistant":
            return message.get("token_times") or []
    return []


def chat_transcript_settled() -> list[dict]:
    """This session's transcript, once a reply that a click just stopped has been stored in it."""
    if not state.wait_for_turn(0):
        with st.spinner("Keeping the stopped reply…"):
            state.wait_for_turn(RESULT_TIMEOUT_S)
    return state.messages()


def chat_turn(engine: Engine, prompt: str, settings: GenerationSettings, live_chart) -> dict | None:
    """Send the user's message, stream the reply with a live latency chart, and store both in the transcript.

    A Stop button shows while the reply streams. Clicking it (or sending a new message, or changing the
    sidebar) makes Streamlit end this run at its next call; the ``finally`` in ``_stream`` then stops the
    request after its current token and keeps the partial reply with its metrics.

    Args:
        engine: the model's engine.
        prompt: the user's message.
        settings: validated generation settings.
        live_chart: an ``st.empty()`` placeholder the per-token latency chart is redrawn into.
    """
    transcript = state.messages()
    transcript.append({"role": "user", "content": prompt})
    with st.chat_message("user"):
        st.markdown(prompt)
    label = engine.optimized.recipe.label() if engine.optimized else ""
    try:
        handle = engine.submit(conversation(transcript, st.session_state.get(state.SYSTEM_PROMPT)), settings)
    except RuntimeError as exc:  # the engine was closed by an eviction since this run looked it up
        st.error(f"The model is no longer loaded ({exc}); reload the page to rebuild it.")
        return None
    done = state.begin_turn()
    with st.chat_message("assistant"):
        text_box = st.empty()
        stop_box = st.empty()
        stop_box.button("Stop", key=state.STOP, icon=":material/stop_circle:", help="End this reply now.")
        reply = _stream(handle, label, text_box, live_chart, transcript, done)
        stop_box.empty()
        text_box.markdown(reply["content"] or "_(no text)_")
        reply_footer(reply)
    return reply


def _stream(handle: Request, label: str, text_box, live_chart, transcript: list[dict], done) -> dict:
    text, times = "", []
    keys = (f"live-latency-{i}" for i in itertools.count())
    drawn_at = 0.0
    try:
        for event in _events(handle, POLL_S):
            if event is not None:
                text += event.text
                times.append(event.t)
            # Every pass makes a Streamlit call, which is where a click interrupts this loop.
            text_box.markdown(text + " ▌" if text else "_waiting for the first token…_")
            if times and time.monotonic() - drawn_at >= CHART_EVERY_S:
                draw_chart(live_chart, charts.token_latency_figure(times, "Per-token latency (streaming)"), next(keys))
                drawn_at = time.monotonic()
    finally:
        # Reached on completion and on interruption alike; stop() is a no-op for a finished request. No
        # Streamlit calls here, st.session_state included: in an interrupted run each would raise again.
        try:
            handle.stop()
            reply = _finished_reply(handle, text, label)
            transcript.append(reply)
        finally:
            done.set()
    draw_chart(live_chart, charts.token_latency_figure(reply["token_times"], "Per-token latency (last reply)"),
               next(keys))
    return reply


def _events(handle: Request, poll_s: float) -> Iterator[TokenEvent | None]:
    """The request's token events, with a None every ``poll_s`` while none arrives.

    Iterating a Request blocks until its next token, and a queued or prefilling request can take seconds;
    the Nones let the caller keep making Streamlit calls meanwhile, so that Stop stays responsive.
    """
    inbox: queue.Queue = queue.Queue()

    def pump() -> None:
        try:
            for event in handle:
                inbox.put(event)
        finally:
            inbox.put(_END)

    threading.Thread(target=pump, name="stream-pump", daemon=True).start()
    while True:
        try:
            item = inbox.get(timeout=poll_s)
        except queue.Empty:
            yield None
            continue
        if item is _END:
            return
        yield item


def _finished_reply(handle: Request, partial_text: str, label: str) -> dict:
    try:
        result = handle.result(timeout=RESULT_TIMEOUT_S)
    except TimeoutError:
        return {"role": "assistant", "content": partial_text, "recipe_label": label,
                "error": "The model did not stop in time; this reply is incomplete and has no metrics."}
    return assistant_message(result, label)


# Charts ----------------------------------------------------------------------------------------------------


def draw_chart(placeholder, figure, key: str) -> None:
    """Draw a figure into a placeholder. Keys must differ within a run: redraws of one chart use a counter."""
    placeholder.plotly_chart(figure, key=key, config={"displaylogo": False})


def draw_history(placeholder, key: str, limit: int = 100) -> None:
    """The chat history chart (TTFT and decode tok/s per reply), read from the request history store."""
    rows = [r for r in HistoryStore().recent(limit=5 * limit) if r.get("origin") == "chat"][-limit:]
    draw_chart(placeholder, charts.history_figure(rows, "Chat history: TTFT and decode speed per reply"), key)
