"""Pruning: unstructured (magnitude / Wanda), 2:4 semi-structured, MLP channels, whole decoder layers.

``prune_(model, spec, calibration)`` changes the model in place. Unstructured and 2:4 pruning only zero
weights, so the matrices keep their shape and dense kernels run them at the same speed; channel and layer
pruning really shrink the model (and its config, so it saves and reloads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from ..recipe import PruneSpec, RecipeError

EXCLUDE = ("lm_head", "embed_tokens", "wte", "wpe")  # never pruned: tied to the vocabulary
# config.json field of a layer-pruned model: the original layer index of each layer kept, in order (saved and
# reloaded with the config, so a student's checkpoints and published copy keep it).
KEPT_LAYERS = "workbench_kept_layers"

_HANDLERS: dict[str, Callable[..., list[str]]] = {}


def _handler(method: str):
    def register(fn):
        _HANDLERS[method] = fn
        return fn

    return register


def prune_(model: nn.Module, spec: PruneSpec, calibration: list[torch.Tensor] | None = None,
           channel_multiple: int = 1) -> list[str]:
    """Prune ``model`` in place as ``spec`` says.

    Args:
        model: a causal LM (Llama-style decoder layers for "channels" and "layers").
        spec: method and ratio; ratio 0 leaves the model untouched.
        calibration: token-id tensors (1, T) used by data-aware criteria (Wanda, channels, layers).
        channel_multiple: channel pruning keeps a multiple of this many channels (llama.cpp's quantized
            blocks hold 32 weights of a row).

    Returns:
        Notes for the user (e.g. which layers were removed).
    """
    if spec.method == "none" or spec.ratio == 0.0:
        return []
    with torch.no_grad():
        return _HANDLERS[spec.method](model, spec, calibration or [], channel_multiple=channel_multiple)


def prunable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear except the embeddings and the LM head."""
    return {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and not any(part in EXCLUDE for part in name.split("."))
    }


def _importance(model: nn.Module, spec: PruneSpec, calibration) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each prunable weight with the importance of its entries: |W|, or Wanda's |W|*||X|| (Sun et al., 2023)."""
    linears = prunable_linears(model)
    norms = _input_norms(model, linears, calibration) if spec.criterion == "wanda" else {}
    for name, lin in linears.items():
        score = lin.weight.abs().float()
        if name in norms:
            score = score * norms[name].unsqueeze(0)
        yield lin.weight, score


@_handler("magnitude")
def _unstructured(model: nn.Module, spec: PruneSpec, calibration, **_) -> list[str]:
    count = 0
    for w, score in _importance(model, spec, calibration):
        count += 1
        if spec.criterion == "wanda":  # Wanda compares within each output row
            k = round(spec.ratio * w.shape[1])
            drop = torch.topk(score, k, dim=1, largest=False).indices
            w.scatter_(1, drop, 0.0)
        else:
            k = round(spec.ratio * w.numel())
            drop = torch.topk(score.flatten(), k, largest=False).indices
            w.view(-1)[drop] = 0.0
    return [f"{spec.criterion} pruning zeroed {spec.ratio:.0%} of the weights of {count} Linear layers"]


@_handler("2:4")
def _semi_structured(model: nn.Module, spec: PruneSpec, calibration, **_) -> list[str]:
    for w, score in _importance(model, spec, calibration):
        if w.shape[1] % 4:
            continue
        groups = score.view(w.shape[0], -1, 4)  # (out, in/4, 4)
        drop = torch.topk(groups, 2, dim=-1, largest=False).indices
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        w.mul_(mask.view_as(w).to(w.dtype))
    return ["2:4 pattern applied: 2 of every 4 consecutive weights in each row are zero"]


@_handler("channels")
def _channels(model: nn.Module, spec: PruneSpec, calibration, channel_multiple: int = 1) -> list[str]:
    multiple = channel_multiple
    layers = decoder_layers(model)
    mlps = [layer.mlp for layer in layers]
    if not all(all(hasattr(m, p) for p in ("gate_proj", "up_proj", "down_proj")) for m in mlps):
        raise RecipeError(
            "prune-method",
            f"channel pruning needs Llama-style MLPs (gate/up/down projections); {type(model).__name__} has none; "
            "available for it: none, magnitude, 2:4, layers",
        )
    width = mlps[0].down_proj.in_features
    keep = max(multiple, round((1 - spec.ratio) * width / multiple) * multiple)
    importance = _channel_importance(model, mlps, calibration)
    for mlp, score in zip(mlps, importance):
        kept = torch.topk(score, keep).indices.sort().values
        mlp.gate_proj = _slice_linear(mlp.gate_proj, rows=kept)
        mlp.up_proj = _slice_linear(mlp.up_proj, rows=kept)
        mlp.down_proj = _slice_linear(mlp.down_proj, cols=kept)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = keep
    model.config.intermediate_size = keep
    rounded = f" (rounded to a multiple of {multiple})" if multiple > 1 else ""
    return [f"MLP width {width} -> {keep} channels in each of {len(mlps)} layers{rounded}"]


