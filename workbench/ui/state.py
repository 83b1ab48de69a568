"""Session-state keys, named once, and small accessors for the values pages share."""

from __future__ import annotations

import threading
import uuid

import streamlit as st

from ..access import Access
from ..response_cache.disk import ScopedPolicy
from ..response_cache.keys import DEFAULT_THRESHOLD

# Recipe sidebar widgets (rendered by app.py on every page, so their values persist across pages). Another set
# of recipe controls uses the same names under its own prefix (see widget_key).
RECIPE_PREFIX = "recipe"
MODEL_CHOICE = "recipe.model_choice"  # "embedded", a catalog hub id, or OTHER_MODEL
MODEL_OTHER = "recipe.model_other"  # free text: hub id, model directory or .gguf file
RUNTIME = "recipe.runtime"  # "transformers" or "llama.cpp"
THREADS = "recipe.threads"  # llama.cpp's threads, 0 = one per physical core
DEVICE = "recipe.device"
DTYPE = "recipe.dtype"
BACKEND = "recipe.backend"  # a quantization backend name; only while the dtype has several
PRUNE_METHOD = "recipe.prune_method"
PRUNE_RATIO = "recipe.prune_ratio"
PRUNE_CRITERION = "recipe.prune_criterion"  # only for magnitude and 2:4
VARIANT = "recipe.variant"  # "none", a public student's catalog name or a student built here
TRUST_REMOTE_CODE = "recipe.trust_remote_code"
BATCH_SIZE = "recipe.batch_size"  # requests the model's worker runs together
# A server's recipe (the model field holds an http(s) URL): the server's model and the variable holding its key.
REMOTE_MODEL = "recipe.remote_model"  # a name from the server's /v1/models; "" = the first it lists
REMOTE_MODEL_TYPED = "recipe.remote_model_typed"  # free text, while the server's list cannot be read
API_KEY_ENV = "recipe.api_key_env"  # the NAME of an environment variable; the key itself is never in the session

# What the sidebar resolved, read by pages: a Recipe (device resolved) or None when the input is invalid.
RECIPE = "recipe.current"
RECIPE_ERROR = "recipe.error"  # why the sidebar's choices cannot be built here, or None
REMOTE_CODE_ALLOWED = "recipe.remote_code_allowed"  # the checkbox, counted only for hub ids (and if allowed)

# Chat page.
MESSAGES = "chat.messages"  # list of message dicts, see chat.assistant_message
SYSTEM_PROMPT = "chat.system_prompt"
MAX_NEW_TOKENS = "chat.max_new_tokens"
TEMPERATURE = "chat.temperature"
TOP_P = "chat.top_p"
SEED = "chat.seed"
STOP = "chat.stop"  # the Stop button shown while a reply streams
TURN_DONE = "chat.turn_done"  # threading.Event of the latest reply: set once it is stored in MESSAGES

# Response cache (sidebar, every page).
CACHE_ENABLED = "cache.enabled"
CACHE_SEMANTIC = "cache.semantic"
CACHE_THRESHOLD = "cache.threshold"  # the slider, drawn only while semantic matching is on
CACHE_THRESHOLD_KEPT = "cache.threshold_kept"  # its value, kept while the slider is hidden
CACHE_SAMPLED = "cache.sampled"  # also cache answers sampled at temperature > 0
CACHE_TTL_MIN = "cache.ttl_minutes"  # 0 = kept until evicted
CACHE_SIZE_MB = "cache.size_limit_mb"
CACHE_CLEAR = "cache.clear"  # the Clear cache button
CACHE_STATS_BOX = "cache.stats_box"  # this run's placeholder of the stats, redrawn after a reply
CACHE_SESSION = "cache.session_id"  # this browser session's scope in the response cache (WORKBENCH_CACHE_SCOPE=session)

# What changed page.
MEASUREMENTS = "changes.measurements"  # recipe key -> the result of changes.measure_pair
QUICK_MEASURE = "changes.quick"

# Build a student page.
STUDENT_MINUTES = "student.minutes"
STUDENT_LAYER_CHOICE = "student.layer_choice"
STUDENT_LAYERS_WEIGHT = "student.layers_weight"
STUDENT_ATTENTION_WEIGHT = "student.attention_weight"
STUDENT_PROMPTS = "student.prompts"
STUDENT_LAYERS = "student.layers_ratio"
STUDENT_CARD = "student.card"  # the student whose card the students table shows

# Monitor page.
MONITOR_RECIPES = "monitor.recipes"  # recipe keys to show; empty = all
MONITOR_ORIGINS = "monitor.origins"  # "chat", "cli", "bench", ...; empty = all
MONITOR_WINDOW = "monitor.window"
MONITOR_LIVE = "monitor.live"
MONITOR_REFRESH = "monitor.refresh_s"

