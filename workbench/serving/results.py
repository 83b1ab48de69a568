"""What a request yields while it streams (``TokenEvent``) and what it ends with (``GenerationResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..latency import LatencyFigures
from ..recipe import Recipe

FINISH_REASONS = ("eos", "length", "stopped", "error")


@dataclass
class TokenEvent:
    text: str  # new text since the previous event (may be "" while a multi-byte character is incomplete)
    token_id: int
    t: float  # seconds since request start
    index: int  # 0-based token index


@dataclass
class GenerationResult(LatencyFigures):
    text: str
    prompt_tokens: int
    new_tokens: int
    token_times: list[float]  # seconds since request start, one per generated token (a server's: one per chunk)
    ttft_s: float | None
    e2e_s: float | None
    queue_s: float
    cache: str = "miss"  # where the answer came from: "miss" (the model), or an "exact" / "semantic" cache hit
    recipe_key: str = ""
    finish_reason: str = "eos"  # one of FINISH_REASONS
    error: str | None = None
    token_ids: list[int] = field(default_factory=list)
    batch_size: int = 1  # how many requests ran together in the generate call that produced this one
    # An answer from a remote server: its network split (runtimes.remote: connect_ms, headers_ms, server_ms,
    # network_ms, ...); None for a model run here.
    network: dict | None = None
    per_chunk: bool = False  # new_tokens counts streamed chunks (the server gave no usage report): TPOT is per chunk
    cut: bool = False  # the server's stream ended mid-answer: text and figures are those of the partial answer

    def metrics(self) -> dict:
        ms = lambda s: None if s is None else round(s * 1000, 3)  # noqa: E731
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "ttft_ms": ms(self.ttft_s),
            "tpot_ms": ms(self.tpot_s),
            "e2e_ms": ms(self.e2e_s),
            "decode_tok_s": None if self.decode_tok_s is None else round(self.decode_tok_s, 3),
            "queue_ms": ms(self.queue_s),
            "cache": self.cache,
            "finish_reason": self.finish_reason,
            "batch_size": self.batch_size,
            **({} if self.network is None else {"network": dict(self.network), "per_chunk": self.per_chunk,
                                                "cut": self.cut}),
        }


class Recorder(Protocol):
    """Where finished requests go (the request history); recording is best effort and never loses an answer."""

    def record(self, recipe: Recipe, result: GenerationResult, origin: str, started_at: float) -> None:
        """Keep one finished request: its recipe, result, who asked and when (epoch seconds) it was submitted."""
