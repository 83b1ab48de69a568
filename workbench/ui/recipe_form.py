"""The recipe form: model, device, dtype and its backend, pruning, distilled variant and batch size.

The sidebar draws it on every page (``recipe_sidebar``); the Compare page draws two more under their own key
prefixes (``recipe_controls(prefix)``). A combination this machine cannot run is a message, never an exception; so
is a model this server does not allow its visitors (``access_refusal``, see ``workbench.access``).

A model field holding an http(s) URL names an OpenAI-compatible server: the form then asks for the server's model
(from its ``/v1/models``) and the name of the environment variable that holds its API key, and hides what a server
decides for itself (runtime, device, dtype, backend, pruning, variant, threads).
"""

from __future__ import annotations

import functools

import streamlit as st

from .. import catalog, devices, loading, runtimes
from ..access import Access
from ..formats import sentence
from ..optimize import variants
from ..recipe import EMBEDDED, FLOAT_DTYPES, MAX_PRUNE_RATIO, PRUNE_CRITERIA, PRUNE_METHODS, REMOTE, RUNTIMES, PruneSpec
from ..recipe import Recipe, RecipeError, is_url
from ..runtimes import remote
from . import state

DTYPE_LABELS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "int8 (quantized)", "int4": "int4 (quantized)",
                "nf4": "nf4 (quantized, 4-bit NormalFloat)", "fp4": "fp4 (quantized, 4-bit float)",
                "q8_0": "q8_0 (8-bit blocks)", "q6_k": "q6_k (6-bit k-quant)", "q5_k_m": "q5_k_m (5-bit k-quant)",
                "q5_0": "q5_0 (5-bit blocks)", "q4_k_m": "q4_k_m (4-bit k-quant)", "q4_1": "q4_1 (4-bit blocks)",
                "q4_0": "q4_0 (4-bit blocks)", "shipped": "shipped (the .gguf file as it is)"}
RUNTIME_HELP = ("transformers runs the recipe as PyTorch modules; llama.cpp writes it as a GGUF file, quantizes it "
                "with llama.cpp's own quantizer and runs it in llama.cpp's C++ kernels.")
PRUNE_LABELS = {"none": "none", "magnitude": "magnitude — unstructured zeros", "2:4": "2:4 — semi-structured zeros",
                "channels": "channels — narrower MLPs", "layers": "layers — fewer decoder layers"}
RATIO_LABELS = {"magnitude": "Weights zeroed", "2:4": "Weights zeroed (fixed by 2:4)",
                "channels": "MLP channels removed", "layers": "Decoder layers removed"}
CRITERION_LABELS = {"magnitude": "|W| magnitude", "wanda": "Wanda |W|·‖X‖ — better"}
LOCAL_RUNTIMES = tuple(r for r in RUNTIMES if r != REMOTE)  # a server is chosen by a URL in the model field
SERVER_CAPTION = ("The server runs its own weights and kernels: runtime, device, dtype, backend, pruning, distilled "
                  "variant and threads are its own, not set here. What is measured is the client's view: TTFT "
                  "includes the network and the server's queue, which each reply's network split separates.")
SERVER_LIST_TTL_S = 15.0  # how long a server's /v1/models answer (or why there is none) is reused across reruns


def recipe_sidebar() -> Recipe | None:
    """Draw the recipe controls in the sidebar; store and return the resolved recipe (None if invalid).

    Any change makes a new recipe, whose model ``require_engine`` builds; a combination this machine cannot
    run is shown as a message and stored as ``RECIPE_ERROR``.
    """
    with st.sidebar:
        st.header("Recipe")
        for problem in state.access().problems:
            st.warning(problem, icon=":material/admin_panel_settings:")
        recipe, problem, trust = recipe_controls()
    st.session_state[state.RECIPE] = recipe
    st.session_state[state.RECIPE_ERROR] = problem
    st.session_state[state.REMOTE_CODE_ALLOWED] = trust
    return recipe


