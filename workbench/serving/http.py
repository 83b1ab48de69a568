"""A loaded recipe as an OpenAI-compatible HTTP server: FastAPI routes over one ``Engine``, served by uvicorn.

``create_app(engine, ...)`` gives the app: ``GET /v1/models``, ``POST /v1/chat/completions`` (streamed as
server-sent events, or not), ``GET /health`` and ``GET /metrics``. Every request goes through the engine (its
queue, dynamic batching, history) by way of ``answer`` (the caller's response cache, when it passes one). What
the app adds is only HTTP's: an optional bearer key, a bounded queue (429 when full, 503 while no model is
attached or the server is closing), generation stopped when a client goes away, and a llama.cpp-style
``timings`` object in every answer so that a client can tell the server's time from the network's.
``HttpServer`` runs an app on a uvicorn server of its own thread, on a socket bound before the model loads.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from ..recipe import GenerationSettings, Recipe, RecipeError
from .engine import ContextOverflow, Engine, Request
from .results import GenerationResult

ORIGIN = "serve"  # the history's origin of every request answered here
PING_S = 15.0  # an SSE comment this often keeps idle proxies from closing a slow stream
DISCONNECT_POLL_S = 0.2  # how often a non-streamed request checks that its client is still there
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH = {"eos": "stop", "length": "length", "stopped": "stop"}  # engine finish reason -> OpenAI's
PARAMS = {"max-new-tokens": "max_tokens", "temperature": "temperature", "top-p": "top_p", "seed": "seed"}

Answer = Callable[[Engine, list[dict], GenerationSettings, str], Any]  # (engine, messages, settings, origin) -> handle


def model_id(recipe: Recipe) -> str:
    """The name a served recipe goes by in ``/v1/models`` and the ``model`` field: its key (stable: the same
    recipe always has it, and every history row and cached answer of it carries it)."""
    return recipe.key()


def submit(engine: Engine, messages: list[dict], settings: GenerationSettings, origin: str) -> Request:
    """The default ``answer``: straight to the engine, no response cache."""
    return engine.submit(messages, settings, origin)


# Requests ------------------------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields of OpenAI's chat completion request that the server reads (others are accepted and ignored)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None  # OpenAI's newer name; wins over max_tokens
    temperature: float | None = None  # default 0 (greedy), the workbench's default, not OpenAI's 1
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False  # vLLM's extension: exactly max_tokens tokens (load tests)


class ApiError(Exception):
    """An answer in OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.param = status, message, kind, code, param
        self.headers = headers

    def response(self, **extra) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse({**extra, **body}, status_code=self.status, headers=self.headers)


def chat_messages(messages: list[ChatMessage]) -> list[dict]:
    """The conversation as the engine takes it (role and text); ApiError for a role or a part it cannot read."""
    out = []
    for i, message in enumerate(messages):
        role = ROLES.get(message.role)
        if role is None:
            raise ApiError(400, f"messages[{i}].role {message.role!r} is not served here; allowed: "
                                f"{', '.join(ROLES)}", param=f"messages[{i}].role")
        out.append({"role": role, "content": _text(message.content, i)})
    return out


