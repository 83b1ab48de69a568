"""The llama.cpp runtime: a recipe as a GGUF file, quantized by llama.cpp's own quantizer and run by llama.cpp.

The pipeline's order stays: source -> float weights -> variant -> prune, then (instead of a PyTorch quantizer)
write an F32 GGUF file and quantize it with ``llama_model_quantize``. ``--dtype shipped`` serves a ``.gguf``
source exactly as it is. Every file is an artifact (temp folder, then renamed into place) keyed by the weights'
part of the recipe, so the batch size and threads share one file; one process makes a file at a time (the others
wait and use it); a file that cannot be read is moved aside and made again.

``llama-cpp-python`` is an optional library (it compiles llama.cpp when installed): without it the runtime says
why it cannot run, and everything else works.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import time
from dataclasses import replace
from pathlib import Path

from ... import devices, loading, store
from ...optimize import corpus as _corpus
from ...optimize import pipeline
from ...optimize.stats import ModelStats
from ...optimize.variants import find_student, variant_source
from ...progress import OnStage, no_stage
from ...recipe import LLAMA_CPP_DTYPES, Recipe, RecipeError
from ..base import Backend, Runtime
from . import corpus, export, gguf_files
from .model import LlamaCppModel

NAME = "llama.cpp"
PACKAGE = "llama_cpp"
INSTALL = "`make llama` (it compiles llama-cpp-python==0.3.36 for this CPU, about 5 minutes on 2 cores)"
CHANNEL_MULTIPLE = 32  # llama.cpp's quantized blocks hold 32 weights of a row: pruned MLP widths keep to it
WHY_FASTER = ("llama.cpp multiplies the quantized weights directly in fused dot-product kernels (AVX-512 VNNI "
              "where the CPU has it, Q4_0 repacked at load into the interleaved layout its kernels read fastest) "
              "and runs the whole forward pass in C++, with no Python or PyTorch dispatch per token.")
_problem: str | None = None
_checked = False


def problem() -> str | None:
    """Why llama.cpp cannot run here (the bindings are missing or do not load), or None."""
    global _problem, _checked
    if not _checked:
        _checked = True
        if importlib.util.find_spec(PACKAGE) is None:
            _problem = f"llama-cpp-python is not installed; install it with {INSTALL}"
        else:
            try:
                import llama_cpp  # noqa: F401  (loads the compiled library)
            except (ImportError, OSError) as exc:
                _problem = f"llama-cpp-python is installed but does not load ({exc}); reinstall it with {INSTALL}"
    return _problem


def check(recipe: Recipe) -> Recipe:
    """The recipe with device and threads resolved; RecipeError for what llama.cpp cannot run (nothing loads)."""
    why = problem()
    if why:
        raise RecipeError("runtime", why)
    device = "cpu" if recipe.device == "auto" else devices.resolve_device(recipe.device)
    if device != "cpu":
        raise RecipeError("device", f"this llama.cpp build runs on the CPU; choose --device cpu (or auto) for "
                                    f"--runtime {NAME}, or --runtime transformers for {device}")
    if recipe.dtype not in LLAMA_CPP_DTYPES:
        kind = "a bitsandbytes format" if recipe.dtype in ("nf4", "fp4") else "not a llama.cpp format"
        raise RecipeError("dtype", f"{recipe.dtype} is {kind}, which llama.cpp cannot run; with --runtime {NAME}, "
                                   f"--dtype takes {', '.join(LLAMA_CPP_DTYPES)} (int8 means q8_0, int4 q4_0)")
    if recipe.backend != NAME:
        raise RecipeError("backend", f"llama.cpp runs its own kernels; --backend {recipe.backend} is a "
                                     "transformers library (leave --backend out)")
    if recipe.dtype == "shipped":
        kind = loading.resolve_source(recipe.model).kind
        if kind not in ("embedded", "gguf"):
            raise RecipeError("dtype", "--dtype shipped runs a .gguf source as it is; this model is not a .gguf "
                                       "file (choose a llama.cpp format to convert it)")
        if recipe.prune.method != "none" or recipe.variant != "none":
            raise RecipeError("dtype", "--dtype shipped runs the .gguf file as it is: no pruning and no variant "
                                       "(choose a llama.cpp format, e.g. q4_0, to export a pruned model)")
    if recipe.variant != "none":
        variant_source(recipe.model, recipe.variant)
    return replace(recipe, device=device, threads=recipe.threads or devices.physical_cores())


def backends(dtype: str, device: str) -> list[Backend]:
    """llama.cpp's own kernels, for every format it runs on the CPU."""
    if dtype not in LLAMA_CPP_DTYPES or device not in ("cpu", "auto"):
        return []
    what = "the .gguf file as it is" if dtype == "shipped" else f"{dtype} GGUF, quantized by llama.cpp"
    return [Backend(NAME, dtype, f"llama.cpp CPU kernels ({what})", WHY_FASTER)]


