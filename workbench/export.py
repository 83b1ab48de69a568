"""Ship a recipe to the servers people deploy on: ``export_recipe(recipe, to)`` writes what they load, and the
command lines that serve it, into one folder.

Formats (``--format``; by default the recipe's own runtime's):

- ``transformers``: a transformers model directory (``model.safetensors``, tokenizer, ``config.json``,
  ``generation_config.json``) of the recipe's model after its variant and pruning, for vLLM and TGI. A pruned
  recipe's config says what is left (fewer layers, narrower MLPs), so the servers load the smaller model.
  Quantized weights are not exported as such: torch's dynamic int8 and torchao's kernels quantize in memory, and
  neither vLLM nor TGI loads a bitsandbytes or llama.cpp (q4_0...) layout the way it runs here. The directory then
  holds the float weights the recipe quantizes (fp32 for a CPU recipe, fp16 for a CUDA one) and the notes say so,
  naming each server's own quantizer for the same bits: their kernels, to be measured there, not figures from here.
- ``gguf``: the recipe's GGUF file as the llama.cpp runtime makes it (reused from the artifact store when it was
  built before), an Ollama ``Modelfile`` beside it (its TEMPLATE the model's chat template in Ollama's Go template
  language, checked to render conversations exactly as the tokenizer's template does), and the ``llama-server``
  and ``ollama create`` lines. A transformers recipe exports the llama.cpp format of the same float weights
  (fp32, fp16 and bf16 as they are, int8 as q8_0, int4 as q4_0): llama.cpp's quantizer, not the one measured here.

Beside them: ``SERVE.md`` (each server's command, and the ``workbench bench`` line that measures it from here)
and ``recipe.json`` (the recipe, its key, what each format stores, the files, commands and notes), written last.
The folder is filled under a temp name next to it and renamed into place, so it is complete or absent; a
non-empty folder is replaced only with ``force`` and only when it holds an earlier export and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import loading, store
from .progress import OnStage, no_stage
from .recipe import EMBEDDED, FLOAT_DTYPES, Recipe, RecipeError, model_label, working_precision

FORMATS = ("transformers", "gguf")
FORMAT_CHOICES = (*FORMATS, "all")
OWN_FORMAT = {"transformers": "transformers", "llama.cpp": "gguf"}  # runtime -> the format it runs
GGUF_DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "int8": "q8_0", "int4": "q4_0"}  # transformers -> GGUF
MARKER = "recipe.json"
GUIDE = "SERVE.md"
MODELFILE = "Modelfile"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")  # what Ollama accepts as a model name, and vLLM too
HOST_PATTERN = re.compile(r"^[A-Za-z0-9:][A-Za-z0-9.:-]{0,252}$")  # a host name, IPv4 or IPv6 address
PORTS = {"vllm": 8000, "tgi": 8080, "llama-server": 8081, "llama-cpp-python": 8082, "ollama": 11434}
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.5"
VLLM_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TGI_DTYPES = {"fp16": "float16", "bf16": "bfloat16"}  # TGI computes in half precision only
MAX_CONTEXT = 8192  # num_ctx / -c: the model's context, capped (a KV cache for 128k tokens is many GB)
# Each server's own quantizer for a transformers recipe's quantized dtype (the float weights are exported).
SERVER_QUANTIZERS = {
    "int8": "vLLM `--quantization fp8` (8-bit float weights), TGI `--quantize eetq` or `--quantize bitsandbytes`",
    "int4": "vLLM `--quantization bitsandbytes` (4-bit NF4), TGI `--quantize bitsandbytes-nf4`",
    "nf4": "vLLM `--quantization bitsandbytes` (4-bit NF4), TGI `--quantize bitsandbytes-nf4`",
    "fp4": "TGI `--quantize bitsandbytes-fp4`, vLLM `--quantization bitsandbytes` (NF4, not FP4)",
}

# ChatML in Ollama's template language (Go text/template over .Messages): what the transformers chat templates of
# SmolLM2, Qwen and the tiny test model render, the generation prompt included.
CHATML_START, CHATML_END = "<|im_start|>", "<|im_end|>"
CHATML_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")
PROBES = (  # conversations the model's own template must render as ChatML for CHATML_TEMPLATE to stand in for it
    [{"role": "user", "content": "Hi!"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3+3?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye."}],
)


@dataclass
class Exported:
    """What one export wrote.

    ``files`` maps each file's name in ``dir`` to its bytes; ``commands`` maps a name ("vllm", "ollama-create",
    "bench-vllm", ...) to its command line; ``stats`` maps each format to what it stores.
    """

    dir: Path
    format: str
    formats: tuple[str, ...]
    recipe: Recipe
    name: str
    files: dict[str, int] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"dir": str(self.dir), "format": self.format, "formats": list(self.formats), "name": self.name,
                "recipe": self.recipe.to_dict(), "recipe_key": self.recipe.key(), "files": dict(self.files),
                "commands": dict(self.commands), "notes": list(self.notes), "stats": dict(self.stats)}


@dataclass
class _Part:
    """One format's share of an export: its files (in the temp folder), commands, notes and stats."""

    files: list[str]
    commands: dict[str, str]
    notes: list[str]
    stats: dict


