"""The build pipeline: resolve source -> load float weights -> variant -> prune -> quantize -> place."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .. import devices, loading
from ..recipe import FLOAT_DTYPES, Recipe, RecipeError

OnStep = Callable[[str, float], None]


@dataclass
class ModelStats:
    params: int
    nonzero_params: int
    weight_bytes: int
    build_s: float
    backend: str  # the kernel path that actually runs, e.g. "dense fp32 (PyTorch CPU)"

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "weight_bytes": self.weight_bytes,
            "build_s": round(self.build_s, 3),
            "backend": self.backend,
        }


@dataclass
class OptimizedModel:
    model: torch.nn.Module
    tokenizer: object
    recipe: Recipe  # device resolved
    stats: ModelStats
    notes: list[str] = field(default_factory=list)  # what the user should know about this build


def build(recipe: Recipe, *, trust_remote_code: bool = False, on_step: OnStep | None = None) -> OptimizedModel:
    """Build the model a recipe describes.

    Args:
        recipe: what to build; ``device="auto"`` is resolved here.
        trust_remote_code: allow hub model code (opt-in).
        on_step: progress callback ``(stage, fraction 0..1)``.
    """
    on_step = on_step or (lambda stage, frac: None)
    recipe = replace(recipe, device=devices.resolve_device(recipe.device))
    check_supported(recipe)
    start = time.perf_counter()
    on_step("Resolving model source", 0.0)
    model, tokenizer, _ = loading.load(recipe.model, trust_remote_code=trust_remote_code, on_step=on_step)
    on_step(f"Casting to {recipe.dtype} and placing on {recipe.device}", 0.9)
    model.to(device=recipe.device, dtype=devices.TORCH_DTYPES[recipe.dtype])
    model.eval()
    _prepare_tokenizer(tokenizer, model)
    devices.sync(recipe.device)
    build_s = time.perf_counter() - start
    on_step("Ready", 1.0)
    stats = measure(model, build_s, backend=f"dense {recipe.dtype} (PyTorch {recipe.device.upper()})")
    notes = []
    if recipe.device == "cpu" and recipe.dtype in ("fp16", "bf16"):
        notes.append(
            f"{recipe.dtype} halves the weight bytes, but CPU matmul kernels for {recipe.dtype} are often no faster "
            "than fp32 (or slower); the measured tok/s says which it is on this machine."
        )
    return OptimizedModel(model, tokenizer, recipe, stats, notes)


def check_supported(recipe: Recipe) -> None:
    """Raise RecipeError for the parts of a recipe this build cannot do yet, naming what works."""
    if recipe.dtype not in FLOAT_DTYPES:
        raise RecipeError("dtype", f"dtype {recipe.dtype} is not available yet; available: {', '.join(FLOAT_DTYPES)}")
    if recipe.prune.method != "none":
        raise RecipeError("prune-method", "pruning is not available yet; available: none")
    if recipe.variant != "none":
        raise RecipeError("variant", "distilled variants are not available yet; available: none")


def measure(model: torch.nn.Module, build_s: float, backend: str) -> ModelStats:
    params = nonzero = nbytes = 0
    for p in model.parameters():  # parameters() skips tied duplicates (e.g. lm_head = embeddings)
        params += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
        nbytes += p.numel() * p.element_size()
    return ModelStats(params, nonzero, nbytes, build_s, backend)


def _prepare_tokenizer(tokenizer, model) -> None:
    # Left padding, so that batched prompts end where generation starts.
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.generation_config, "pad_token_id", None) is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def from_model(model: torch.nn.Module, tokenizer, recipe: Recipe, backend: str | None = None) -> OptimizedModel:
    """Wrap a model already in memory (tests, notebooks) as an OptimizedModel, placed per the recipe."""
    recipe = replace(recipe, device=devices.resolve_device(recipe.device))
    check_supported(recipe)
    model.to(device=recipe.device, dtype=devices.TORCH_DTYPES[recipe.dtype]).eval()
    _prepare_tokenizer(tokenizer, model)
    return OptimizedModel(model, tokenizer, recipe, measure(model, 0.0, backend or f"dense {recipe.dtype}"))