def _text(content, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(400, f"messages[{i}].content: only text parts are served here, got "
                                f"{str(part.get('type'))[:40]!r}", param=f"messages[{i}].content")
        parts.append(part["text"])
    return "".join(parts)


def settings_of(body: ChatRequest, default_max_tokens: int) -> GenerationSettings:
    """The engine's GenerationSettings of a request; ApiError naming the request field that is out of range."""
    if body.n not in (None, 1):
        raise ApiError(400, f"n must be 1 (one answer per request), got {body.n}", param="n")
    if body.stop:
        raise ApiError(400, "stop sequences are not supported; the answer ends at EOS or max_tokens", param="stop")
    given = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    kwargs: dict = {"max_new_tokens": default_max_tokens if given is None else given, "ignore_eos": body.ignore_eos}
    for name in ("temperature", "top_p", "seed"):
        if getattr(body, name) is not None:
            kwargs[name] = getattr(body, name)
    try:
        return GenerationSettings(**kwargs)
    except RecipeError as exc:
        param = PARAMS.get(exc.field, exc.field)
        if param == "max_tokens" and body.max_completion_tokens is not None:
            param = "max_completion_tokens"
        raise ApiError(400, f"{param}: {exc}", param=param) from None


# Answers -------------------------------------------------------------------------------------------------------


def timings(result: GenerationResult) -> dict:
    """The server's own time of one answer, as llama.cpp's server reports it (milliseconds).

    ``prompt_ms``: from the worker taking the request to its first token (prefill); ``predicted_ms``: from the
    first token to the last (decode); ``queue_ms``: waiting for the worker before that. Their sum is the
    engine's E2E; a client's own E2E minus it is network and HTTP. ``predicted_per_token_ms`` is TPOT and
    ``predicted_per_second`` decode tok/s, as the workbench defines them (over the gaps after the first token).
    ``cache`` says when the answer came from the response cache ("exact" | "semantic"): then no model ran.
    """
    ms = lambda s: None if s is None else round(s * 1000, 3)  # noqa: E731
    queue = result.queue_s or 0.0
    prompt_s = None if result.ttft_s is None else max(0.0, result.ttft_s - queue)
    predicted_s = None if result.e2e_s is None or result.ttft_s is None else result.e2e_s - result.ttft_s
    return {
        "prompt_n": result.prompt_tokens,
        "prompt_ms": ms(prompt_s),
        "prompt_per_second": round(result.prompt_tokens / prompt_s, 3) if prompt_s else None,
        "predicted_n": result.new_tokens,
        "predicted_ms": ms(predicted_s),
        "predicted_per_token_ms": ms(result.tpot_s),
        "predicted_per_second": None if result.decode_tok_s is None else round(result.decode_tok_s, 3),
        "queue_ms": ms(queue),
        "cache": result.cache,
    }


def usage(result: GenerationResult) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.new_tokens,
            "total_tokens": result.prompt_tokens + result.new_tokens}


class Completion:
    """The id, creation time and model name that every chunk of one answer carries."""

    def __init__(self, model: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model

    def chunk(self, delta: dict | None, finish: str | None = None, include_usage: bool = False) -> dict:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": None,
                "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": finish}]}
        if include_usage:
            data["usage"] = None  # OpenAI's shape: null on every chunk but the last
        return data

    def whole(self, result: GenerationResult) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "logprobs": None, "finish_reason": FINISH.get(result.finish_reason, "stop")}],
                "usage": usage(result), "timings": timings(result)}


def _off_loop(work: Callable[[], Any]) -> asyncio.Future:
    """Run blocking ``work`` on a thread of its own (the engine's waits must not hold the event loop, nor a shared
    pool that many slow answers would fill); the future ends with its value or exception."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(ok: bool, value) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def run() -> None:
        try:
            value, ok = work(), True
        except BaseException as exc:  # handed to the awaiting request
            value, ok = exc, False
        _call_soon(loop, settle, ok, value)

    threading.Thread(target=run, name="serve-wait", daemon=True).start()
    return future


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the server has gone; nobody waits for this any more
        pass


_END = object()


async def _token_events(handle) -> AsyncIterator:
    """A handle's TokenEvents as the engine yields them, read on a thread of the request's own."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def pump() -> None:
        try:
            for event in handle:
                _call_soon(loop, events.put_nowait, event)
        finally:
            _call_soon(loop, events.put_nowait, _END)

    threading.Thread(target=pump, name="serve-stream", daemon=True).start()
    while (event := await events.get()) is not _END:
        yield event


# The service ---------------------------------------------------------------------------------------------------


def _waiting(handle) -> bool:
    """Whether a request handle still waits for the worker (a cache hit never does)."""
    inner = getattr(handle, "request", handle)
    return isinstance(inner, Request) and inner.started is None and not inner.done.is_set()