# Checks made before anything is built --------------------------------------------------------------------------


def formats_for(recipe: Recipe, fmt: str | None) -> tuple[tuple[str, ...], list[str]]:
    """The formats ``fmt`` asks of ``recipe`` (None: its runtime's own), and notes on any that ``all`` leaves out.

    Raises RecipeError naming ``format`` (or ``model``) for what cannot be exported.
    """
    if recipe.runtime not in OWN_FORMAT or recipe.model.startswith(("http://", "https://")):
        raise RecipeError("model", "export writes a model built here; a model on a server is served already "
                                   "(give --model a local source: embedded, a hub id, a directory or a .gguf file)")
    fmt = fmt or OWN_FORMAT[recipe.runtime]
    if fmt not in FORMAT_CHOICES:
        raise RecipeError("format", f"unknown format {fmt!r}; allowed: {', '.join(FORMAT_CHOICES)}")
    wanted = FORMATS if fmt == "all" else (fmt,)
    notes: list[str] = []
    formats = []
    for one in wanted:
        why = _cannot(recipe, one)
        if why is None:
            formats.append(one)
        elif fmt == "all":
            notes.append(f"no {one} export: {why}")
        else:
            raise RecipeError("format", why)
    return tuple(formats), notes


def _cannot(recipe: Recipe, fmt: str) -> str | None:
    """Why ``recipe`` has no ``fmt`` export, or None."""
    if fmt != "gguf" or recipe.runtime == "llama.cpp":
        return None
    if recipe.dtype not in GGUF_DTYPES:
        return (f"llama.cpp has no {recipe.dtype} format (the {recipe.dtype} kernels are bitsandbytes'); "
                f"--format gguf takes a recipe of dtype {', '.join(GGUF_DTYPES)}, or a --runtime llama.cpp recipe")
    from .runtimes import llamacpp

    problem = llamacpp.problem()
    if problem:
        return f"the GGUF file is made by llama.cpp: {problem}"
    return None


def check_target(to: str | os.PathLike, force: bool = False) -> Path:
    """The folder to export into, absolute; RecipeError naming ``to`` when it must not be written.

    A new or empty folder is fine; a non-empty one only with ``force``, and only when it holds an earlier export
    and nothing else (``force`` never deletes files that no export wrote).
    """
    if not str(to).strip():
        raise RecipeError("to", "give the folder to export into, e.g. --to ./exported")
    path = Path(to).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise RecipeError("to", f"{path} is a file, not a folder; give a new or empty folder")
    if path.parent == path:
        raise RecipeError("to", f"{path} is the root of the file system; give a new or empty folder")
    try:
        entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    except OSError as exc:
        raise RecipeError("to", f"cannot read {path} ({exc.strerror or exc}); give a new or empty folder") from None
    if not entries:
        return path
    if not force:
        raise RecipeError("to", f"{path} is not empty; give a new or empty folder, or add --force to replace an "
                                "earlier export there")
    extra = _not_exported(path, entries)
    if extra:
        raise RecipeError("to", f"{path} holds {extra!r}, which no export wrote; --force replaces only an earlier "
                                "export: give a new or empty folder")
    return path


