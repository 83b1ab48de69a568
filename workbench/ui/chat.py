"""The Chat page's pieces: generation settings, the transcript, and a turn streamed with its live latency chart."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Iterator

import streamlit as st

from ..conversation import BadMessage, with_system_prompt
from ..observe.history import HistoryStore
from ..recipe import GenerationSettings, RecipeError
from ..response_cache.answers import CachedAnswers
from ..response_cache.disk import CacheHit, responses_dir
from ..serving.engine import ContextOverflow, Engine, Request
from ..serving.results import GenerationResult, TokenEvent
from . import cache_panel, charts, draw, shared, state
from .model_loading import POLL_S

CHART_EVERY_S = 0.4  # minimum time between two redraws of the live latency chart
RESULT_TIMEOUT_S = 300.0  # a stopped request ends after its current token; this bounds a stuck one
FINISH_REASONS = {"eos": "ended (EOS)", "length": "max new tokens reached", "stopped": "stopped", "error": "error"}
CUT = ":material/content_cut: stream cut"  # a server's stream that ended mid-answer: the partial answer is kept
_END = object()


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



def chat_transcript(messages: list[dict]) -> None:
    """Draw the stored messages; each assistant reply with its metrics."""
    for message in messages:
        with st.chat_message(message["role"]):
            st.markdown(message["content"] or "_(no text)_")
            if message["role"] == "assistant":
                reply_footer(message)


def reply_footer(message: dict) -> None:
    """The line under an assistant reply: its metrics, or the error that ended it."""
    cut = (message.get("metrics") or {}).get("cut")
    if message.get("error"):
        (st.warning if cut else st.error)(message["error"], icon=":material/content_cut:" if cut else None)
    if message.get("metrics"):
        st.caption(format_metrics(message["metrics"], message.get("recipe_label")))
    if message.get("cache_hit"):
        st.caption(format_hit(message["cache_hit"]))


def format_hit(hit: dict) -> str:
    """What a cached reply saved and, for a semantic hit, which question it answers (``CacheHit.info()``)."""
    line = f":material/bolt: **cached** ({hit['kind']}) · looked up in {hit['lookup_ms']:.1f} ms"
    if hit.get("saved_ms"):
        line += f" · saved ~{hit['saved_ms'] / 1000:.2f} s of model time"
    if hit["kind"] == "semantic":
        line += f" · matched “{hit['matched_question']}” (similarity {hit['similarity']:.3f})"
    return line


def format_metrics(metrics: dict, recipe_label: str | None = None) -> str:
    """One line of a reply's metrics (``GenerationResult.metrics()``), e.g. 'TTFT 41 ms · TPOT 22.0 ms · …'.

    A server's reply (``metrics["network"]``) adds its network split to TTFT, counts chunks where the server sent
    no token counts (``per_chunk``), and is marked when its stream was cut mid-answer (``cut``).
    """

    def num(key: str, fmt: str) -> str:
        return "–" if metrics.get(key) is None else format(metrics[key], fmt)

    unit = "chunk" if metrics.get("per_chunk") else "token"
    parts = [
        f"TTFT {num('ttft_ms', '.0f')} ms",
        f"TPOT {num('tpot_ms', '.1f')} ms" + (" per chunk" if unit == "chunk" else ""),
        f"{num('decode_tok_s', '.1f')} {'chunks' if unit == 'chunk' else 'tok'}/s",
        f"{metrics['prompt_tokens']} prompt → {metrics['new_tokens']} new {unit}s",
        CUT if metrics.get("cut") else
        FINISH_REASONS.get(metrics.get("finish_reason"), str(metrics.get("finish_reason"))),
    ]
    if metrics.get("network") is not None:
        parts[0] += " " + network_split(metrics)
    if metrics.get("cache", "miss") != "miss":  # a replay: no model latency to show (format_hit has the lookup)
        parts = [f"{metrics['new_tokens']} tokens replayed from the cache"]
    if recipe_label:
        parts.append(recipe_label)
    return " · ".join(parts)


def network_split(metrics: dict) -> str:
    """What a server's TTFT is made of (``runtimes.remote``'s network split): '= network 12 ms + queue 0.4 ms +
    server queue 3 ms + server prefill 28 ms' where the server reports its timings (its queue where it says); else '(connect 1.2 ms · headers 30 ms · first
    chunk 31 ms)', which only bound the network's part."""
    network = metrics["network"]
    prefill, beyond = network.get("server_prefill_ms"), network.get("network_ms")
    if prefill is not None and beyond is not None:
        # request_ms (connect, send) and network_ms (the trip, the server's HTTP and queue) are both the network's
        trip = (network.get("request_ms") or 0.0) + beyond
        waited = network.get("server_queue_ms")
        server_queue = "" if waited is None else f" + server queue {_ms(waited)} ms"
        return (f"= network {_ms(trip)} ms + queue {_ms(metrics.get('queue_ms') or 0.0)} ms{server_queue} + server "
                f"prefill {_ms(prefill)} ms")
    connect = ("connection reused" if network.get("reused_connection") else
               f"connect {_ms(network.get('connect_ms'))} ms")
    return (f"({connect} · headers {_ms(network.get('headers_ms'))} ms · first chunk "
            f"{_ms(network.get('first_chunk_ms'))} ms)")


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if abs(value) < 10 else f"{value:.0f}"


def assistant_message(result: GenerationResult, recipe_label: str, hit: CacheHit | None = None) -> dict:
    """The transcript entry of a finished (or stopped) reply; ``hit`` when it came from the response cache."""
    return {
        "role": "assistant",
        "content": result.text,
        "metrics": result.metrics(),
        "token_times": list(result.token_times),
        "recipe_label": recipe_label,
        "error": result.error,
        "cache_hit": hit.info() if hit is not None else None,
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
    label = engine.recipe.label()
    messages = with_system_prompt(transcript, st.session_state.get(state.SYSTEM_PROMPT))
    messages, dropped = engine.fit(messages, settings)
    if dropped:
        st.info(f"This conversation is longer than the model's context: its {dropped} oldest "
                f"message{'' if dropped == 1 else 's'} {'was' if dropped == 1 else 'were'} left out of this turn's "
                "prompt (the transcript keeps them). Clear chat to start afresh.", icon=":material/content_cut:")
    responses = shared.response_cache(str(responses_dir()))
    try:
        handle = CachedAnswers(responses, state.cache_policy()).ask(engine, messages, settings)
    except (ContextOverflow, BadMessage) as exc:  # said in the transcript, the message kept
        reply = {"role": "assistant", "content": "", "recipe_label": label, "error": f"Not sent: {exc}."}
        transcript.append(reply)
        with st.chat_message("assistant"):
            reply_footer(reply)
        return reply
    except RuntimeError as exc:  # the engine was closed by an eviction since this run looked it up
        st.error(f"The model is no longer loaded ({exc}); reload the page to rebuild it.")
        return None
    if handle.notice:
        st.warning(handle.notice, icon=":material/warning:")
    done = state.begin_turn()
    with st.chat_message("assistant"):
        text_box = st.empty()
        stop_box = st.empty()
        stop_box.button("Stop", key=state.STOP, icon=":material/stop_circle:", help="End this reply now.")
        reply = _stream(handle, label, text_box, live_chart, transcript, done)
        stop_box.empty()
        text_box.markdown(reply["content"] or "_(no text)_")
        reply_footer(reply)
    cache_panel.refresh_cache_stats(responses)
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
                draw.chart(live_chart, charts.token_latency_figure(times, "Per-token latency (streaming)"), next(keys))
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
    title = "Per-token latency (last reply, replayed from the cache)" if reply.get("cache_hit") else \
        "Per-token latency (last reply)"
    draw.chart(live_chart, charts.token_latency_figure(reply["token_times"], title), next(keys))
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
    return assistant_message(result, label, getattr(handle, "hit", None))



def draw_history(placeholder, key: str, limit: int = 100) -> None:
    """The chat history chart (TTFT and decode tok/s per reply), read from the request history store."""
    rows = [r for r in HistoryStore().recent(limit=5 * limit) if r.get("origin") == "chat"][-limit:]
    draw.chart(placeholder, charts.history_figure(rows, "Chat history: TTFT and decode speed per reply"), key)