class Service:
    """What the routes share: the engine (None while the model loads), the key, the queue bound and the requests
    in flight. ``attach`` puts a model in service, ``close`` takes it out."""

    def __init__(self, engine: Engine | None, answer: Answer, api_key: str | None, max_queue: int,
                 default_max_tokens: int, metrics: Callable[[], str] | None):
        if max_queue < 0:
            raise ValueError(f"max_queue must be 0 or more, got {max_queue}")
        self.answer, self.max_queue, self.default_max_tokens = answer, max_queue, default_max_tokens
        self._key = api_key.encode() if api_key else None
        self.metrics = metrics
        self.engine: Engine | None = None
        self.model_id: str | None = None
        self.label: str | None = None
        self.created = int(time.time())
        self.closing = False
        self._lock = threading.Lock()
        self._handles: set = set()
        self._reserved = 0  # admitted requests whose handle is still being made (a cache lookup, tokenizing)
        self.registry = CollectorRegistry()
        Gauge("workbench_serve_waiting_requests", "Requests waiting for the model", registry=self.registry) \
            .set_function(lambda: self.counts()[0])
        Gauge("workbench_serve_running_requests", "Requests the model is answering", registry=self.registry) \
            .set_function(lambda: self.counts()[1])
        self.rejected = Counter("workbench_serve_rejected_requests", "Requests refused (queue_full, unavailable, "
                                "unauthorized)", ("reason",), registry=self.registry)
        self.disconnects = Counter("workbench_serve_client_disconnects", "Requests whose client left before the "
                                   "answer ended (their generation was stopped)", registry=self.registry)
        if engine is not None:
            self.attach(engine)

    def attach(self, engine: Engine, answer: Answer | None = None, name: str | None = None) -> None:
        """Serve ``engine`` from now on (until then every chat request is answered 503), as model ``name`` (default:
        its recipe's key, which requests may name in any case, as they may the recipe's label)."""
        with self._lock:
            self.engine, self.answer = engine, answer or self.answer
            self.model_id, self.label = name or model_id(engine.recipe), engine.recipe.label()
            self.closing = False

    def serves(self, name: str) -> bool:
        """Whether a request's ``model`` names what is served: its name, its recipe's key or label."""
        return self.engine is not None and name in (self.model_id, model_id(self.engine.recipe), self.label)

    def close(self, grace_s: float = 5.0) -> int:
        """Refuse new requests (503), give those in flight ``grace_s`` seconds to end, then stop the rest (they
        end as "stopped"). Returns how many were stopped."""
        with self._lock:
            self.closing = True
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self.in_flight():
            time.sleep(0.05)
        with self._lock:
            left = list(self._handles)
        for handle in left:
            handle.stop()
        return len(left)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._handles) + self._reserved

    def counts(self) -> tuple[int, int]:
        """(waiting, running) requests."""
        with self._lock:
            waiting = sum(1 for h in self._handles if _waiting(h)) + self._reserved
            return waiting, len(self._handles) + self._reserved - waiting

    # Checks

    def authorize(self, request: HttpRequest) -> None:
        """A dependency of the /v1 routes: the bearer key, when the server has one (401 otherwise)."""
        if self._key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._key):
            self.rejected.labels("unauthorized").inc()
            raise ApiError(401, "invalid or missing API key: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def check_model(self, name: str | None) -> None:
        if name and self.model_id and not self.serves(name):
            raise ApiError(404, f"the model {name[:200]!r} is not served here; this server serves "
                                f"{self.model_id!r} ({self.label}); see GET /v1/models", code="model_not_found",
                           param="model")

    def _unavailable(self) -> ApiError | None:
        if self.closing:
            return ApiError(503, "the server is shutting down", "unavailable_error", code="server_closing")
        if self.engine is None:
            return ApiError(503, "the model is loading; try again shortly", "unavailable_error",
                            code="model_loading", headers={"Retry-After": "5"})
        return None

    # Requests

    async def admit(self, messages: list[dict], settings: GenerationSettings):
        """A handle of the answer (the engine's request, or a cache hit's replay): 429 when ``max_queue`` requests
        wait already, 503 while no model serves."""
        with self._lock:
            refused = self._unavailable()
            if refused is None:
                waiting = sum(1 for h in self._handles if _waiting(h)) + self._reserved
                if waiting >= self.max_queue:
                    refused = ApiError(429, f"the queue is full: {waiting} requests are waiting for the model (at "
                                            f"most {self.max_queue}); try again shortly", "rate_limit_error",
                                       code="queue_full", headers={"Retry-After": "1"})
            if refused is not None:
                self.rejected.labels("queue_full" if refused.status == 429 else "unavailable").inc()
                raise refused
            engine = self.engine
            self._reserved += 1
        handle = None
        try:
            handle = await _off_loop(lambda: self.answer(engine, messages, settings, ORIGIN))
        except ContextOverflow as exc:
            raise ApiError(400, str(exc), code="context_length_exceeded", param="messages") from None
        except ValueError as exc:  # a conversation the chat template cannot take
            raise ApiError(400, str(exc), param="messages") from None
        except RuntimeError as exc:  # the engine closed under us
            self.rejected.labels("unavailable").inc()
            raise ApiError(503, f"the model is not serving: {exc}", "unavailable_error", code="server_closing") \
                from None
        finally:
            with self._lock:
                self._reserved -= 1
                if handle is not None:
                    self._handles.add(handle)
        return handle

    def release(self, handle) -> None:
        with self._lock:
            self._handles.discard(handle)

    def left(self, handle) -> None:
        """The client went away before its answer ended: stop generating it."""
        handle.stop()
        self.disconnects.inc()

    async def complete(self, handle, completion: Completion, request: HttpRequest) -> Response:
        """A whole answer (``stream`` false); a client that leaves first stops it."""
        answer = _off_loop(handle.result)
        watch = asyncio.ensure_future(_until_disconnected(request))
        try:
            await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                self.left(handle)
                await answer  # the engine ends the row and records it before the handle goes
                return Response(status_code=499)  # nobody reads it
            result = answer.result()
        finally:
            watch.cancel()
            self.release(handle)
        if result.error:
            raise ApiError(500, f"generation failed: {result.error}", "server_error", code="generation_failed")
        return JSONResponse(completion.whole(result))

    def metrics_text(self) -> str:
        own = generate_latest(self.registry).decode()
        return (self.metrics() if self.metrics is not None else "") + own


async def _until_disconnected(request: HttpRequest) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)