# Building --------------------------------------------------------------------------------------------------


def build(recipe: Recipe, *, trust_remote_code: bool = False, on_stage: OnStage | None = None) -> LlamaCppModel:
    """The recipe's GGUF file (made and cached when it is not there yet), loaded by llama.cpp."""
    on_stage = on_stage or no_stage
    recipe = check(recipe)
    start = time.perf_counter()
    on_stage("Loading the tokenizer", 0.02)
    tokenizer, eos_ids = loading.load_tokenizer(recipe.model, trust_remote_code=trust_remote_code,
                                                on_stage=on_stage)
    path, meta, found = gguf_file(recipe, trust_remote_code=trust_remote_code, on_stage=on_stage)
    on_stage(f"Loading {path.name} into llama.cpp ({recipe.threads} threads)", 0.9)
    stats = ModelStats(
        params=found.params, nonzero_params=meta.get("nonzero_params", found.params), weight_bytes=found.weight_bytes,
        build_s=time.perf_counter() - start, backend=f"llama.cpp {recipe.dtype} ({gguf_files.describe(found.tensor_types)})",
        threads=recipe.threads, tensor_types=found.tensor_types,
    )
    model = LlamaCppModel(recipe, path, tokenizer, stats, _notes(recipe, meta, found), eos_ids)
    on_stage("Ready", 1.0)
    return model


def weights_recipe(recipe: Recipe, dtype: str | None = None) -> Recipe:
    """The part of a recipe that decides the file's weights: batch size and threads share one file."""
    return replace(recipe, dtype=dtype or recipe.dtype, batch_size=1, threads=0)


def gguf_file(recipe: Recipe, *, trust_remote_code: bool = False,
              on_stage: OnStage = no_stage) -> tuple[Path, dict, gguf_files.Contents]:
    """The GGUF file of a resolved recipe, what its export recorded (notes, non-zero parameters) and what it stores
    (reading a file takes seconds: once per build).

    An F32 export is made first (and kept: every format of the same weights is quantized from it).
    """
    if recipe.dtype == "shipped":
        path = Path(loading.resolve_source(recipe.model).location)
        try:
            return path, {}, gguf_files.contents(path)
        except gguf_files.GGUFError as exc:
            raise loading.ModelSourceError(f"{exc}; copy or download it again") from None
    target = weights_recipe(recipe)
    found = _ready(target, on_stage)
    if found is not None:
        return found
    try:
        with store.building(target.key(), f"the {recipe.dtype} GGUF file of {recipe.label()}",
                            on_wait=lambda message: on_stage(message, 0.1)):
            return _ready(target, on_stage) or _make_file(recipe, target, trust_remote_code, on_stage)
    except store.StoreError as exc:
        raise loading.ModelSourceError(str(exc)) from None


def _make_file(recipe: Recipe, target: Recipe, trust_remote_code: bool,
               on_stage: OnStage) -> tuple[Path, dict, gguf_files.Contents]:
    """Make the recipe's GGUF file (the caller holds its build lock): quantized from the F32 export, itself made
    under its own lock when no other format of the same weights made it first."""
    f32 = weights_recipe(recipe, "fp32")
    with store.building(f32.key(), f"the F32 GGUF file of {recipe.label()}",
                        on_wait=lambda message: on_stage(message, 0.1)):
        kept = _ready(f32, on_stage)
        source, meta = kept[:2] if kept else _make(
            f32, lambda tmp: _export(recipe, tmp, trust_remote_code, on_stage), on_stage, "Writing the F32 GGUF file")
    if recipe.dtype == "fp32":
        return source, meta, gguf_files.contents(source)

    def quantized(tmp: Path) -> dict:
        gguf_files.quantize(source, tmp / "model.gguf", recipe.dtype, recipe.threads)
        return meta

    path, meta = _make(target, quantized, on_stage, f"Quantizing to {recipe.dtype} with llama.cpp's quantizer")
    return path, meta, gguf_files.contents(path)


