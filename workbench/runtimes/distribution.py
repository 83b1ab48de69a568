"""Per-token scores of a loaded model: its full next-token distribution, and the NLL of each token.

``LoadedModel.nll`` sums a text's loss, which is all perplexity needs. A distribution-level measure (KL
divergence to the baseline) needs every next-token distribution, and an interval on perplexity needs the loss
token by token. A model may give them itself (``next_token_logprobs`` / ``token_nlls`` methods returning None
where it cannot); otherwise the two runtimes here are read directly, from the same forward pass ``nll`` makes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import LoadedModel
from .llamacpp.model import LlamaCppModel
from .transformers import TransformersModel


def problem(model: LoadedModel) -> str | None:
    """Why this model cannot give its next-token distributions, or None when it can."""
    if isinstance(model, (TransformersModel, LlamaCppModel)) or callable(getattr(model, "next_token_logprobs", None)):
        return None
    return f"the {model.recipe.runtime} runtime does not expose next-token distributions"


def next_token_logprobs(model: LoadedModel, token_ids: list[int], first_target: int) -> np.ndarray | None:
    """Log-probabilities of the next token at each scored position, or None when the runtime cannot give them.

    Args:
        model: the loaded model.
        token_ids: the tokens that go in.
        first_target: the first token that is predicted; each of ``token_ids[first_target:]`` is predicted
            from every token before it (as ``LoadedModel.nll`` scores them).

    Returns:
        float32 array ``(len(token_ids) - first_target, vocab)``: row k is the distribution that predicts
        ``token_ids[first_target + k]``.
    """
    own = getattr(model, "next_token_logprobs", None)
    found = own(token_ids, first_target) if callable(own) else None
    if found is not None:
        return found
    if isinstance(model, TransformersModel):
        return torch.log_softmax(_transformers_logits(model, token_ids, first_target), dim=-1).numpy()
    if isinstance(model, LlamaCppModel):
        return _log_softmax(_llamacpp_logits(model, token_ids, first_target)).astype(np.float32)
    return None


def token_nlls(model: LoadedModel, token_ids: list[int], first_target: int) -> np.ndarray | None:
    """The NLL of each of ``token_ids[first_target:]`` (float64, summing to ``model.nll``), or None when the
    runtime gives only the sum."""
    own = getattr(model, "token_nlls", None)
    found = own(token_ids, first_target) if callable(own) else None
    if found is not None:
        return found
    targets = token_ids[first_target:]
    if isinstance(model, TransformersModel):
        logits = _transformers_logits(model, token_ids, first_target)
        return F.cross_entropy(logits, torch.tensor(targets), reduction="none").double().numpy()
    if isinstance(model, LlamaCppModel):
        logprobs = _log_softmax(_llamacpp_logits(model, token_ids, first_target))
        return -logprobs[np.arange(len(targets)), targets]
    return None


def _transformers_logits(model: TransformersModel, token_ids: list[int], first_target: int) -> torch.Tensor:
    ids = torch.tensor([token_ids], device=model.recipe.device)  # (1, L)
    keep = ids.shape[1] - first_target + 1  # logits from position first_target-1 on; the last one is unused
    # inference_mode is a little faster; some quantized tensor types cannot live in it (as in generate).
    with torch.inference_mode() if model.optimized.inference_mode else torch.no_grad():
        logits = model.module(input_ids=ids, logits_to_keep=keep).logits[0, -keep:-1]  # (L - first, V)
        return logits.float().cpu().clone()


def _llamacpp_logits(model: LlamaCppModel, token_ids: list[int], first_target: int) -> np.ndarray:
    """Logits (float64) of positions first_target-1 .. end-1, from the model's scoring context (as ``nll``)."""
    with model._lock:
        model._live()
        ctx = model._scoring_context(len(token_ids))
        model._lib.llama_memory_clear(model._lib.llama_get_memory(ctx), True)
        batch = model._batch_for(len(token_ids))
        for k, token in enumerate(token_ids):
            model._put(batch, k, token, k, 0, k >= first_target - 1)
        batch.n_tokens = len(token_ids)
        model._decode(ctx, batch)
        scored = len(token_ids) - first_target + 1
        logits = np.ctypeslib.as_array(model._lib.llama_get_logits(ctx), shape=(scored, model._n_vocab))
        return logits[:-1].astype(np.float64)  # a copy: the context's buffer is reused by the next call


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return logits - (np.log(np.exp(logits - top).sum(axis=1, keepdims=True)) + top)