def _not_exported(path: Path, entries: Sequence[str]) -> str | None:
    """The first entry of ``path`` that its export record does not list (or the record itself when it is not one)."""
    try:
        record = json.loads((path / MARKER).read_text())
        listed = set(record["export"]["files"]) | {MARKER}
    except (OSError, ValueError, KeyError, TypeError):
        return MARKER if MARKER in entries else entries[0]
    return next((name for name in entries if name not in listed), None)


def default_name(recipe: Recipe) -> str:
    """A model name for the servers (Ollama's rules: lowercase letters, digits, '.', '_', '-'), from the recipe:
    'smollm2-135m-instruct-q4_0-channels-0.25'."""
    base = "smollm2-135m-instruct" if recipe.model == EMBEDDED else model_label(recipe.model)
    parts = [base, recipe.dtype]
    if recipe.prune.method != "none":
        parts += [recipe.prune.method.replace(":", "of"), f"{recipe.prune.ratio:g}"]
    if recipe.variant != "none":
        parts.append(recipe.variant)
    slug = re.sub(r"[^a-z0-9._]+", "-", "-".join(parts).lower()).strip("-._")
    return slug[:80].rstrip("-._") or "model"


def check_host(host: str) -> str:
    if not HOST_PATTERN.match(host or ""):
        raise RecipeError("host", f"{host!r} is not a host name or IP address, e.g. 127.0.0.1 (this machine only) or "
                                  "0.0.0.0 (every interface)")
    return host


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise RecipeError("name", f"{name!r} is not a model name the servers take: lowercase letters, digits, '.', "
                                  "'_' and '-', starting with a letter or digit, at most 80 characters")
    return name


# The export ------------------------------------------------------------------------------------------------------


