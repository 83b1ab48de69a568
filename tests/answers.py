"""Hand-made answers and conversations for the response cache's tests."""

from __future__ import annotations

import numpy as np

from workbench.recipe import GenerationSettings, Recipe
from workbench.serving.results import GenerationResult

GREEDY = GenerationSettings(max_new_tokens=16)
RECIPE = Recipe(model="embedded", device="cpu")
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def answer(text: str = "Paris is the capital of France.", finish_reason: str = "eos", error: str | None = None,
           e2e_s: float = 1.5) -> GenerationResult:
    ids = list(range(10, 10 + len(text.split())))
    times = list(np.linspace(0.1, e2e_s, len(ids)))
    return GenerationResult(text=text, prompt_tokens=12, new_tokens=len(ids), token_times=times, ttft_s=times[0],
                            e2e_s=times[-1], queue_s=0.0, recipe_key=RECIPE.key(), finish_reason=finish_reason,
                            error=error, token_ids=ids)


def ask(text: str, system: str | None = None, earlier: list[dict] | None = None) -> list[dict]:
    turns = ([{"role": "system", "content": system}] if system else []) + (earlier or [])
    return turns + [{"role": "user", "content": text}]


class SameVector:
    """An embedder that scores every pair of questions 1.0: only the guards and the context tell them apart."""

    def encode(self, texts):
        return np.tile(np.eye(384, dtype=np.float32)[0], (len(texts), 1))


def asides(directory):
    """The copies of a broken cache directory that were moved aside."""
    return sorted(p for p in directory.parent.iterdir() if p.name.startswith(f"{directory.name}.corrupt-"))
