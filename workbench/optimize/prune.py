"""Pruning: unstructured (magnitude / Wanda), 2:4 semi-structured, MLP channels, whole decoder layers.

``prune_(model, spec, calibration)`` changes the model in place. Unstructured and 2:4 pruning only zero
weights, so the matrices keep their shape and dense kernels run them at the same speed; channel and layer
pruning really shrink the model (and its config, so it saves and reloads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..recipe import LAYER_CHOICES, PruneSpec, RecipeError

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
    n_layers = len(decoder_layers(model))
    return drop_layers_(model, min(n_layers - 1, round(spec.ratio * n_layers)), calibration, "similarity")


def drop_layers_(model: nn.Module, n_drop: int, calibration: list[torch.Tensor],
                 choice: str = "similarity") -> list[str]:
    """Remove ``n_drop`` decoder layers of ``model`` in place, chosen on the calibration inputs by ``choice``.

    The choices (``LAYER_CHOICES``) measure different things:

    - "similarity": each layer on its own, by the mean cosine similarity of its output to its input; the n layers
      that change the hidden state least go (they need not be neighbours).
    - "angular": one contiguous block (Gromov et al., 2024, "The Unreasonable Ineffectiveness of the Deeper
      Layers"): the n layers starting at the l that minimises the mean angular distance arccos(cos(h_l,
      h_{l+n})) / pi between the block's input and its output, h_l being the input of layer l (h_L, the last
      layer's output, before the final norm). The paper measures the last token of each sequence; here every
      token counts, as the calibration set is small.
    - "loss": each layer by what skipping it costs the model's predictions: KL(full model || model without that
      layer) of the next-token distributions, mean over the calibration tokens; the n cheapest go. A one-shot
      ranking, each layer measured with all the others in place, each skip's forward starting from that layer's
      input. Choosing greedily (drop the cheapest, measure the rest again) would take ~8x the forwards (234
      instead of 30 for 9 of 30 layers): ~6 min instead of the ~45 s measured for the embedded model on 2 CPU
      cores, past the ~2 min a student's start may take.

    The kept layers' teacher indices are recorded in the config (``KEPT_LAYERS``), so a pruned model saves and
    reloads, and a student knows which teacher layer each of its layers was copied from.

    Args:
        model: a causal LM with Llama-style decoder layers (``model.model.layers``).
        n_drop: how many layers go: from 0 (nothing changes) to one less than the model has.
        calibration: token-id tensors (1, T) the criteria are measured on.
        choice: one of ``LAYER_CHOICES``.

    Returns:
        A note naming the removed layers and the choice (empty when nothing was removed).
    """
    if choice not in _LAYER_CHOOSERS:
        raise RecipeError("layer-choice", f"unknown layer choice {choice!r}; allowed: {', '.join(LAYER_CHOICES)}")
    layers = decoder_layers(model)
    if not 0 <= n_drop < len(layers):
        raise ValueError(f"can drop from 0 to {len(layers) - 1} of {len(layers)} decoder layers, not {n_drop}")
    if n_drop == 0:
        return []
    if not calibration:
        raise RecipeError("prune-method", "layer pruning needs calibration prompts")
    with torch.no_grad():
        drop = sorted(_LAYER_CHOOSERS[choice](model, layers, n_drop, calibration))
    keep_index = [i for i in range(len(layers)) if i not in drop]
    _set_decoder_layers(model, [layers[i] for i in keep_index], keep_index)
    return [f"removed {n_drop} of {len(layers)} decoder layers ({choice}): {drop}"]


def _most_similar_layers(model: nn.Module, layers: nn.ModuleList, n_drop: int, calibration) -> list[int]:
    """The n layers whose output is most like their input: they change the hidden state the least."""
    return torch.topk(_layer_similarity(model, layers, calibration), n_drop).indices.tolist()


def _closest_block(model: nn.Module, layers: nn.ModuleList, n_drop: int, calibration) -> list[int]:
    """The contiguous block of n layers whose input and output are closest in angle (Gromov et al., 2024)."""
    distance = _block_angular_distance(model, layers, n_drop, calibration)
    start = int(torch.argmin(distance))
    return list(range(start, start + n_drop))


def _least_harmful(model: nn.Module, layers: nn.ModuleList, n_drop: int, calibration) -> list[int]:
    """The n layers whose skipping moves the next-token distributions least (one-shot KL ranking)."""
    return torch.topk(_skip_kl(model, layers, calibration), n_drop, largest=False).indices.tolist()


_LAYER_CHOOSERS: dict[str, Callable[..., list[int]]] = {
    "similarity": _most_similar_layers,
    "angular": _closest_block,
    "loss": _least_harmful,
}


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


def _block_angular_distance(model: nn.Module, layers: nn.ModuleList, n: int, calibration) -> torch.Tensor:
    """Per start l (0 .. L - n): mean over calibration tokens of arccos(cos(h_l, h_{l+n})) / pi.

    h_l is the input of layer l, and h_L the last layer's output: taken by hooks from the residual stream, not
    from ``output_hidden_states``, whose last entry is after the final norm. A few chunks at a time
    (``_batches``), so only their hidden states are held.
    """
    totals = torch.zeros(len(layers) - n + 1)
    count = 0
    device = next(model.parameters()).device
    for ids in _batches(calibration):
        with _residual_stream(layers) as (states, _):
            model(input_ids=ids.to(device), use_cache=False)
        for start in range(len(totals)):
            cos = nn.functional.cosine_similarity(states[start].float(), states[start + n].float(), dim=-1)
            totals[start] += (torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi).sum().cpu()
        count += states[0].shape[0] * states[0].shape[1]
    return totals / max(count, 1)


def _skip_kl(model: nn.Module, layers: nn.ModuleList, calibration) -> torch.Tensor:
    """Per layer: mean KL(full model || model with that layer skipped) of the next-token distributions, in nats
    per calibration token.

    Skipping layer i leaves the layers before it as they were, so its forward starts from layer i's input as the
    full model computed it (``_starting_at``): on average half the layers' work. A few chunks at a time
    (``_batches``), so only their reference distributions and hidden states are held.
    """
    totals = torch.zeros(len(layers))
    count = 0
    device = next(model.parameters()).device
    for ids in _batches(calibration):
        ids = ids.to(device)
        with _residual_stream(layers) as (states, as_tuple):
            reference = _log_probs(model, ids)
        for i in range(len(layers)):
            with _starting_at(layers, i + 1, states[i], as_tuple):  # layer i gets skipped with those before it
                skipped = _log_probs(model, ids)
            totals[i] += nn.functional.kl_div(skipped, reference, log_target=True, reduction="sum").cpu()
        count += reference.shape[0] * reference.shape[1]
    return totals / max(count, 1)


def _batches(calibration: list[torch.Tensor], max_tokens: int = 512) -> Iterator[torch.Tensor]:
    """Consecutive calibration chunks of one length stacked into (B, T) batches of at most ``max_tokens`` tokens
    (a longer chunk alone): a CPU runs a batch of 4 x 128 tokens ~1.5-2.5x faster than 4 forwards of 128, and
    the next-token distributions of 512 tokens take ~100 MB for a 49k vocabulary."""
    group: list[torch.Tensor] = []
    for ids in calibration:
        if group and (ids.shape[1] != group[0].shape[1] or sum(g.numel() for g in group) + ids.numel() > max_tokens):
            yield torch.cat(group)
            group = []
        group.append(ids)
    if group:
        yield torch.cat(group)


def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities (B, T, vocab) in float32."""
    return torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)


