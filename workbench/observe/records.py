"""One recorded request (a history row), made from a finished request's result."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from ..latency import LatencyFigures
from ..recipe import Recipe


@dataclass
class RequestRecord(LatencyFigures):
    recipe_key: str
    recipe_label: str
    started_at: float  # wall clock (epoch seconds) when the request was submitted
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None
    e2e_s: float | None
    queue_s: float
    cache: str = "miss"  # "miss" | "exact" | "semantic"
    finish_reason: str = "eos"  # "eos" | "length" | "stopped" | "error"
    origin: str = "chat"  # "chat" | "cli" | "bench" | ...
    batch_size: int = 1  # how many requests ran together in the worker
    token_times: list[float] = field(default_factory=list)


def record_of(recipe: Recipe, result, origin: str, started_at: float) -> RequestRecord:
    """The history row of a finished request (``serving.GenerationResult``) or of a cache hit's replay."""
    return RequestRecord(
        recipe_key=recipe.key(),
        recipe_label=recipe.label(),
        started_at=started_at,
        prompt_tokens=result.prompt_tokens,
        new_tokens=result.new_tokens,
        ttft_s=result.ttft_s,
        e2e_s=result.e2e_s,
        queue_s=result.queue_s,
        cache=result.cache,
        finish_reason=result.finish_reason,
        origin=origin,
        batch_size=result.batch_size,
        token_times=result.token_times,
    )


def record_from_row(row: dict) -> RequestRecord:
    """A history row (``HistoryStore.recent``/``after``) back as a RequestRecord; missing fields take defaults."""
    given = {f.name: row[f.name] for f in fields(RequestRecord) if row.get(f.name) is not None}
    return RequestRecord(**{"ttft_s": None, "e2e_s": None, "queue_s": None, **given})

