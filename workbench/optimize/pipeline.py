"""The build pipeline: resolve source -> load float weights -> variant -> prune -> quantize -> place.

What comes out is a PyTorch module and its tokenizer (``OptimizedModel``); the transformers runtime serves it,
and other runtimes start from its float weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import torch

from .. import devices, loading
from ..progress import OnStage, no_stage
from ..recipe import FLOAT_DTYPES, Recipe, working_precision
from .prune import calibration_inputs, prunable_linears, prune_
from .quantize import BACKENDS, quantize_, resolve_backend, weight_bytes
from .stats import ModelStats
from .variants import variant_source


@dataclass
class OptimizedModel:
    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe  # device resolved
    stats: ModelStats
    notes: list[str] = field(default_factory=list)  # what the user should know about this build
    inference_mode: bool = True  # whether generation may run under torch.inference_mode (a little faster)


def resolve(recipe: Recipe) -> Recipe:
    """Resolve "auto" device and backend, so that the key names what really runs."""
    device = devices.resolve_device(recipe.device)
    return replace(recipe, device=device, backend=resolve_backend(recipe.dtype, recipe.backend, device))


def build(recipe: Recipe, *, trust_remote_code: bool = False, on_stage: OnStage | None = None,
          channel_multiple: int = 1) -> OptimizedModel:
    """Build the model a recipe describes: load -> variant -> prune -> quantize -> place.

    Args:
        recipe: what to build; "auto" device and backend are resolved here.
        trust_remote_code: allow hub model code (opt-in).
        on_stage: progress callback ``(stage, fraction 0..1)``.
        channel_multiple: channel pruning keeps a multiple of this many channels.
    """
    on_stage = on_stage or no_stage
    recipe = resolve(recipe)
    start = time.perf_counter()
    on_stage("Resolving model source", 0.0)
    notes: list[str] = []
    source = recipe.model
    if recipe.variant != "none":
        source = variant_source(recipe.model, recipe.variant)  # the student replaces the teacher's weights
        notes.append(f"distilled variant {recipe.variant} of {recipe.model}")
    model, tokenizer, _ = loading.load(source, trust_remote_code=trust_remote_code, on_stage=on_stage)
    if recipe.prune.method != "none":
        notes += _prune(model, tokenizer, recipe, on_stage, channel_multiple)
    params, nonzero = count_params(model)
    on_stage(f"Placing on {recipe.device} as {recipe.dtype}", 0.85)
    backend = _place_and_quantize(model, recipe, notes)
    model.eval()
    _prepare_tokenizer(tokenizer, model)
    devices.sync(recipe.device)
    build_s = time.perf_counter() - start
    on_stage("Ready", 1.0)
    stats = ModelStats(params, nonzero, weight_bytes(model), build_s, backend, threads=torch.get_num_threads())
    inference_ok = recipe.dtype in FLOAT_DTYPES or BACKENDS[recipe.backend].inference_mode
    return OptimizedModel(model, tokenizer, recipe, stats, notes + _speed_notes(recipe), inference_ok)


def _prune(model, tokenizer, recipe: Recipe, on_stage: OnStage, channel_multiple: int = 1) -> list[str]:
    on_stage(f"Pruning: {recipe.prune.method} {recipe.prune.ratio:.0%}", 0.7)
    return prune_(model, recipe.prune, calibration_inputs(tokenizer), channel_multiple)


def _place_and_quantize(model, recipe: Recipe, notes: list[str]) -> str:
    """Cast and place; quantize before or after placing as the backend needs. Returns the kernel path."""
    device = recipe.device
    if recipe.dtype in FLOAT_DTYPES:
        model.to(device=device, dtype=devices.TORCH_DTYPES[recipe.dtype])
        backend = f"dense {recipe.dtype} (PyTorch {device.upper()})"
        if recipe.prune.method == "2:4":
            backend = _semi_structured(model, recipe, backend, notes)
        return backend
    handler = BACKENDS[recipe.backend]
    model.to(dtype=devices.TORCH_DTYPES[working_precision(device)])  # what stays in float: norms, embeddings
    if handler.on_device:
        model.to(device)
        quantize_(model, recipe.backend, device)
    else:
        quantize_(model, recipe.backend, device)
        model.to(device)
    return handler.label


def _semi_structured(model, recipe: Recipe, dense: str, notes: list[str]) -> str:
    """On CUDA with fp16/bf16, swap 2:4-pruned weights for PyTorch's semi-structured sparse tensors."""
    if recipe.device != "cuda" or recipe.dtype not in ("fp16", "bf16"):
        notes.append("2:4 sparse kernels need CUDA (sm80+) with fp16/bf16; here the zeros run on dense kernels")
        return dense
    try:
        from torch.sparse import to_sparse_semi_structured

        for lin in prunable_linears(model).values():
            lin.weight = torch.nn.Parameter(to_sparse_semi_structured(lin.weight), requires_grad=False)
        return f"2:4 semi-structured sparse {recipe.dtype} (PyTorch CUDA)"
    except Exception as exc:  # unsupported GPU or shape: say so and run dense
        notes.append(f"2:4 sparse kernels unavailable ({type(exc).__name__}: {exc}); running dense")
        return dense


def _speed_notes(recipe: Recipe) -> list[str]:
    notes = []
    if recipe.device == "cpu" and recipe.dtype in ("fp16", "bf16"):
        notes.append(
            f"{recipe.dtype} halves the weight bytes, but CPU matmul kernels for {recipe.dtype} are often no faster "
            "than fp32 (or slower); the measured tok/s says which it is on this machine."
        )
    if recipe.prune.method == "magnitude":
        notes.append("unstructured zeros are still multiplied by dense kernels: expect no speed-up, only quality loss")
    if recipe.dtype not in FLOAT_DTYPES:
        notes.append(f"{BACKENDS[recipe.backend].label}: {BACKENDS[recipe.backend].why}")
    return notes


def check_supported(recipe: Recipe) -> Recipe:
    """Raise RecipeError if the recipe cannot be built here (device, backend, variant), without loading anything.

    Returns the resolved recipe.
    """
    recipe = resolve(recipe)
    if recipe.variant != "none":
        variant_source(recipe.model, recipe.variant)
    return recipe


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters); tied weights counted once."""
    params = nonzero = 0
    for p in model.parameters():
        params += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    return params, nonzero


def measure(model: torch.nn.Module, build_s: float, backend: str) -> ModelStats:
    params, nonzero = count_params(model)
    return ModelStats(params, nonzero, weight_bytes(model), build_s, backend, threads=torch.get_num_threads())


def _prepare_tokenizer(tokenizer, model) -> None:
    # Left padding, so that batched prompts end where generation starts.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def from_model(model: torch.nn.Module, tokenizer, recipe: Recipe, backend: str | None = None) -> OptimizedModel:
    """Wrap a model already in memory (tests, notebooks) as an OptimizedModel, placed per the recipe."""
    recipe = resolve(recipe)
    model.to(device=recipe.device, dtype=devices.TORCH_DTYPES[recipe.dtype]).eval()
    _prepare_tokenizer(tokenizer, model)
    return OptimizedModel(model, tokenizer, recipe, measure(model, 0.0, backend or f"dense {recipe.dtype}"))