class ChatStream:
    """One streamed answer: its SSE events, and (as the response's background task) what happens after them."""

    def __init__(self, service: Service, handle, completion: Completion, include_usage: bool):
        self.service, self.handle, self.completion, self.include_usage = service, handle, completion, include_usage
        self.ended = False  # the engine finished this answer (no stop needed if the client leaves now)

    async def events(self) -> AsyncIterator[str]:
        c, usage_chunks = self.completion, self.include_usage
        yield json.dumps(c.chunk({"role": "assistant", "content": ""}, include_usage=usage_chunks))
        shown = ""
        async for event in _token_events(self.handle):
            if event.text:
                shown += event.text
                yield json.dumps(c.chunk({"content": event.text}, include_usage=usage_chunks))
        result = await _off_loop(self.handle.result)
        self.ended = True
        if result.error:
            yield json.dumps({"error": {"message": f"generation failed: {result.error}", "type": "server_error",
                                        "param": None, "code": "generation_failed"}})
            yield "[DONE]"
            return
        if result.text.startswith(shown) and len(result.text) > len(shown):  # held back to the end (UTF-8)
            yield json.dumps(c.chunk({"content": result.text[len(shown):]}, include_usage=usage_chunks))
        last = c.chunk({}, FINISH.get(result.finish_reason, "stop"), include_usage=usage_chunks)
        if usage_chunks:
            yield json.dumps(last)
            last = {**c.chunk(None), "usage": usage(result)}
        last["timings"] = timings(result)  # on the last chunk, as llama.cpp's server sends it
        yield json.dumps(last)
        yield "[DONE]"

    def after(self) -> None:
        """Runs once the response is over, however it ended: a client that left stops its generation."""
        if not self.ended:
            self.service.left(self.handle)
        self.service.release(self.handle)


# The app -------------------------------------------------------------------------------------------------------


