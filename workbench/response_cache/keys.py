"""Response-cache keys and policy: what makes two requests the same question, and when the cache is used.

Keys in the on-disk cache: ``"a:<sha>"`` one answer, keyed by the model key (recipe key + weights
fingerprint) + every turn of the conversation + the generation settings (an exact match); ``"q:<sha>"`` the
questions asked in one context (same model, same earlier turns, same settings) and ``"e:<sha>"`` their
embeddings, for semantic matches.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..loading import ModelSourceError, resolve_source
from ..optimize.variants import find_student
from ..recipe import GenerationSettings, Recipe

# Cosine similarity of MiniLM embeddings. The guard, not the similarity, tells near misses apart (they score as high
# as paraphrases: 0.85-0.99): on the project's question pairs (benchmarks/semantic_guard.py) no threshold from 0.6
# to 0.9 lets a near miss through, and 0.80 is the highest that keeps every paraphrase the guard accepts.
DEFAULT_THRESHOLD = 0.80
HIT_KINDS = ("exact", "semantic")  # what a GenerationResult's ``cache`` says for an answer from the cache


@dataclass(frozen=True)
class CachePolicy:
    """How one request uses the response cache.

    Args:
        enabled: look answers up and store new ones (False bypasses the cache entirely).
        semantic: also match a differently worded last question in the same context.
        threshold: cosine similarity (0-1) a semantic match needs.
        cache_sampled: also cache sampled answers (temperature > 0); a sampled answer is one draw of many.
        ttl_s: seconds a stored answer stays valid (None = until evicted).
    """

    enabled: bool = True
    semantic: bool = False
    threshold: float = DEFAULT_THRESHOLD
    cache_sampled: bool = False
    ttl_s: float | None = None

    def __post_init__(self):
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"similarity threshold must be in (0, 1], got {self.threshold!r}")
        if self.ttl_s is not None and not float(self.ttl_s) > 0:
            raise ValueError(f"TTL must be a positive number of seconds or None, got {self.ttl_s!r}")

    def applies_to(self, settings: GenerationSettings) -> bool:
        """Whether requests with these generation settings may be looked up and stored."""
        return self.enabled and (settings.greedy or self.cache_sampled)


def settings_dict(settings: GenerationSettings) -> dict:
    """The generation settings that shape an answer (GenerationSettings fields), as plain JSON values."""
    return {
        "max_new_tokens": int(settings.max_new_tokens),
        "temperature": float(settings.temperature),
        "top_p": float(settings.top_p),
        "seed": settings.seed,
        "ignore_eos": bool(settings.ignore_eos),
    }


def digest(payload) -> str:
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _turns(messages: list[dict]) -> list[list[str]]:
    return [[m["role"], m["content"]] for m in messages]


def model_key(recipe: Recipe) -> str:
    """The recipe key, plus a fingerprint of the files its weights come from (size and modification time of a
    local source's files and of a student built here), so that weights changed under the same name (a student
    trained further, a model directory overwritten) never replay the older weights' answers. Hub models are
    named by their id alone."""
    paths = []
    try:
        source = resolve_source(recipe.model)
        if source.kind != "hub":
            paths.append(Path(source.location))
    except ModelSourceError:
        pass
    if recipe.variant != "none":
        student = find_student(recipe.model, recipe.variant)
        if student is not None:
            paths.append(student)
    stamp = []
    for path in paths:
        files = [path] if path.is_file() else sorted(f for f in path.iterdir() if f.is_file())
        stamp += [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return f"{recipe.key()}-{digest(stamp)[:12]}" if stamp else recipe.key()


def exact_key(recipe_key: str, messages: list[dict], settings: GenerationSettings) -> str:
    """Key of one answer: recipe key + every turn (system prompt included) + generation settings."""
    return "a:" + digest({"recipe": recipe_key, "turns": _turns(messages), "settings": settings_dict(settings)})


def context_key(recipe_key: str, messages: list[dict], settings: GenerationSettings) -> str:
    """Key of the context a last user turn is asked in: everything of ``exact_key`` but that turn."""
    return digest({"recipe": recipe_key, "turns": _turns(messages[:-1]), "settings": settings_dict(settings)})


def last_question(messages: list[dict]) -> str | None:
    """The last turn's text when it is the user's (the question a semantic match compares), else None."""
    return messages[-1]["content"] if messages and messages[-1]["role"] == "user" else None

