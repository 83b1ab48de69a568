"""The teacher's targets for a corpus, computed once so that every training step is student-only compute.

For each training sequence the teacher's top-k logits, their token ids and the log-normaliser of its softened
distribution (``losses.top_k_kl``), and, when the layer loss is on, what each mapped teacher layer outputs
(bfloat16, one tensor per sequence, read lazily: the file can be larger than memory wants to hold).

Files in the student's work folder: ``targets.safetensors`` (top-k), ``hidden.safetensors`` (layer outputs) and
``targets.json`` last, naming what they were computed from (the corpus's digest, k, temperature, mapped layers).
Each safetensors file is written to a temp name, fsynced and renamed; ``targets.json`` is written after both, so a
kill at any moment leaves targets that are complete and match their description, or none (computed again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .. import store
from ..progress import OnStep, no_step
from .losses import layer_outputs, teacher_top_k

META = "targets.json"
TOP_K = "targets.safetensors"
HIDDEN = "hidden.safetensors"
BATCH = 8  # sequences per teacher forward
log = logging.getLogger(__name__)


@dataclass
class Targets:
    """The teacher's cached targets; ``batch(rows, width)`` slices them for one training batch."""

    values: torch.Tensor  # (N, L, k) float32
    indices: torch.Tensor  # (N, L, k) int32
    log_normaliser: torch.Tensor  # (N, L) float32
    hidden_path: Path | None  # per sequence "h.<i>": (len_i, mapped layers, H) bfloat16
    layers: list[int]  # the teacher layers whose outputs are cached, in the student's order

    def batch(self, rows: list[int], width: int, device: torch.device | str = "cpu"):
        """(values, indices, log_normaliser, hidden or None) of ``rows``, cut or padded to ``width`` tokens."""
        values = self.values[rows, :width].to(device)
        indices = self.indices[rows, :width].to(device)
        norm = self.log_normaliser[rows, :width].to(device)
        if self.hidden_path is None:
            return values, indices, norm, None
        with safe_open(str(self.hidden_path), framework="pt") as f:
            parts = [f.get_tensor(f"h.{r}") for r in rows]
        hidden = torch.zeros(len(rows), width, *parts[0].shape[1:], dtype=torch.float32)
        for i, h in enumerate(parts):
            n = min(width, h.shape[0])
            hidden[i, :n] = h[:n].float()
        # One tensor per mapped layer, (B, T, H), as losses.layers_loss takes them.
        return values, indices, norm, [hidden[:, :, j].to(device) for j in range(hidden.shape[2])]


def pad_right(sequences: list[list[int]], pad_token_id: int, width: int | None = None):
    """(ids, attention mask), each (len(sequences), width): the sequences cut to ``width`` (default: the longest)
    and padded on the right."""
    width = width or max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        seq = seq[:width]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return ids, mask


def describe(corpus: list[list[int]], k: int, temperature: float, layers: list[int]) -> dict:
    """What targets are computed from: the same description means the cached ones can be used."""
    digest = hashlib.sha256(json.dumps(corpus).encode()).hexdigest()
    return {"corpus": digest, "sequences": len(corpus), "top_k": k, "temperature": temperature, "layers": layers}


def teacher_targets(teacher, corpus: list[list[int]], *, k: int, temperature: float, layers: list[int],
                    pad_token_id: int, work: Path, device="cpu", on_step: OnStep = no_step) -> Targets:
    """The cached targets of ``corpus`` if they match, else the teacher computes (and caches) them.

    Args:
        teacher: the teacher model, in eval mode.
        corpus: token-id sequences, each at most the training length.
        k: teacher logits kept per token.
        temperature: of the softened distribution whose log-normaliser is kept.
        layers: teacher layers whose outputs are kept (empty: none, no hidden file).
        pad_token_id: fills the batches' padding (masked out).
        work: the student's work folder.
    """
    wanted = describe(corpus, k, temperature, layers)
    cached = _load(work, wanted)
    if cached is not None:
        return cached
    store.discard(work / META)  # what follows replaces the files it describes
    width = max(map(len, corpus))
    n = len(corpus)
    values = torch.zeros(n, width, k, dtype=torch.float32)
    indices = torch.zeros(n, width, k, dtype=torch.int32)
    norm = torch.zeros(n, width, dtype=torch.float32)
    hidden: dict[str, torch.Tensor] = {}
    for start in range(0, n, BATCH):
        rows = list(range(start, min(n, start + BATCH)))
        ids, mask = pad_right([corpus[r] for r in rows], pad_token_id, width)
        with torch.no_grad(), layer_outputs(teacher, layers) as outs:
            logits = teacher(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            top, where, lse = teacher_top_k(logits, k, temperature)
        values[rows], indices[rows], norm[rows] = top.cpu(), where.int().cpu(), lse.cpu()
        if layers:
            stacked = torch.stack([o.detach() for o in outs], dim=2).to(torch.bfloat16).cpu()  # (B, T, M, H)
            for i, r in enumerate(rows):
                hidden[f"h.{r}"] = stacked[i, : len(corpus[r])].contiguous()
        on_step(rows[-1] + 1, n, {"stage": "teacher computes its targets"})
    _save(work / TOP_K, {"values": values, "indices": indices, "log_normaliser": norm})
    if layers:
        _save(work / HIDDEN, hidden)
    else:
        store.discard(work / HIDDEN)
    store.write_file(work / META, json.dumps(wanted))
    return Targets(values, indices, norm, work / HIDDEN if layers else None, layers)


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        store.discard(tmp)
        unable = store.write_failure(exc, path.parent) if isinstance(exc, Exception) else None
        if unable is not None:
            raise unable from None
        raise
    store.fsync_dir(path.parent)


def _load(work: Path, wanted: dict) -> Targets | None:
    try:
        if json.loads((work / META).read_text()) != wanted:
            return None
        with safe_open(str(work / TOP_K), framework="pt") as f:
            values, indices, norm = (f.get_tensor(name) for name in ("values", "indices", "log_normaliser"))
        hidden = work / HIDDEN if wanted["layers"] else None
        if hidden is not None:
            with safe_open(str(hidden), framework="pt") as f:
                if len(list(f.keys())) != wanted["sequences"]:
                    raise ValueError("hidden states of fewer sequences than the corpus holds")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        log.warning("the teacher's cached targets in %s cannot be read (%s); computed again", work, exc)
        return None
    if values.shape[0] != wanted["sequences"]:
        return None
    return Targets(values, indices, norm, hidden, wanted["layers"])