# Compare page: recipe controls of A and B under these prefixes (see widget_key).
COMPARE_A = "compare.a"
COMPARE_B = "compare.b"
COMPARE_SAVED = "compare.saved"  # prefix -> the panes' widget values, kept while another page is shown
COMPARE_TURNS = "compare.turns"  # list of turn dicts, see compare_view.compare_turn
COMPARE_TURN_DONE = "compare.turn_done"  # threading.Event of the latest turn: set once it is stored
COMPARE_MODE = "compare.mode"  # "sequential" | "concurrent"
COMPARE_CONTINUE = "compare.continue"  # send earlier turns too
COMPARE_STOP = "compare.stop"
COMPARE_SET_SIZE = "compare.set_size"  # how many prompts of the prompt set
COMPARE_SET_TOKENS = "compare.set_tokens"  # max new tokens per prompt-set answer
COMPARE_SET_RESULTS = "compare.set_results"  # job key -> the result of compare.run_prompt_set

# Benchmark page.
BENCH_BATCH_SIZES = "bench.batch_sizes"
BENCH_CONCURRENCY = "bench.concurrency"
BENCH_TOKENS = "bench.max_new_tokens"
BENCH_RUNS = "bench.runs_per_user"
BENCH_SCHEDULERS = "bench.schedulers"
BENCH_RATES = "bench.request_rates"  # text: requests per second, comma-separated; empty = closed loop
BENCH_NUM_REQUESTS = "bench.num_requests"  # per rate
BENCH_TTFT_SLO = "bench.ttft_slo_ms"  # goodput's objectives; None = none
BENCH_TPOT_SLO = "bench.tpot_slo_ms"
BENCH_SHOWN = "bench.shown"  # name of the saved sweep on display

OTHER_MODEL = "__other__"  # the "Other…" entry of the model selectbox (a value, not a key)


def widget_key(key: str, prefix: str = RECIPE_PREFIX) -> str:
    """A recipe widget key under another prefix: ``widget_key(DTYPE, "compare.a")`` is "compare.a.dtype"."""
    return prefix + key[len(RECIPE_PREFIX):]


def messages() -> list[dict]:
    """This session's chat transcript, created empty on first use."""
    return st.session_state.setdefault(MESSAGES, [])


def clear_messages() -> None:
    """Forget this session's chat transcript (a button callback)."""
    st.session_state[MESSAGES] = []


def begin_turn() -> threading.Event:
    """Mark a reply as in progress; the returned event is set once the reply is stored in the transcript."""
    done = threading.Event()
    st.session_state[TURN_DONE] = done
    return done


def wait_for_turn(timeout_s: float) -> bool:
    """Wait until the latest reply is stored; True if it is (or there is none).

    A click during a reply stops that run and starts the next one at once, on another thread, while the
    stopped run is still storing its partial reply: the next run must wait for it before drawing the chat.
    """
    done = st.session_state.get(TURN_DONE)
    return done is None or done.wait(timeout_s)


def measurements() -> dict:
    """This session's speed and quality measurements, by recipe key, created empty on first use."""
    return st.session_state.setdefault(MEASUREMENTS, {})


def use_variant(name: str) -> None:
    """Select a distilled variant in the sidebar (a button callback, so it runs before the sidebar draws)."""
    st.session_state[VARIANT] = name


def current_recipe():
    """The recipe the sidebar resolved on this run, or None when its input is invalid."""
    return st.session_state.get(RECIPE)


def recipe_error() -> str | None:
    """Why the sidebar's choices cannot be built on this machine (None when they can, or no model is chosen)."""
    return st.session_state.get(RECIPE_ERROR)


def access() -> Access:
    """What this server allows its visitors (``workbench.access``): the environment, and where the app listens."""
    return Access.from_env(st.get_option("server.address"))


def remote_code_allowed() -> bool:
    """Whether the sidebar's hub model may run its own code: ticked, and allowed on this server."""
    return access().remote_code and bool(st.session_state.get(REMOTE_CODE_ALLOWED, False))


def cache_scope() -> str | None:
    """This session's scope in the response cache: None when answers are shared (WORKBENCH_CACHE_SCOPE=shared),
    else an id of this browser session's own (a new tab or a reload is a new session)."""
    if access().cache_scope == "shared":
        return None
    return st.session_state.setdefault(CACHE_SESSION, uuid.uuid4().hex)


def cache_policy() -> ScopedPolicy:
    """How this session's chat uses the response cache (the sidebar's choices; defaults before it draws), under
    this session's scope."""
    ttl_min = st.session_state.get(CACHE_TTL_MIN) or 0
    return ScopedPolicy(
        enabled=bool(st.session_state.get(CACHE_ENABLED, True)),
        semantic=bool(st.session_state.get(CACHE_SEMANTIC, False)),
        threshold=float(st.session_state.get(CACHE_THRESHOLD_KEPT, DEFAULT_THRESHOLD)),
        cache_sampled=bool(st.session_state.get(CACHE_SAMPLED, False)),
        ttl_s=ttl_min * 60 if ttl_min > 0 else None,
        scope=cache_scope(),
    )
