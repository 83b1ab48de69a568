"""Answering through the response cache: a hit is replayed like a stream, a miss is stored once it ends."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from ..conversation import as_messages
from ..recipe import GenerationSettings, Recipe
from ..serving.engine import Engine, Request
from ..serving.results import GenerationResult, Recorder, TokenEvent
from .disk import CacheHit, ResponseCache
from .embedder import CacheUnavailable, Embedder, embedder
from .keys import CachePolicy, model_key


def token_pieces(decode: Callable[[list[int]], str], token_ids: list[int]) -> list[str]:
    """The text each token added, as a stream shows it (an incomplete UTF-8 sequence waits for the next)."""
    pieces, shown = [], ""
    for n in range(1, len(token_ids) + 1):
        text = decode(token_ids[:n])
        delta = ""
        if not text.endswith("\ufffd") and text.startswith(shown):
            delta, shown = text[len(shown):], text
        pieces.append(delta)
    return pieces


class ReplayRequest:
    """A cache hit, served like an engine ``Request``: iterate it for the stored answer's tokens (at once), call
    ``result()`` for a ``GenerationResult`` whose ``cache`` is the hit's kind.

    Its TTFT and E2E are both the lookup time: no decode speed is claimed for a replay. The hit is recorded in
    the history (``cache`` = "exact" or "semantic"), where it is charted apart from the model's latency.
    """

    def __init__(self, hit: CacheHit, recipe: Recipe, settings: GenerationSettings, origin: str = "chat",
                 history: Recorder | None = None):
        self.hit, self.settings, self.origin = hit, settings, origin
        self.cancelled = threading.Event()
        entry = hit.entry
        ids = list(entry["token_ids"])
        # Every token arrives with the lookup: a replay has no inter-token latency (and no TPOT) of its own.
        self.token_times = [hit.lookup_s] * len(ids)
        self._result = GenerationResult(
            text=entry["text"], prompt_tokens=entry["prompt_tokens"], new_tokens=len(ids),
            token_times=self.token_times, ttft_s=self.token_times[0], e2e_s=self.token_times[-1], queue_s=0.0,
            cache=hit.kind, recipe_key=recipe.key(), finish_reason=entry.get("finish_reason", "eos"),
            token_ids=ids,
        )
        self._pieces = entry.get("pieces") or [entry["text"]] + [""] * (len(ids) - 1)
        self.notice: str | None = None
        if history is not None:
            try:  # best effort, like every history write
                history.record(recipe, self._result, origin, time.time() - (self._result.e2e_s or 0.0))
            except Exception:
                pass

    def __iter__(self):
        for i, (piece, token_id) in enumerate(zip(self._pieces, self._result.token_ids)):
            if self.cancelled.is_set():
                return
            yield TokenEvent(piece, token_id, self.token_times[i], i)

    def stop(self) -> None:
        self.cancelled.set()

    def result(self, timeout: float | None = None) -> GenerationResult:
        return self._result


class StoringRequest:
    """An engine ``Request`` (a cache miss) that stores its answer in the cache once it has finished.

    The answer is stored when ``result()`` is first called; the pieces a stream showed are kept with it so
    that a hit replays the same text, token by token.
    """

    def __init__(self, request: Request, response_cache: ResponseCache, recipe_key: str, messages: list[dict],
                 settings: GenerationSettings, policy: CachePolicy, decode: Callable[[list[int]], str] | None = None,
                 model: dict | None = None, embed: Embedder | None = None):
        self.request, self.hit, self.settings = request, None, settings
        self.notice: str | None = None
        self.stored: bool | None = None  # None until result() was called
        self._cache, self._key, self._messages, self._policy = response_cache, recipe_key, messages, policy
        self._decode, self._model, self._embed = decode, model, embed
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def __iter__(self):
        for event in self.request:
            self._pieces.append(event.text)
            yield event

    def stop(self) -> None:
        self.request.stop()

    @property
    def cancelled(self) -> threading.Event:
        return self.request.cancelled

    def result(self, timeout: float | None = None) -> GenerationResult:
        result = self.request.result(timeout)
        with self._lock:
            if self.stored is None:
                pieces = self._pieces if "".join(self._pieces) == result.text else None
                if pieces is None and self._decode is not None:
                    pieces = token_pieces(self._decode, result.token_ids)
                self.stored = self._cache.store(self._key, self._messages, self.settings, result, self._policy,
                                                pieces=pieces, model=self._model, embed=self._embed)
        return result


def usable_policy(policy: CachePolicy) -> tuple[CachePolicy, Embedder | None, str | None]:
    """The policy this process can honour, the embedder it needs, and why semantic matching is off (or None).

    A missing embedding model turns semantic matching off with a message; exact matching carries on.
    """
    if not (policy.enabled and policy.semantic):
        return policy, None, None
    try:
        return policy, embedder(), None
    except CacheUnavailable as exc:
        return replace(policy, semantic=False), None, str(exc)


class CachedAnswers:
    """How one caller (a chat session, a ``workbench generate``) answers through the response cache.

    Args:
        responses: the cache; None answers everything from the model and stores nothing.
        policy: how to use it. Semantic matching needs the embedding model: without it, matching is exact only
            and ``notice`` says why (it is looked for on the first request the cache applies to). A
            ``ScopedPolicy`` keeps this caller's answers apart: it finds only those stored under its scope (a
            browser session on a shared server), and nobody else finds them.
    """

    def __init__(self, responses: ResponseCache | None, policy: CachePolicy = CachePolicy()):
        self.responses, self.policy = responses, policy
        self.embed: Embedder | None = None
        self.notice: str | None = None
        self._usable = False

    def applies_to(self, settings: GenerationSettings) -> bool:
        """Whether requests with these settings are looked up and stored."""
        return self.responses is not None and self.policy.applies_to(settings)

    def lookup(self, recipe: Recipe, messages: list[dict], settings: GenerationSettings) -> CacheHit | None:
        """The stored answer to this conversation (counted as a hit or a miss), or None."""
        if not self.applies_to(settings):
            return None
        self._use()
        return self.responses.lookup(model_key(recipe), messages, settings, self.policy, self.embed)

    def ask(self, engine: Engine, messages: list[dict] | str, settings: GenerationSettings, origin: str = "chat",
            *, lookup: bool = True) -> ReplayRequest | StoringRequest | Request:
        """Answer from the cache when it holds this conversation's answer, else from the engine (and store it).

        Returns a ``ReplayRequest`` (hit), a ``StoringRequest`` (miss) or the engine's ``Request`` (the cache
        does not apply); each streams like a ``Request`` and carries ``hit`` (the CacheHit or None) and
        ``notice`` (why semantic matching is off, or None).

        Args:
            engine: the recipe's engine; its history records hits and misses alike.
            messages: the conversation (a string is one user message).
            settings: generation settings.
            origin: who asked ("chat", "cli", ...).
            lookup: False when the caller has looked this conversation up already (and missed).
        """
        messages = as_messages(messages)
        model = engine.model
        if model is None:
            raise RuntimeError("engine is closed")
        if not self.applies_to(settings):
            handle = engine.submit(messages, settings, origin)
            handle.hit = handle.notice = None
            return handle
        self._use()
        hit = self.lookup(engine.recipe, messages, settings) if lookup else None
        if hit is not None:
            handle = ReplayRequest(hit, engine.recipe, settings, origin, engine.history)
        else:
            handle = StoringRequest(engine.submit(messages, settings, origin), self.responses,
                                    model_key(engine.recipe), messages, settings, self.policy, model.decode,
                                    model.stats.to_dict(), self.embed)
        handle.notice = self.notice
        return handle

    def _use(self) -> None:
        if not self._usable:
            self.policy, self.embed, self.notice = usable_policy(self.policy)
            self._usable = True
