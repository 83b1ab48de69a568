"""The signals a student learns from, TinyBERT- and MiniLM-style.

- ``kd_loss``: KL(teacher || student) of the temperature-softened next-token distributions over the whole vocabulary.
- ``top_k_kl``: the same KL from the teacher's cached top-k logits: the k most likely tokens plus one bucket for the
  rest of the vocabulary, whose mass comes from the teacher's cached log-normaliser. Merging tokens into a bucket
  never raises a KL, so this is a lower bound of the full KL that is exact (zero) when the student is the teacher.
- ``layers_loss``: each student layer's output against the output of the teacher layer it was copied from
  (``layer_map``), as relative squared error, so that its weight means the same for every model width.
- ``attention_loss``: KL of mapped layers' attention distributions, query row by query row.

Every loss is a mean over the real (unmasked) tokens of the batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .prune import KEPT_LAYERS, decoder_layers

EPS = 1e-12


def layer_map(student: nn.Module) -> list[int]:
    """The teacher layer each of the student's decoder layers was copied from, in order.

    A layer-pruned model records it in its config; a model never layer-pruned maps layer i to layer i.
    """
    n = len(decoder_layers(student))
    kept = getattr(student.config, KEPT_LAYERS, None)
    if kept is None:
        return list(range(n))
    kept = [int(i) for i in kept]
    if len(kept) != n:
        raise ValueError(f"the config records {len(kept)} kept layers but the model has {n}")
    return kept


@contextmanager
def layer_outputs(model: nn.Module, indices: list[int] | None = None) -> Iterator[list[torch.Tensor | None]]:
    """Record what the decoder layers at ``indices`` (all when None) output, in that order: the yielded list holds,
    after a forward inside the block, one (B, T, H) tensor per layer (the residual stream, before the final norm)."""
    layers = decoder_layers(model)
    indices = list(range(len(layers))) if indices is None else indices
    slots: list[torch.Tensor | None] = [None] * len(indices)

    def hook_for(slot: int):
        def hook(module, args, out):
            slots[slot] = out[0] if isinstance(out, tuple) else out

        return hook

    handles = [layers[i].register_forward_hook(hook_for(slot)) for slot, i in enumerate(indices)]
    try:
        yield slots
    finally:
        for handle in handles:
            handle.remove()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1)


def kd_loss(student_logits, teacher_logits, mask, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, mean over real tokens, times T^2.

    The T^2 factor keeps gradient sizes comparable across temperatures (Hinton et al., 2015).
    """
    t = temperature
    s_log = F.log_softmax(student_logits.float() / t, dim=-1)
    t_log = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1)  # (B, T)
    return masked_mean(kl, mask) * t * t


def teacher_top_k(teacher_logits: torch.Tensor, k: int, temperature: float):
    """What ``top_k_kl`` needs of the teacher, per token: its k largest logits, their token ids and the
    log-normaliser of the softened distribution (logsumexp of logits / T)."""
    logits = teacher_logits.float()
    values, indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    return values, indices, torch.logsumexp(logits / temperature, dim=-1)


def top_k_kl(student_logits, values, indices, log_normaliser, mask, temperature: float) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k tokens and one bucket for the rest, times T^2.

    Args:
        student_logits: (B, T, V).
        values, indices: the teacher's top-k logits and their token ids, (B, T, k).
        log_normaliser: the teacher's logsumexp(logits / T), (B, T).
        mask: 1 for real tokens, (B, T).
    """
    t = temperature
    s = student_logits.float() / t
    log_q = s.gather(-1, indices.long()) - torch.logsumexp(s, dim=-1, keepdim=True)
    log_p = values.float() / t - log_normaliser.float().unsqueeze(-1)
    p = log_p.exp()
    p_rest = (1 - p.sum(-1)).clamp_min(0.0)
    q_rest = (1 - log_q.exp().sum(-1)).clamp_min(EPS)
    kl = (p * (log_p - log_q)).sum(-1) + p_rest * (torch.log(p_rest.clamp_min(EPS)) - torch.log(q_rest))
    return masked_mean(kl, mask) * t * t


def layers_loss(student_outputs: list[torch.Tensor], teacher_outputs: list[torch.Tensor], mask) -> torch.Tensor:
    """Mean over mapped layers of ||student - teacher||^2 / ||teacher||^2 per token (relative squared error)."""
    if len(student_outputs) != len(teacher_outputs):
        raise ValueError(f"{len(student_outputs)} student layers against {len(teacher_outputs)} teacher layers")
    per_layer = []
    for s, t in zip(student_outputs, teacher_outputs):
        s, t = s.float(), t.float()
        per_layer.append(masked_mean((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(EPS), mask))
    return torch.stack(per_layer).mean()


def attention_loss(student_attentions, teacher_attentions, mask) -> torch.Tensor:
    """Mean over mapped layers and heads of KL(teacher row || student row) of the attention probabilities,
    over real query tokens. Each attention is (B, heads, T, T)."""
    per_layer = []
    for s, t in zip(student_attentions, teacher_attentions):
        s, t = s.float(), t.float()
        kl = (t * (torch.log(t.clamp_min(EPS)) - torch.log(s.clamp_min(EPS)))).sum(-1).mean(1)  # (B, T)
        per_layer.append(masked_mean(kl, mask))
    return torch.stack(per_layer).mean()


def use_eager_attention(model: nn.Module) -> None:
    """Attention probabilities are only returned by the eager implementation (SDPA never forms them)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"