def export_recipe(recipe: Recipe, to: str | os.PathLike, fmt: str | None = None, *, force: bool = False,
                  name: str | None = None, host: str = "127.0.0.1", trust_remote_code: bool = False,
                  on_stage: OnStage | None = None) -> Exported:
    """Write what vLLM / TGI and llama.cpp / Ollama load of ``recipe`` into the folder ``to``.

    Args:
        recipe: the recipe, resolved (``runtimes.check``): its key is the one its measurements carry.
        to: the folder to write; new, empty, or (with ``force``) an earlier export.
        fmt: "transformers", "gguf" or "all"; None: the recipe's runtime's own format.
        force: replace an earlier export in ``to``.
        name: the model's name on the servers (default ``default_name(recipe)``).
        host: the address the servers' command lines listen on (127.0.0.1: this machine only).
        trust_remote_code: allow hub model code (opt-in).
        on_stage: progress callback ``(stage, fraction 0..1)``.

    Returns:
        What was written: files and their bytes, the command lines, notes, per-format stats.

    Raises:
        RecipeError: a format the recipe has not, a folder that must not be written, a bad name.
        store.StoreError: the folder's parent cannot be written (full disk, read-only).
    """
    from . import runtimes  # loads the model libraries: only once an export runs

    on_stage = on_stage or no_stage
    recipe = runtimes.check(recipe)  # a resolved recipe stays as it is
    formats, notes = formats_for(recipe, fmt)
    name = check_name(name or default_name(recipe))
    host = check_host(host)
    target = check_target(to, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise store.StoreError(store.unwritable(target.parent, exc)) from None
    try:
        result = Exported(target, fmt or OWN_FORMAT[recipe.runtime], formats, recipe, name, notes=notes)
        for one in formats:
            part = (_transformers_part if one == "transformers" else _gguf_part)(
                recipe, tmp, target, name, host, trust_remote_code, on_stage)
            result.commands.update(part.commands)
            result.notes += part.notes
            result.stats[one] = part.stats
            result.files.update({f: (tmp / f).stat().st_size for f in part.files})
        on_stage("Writing SERVE.md and recipe.json", 0.97)
        store.write_file(tmp / GUIDE, guide_text(result, host))
        result.files[GUIDE] = (tmp / GUIDE).stat().st_size
        store.finish_dir(tmp, MARKER, json.dumps(_record(result), indent=2, sort_keys=True))
        result.files[MARKER] = (tmp / MARKER).stat().st_size
        check_target(target, force)  # nothing else came to be there meanwhile
        store.swap_in(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        unable = store.write_failure(exc, target.parent)
        if unable is not None:
            raise unable from None
        raise
    on_stage("Exported", 1.0)
    return result


def _record(result: Exported) -> dict:
    """``recipe.json``: the recipe and its key, and the export (format, files, commands, notes, stats)."""
    return {"recipe": result.recipe.to_dict(), "recipe_key": result.recipe.key(), "label": result.recipe.label(),
            "export": {"format": result.format, "formats": list(result.formats), "name": result.name,
                       "files": dict(result.files), "commands": result.commands,
                       "notes": result.notes, "stats": result.stats,
                       "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}


# transformers: vLLM and TGI ---------------------------------------------------------------------------------------


def float_dtype(recipe: Recipe) -> str:
    """The float dtype of the exported weights: the recipe's own when it is float, else the precision its
    quantized weights were made from (fp32 on the CPU, fp16 on CUDA; llama.cpp quantizes from fp32)."""
    if recipe.dtype in FLOAT_DTYPES:
        return recipe.dtype
    return "fp32" if recipe.runtime == "llama.cpp" else working_precision(recipe.device)


def float_recipe(recipe: Recipe) -> Recipe:
    """The recipe's float model (variant and pruning, no quantization), built on the CPU: the weights exported."""
    return replace(recipe, runtime="transformers", device="cpu", dtype=float_dtype(recipe), backend="torch",
                   batch_size=1, threads=0)


def _transformers_part(recipe: Recipe, tmp: Path, target: Path, name: str, host: str, trust_remote_code: bool,
                       on_stage: OnStage) -> _Part:
    from .optimize import pipeline
    from .runtimes import llamacpp

    source = float_recipe(recipe)
    # A llama.cpp recipe's channel pruning keeps whole quantization blocks: export the widths its GGUF has.
    multiple = llamacpp.CHANNEL_MULTIPLE if recipe.runtime == "llama.cpp" else 1
    built = pipeline.build(source, trust_remote_code=trust_remote_code, on_stage=on_stage, channel_multiple=multiple)
    on_stage("Writing the transformers directory (safetensors, tokenizer, config)", 0.8)
    before = set(os.listdir(tmp))
    built.model.save_pretrained(tmp, safe_serialization=True)
    built.tokenizer.save_pretrained(tmp)
    files = sorted(set(os.listdir(tmp)) - before)
    stats = {**built.stats.to_dict(), "dtype": source.dtype, "layers": built.model.config.num_hidden_layers,
             "intermediate_size": getattr(built.model.config, "intermediate_size", None)}
    del built
    return _Part(files, *_transformers_commands(recipe, target, name, host, source.dtype), stats=stats)


def _transformers_commands(recipe: Recipe, target: Path, name: str, host: str,
                           dtype: str) -> tuple[dict[str, str], list[str]]:
    where = shlex.quote(str(target))
    vllm = (f"vllm serve {where} --served-model-name {name} --dtype {VLLM_DTYPES[dtype]} --host {host} "
            f"--port {PORTS['vllm']}")
    publish = f"{host}:{PORTS['tgi']}:80" if host not in ("0.0.0.0", "::") else f"{PORTS['tgi']}:80"
    tgi = (f"docker run --gpus all --shm-size 1g -p {publish} -v {where}:/data/{name} {TGI_IMAGE} "
           f"--model-id /data/{name}") + (f" --dtype {TGI_DTYPES[dtype]}" if dtype in TGI_DTYPES else "")
    reach = _reach(host)
    commands = {"vllm": vllm, "tgi": tgi,
                "bench-vllm": f"workbench bench --model http://{reach}:{PORTS['vllm']}/v1 --remote-model {name}",
                "bench-tgi": f"workbench bench --model http://{reach}:{PORTS['tgi']}/v1"}
    notes = []
    if recipe.dtype not in FLOAT_DTYPES:
        what = (f"llama.cpp's {recipe.dtype}" if recipe.runtime == "llama.cpp" else
                f"{recipe.dtype} ({recipe.backend})")
        servers = SERVER_QUANTIZERS.get(recipe.dtype, "vLLM `--quantization fp8`, TGI `--quantize eetq`"
                                        if recipe.dtype.startswith("q8") else
                                        "vLLM `--quantization bitsandbytes`, TGI `--quantize bitsandbytes-nf4`")
        notes.append(f"the transformers directory holds the {dtype} weights that {what} quantizes: vLLM and TGI do "
                     f"not load those quantized weights as they run here. To serve fewer bits, let the server "
                     f"quantize at load ({servers}): its kernels, not the ones measured here, so measure them with "
                     "the bench line")
    if dtype == "fp32":
        notes.append("TGI computes in float16 or bfloat16 (its --dtype): this fp32 recipe runs there in half "
                     "precision; vLLM runs it in float32 as exported (--dtype bfloat16 halves the bytes on a GPU)")
    if recipe.prune.method in ("magnitude", "2:4"):
        notes.append(f"{recipe.prune.method} zeros are stored as dense weights: vLLM and TGI multiply them like any "
                     "other (vLLM's 2:4 sparse kernels read only its compressed-tensors sparse format)")
    return commands, notes


# gguf: llama.cpp and Ollama ------------------------------------------------------------------------------------


def gguf_recipe(recipe: Recipe) -> Recipe:
    """The llama.cpp recipe whose GGUF file is exported: the recipe itself, or a transformers recipe's weights in
    the llama.cpp format of its dtype (``GGUF_DTYPES``), on the CPU."""
    from .runtimes import llamacpp

    if recipe.runtime != "llama.cpp":
        recipe = replace(recipe, runtime="llama.cpp", device="cpu", dtype=GGUF_DTYPES[recipe.dtype], backend="auto",
                         batch_size=1)
    return llamacpp.check(recipe)


def _gguf_part(recipe: Recipe, tmp: Path, target: Path, name: str, host: str, trust_remote_code: bool,
               on_stage: OnStage) -> _Part:
    from .runtimes import llamacpp

    source = gguf_recipe(recipe)
    path, meta, found = llamacpp.gguf_file(source, trust_remote_code=trust_remote_code, on_stage=on_stage)
    on_stage(f"Writing the {source.dtype} GGUF file and the Modelfile", 0.9)
    gguf_name = f"{name}.gguf"
    link_or_copy(path, tmp / gguf_name)
    tokenizer, eos_ids = loading.load_tokenizer(source.model, trust_remote_code=trust_remote_code)
    context = min(gguf_context_length(path) or MAX_CONTEXT, MAX_CONTEXT)
    modelfile, modelfile_notes = ollama_modelfile(gguf_name, tokenizer, eos_ids, context, comment=(
        f"{recipe.label()} (recipe {recipe.key()}), as a {source.dtype} GGUF file"))
    store.write_file(tmp / MODELFILE, modelfile)
    stats = {"params": found.params, "nonzero_params": meta.get("nonzero_params", found.params),
             "weight_bytes": found.weight_bytes, "bits_per_weight": round(found.bits_per_weight, 3),
             "tensor_types": found.tensor_types, "dtype": source.dtype, "layers": found.block_count,
             "context": context, "threads": source.threads}
    commands, notes = _gguf_commands(recipe, source, target, gguf_name, name, host, context)
    return _Part([gguf_name, MODELFILE], commands, modelfile_notes + notes, stats)


def _gguf_commands(recipe: Recipe, source: Recipe, target: Path, gguf_name: str, name: str, host: str,
                   context: int) -> tuple[dict[str, str], list[str]]:
    file = shlex.quote(str(target / gguf_name))
    reach = _reach(host)
    commands = {
        "llama-server": (f"llama-server -m {file} --host {host} --port {PORTS['llama-server']} -t {source.threads} "
                         f"-c {context} --jinja"),
        "llama-cpp-python": (f"python -m llama_cpp.server --model {file} --host {host} --port "
                             f"{PORTS['llama-cpp-python']} --n_threads {source.threads} --n_ctx {context} "
                             "--interrupt_requests False"),
        "ollama-create": f"cd {shlex.quote(str(target))} && ollama create {name} -f {MODELFILE}",
        "ollama-run": f"ollama run {name}",
        "bench-llama-server": f"workbench bench --model http://{reach}:{PORTS['llama-server']}/v1",
        "bench-llama-cpp-python": f"workbench bench --model http://{reach}:{PORTS['llama-cpp-python']}/v1",
        "bench-ollama": f"workbench bench --model http://{reach}:{PORTS['ollama']}/v1 --remote-model {name}",
    }
    notes = ["llama-cpp-python's server applies a repeat penalty of 1.1 unless a request sets \"repeat_penalty\": 1.0; "
             "with it, its greedy answers are the tokens measured here (llama-server's default is already 1.0)",
             "llama-cpp-python's server answers one request at a time and, by default, cuts the running answer short "
             "when another request arrives; --interrupt_requests False makes the next one wait instead",
             f"-t {source.threads} is the threads measured here (one per physical core of this machine); on "
             "another machine give it that machine's physical cores"]
    if recipe.runtime != "llama.cpp":
        notes.append(f"the GGUF file is llama.cpp's {source.dtype} of the same float weights, made by llama.cpp's "
                     f"quantizer: not the {recipe.dtype} kernels measured here; measure it with --runtime llama.cpp "
                     f"--dtype {source.dtype}")
        if recipe.prune.method == "channels":
            notes.append(f"under llama.cpp, channel pruning keeps a multiple of {_channel_multiple()} MLP channels "
                         "(whole quantization blocks): the GGUF file's MLPs can be a little wider than the "
                         "transformers model's")
    return commands, notes


def _channel_multiple() -> int:
    from .runtimes import llamacpp

    return llamacpp.CHANNEL_MULTIPLE


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}  # GGUFValueType


def gguf_context_length(path: Path) -> int | None:
    """The context length a GGUF file was trained for (``<arch>.context_length``), or None.

    Read from the header's key-value pairs alone: the ``gguf`` package's reader decodes every token string of the
    vocabulary first (seconds for SmolLM2's 49k tokens and merges).
    """
    import struct

    def read(fmt: str):
        return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

    def string() -> bytes:
        return f.read(read("Q"))

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item, count = read("I"), read("Q")
            if item in _SCALARS:
                f.seek(count * struct.calcsize(_SCALARS[item]), os.SEEK_CUR)
            else:
                for _ in range(count):
                    value(item)
            return None
        return read(_SCALARS[kind])

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or read("I") < 2:
                return None
            read("Q")  # tensors
            found = {}
            for _ in range(read("Q")):
                key = string().decode()
                found[key] = value(read("I"))
                arch = found.get("general.architecture")
                if arch is not None and f"{arch.decode()}.context_length" in found:
                    return int(found[f"{arch.decode()}.context_length"])
    except (OSError, struct.error, KeyError, UnicodeDecodeError, ValueError):
        return None
    return None


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link to an artifact's file (artifacts are never changed in place, only replaced), or a copy: of a
    file that is not an artifact (a shipped .gguf source stays the user's own), or across file systems."""
    if store.artifacts_dir().resolve() in Path(source).resolve().parents:
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


# The Ollama Modelfile -------------------------------------------------------------------------------------------


def chatml(messages: Sequence[dict], system: str | None = None) -> str:
    """A conversation in ChatML with the generation prompt: what ``CHATML_TEMPLATE`` renders (with ``system``
    first when the conversation has no system message, as Ollama adds a Modelfile's SYSTEM)."""
    if system is not None and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": system}, *messages]
    turns = "".join(f"{CHATML_START}{m['role']}\n{m['content']}{CHATML_END}\n" for m in messages)
    return f"{turns}{CHATML_START}assistant\n"


def chatml_system(tokenizer) -> tuple[bool, str | None]:
    """Whether the tokenizer's chat template renders ChatML (``PROBES``), and the system message it adds to a
    conversation that has none (SmolLM2 adds one), or None."""
    try:
        rendered = [tokenizer.apply_chat_template(list(m), tokenize=False, add_generation_prompt=True)
                    for m in PROBES]
    except Exception:  # no template, or one that refuses a probe (a role it does not take): not ChatML
        return False, None
    default = None
    head = f"{CHATML_START}system\n"
    if rendered[0].startswith(head) and CHATML_END in rendered[0]:
        default = rendered[0][len(head): rendered[0].index(CHATML_END)]
    ok = all(text == chatml(m, default) for text, m in zip(rendered, PROBES))
    return ok, default if ok else None


def stop_strings(tokenizer, eos_ids) -> list[str]:
    """The tokens that end an answer, as the strings Ollama's ``PARAMETER stop`` takes."""
    names = [tokenizer.convert_ids_to_tokens(int(i)) for i in sorted(eos_ids)]
    return [n for n in dict.fromkeys(names) if n and '"' not in n and "\n" not in n]


def ollama_modelfile(gguf_name: str, tokenizer, eos_ids, context: int, *, comment: str = "") -> tuple[str, list[str]]:
    """An Ollama Modelfile for ``./gguf_name`` and notes on what it could not carry.

    TEMPLATE is ``CHATML_TEMPLATE`` when the model's chat template renders ChatML (checked on ``PROBES``), with
    its default system message as SYSTEM (Ollama puts SYSTEM first when a conversation has no system message, as
    the template does). For another template there is no TEMPLATE: Ollama then picks one matching the chat
    template stored in the GGUF file, and the notes say to check it. Temperature 0: the recipe was measured
    greedy.
    """
    notes = []
    lines = [f"# Ollama Modelfile: {comment}" if comment else "# Ollama Modelfile",
             f"# ollama create {Path(gguf_name).stem} -f {MODELFILE}   (in this folder: FROM is relative to it)",
             f"FROM ./{gguf_name}"]
    is_chatml, system = chatml_system(tokenizer)
    if is_chatml:
        lines.append(f'TEMPLATE """{CHATML_TEMPLATE}"""')
        if system is not None and '"""' not in system:
            lines.append(f'SYSTEM """{system}"""')
        stops = [*stop_strings(tokenizer, eos_ids), CHATML_END, CHATML_START]
    else:
        notes.append("the model's chat template is not ChatML, which is the one the Modelfile translates: Ollama picks "
                     "a template matching the one stored in the GGUF file; check it with `ollama show NAME "
                     "--template` before measuring")
        stops = stop_strings(tokenizer, eos_ids)
    lines += [f'PARAMETER stop "{s}"' for s in dict.fromkeys(stops)]
    lines.append(f"PARAMETER num_ctx {context}")
    lines.append("# the recipe was measured greedy, without a repeat penalty (Ollama's default is 1.1)")
    lines += ["PARAMETER temperature 0", "PARAMETER repeat_penalty 1"]
    return "\n".join(lines) + "\n", notes


# SERVE.md ------------------------------------------------------------------------------------------------------


def _reach(host: str) -> str:
    """The address the bench line reaches a server at: its host, or a placeholder when it listens everywhere."""
    return "SERVER" if host in ("0.0.0.0", "::", "") else host


FILE_ROLES = (  # (file name pattern, what it is), for SERVE.md
    (r"model.*\.safetensors", "the weights (vLLM, TGI)"),
    (r"config\.json", "the architecture, after pruning: layers, MLP width"),
    (r"generation_config\.json", "generation defaults and the tokens that end an answer"),
    (r"tokenizer.*|special_tokens_map\.json|vocab\.json|merges\.txt", "the tokenizer"),
    (r"chat_template\.jinja", "the chat template (transformers, vLLM, TGI)"),
    (r".*\.gguf", "weights, tokenizer and chat template in one file (llama.cpp, Ollama)"),
    (r"Modelfile", "Ollama's model definition: the GGUF file, chat template, stop tokens, context"),
    (r"SERVE\.md", "this file"),
    (r"recipe\.json", "the recipe, its key, what each format stores, these commands and notes"),
)


def file_role(name: str) -> str:
    return next((role for pattern, role in FILE_ROLES if re.fullmatch(pattern, name)), "")


def guide_text(result: Exported, host: str) -> str:
    """SERVE.md: what is in the folder, each server's command and the bench line that measures it from here."""
    c = result.commands
    files = sorted({*result.files, GUIDE, MARKER})
    lines = [f"# {result.recipe.label()}", "",
             f"Recipe `{result.recipe.key()}`, exported by `workbench export` as {', '.join(result.formats)}.", "",
             "| file | bytes | what it is |", "| --- | ---: | --- |"]
    lines += [f"| `{name}` | {result.files[name]:,} | {file_role(name)} |" if name in result.files else
              f"| `{name}` | | {file_role(name)} |" for name in files]
    lines.append("")
    if "vllm" in c:
        lines += ["## vLLM (GPU)", "", "```", c["vllm"], "```", "", "## TGI (GPU, Docker)", "", "```", c["tgi"], "```",
                  "", "Measure them from here:", "", "```", c["bench-vllm"], c["bench-tgi"], "```", ""]
    if "llama-server" in c:
        lines += ["## llama.cpp server", "", "```", c["llama-server"], "```", "",
                  "or llama-cpp-python's server (`pip install 'llama-cpp-python[server]'`):", "", "```",
                  c["llama-cpp-python"], "```", "", "## Ollama", "", "```", c["ollama-create"], c["ollama-run"],
                  "```", "", "Measure them from here:", "", "```", c["bench-llama-server"],
                  c["bench-llama-cpp-python"], c["bench-ollama"], "```", ""]
    if _reach(host) == "SERVER":
        reach = ("The commands listen on every interface (`--host 0.0.0.0`): put the server behind your network's "
                 "access control (vLLM and llama-server take `--api-key`), and in the bench lines replace `SERVER` "
                 "with the server machine's address (`--api-key-env VAR` names the variable holding the key).")
    else:
        reach = (f"The commands listen on {host} only. To serve other machines, export again with `--host 0.0.0.0` "
                 "(the bench lines then read `SERVER`, for the server machine's address), and put the server behind "
                 "your network's access control (vLLM and llama-server take `--api-key`; `workbench bench "
                 "--api-key-env VAR` names the variable holding it).")
    lines += ["## Reaching a server on another machine", "", reach, ""]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in result.notes] + [""]
    return "\n".join(lines)