def recipe_controls(prefix: str = state.RECIPE_PREFIX) -> tuple[Recipe | None, str | None, bool]:
    """Draw one set of recipe controls where the caller is; (recipe, None, trust) or (None, why, trust).

    Model and device, then quantization (dtype and the backend that runs it), pruning (method, ratio,
    criterion) and the distilled variant; a combination this machine cannot run, or a model this server does not
    allow, is shown as an error here and no recipe is returned. ``trust`` is False unless the server allows
    remote code and the box is ticked.

    Args:
        prefix: the widget keys' prefix: the sidebar's (``state.RECIPE_PREFIX``) or another, so that a page
            can draw several independent sets (see ``state.widget_key``).
    """
    key = functools.partial(state.widget_key, prefix=prefix)
    access = state.access()
    model = _model_input(prefix, access)
    if model is not None and is_url(model):
        refusal = access_refusal(model, "none", access)
        recipe, problem = (None, refusal) if refusal else server_controls(model, prefix)
        if problem:
            st.error(problem, icon=":material/block:")
        return recipe, problem, False
    runtime = _runtime_input(prefix)
    device = st.selectbox("Device", devices.available_devices(), key=key(state.DEVICE),
                          help="Only devices present on this machine are listed; auto picks the fastest.")
    if device == "auto":
        st.caption(f"auto → {'cpu' if runtime == 'llama.cpp' else _concrete_device(device)}")
    dtype = _dtype_input(runtime, prefix)
    backend = _backend_input(dtype, _concrete_device(device), prefix, runtime)
    prune = _prune_input(prefix)
    variant = _variant_input(model, prefix, access)
    batch_size = batch_size_input(prefix)
    threads = _threads_input(prefix) if runtime == "llama.cpp" else 0
    trust = _remote_code_input(prefix, access) if model and _source_kind(model) == "hub" else False
    refusal = None if model is None else access_refusal(model, variant, access)
    if model is None or refusal:
        recipe, problem = None, refusal
    else:
        recipe, problem = resolve_choice(model, device, dtype, backend, prune, variant, batch_size, runtime, threads)
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
    if recipe.runtime == REMOTE:  # the server's fields only: the local controls keep what they held
        values = {key(state.MODEL_CHOICE): state.OTHER_MODEL, key(state.MODEL_OTHER): recipe.model,
                  key(state.REMOTE_MODEL): recipe.remote_model, key(state.REMOTE_MODEL_TYPED): recipe.remote_model,
                  key(state.API_KEY_ENV): recipe.api_key_env, key(state.BATCH_SIZE): recipe.batch_size}
        for name, value in values.items():
            if overwrite or name not in st.session_state:
                st.session_state[name] = value
        return
    values = {
        key(state.MODEL_CHOICE): recipe.model if known else state.OTHER_MODEL,
        key(state.RUNTIME): recipe.runtime,
        key(state.THREADS): recipe.threads,
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
    if recipe.dtype not in FLOAT_DTYPES and recipe.runtime == "transformers":
        values[key(state.BACKEND)] = recipe.backend
    if recipe.prune.method not in ("none", "2:4"):
        values[key(state.PRUNE_RATIO)] = int(round(recipe.prune.ratio * 100))
    for name, value in values.items():
        if overwrite or name not in st.session_state:
            st.session_state[name] = value


def access_refusal(model: str, variant: str, access: Access) -> str | None:
    """Why this server does not let its visitors load this model or variant, or None (see ``workbench.access``).

    A local directory or .gguf file (or anything that names a path) needs ``access.paths``; a hub id that is not in
    the local Hugging Face cache, the model's own or a public distilled variant's, needs ``access.downloads``.
    The embedded model and cached hub models are always allowed. A server URL needs ``access.servers``.
    """
    kind = "embedded" if model == EMBEDDED else _source_kind(model)
    if kind == "server":
        return None if access.servers else f"{model} is a server. {access.why_off('servers')}"
    if kind in ("gguf", "dir", "path") and not access.paths:
        return f"{model} is a local path. {access.why_off('paths')}"
    hub_ids = [model] if kind == "hub" else []
    hub_ids += [s.model for s in variants.public_students(model) if s.name == variant]
    for hub_id in hub_ids:
        if not access.downloads and not catalog.hub_cached(hub_id):
            return f"{hub_id} is not in this server's Hugging Face cache. {access.why_off('downloads')}"
    return None


def resolve_choice(model: str, device: str, dtype: str, backend: str = "auto", prune: PruneSpec = PruneSpec(),
                   variant: str = "none", batch_size: int = 1, runtime: str = "transformers",
                   threads: int = 0) -> tuple[Recipe | None, str | None]:
    """The recipe the sidebar's choices describe, checked against this machine: (recipe, None) or (None, why).

    "auto" device and backend are made concrete, so that the cache key names what really runs; a backend
    that does not run on the device, or a variant that does not exist, is a message, never an exception.
    """
    try:
        recipe = Recipe(model=model, runtime=runtime, device=device, dtype=dtype, backend=backend, prune=prune,
                        variant=variant, batch_size=batch_size, threads=threads)
        return runtimes.check(recipe), None
    except RecipeError as exc:
        return None, str(exc)


def server_controls(url: str, prefix: str = state.RECIPE_PREFIX) -> tuple[Recipe | None, str | None]:
    """The controls of a server's recipe: its model, the variable of its key, the batch size; (recipe, None) or
    (None, why) for a bad URL, an unset key variable, or a server that cannot be reached or refuses the key.

    Args:
        url: what the model field holds (an http(s) URL).
        prefix: the widget keys' prefix (see ``recipe_controls``).
    """
    key = functools.partial(state.widget_key, prefix=prefix)
    key_env = str(st.session_state.get(key(state.API_KEY_ENV)) or "").strip()  # drawn below, read first
    try:
        asked = Recipe(model=url, api_key_env=key_env)
    except RecipeError as exc:
        names, problem = [], str(exc)
    else:
        names, problem = server_models(asked.model, key_env)
    remote_model = _server_model_input(names, prefix)
    st.text_input("API key variable", key=key(state.API_KEY_ENV), placeholder="e.g. OPENAI_API_KEY (blank = no key)",
                  help="The name of an environment variable of this app's process that holds the server's API key. "
                       "Only the name is kept: the key is never typed here, stored in the history, logged or part "
                       "of a cache key.")
    st.caption(SERVER_CAPTION)
    batch_size = batch_size_input(prefix)
    if problem:
        st.button("Ask the server again", key=key(state.REMOTE_MODEL) + ".retry", icon=":material/refresh:",
                  on_click=server_models.clear)
        return None, problem
    if not names:
        return None, f"the server at {asked.model} lists no models under /models"
    try:
        return Recipe(model=asked.model, remote_model=remote_model or names[0], api_key_env=key_env,
                      batch_size=batch_size), None
    except RecipeError as exc:
        return None, str(exc)


@st.cache_data(ttl=SERVER_LIST_TTL_S, max_entries=32, show_spinner="Asking the server for its models…")
def server_models(url: str, key_env: str) -> tuple[list[str], str | None]:
    """The model names a server lists (``GET /v1/models``), or ([], why not); the key is read from ``key_env``
    inside, so that it is never an argument (nor part of this cache's key)."""
    try:
        key = remote.api_key(Recipe(model=url, api_key_env=key_env))
        return [entry["id"] for entry in remote.list_models(url, key, key_env)], None
    except RecipeError as exc:
        return [], str(exc)


def _server_model_input(names: list[str], prefix: str) -> str:
    """The server's model: a choice among those it lists; a name typed in while it cannot be asked ("" = the
    first it lists)."""
    if not names:
        return st.text_input("Server model", key=state.widget_key(state.REMOTE_MODEL_TYPED, prefix),
                             placeholder="blank = the first the server lists",
                             help="The name the server serves the model under (its /v1/models).").strip()
    model_key = state.widget_key(state.REMOTE_MODEL, prefix)
    if st.session_state.get(model_key) not in names:
        st.session_state.pop(model_key, None)  # "" (the first), or a model this server does not list
    return st.selectbox("Server model", names, key=model_key,
                        format_func=lambda n: f"{n} (first listed)" if n == names[0] else n,
                        help="The models the server lists under /v1/models; the first is the default.")


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


def _runtime_input(prefix: str = state.RECIPE_PREFIX) -> str:
    """The runtime; one that cannot run here is listed with the reason."""
    def label(name: str) -> str:
        return name if runtimes.RUNTIMES[name].problem() is None else f"{name} (not available here)"

    runtime_key = state.widget_key(state.RUNTIME, prefix)
    if st.session_state.get(runtime_key, LOCAL_RUNTIMES[0]) not in LOCAL_RUNTIMES:
        st.session_state.pop(runtime_key)
    runtime = st.selectbox("Runtime", LOCAL_RUNTIMES, key=runtime_key, format_func=label,
                           help=RUNTIME_HELP + " A server is measured by giving its URL as the model.")
    return runtime


def _dtype_input(runtime: str, prefix: str = state.RECIPE_PREFIX) -> str:
    """The weight formats the runtime runs (a choice made under the other runtime falls back to the default)."""
    dtype_key = state.widget_key(state.DTYPE, prefix)
    options = runtimes.RUNTIMES[runtime].dtypes
    if st.session_state.get(dtype_key) not in options:
        st.session_state.pop(dtype_key, None)
    help_text = ("fp32, fp16 and bf16 cast the weights; int8, int4, nf4 and fp4 quantize the Linear layers (not "
                 "the embeddings or the LM head) through the backend shown." if runtime == "transformers" else
                 "llama.cpp's formats, made by its own quantizer from the recipe's float weights (after any variant "
                 "and pruning); shipped runs a .gguf source as it is.")
    dtype = st.selectbox("dtype", options, key=dtype_key, format_func=DTYPE_LABELS.get, help=help_text)
    if runtime != "transformers":
        st.caption("nf4, fp4 (bitsandbytes) and the torchao and quanto formats need the transformers runtime; 2:4 "
                   "pruning exports as dense zeros here (no sparse kernel).")
    return dtype


def _threads_input(prefix: str = state.RECIPE_PREFIX) -> int:
    """llama.cpp's threads: 0 is one per physical core."""
    cores = devices.physical_cores()
    return int(st.number_input("Threads", min_value=0, max_value=256, value=0, step=1,
                               key=state.widget_key(state.THREADS, prefix),
                               help=f"0 = one per physical core ({cores} here), which decodes fastest; llama.cpp's "
                                    "own default is half the logical CPUs."))


def _backend_input(dtype: str, device: str, prefix: str = state.RECIPE_PREFIX, runtime: str = "transformers") -> str:
    """The backend that runs ``dtype`` on ``device``: shown when there is one, a choice when there are several."""
    backend_key = state.widget_key(state.BACKEND, prefix)
    if runtime != "transformers":
        found = runtimes.backends(dtype, "cpu" if device == "auto" else device, runtime)
        if found:
            st.caption(f"Runs on **{found[0].label}**.")
        return found[0].name if found else "auto"
    if dtype in FLOAT_DTYPES:
        (cast,) = runtimes.backends(dtype, device)
        st.caption(f"Runs on {cast.label}.")
        return cast.name
    found = {b.name: b for b in runtimes.backends(dtype, device)}
    options = list(found)
    if not options:
        return "auto"  # resolve_choice says what does run here
    if len(options) == 1:
        only = found[options[0]]
        st.caption(f"Runs on **{only.label}**. {sentence(only.why)}")
        return only.name
    if st.session_state.get(backend_key) not in options:
        st.session_state.pop(backend_key, None)  # a choice made for another dtype or device: the default
    default = options[0]
    name = st.selectbox("Backend", options, key=backend_key,
                        format_func=lambda n: found[n].label + (" (default)" if n == default else ""),
                        help=f"The libraries that run {dtype} on {device} here, the fastest measured first.")
    st.caption(sentence(found[name].why))
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


def _variant_input(model: str | None, prefix: str, access: Access) -> str:
    variant_key = state.widget_key(state.VARIANT, prefix)
    options = {"none": "none"}
    public: set[str] = set()
    if model:
        for student in variants.public_students(model):
            cached_here = catalog.hub_cached(student.model)
            options[student.name] = f"{student.name} (public{'' if cached_here else ' · not downloaded'})"
            if not cached_here:
                public.add(student.name)
        for student in variants.list_students(model):
            share = student["params"] / student["teacher_params"] if student.get("teacher_params") else 0
            options[student["name"]] = f"{student['name']} (built here · {student['steps']} steps · {share:.0%} size)"
    if st.session_state.get(variant_key) not in options:
        st.session_state.pop(variant_key, None)  # a variant of another model, or one that was deleted
    variant = st.selectbox("Distilled variant", list(options), key=variant_key, format_func=options.get,
                           help="A smaller student trained to imitate this model: a public distilled pair, or one "
                                "made on the Build a student page.")
    if variant in public and access.downloads:  # else access_refusal says why it cannot be built
        st.warning(f"{variant} is not in the local Hugging Face cache: building it downloads it, which needs the "
                   "network.", icon=":material/cloud_download:")
    return variant


def _model_input(prefix: str, access: Access) -> str | None:
    options = [EMBEDDED, *(m.model for m in catalog.HUB_MODELS), state.OTHER_MODEL]
    choice = st.selectbox("Model", options, key=state.widget_key(state.MODEL_CHOICE, prefix),
                          format_func=_model_option_label)
    if choice != state.OTHER_MODEL:
        return choice
    label, placeholder, hint = (
        ("Hub id, model directory or .gguf file", "org/name, /path/to/model or /path/to/file.gguf",
         "Enter a Hugging Face hub id, a local model directory or a local .gguf file.") if access.paths else
        ("Hub id", "org/name", "Enter a Hugging Face hub id (local paths are off on this server)."))
    help_text = None
    if access.servers:  # the label stays short; placeholder, hint and help say a URL works too
        placeholder += ", or http://HOST:PORT/v1"
        hint = hint[:-1] + "; or an OpenAI-compatible server's URL, http://HOST:PORT/v1."
        help_text = ("An http(s) URL names an OpenAI-compatible server (vLLM, TGI, llama.cpp's server, Ollama, "
                     "workbench serve): its answers are measured as the client sees them.")
    typed = st.text_input(label, key=state.widget_key(state.MODEL_OTHER, prefix), placeholder=placeholder,
                          help=help_text).strip()
    if not typed:
        st.info(hint)
        return None
    return typed


def _remote_code_input(prefix: str, access: Access) -> bool:
    """The "Allow remote code" checkbox of a hub model, where the server allows it; else a caption saying why not."""
    if not access.remote_code:
        st.caption(f":material/block: {access.why_off('remote_code')}")
        return False
    return st.checkbox("Allow remote code (trust_remote_code)", key=state.widget_key(state.TRUST_REMOTE_CODE, prefix),
                       help="Some hub models ship their own Python code. Allow it only if you trust the model's "
                            "authors.")


def _model_option_label(model: str) -> str:
    if model == EMBEDDED:
        return catalog.EMBEDDED_NAME
    if model == state.OTHER_MODEL:
        return "Other…"
    return model if catalog.hub_cached(model) else f"{model} (not downloaded)"


def _source_kind(model: str) -> str:
    """How loading resolves a model: "embedded", "gguf", "dir" or "hub"; "path" for a path that does not exist;
    "server" for an http(s) URL (an OpenAI-compatible server, the remote runtime)."""
    if is_url(model):
        return "server"
    try:
        return loading.resolve_source(model).kind
    except loading.ModelSourceError:
        return "path"