@_handler("layers")
def _layers(model: nn.Module, spec: PruneSpec, calibration, **_) -> list[str]:
    layers = decoder_layers(model)
    n_drop = min(len(layers) - 1, round(spec.ratio * len(layers)))
    if n_drop == 0:
        return []
    similarity = _layer_similarity(model, layers, calibration)
    # A layer whose output is most like its input changes the least: it goes first (Gromov et al., 2024).
    drop = set(torch.topk(similarity, n_drop).indices.tolist())
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    _set_decoder_layers(model, kept, keep_index=[i for i in range(len(layers)) if i not in drop])
    return [f"removed {n_drop} of {len(layers)} decoder layers: {sorted(drop)}"]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise RecipeError(
            "prune-method",
            f"structured pruning needs a decoder with model.layers (Llama, Qwen2, Mistral); "
            f"{type(model).__name__} is not one; available for it: none, magnitude, 2:4",
        )
    return layers


def _set_decoder_layers(model: nn.Module, kept: list[nn.Module], keep_index: list[int]) -> None:
    config = model.config
    before = getattr(config, KEPT_LAYERS, None) or list(range(len(model.model.layers)))  # pruned twice: compose
    setattr(config, KEPT_LAYERS, [int(before[i]) for i in keep_index])
    model.model.layers = nn.ModuleList(kept)
    for new_idx, layer in enumerate(kept):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_idx  # the KV cache is indexed by position in the stack
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in keep_index]


def _slice_linear(lin: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = lin.weight
    if rows is not None:
        w = w[rows]
    if cols is not None:
        w = w[:, cols]
    bias = lin.bias
    if bias is not None and rows is not None:
        bias = bias[rows]
    new = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if bias is not None:
        new.bias.copy_(bias)
    return new


def _run_calibration(model: nn.Module, calibration: list[torch.Tensor]) -> None:
    device = next(model.parameters()).device
    for ids in calibration:
        model(input_ids=ids.to(device), use_cache=False)


def _input_norms(model: nn.Module, linears: dict[str, nn.Linear], calibration) -> dict[str, torch.Tensor]:
    """||X_j||_2 over all calibration tokens, per input feature j of every Linear."""
    if not calibration:
        raise RecipeError("prune-method", "Wanda importance needs calibration prompts")
    sums = {name: torch.zeros(lin.in_features) for name, lin in linears.items()}
    hooks = []
    for name, lin in linears.items():
        def hook(mod, args, out, name=name):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[name] += (x * x).sum(0).cpu()

        hooks.append(lin.register_forward_hook(hook))
    try:
        _run_calibration(model, calibration)
    finally:
        for h in hooks:
            h.remove()
    return {name: s.sqrt().to(linears[name].weight.device) for name, s in sums.items()}


def _channel_importance(model: nn.Module, mlps: list[nn.Module], calibration) -> list[torch.Tensor]:
    """Per intermediate channel: mean |activation| on calibration x ||down_proj column|| (weights alone without data)."""
    acts = [torch.zeros(m.down_proj.in_features) for m in mlps]
    hooks = []
    for i, mlp in enumerate(mlps):
        def hook(mod, args, out, i=i):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            acts[i] += x.abs().mean(0).cpu()

        hooks.append(mlp.down_proj.register_forward_hook(hook))
    try:
        if calibration:
            _run_calibration(model, calibration)
        else:
            for i, mlp in enumerate(mlps):  # data-free fallback: gate and up row norms
                acts[i] = (mlp.gate_proj.weight.float().norm(dim=1) * mlp.up_proj.weight.float().norm(dim=1)).cpu()
    finally:
        for h in hooks:
            h.remove()
    return [a * m.down_proj.weight.float().norm(dim=0).cpu() for a, m in zip(acts, mlps)]


def _layer_similarity(model: nn.Module, layers: nn.ModuleList, calibration) -> torch.Tensor:
    """Mean cosine similarity between each layer's input and output hidden states."""
    if not calibration:
        raise RecipeError("prune-method", "layer pruning needs calibration prompts")
    totals = torch.zeros(len(layers))
    counts = torch.zeros(len(layers))
    hooks = []
    for i, layer in enumerate(layers):
        def hook(mod, args, kwargs, out, i=i):
            x = args[0] if args else kwargs["hidden_states"]
            y = out[0] if isinstance(out, tuple) else out
            cos = nn.functional.cosine_similarity(x.float(), y.float(), dim=-1)  # (B, T)
            totals[i] += cos.sum().cpu()
            counts[i] += cos.numel()

        hooks.append(layer.register_forward_hook(hook, with_kwargs=True))
    try:
        _run_calibration(model, calibration)
    finally:
        for h in hooks:
            h.remove()
    return totals / counts.clamp(min=1)


_FALLBACK_CALIBRATION = [
    "The committee met on Tuesday to discuss the budget for next year, and the debate went on late into the night.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the leaves of green plants.",
    "She packed a small bag, locked the door behind her and walked to the station without looking back.",
    "To make the sauce, melt the butter over low heat, stir in the flour, then add the milk a little at a time.",
]


def calibration_inputs(tokenizer, n: int = 8, length: int = 128) -> list[torch.Tensor]:
    """Token-id chunks (1, length) of the project's calibration text (kept apart from the evaluation text)."""
    path = Path(__file__).resolve().parents[2] / "assets" / "calibration" / "calibration.txt"
    text = path.read_text() if path.is_file() else " ".join(_FALLBACK_CALIBRATION * 8)
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    chunks = [ids[i : i + length].unsqueeze(0) for i in range(0, len(ids) - length + 1, length)][:n]
    return chunks or [ids.unsqueeze(0)]