def _ready(recipe: Recipe, on_stage: OnStage) -> tuple[Path, dict, gguf_files.Contents] | None:
    """``artifacts/<key>/model.gguf``, its export record and what it stores, when it is there and readable (a
    damaged one is moved aside: never served, made again)."""
    key = recipe.key()
    path = store.artifact_path(key) / "model.gguf"
    if not store.artifact_ready(key):
        return None
    seen = store.artifact_id(key)
    try:
        found = gguf_files.contents(path)
        return path, json.loads((path.parent / store.MARKER).read_text()).get("export", {}), found
    except (gguf_files.GGUFError, OSError, ValueError) as exc:
        try:
            aside = store.set_aside_artifact(key, seen)
        except store.StoreError as error:
            raise loading.ModelSourceError(str(error)) from None
        moved = f"; moved it to {aside.name}, making it again" if aside else ""
        on_stage(f"{exc}{moved}", 0.1)
        return None


def _make(recipe: Recipe, write, on_stage: OnStage, stage: str) -> tuple[Path, dict]:
    """Write ``artifacts/<key>/model.gguf`` with ``write(tmp_dir) -> export record`` (temp dir, then renamed)."""
    on_stage(stage, 0.5)
    made: dict = {}
    store.write_artifact(recipe.key(), lambda tmp: made.update(write(tmp)),
                         {"recipe": recipe.to_dict(), "export": made},  # made is filled before it is written
                         replace=True, what=f"the {recipe.dtype} GGUF file of {recipe.label()}")
    return store.artifact_path(recipe.key()) / "model.gguf", made


def _export(recipe: Recipe, tmp: Path, trust_remote_code: bool, on_stage: OnStage) -> dict:
    """Build the recipe's float model (variant, pruning) with the PyTorch pipeline and write it as F32 GGUF."""
    float_recipe = replace(recipe, runtime="transformers", dtype="fp32", backend="torch", threads=0, batch_size=1)
    built = pipeline.build(float_recipe, trust_remote_code=trust_remote_code, on_stage=on_stage,
                           channel_multiple=CHANNEL_MULTIPLE)
    on_stage("Writing the F32 GGUF file", 0.6)
    source = loading.resolve_source(recipe.model)
    # A GGUF source's tokenizer is copied as it is; a student built here shares its teacher's tokenizer.
    same_vocab = recipe.variant == "none" or find_student(recipe.model, recipe.variant) is not None
    from_gguf = Path(source.location) if source.kind in ("embedded", "gguf") and same_vocab else None
    pre = None if from_gguf else choose_pre_tokenizer(built.tokenizer, tmp)
    export.write_gguf(built.model, built.tokenizer, tmp / "model.gguf", name=recipe.label(), tokenizer_gguf=from_gguf,
                      pre=pre)
    return {"nonzero_params": built.stats.nonzero_params, "notes": list(built.notes), "pre_tokenizer": pre}


def choose_pre_tokenizer(tokenizer, workdir: Path) -> str:
    """The first of ``export.PRE_TOKENIZERS`` under which llama.cpp splits the probe texts as transformers does."""
    for pre in export.PRE_TOKENIZERS:
        probe = workdir / f"vocab-{pre}.gguf"
        export.write_vocab(tokenizer, probe, pre)
        try:
            if export.tokenizer_mismatch(probe, tokenizer) is None:
                return pre
        finally:
            probe.unlink(missing_ok=True)
    raise RecipeError("runtime", "llama.cpp splits this model's text differently from transformers under every "
                                 f"pre-tokenizer it knows ({', '.join(export.PRE_TOKENIZERS)}); it cannot be exported")


def _notes(recipe: Recipe, meta: dict, found: gguf_files.Contents) -> list[str]:
    notes = list(meta.get("notes") or [])
    notes.append(f"GGUF file stores {gguf_files.describe(found.tensor_types)}: {found.bits_per_weight:.2f} bits "
                 f"per weight, {found.block_count} blocks; runs on {recipe.threads} threads")
    wanted = recipe.dtype.upper().removesuffix("_M")
    if recipe.dtype not in ("shipped", "fp32", "fp16", "bf16") and not any(t.startswith(wanted) for t in found.tensor_types):
        notes.append(f"llama.cpp stored no tensor as {recipe.dtype}: rows that do not fill its blocks fall back to "
                     "other types (shown above)")
    if recipe.prune.method in ("magnitude", "2:4"):
        notes.append("unstructured and 2:4 zeros are written as dense weights: llama.cpp multiplies them like any "
                     "other, so they buy no speed here")
    notes.append(WHY_FASTER)
    return notes


RUNTIME = Runtime(NAME, check=check, build=build, backends=backends, problem=problem, dtypes=LLAMA_CPP_DTYPES)


# The training text of a student can be written by this runtime: optimize.corpus finds the writer in its registry.
# (Looked up when called, so that a replaced build or problem is the one used.)
_corpus.WRITERS["llama.cpp"] = functools.partial(corpus.teacher_answers, build=lambda recipe: build(recipe),
                                                 problem=lambda: problem())