def create_app(engine: Engine | None, *, max_queue: int, answer: Answer = submit, api_key: str | None = None,
               default_max_tokens: int | None = None,
               metrics: Callable[[], str] | None = None) -> FastAPI:
    """The OpenAI-compatible app of one engine.

    Args:
        engine: the engine to serve; None answers 503 until ``app.state.service.attach(engine)``.
        max_queue: requests that may wait for the model; one more is answered 429.
        answer: ``answer(engine, messages, settings, origin)`` -> a request handle (``Engine.submit``'s shape);
            pass ``CachedAnswers(...).ask`` to answer through the response cache.
        api_key: when given, every /v1 request must send ``Authorization: Bearer <api_key>`` (401 otherwise).
        default_max_tokens: the budget of a request that sets neither max_tokens nor max_completion_tokens
            (default: GenerationSettings' default).
        metrics: Prometheus text served on /metrics before the server's own queue figures (the history's
            exporter, e.g. ``PrometheusExporter.text``).
    """
    if default_max_tokens is None:
        default_max_tokens = GenerationSettings().max_new_tokens
    service = Service(engine, answer, api_key, max_queue, default_max_tokens, metrics)
    app = FastAPI(title="LLM Latency Workbench", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: HttpRequest, exc: RequestValidationError):
        problem = (exc.errors() or [{}])[0]
        if problem.get("type") == "json_invalid":
            return ApiError(400, "the request body is not valid JSON").response()
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        what = problem.get("msg", "invalid request")
        return ApiError(400, f"{where}: {what}" if where else what, param=where or None).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: HttpRequest, exc: HTTPException):
        return ApiError(exc.status_code, str(exc.detail), code=str(exc.status_code)).response()

    @app.get("/health")
    async def health():
        refused = service._unavailable()
        waiting, running = service.counts()
        state = {"model": service.model_id, "waiting": waiting, "running": running, "max_queue": service.max_queue}
        if refused is not None:
            return refused.response(status="closing" if service.closing else "loading", **state)
        return {"status": "ok", **state}

    @app.get("/metrics")
    async def metrics_route():
        return Response(service.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    def card() -> dict:
        recipe = service.engine.recipe
        return {"id": service.model_id, "object": "model", "created": service.created, "owned_by": "workbench",
                "label": service.label, "recipe": recipe.to_dict(), "recipe_key": model_id(recipe)}

    @app.get("/v1/models", dependencies=[Depends(service.authorize)])
    async def models():
        return {"object": "list", "data": [] if service.engine is None else [card()]}

    @app.get("/v1/models/{name:path}", dependencies=[Depends(service.authorize)])
    async def model(name: str):
        if not service.serves(name):
            raise ApiError(404, f"the model {name[:200]!r} is not served here; see GET /v1/models",
                           code="model_not_found", param="model")
        return card()

    @app.post("/v1/chat/completions", dependencies=[Depends(service.authorize)])
    async def chat_completions(body: ChatRequest, request: HttpRequest):
        service.check_model(body.model)
        messages, settings = chat_messages(body.messages), settings_of(body, service.default_max_tokens)
        handle = await service.admit(messages, settings)
        completion = Completion(service.model_id or "")
        if not body.stream:
            return await service.complete(handle, completion, request)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = ChatStream(service, handle, completion, include_usage)
        return EventSourceResponse(stream.events(), ping=PING_S, background=BackgroundTask(stream.after))

    return app


# Running it ----------------------------------------------------------------------------------------------------


class HttpServer:
    """An app on a uvicorn server of its own thread. The socket is bound here, so that a taken port fails at once
    (OSError), before any model loads; port 0 takes any free one (``port`` says which).

    Args:
        app: the ASGI app (``create_app``'s).
        host: the address to listen on.
        port: the port (0 = any free one).
        graceful_s: on ``stop``, how long open responses get to end before they are cancelled.
    """

    def __init__(self, app, host: str, port: int, graceful_s: float = 5.0):
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        self.socket = socket.socket(family, kind, proto)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
        except OSError:
            self.socket.close()
            raise
        self.host, self.port = host, self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=graceful_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name=f"http-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        """The base URL an OpenAI client takes: ``http://HOST:PORT/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; returns once the server accepts connections (RuntimeError if it could not start)."""
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server on {self.host}:{self.port} did not start")
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop accepting, let open responses end (within ``graceful_s``), then stop the thread."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)
        else:
            self.socket.close()