@contextmanager
def _residual_stream(layers: nn.ModuleList) -> Iterator[tuple[list[torch.Tensor | None], list[bool]]]:
    """Record the residual stream of a forward run inside the block: ``states`` holds the input of each layer
    and, last, the last layer's output (before the final norm); ``as_tuple`` whether each layer returns a tuple
    (older transformers) or the hidden states alone, the form a layer standing in for it must return."""
    states: list[torch.Tensor | None] = [None] * (len(layers) + 1)
    as_tuple = [False] * len(layers)
    hooks = []
    for i, layer in enumerate(layers):
        def keep_input(mod, args, kwargs, i=i):
            states[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        def keep_form(mod, args, out, i=i):
            as_tuple[i] = isinstance(out, tuple)

        hooks += [layer.register_forward_pre_hook(keep_input, with_kwargs=True), layer.register_forward_hook(keep_form)]

    def keep_output(mod, args, out):
        states[-1] = _hidden(out).detach().clone()

    hooks.append(layers[-1].register_forward_hook(keep_output))
    try:
        yield states, as_tuple
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def _starting_at(layers: nn.ModuleList, start: int, hidden: torch.Tensor, as_tuple: list[bool]) -> Iterator[None]:
    """Inside the block a forward runs only ``layers[start:]``, on ``hidden`` as their input.

    The first layer returns ``hidden`` whatever it is given and the others before ``start`` pass their input
    through, without compute. The model's own forward still embeds the tokens and builds the mask and positions,
    so nothing about a particular decoder is assumed, and no copy of the model is made; each layer keeps its
    attributes (the decoder may read some, e.g. ``attention_type``).
    """
    def stand_in(i: int):
        def forward(hidden_states, *args, **kwargs):
            out = hidden if i == 0 else hidden_states
            return (out,) if as_tuple[i] else out

        return forward

    try:
        for i in range(start):
            layers[i].forward = stand_in(i)
        yield
    finally:
        for i in range(start):
            layers[i].__dict__.pop("forward", None)


def _hidden(out) -> torch.Tensor:
    """A decoder layer's output hidden states, whether it returns them alone or first in a tuple."""
    return out[0] if isinstance(out, tuple) else out


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
