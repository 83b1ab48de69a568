"""One worker thread per loaded model: a request queue, streaming, and honest token timing.

Tokens are timestamped where they are produced: in the streamer's ``put`` that ``generate`` calls right
after choosing each token, after a device sync. Times are seconds since the request was submitted, so
TTFT includes any time spent waiting in the queue (also reported on its own as ``queue_s``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from . import devices
from .metrics import HistoryStore, RequestRecord, decode_tok_s, tpot
from .optimize import OptimizedModel
from .recipe import RecipeError

_END = object()


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # benchmarks: generate exactly max_new_tokens

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= 8192:
            raise RecipeError("max-new-tokens", f"max new tokens must be an integer from 1 to 8192, got {self.max_new_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise RecipeError("temperature", f"temperature must be between 0 and 5 (0 = greedy), got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise RecipeError("top-p", f"top-p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise RecipeError("seed", f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0


@dataclass
class TokenEvent:
    text: str  # new text since the previous event (may be "" while a multi-byte character is incomplete)
    token_id: int
    t: float  # seconds since request start
    index: int  # 0-based token index


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    new_tokens: int
    token_times: list[float]  # seconds since request start, one per generated token
    ttft_s: float | None
    e2e_s: float | None
    queue_s: float
    cache: str = "miss"
    recipe_key: str = ""
    finish_reason: str = "eos"  # "eos" | "length" | "stopped" | "error"
    error: str | None = None
    token_ids: list[int] = field(default_factory=list)

    @property
    def tpot_s(self) -> float | None:
        return tpot(self.new_tokens, self.ttft_s, self.e2e_s)

    @property
    def decode_tok_s(self) -> float | None:
        return decode_tok_s(self.new_tokens, self.ttft_s, self.e2e_s)

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
        }


def encode_chat(tokenizer, messages: list[dict]) -> torch.Tensor:
    """Token ids (1, T) of a conversation, ending where the assistant's answer starts.

    Uses the tokenizer's chat template when it has one; base models without one get a plain transcript.
    """
    if getattr(tokenizer, "chat_template", None):
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors="pt")
        return enc["input_ids"]
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return tokenizer("\n".join(lines) + "\nAssistant:", return_tensors="pt")["input_ids"]


class Request:
    """Handle of one submitted request: iterate it for streamed text, call ``result()`` for the outcome."""

    def __init__(self, prompt_ids: torch.Tensor, settings: GenerationSettings, tokenizer, origin: str):
        self.prompt_ids = prompt_ids  # (1, T)
        self.settings = settings
        self.origin = origin
        self.submitted = time.perf_counter()
        self.submitted_wall = time.time()
        self.started: float | None = None
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self._events: queue.Queue = queue.Queue()
        self._tokenizer = tokenizer
        self._result: GenerationResult | None = None
        self.record = True  # False keeps it out of the history (warm-up runs)

    def stop(self) -> None:
        """End generation after the current token; the partial answer and its metrics are kept."""
        self.cancelled.set()

    def __iter__(self) -> Iterator[TokenEvent]:
        ids: list[int] = []
        shown = ""
        while True:
            item = self._events.get()
            if item is _END:
                return
            token_id, t = item
            ids.append(token_id)
            text = self._tokenizer.decode(ids, skip_special_tokens=True)
            delta = ""
            if not text.endswith("\ufffd") and text.startswith(shown):  # hold incomplete UTF-8 sequences back
                delta, shown = text[len(shown):], text
            yield TokenEvent(delta, token_id, t, len(ids) - 1)

    def result(self, timeout: float | None = None) -> GenerationResult:
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        assert self._result is not None
        return self._result


class _TimingStreamer(BaseStreamer):
    """Receives each token from ``generate`` the moment it is chosen, and timestamps it."""

    def __init__(self, request: Request, device: str):
        self.request = request
        self.device = device
        self.prompt_seen = False
        self.ids: list[int] = []
        self.times: list[float] = []

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call passes the prompt
            self.prompt_seen = True
            return
        devices.sync(self.device)
        t = time.perf_counter() - self.request.submitted
        for token_id in value.reshape(-1).tolist():
            if self.times and t <= self.times[-1]:
                t = self.times[-1] + 1e-9  # keep times strictly increasing even at clock resolution
            self.ids.append(token_id)
            self.times.append(t)
            self.request._events.put((token_id, t))

    def end(self) -> None:
        pass


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Engine:
    """Owns one loaded model; a single worker thread serves the request queue in order.

    Args:
        optimized: the built model.
        history: where finished requests are recorded (None = not recorded).
    """

    def __init__(self, optimized: OptimizedModel, history: HistoryStore | None = None):
        self.optimized = optimized
        self.history = history
        self.device = optimized.recipe.device
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name=f"engine-{optimized.recipe.key()}", daemon=True)
        self._worker.start()

    @property
    def tokenizer(self):
        return self.optimized.tokenizer

    def encode_chat(self, messages: list[dict]) -> torch.Tensor:
        """Token ids (1, T) of a conversation, using the model's chat template when it has one."""
        return encode_chat(self.tokenizer, messages)

    def submit(
        self, messages: list[dict] | str, settings: GenerationSettings | None = None, origin: str = "chat",
        record: bool = True,
    ) -> Request:
        """Queue a request; returns at once.

        Args:
            messages: a chat (list of role/content dicts) or a single user message.
            settings: generation settings (defaults: greedy, 256 tokens).
            origin: who asked ("chat", "cli", "bench", ...), stored with the request's history row.
            record: False keeps the request out of the history (warm-up runs).
        """
        if self._closed:
            raise RuntimeError("engine is closed")
        settings = settings or GenerationSettings()
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        request = Request(self.encode_chat(messages), settings, self.tokenizer, origin)
        request.record = record
        self._queue.put(request)
        return request

    def generate(self, messages: list[dict] | str, settings: GenerationSettings | None = None, origin: str = "cli") -> GenerationResult:
        """Submit and wait for the whole answer."""
        return self.submit(messages, settings, origin).result()

    def close(self) -> None:
        """Stop the worker after the requests already queued; frees the model once nothing else holds it."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join(timeout=60)

    def _serve(self) -> None:
        while True:
            request = self._queue.get()
            if request is None:
                self.optimized = None  # let the model be freed
                return
            self._run(request)

    def _run(self, request: Request) -> None:
        request.started = time.perf_counter()
        streamer = _TimingStreamer(request, self.device)
        error = None
        try:
            self._generate(request, streamer)
        except Exception as exc:  # a failed request must not kill the worker
            error = f"{type(exc).__name__}: {exc}"
        result = self._result(request, streamer, error)
        if self.history is not None and request.record:
            self._record(request, result)  # before done: whoever waits on result() finds the row stored
        request._result = result
        request._events.put(_END)
        request.done.set()

    def _generate(self, request: Request, streamer: _TimingStreamer) -> None:
        model = self.optimized.model
        settings = request.settings
        config = self._generation_config(settings)
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        input_ids = request.prompt_ids.to(self.device)
        # inference_mode is a little faster; some quantized tensor types cannot live in it.
        with torch.inference_mode() if self.optimized.inference_mode else torch.no_grad():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Cancelled(request.cancelled)]),
            )

    def _generation_config(self, settings: GenerationSettings) -> GenerationConfig:
        base = self.optimized.model.generation_config
        kwargs = dict(
            max_new_tokens=settings.max_new_tokens,
            do_sample=not settings.greedy,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=base.bos_token_id,
            eos_token_id=base.eos_token_id if base.eos_token_id is not None else self.tokenizer.eos_token_id,
        )
        if not settings.greedy:
            kwargs.update(temperature=float(settings.temperature), top_p=float(settings.top_p), top_k=0)
        if settings.ignore_eos:
            # A benchmark needs exactly max_new_tokens: EOS is masked out until then.
            kwargs["min_new_tokens"] = settings.max_new_tokens
        return GenerationConfig(**kwargs)

    def _result(self, request: Request, streamer: _TimingStreamer, error: str | None) -> GenerationResult:
        times = streamer.times
        ids = streamer.ids
        eos = self._eos_ids()
        if error:
            reason = "error"
        elif request.cancelled.is_set() and len(ids) < request.settings.max_new_tokens and not (ids and ids[-1] in eos):
            reason = "stopped"
        elif ids and ids[-1] in eos and not request.settings.ignore_eos:
            reason = "eos"
        else:
            reason = "length"
        return GenerationResult(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            prompt_tokens=int(request.prompt_ids.shape[1]),
            new_tokens=len(ids),
            token_times=list(times),
            ttft_s=times[0] if times else None,
            e2e_s=times[-1] if times else None,
            queue_s=request.started - request.submitted,
            recipe_key=self.optimized.recipe.key(),
            finish_reason=reason,
            error=error,
            token_ids=list(ids),
        )

    def _eos_ids(self) -> set[int]:
        eos = self.optimized.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, list) else [eos]) - {None}

    def _record(self, request: Request, result: GenerationResult) -> None:
        recipe = self.optimized.recipe
        try:
            self.history.add(
                RequestRecord(
                    recipe_key=recipe.key(),
                    recipe_label=recipe.label(),
                    started_at=request.submitted_wall,
                    prompt_tokens=result.prompt_tokens,
                    new_tokens=result.new_tokens,
                    ttft_s=result.ttft_s,
                    e2e_s=result.e2e_s,
                    queue_s=result.queue_s,
                    cache=result.cache,
                    finish_reason=result.finish_reason,
                    origin=request.origin,
                    token_times=result.token_times,
                )
            )
        except Exception:  # history is best-effort; an unwritable disk must not lose the answer
            pass
