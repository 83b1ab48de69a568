"""The remote runtime: an OpenAI-compatible server (vLLM, TGI, llama.cpp's server, Ollama, ``workbench serve``)
measured as one more model source, with the network's part of every answer split out.

A server takes messages and streams text pieces back; the seam works on token ids. The remote model keeps a
table of its own: ``encode_chat`` gives one prompt id per message (so ``generate`` sends exactly the messages it
was given, whoever calls it: the engine, ``complete``, the quality measures), and every streamed text piece gets
an answer id whose ``decode`` is that text. Each streamed chunk is one ``on_token`` call, timed when the chunk
arrives. What the server says beside the text goes on the row as ``row.served`` (a ``Served``), which the
engine reads when the row ends: the usage report's token counts (``stream_options.include_usage``; without one,
tokens are counted as chunks and every per-token figure is per chunk), its finish reason, a stream cut mid-answer,
and the network split.

The network split of one request, from ``perf_counter`` readings on the client (httpx's ``trace`` extension
gives the connection's and the request's moments; the engine's queue comes before all of it)::

    begin ── connect (+TLS) ── request sent ── response headers ── first text chunk ── … ── last chunk

- ``connect_ms``: TCP connect plus TLS handshake of this request; 0.0 on a connection kept from an earlier one
  (``reused_connection``).
- ``request_ms``: begin → the request sent (waiting for a pooled connection, connecting, writing the body).
- ``headers_ms``: the request sent → the response's headers received.
- ``first_chunk_ms``: the request sent → the first chunk carrying text: the client's TTFT once the request left.
- ``server_prefill_ms``, ``server_decode_ms``: the server's own prompt and generation time, from the
  llama.cpp-style ``timings`` object (``prompt_ms``, ``predicted_ms``) of its last chunk; ``server_ms`` is their
  sum. None when the server reports no timings (vLLM, Ollama, llama-cpp-python's server).
- ``server_queue_ms``: how long the request waited in the server's queue before its prefill, where the server
  reports it (``timings.queue_ms``: ``workbench serve`` does; llama.cpp's server does not).
- ``network_ms`` = ``first_chunk_ms`` − ``server_prefill_ms`` − ``server_queue_ms``: the part of TTFT after the
  request left that the server's own time does not explain: the trip there and back and the server's HTTP
  handling (and its queue, where it does not report one). None without server timings (then only ``headers_ms``
  and ``first_chunk_ms`` bound it).

The API key is read from the environment variable the recipe names (``api_key_env``); it lives only in the
client's headers: never in the recipe, its key, the history, the cache or a message (server messages are scrubbed
of it).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

import httpx

from ..optimize.stats import ModelStats
from ..progress import OnStage, no_stage
from ..recipe import MAX_BATCH_SIZE, REMOTE, REMOTE_DTYPE, GenerationSettings, Recipe, RecipeError
from .base import Backend, ContinuousListener, LoadedModel, OnToken, Row, Runtime

NAME = REMOTE
CONNECT_TIMEOUT_S = 10.0  # a server that does not accept a connection in this long is down or unreachable
READ_TIMEOUT_S = 120.0  # the longest wait for the next bytes: a server's queue and prefill of a long prompt
LIST_TIMEOUT_S = 15.0  # GET /models, before anything is generated
FINISH = {"stop": "eos", "length": "length"}  # OpenAI's finish reasons -> the engine's
WHY = ("the server runs its own weights and kernels; what is measured here is the client's view: TTFT includes "
       "the network and the server's queue, which the network split (generate --json's network) separates")


class RemoteError(RuntimeError):
    """A request to the server failed; the message says what happened, in one line, without the API key."""


class NotAvailableRemotely(RuntimeError):
    """What a server cannot give: token log-probabilities of a text (perplexity, KL), tokens of plain text."""


@dataclass
class Served:
    """What the server said about one answer beside its text pieces; the engine reads it when the row ends."""

    prompt_tokens: int = 0  # from the usage report; 0 when the server gives none
    completion_tokens: int | None = None  # from the usage report; None: counted as chunks (``per_chunk``)
    chunks: int = 0  # chunks that carried text (one ``on_token`` each)
    finish_reason: str | None = None  # "eos" or "length" as the server said; None: not said (stopped, cut)
    error: str | None = None  # why the answer failed (one line)
    cut: bool = False  # the stream ended before the server finished the answer: the text is partial
    network: dict = field(default_factory=dict)  # the network split (module docstring)

    @property
    def per_chunk(self) -> bool:
        """Whether tokens were counted as chunks (no usage report): TPOT and decode speed are then per chunk."""
        return self.completion_tokens is None

    @property
    def new_tokens(self) -> int:
        return self.chunks if self.completion_tokens is None else self.completion_tokens


# Recipe checks -----------------------------------------------------------------------------------------------


def problem() -> str | None:
    return None  # httpx is a dependency of the workbench itself


def api_key(recipe: Recipe) -> str | None:
    """The key in the environment variable the recipe names (None: no key); RecipeError when it is unset."""
    if not recipe.api_key_env:
        return None
    key = os.environ.get(recipe.api_key_env, "").strip()
    if not key:
        raise RecipeError("api-key-env", f"the environment variable {recipe.api_key_env} is not set (or empty); "
                                         f"set it to the server's key, e.g. export {recipe.api_key_env}=...")
    return key


def check(recipe: Recipe) -> Recipe:
    """The recipe with the server's model name resolved (the first it lists when none is given); RecipeError for an
    unreachable server, a refused key or a model the server does not serve (naming those it does)."""
    return _resolve(recipe)[0]


def _resolve(recipe: Recipe, timeout_s: float = LIST_TIMEOUT_S) -> tuple[Recipe, dict]:
    """The resolved recipe and the server's entry for its model (``/models``' item: id, and maybe ``meta``)."""
    if recipe.runtime != NAME:
        raise RecipeError("runtime", f"not a server's recipe (runtime {recipe.runtime})")
    key = api_key(recipe)
    listed = list_models(recipe.model, key, recipe.api_key_env, timeout_s)
    names = [entry["id"] for entry in listed]
    if not names:
        raise RecipeError("remote-model", f"the server at {recipe.model} lists no models under /models")
    name = recipe.remote_model or names[0]
    if name not in names:
        shown = ", ".join(names[:20]) + (f" (and {len(names) - 20} more)" if len(names) > 20 else "")
        raise RecipeError("remote-model", f"the server at {recipe.model} serves no model {name!r}; it serves: "
                                          f"{shown}")
    return replace(recipe, remote_model=name), listed[names.index(name)]


def list_models(url: str, key: str | None, key_env: str, timeout_s: float = LIST_TIMEOUT_S) -> list[dict]:
    """The server's ``GET /models`` entries (each with an ``id``); RecipeError naming the flag to change."""
    try:
        response = httpx.get(f"{url}/models", headers=_auth(key), timeout=httpx.Timeout(timeout_s,
                                                                                        connect=CONNECT_TIMEOUT_S))
    except httpx.TimeoutException:
        raise RecipeError("model", f"the server at {url} did not answer GET /models within {timeout_s:g} s") from None
    except httpx.HTTPError as exc:
        raise RecipeError("model", f"cannot reach the server at {url} ({_scrub(_reason(exc), key)}); is it running, "
                                   "and is this its address?") from None
    if response.status_code in (401, 403):
        raise RecipeError("api-key-env", refused_key(response.status_code, key_env))
    if response.status_code == 404:
        raise RecipeError("model", f"{url}/models is not there (HTTP 404); give the server's OpenAI-compatible base "
                                   "URL, e.g. http://HOST:PORT/v1")
    if response.status_code >= 400:
        raise RecipeError("model", f"the server at {url} refused GET /models ({_http_status(response, key)})")
    try:
        data = response.json()["data"]
        entries = [entry for entry in data if isinstance(entry, dict) and isinstance(entry.get("id"), str)]
    except (ValueError, KeyError, TypeError):
        raise RecipeError("model", f"the server at {url} did not answer GET /models as an OpenAI-compatible server "
                                   "does (a JSON list under \"data\")") from None
    return entries


def refused_key(status: int, key_env: str) -> str:
    if key_env:
        return f"the server refused the API key in {key_env} (HTTP {status}); check the key it holds"
    return (f"the server asks for an API key (HTTP {status}); put it in an environment variable and name that "
            "variable with --api-key-env")


def backends(dtype: str, device: str) -> list[Backend]:
    if dtype != REMOTE_DTYPE or device != "auto":
        return []
    return [Backend(NAME, REMOTE_DTYPE, "the server's own kernels", WHY)]


# Building ------------------------------------------------------------------------------------------------------


def build(recipe: Recipe, *, trust_remote_code: bool = False, on_stage: OnStage | None = None,
          timeout_s: float = READ_TIMEOUT_S) -> "RemoteModel":
    """A client of the recipe's server, its model name resolved and checked (nothing is loaded here).

    Args:
        recipe: a server's recipe (``--model http(s)://HOST:PORT/v1``).
        trust_remote_code: unused (a server runs its own code).
        on_stage: progress callback ``(stage, fraction 0..1)``.
        timeout_s: the longest wait for the server's next bytes while it answers.
    """
    on_stage = on_stage or no_stage
    start = time.perf_counter()
    on_stage(f"Asking {recipe.model} for its models", 0.2)
    recipe, entry = _resolve(recipe)
    meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
    params = _count(meta.get("n_params"))
    stats = ModelStats(params=params, nonzero_params=params, weight_bytes=_count(meta.get("size")),
                       build_s=time.perf_counter() - start,
                       backend=f"remote server {urlsplit(recipe.model).netloc} ({recipe.remote_model})")
    notes = [WHY]
    if not params:
        notes.append("the server does not say its model's parameters or size: they read 0 here")
    model = RemoteModel(recipe, stats, notes, api_key(recipe), timeout_s)
    on_stage("Ready", 1.0)
    return model


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class RemoteModel(LoadedModel):
    """A model on an OpenAI-compatible server, streamed through httpx.

    Args:
        recipe: the resolved recipe (``remote_model`` set).
        stats: what the server says of its model (often nothing: zeros).
        notes: what the user should know.
        key: the API key (None: none sent).
        timeout_s: the longest wait for the server's next bytes.
    """

    def __init__(self, recipe: Recipe, stats: ModelStats, notes: list[str], key: str | None,
                 timeout_s: float = READ_TIMEOUT_S):
        self.recipe, self.stats, self.notes = recipe, stats, notes
        self.timeout_s = timeout_s
        self._key = key
        self._client = httpx.Client(
            headers=_auth(key), timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=MAX_BATCH_SIZE, max_keepalive_connections=MAX_BATCH_SIZE),
        )
        self._entries: list[tuple[str, object]] = []  # id -> ("message", dict) or ("piece", text)
        self._ids: dict[tuple[str, str], int] = {}
        self._table = threading.Lock()

    # -- text and ids

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """One id per message: the server applies its own chat template to the messages themselves."""
        return [self._id("message", json.dumps(m, sort_keys=True, ensure_ascii=False), dict(m)) for m in messages]

    def tokenize(self, text: str) -> list[int]:
        raise NotAvailableRemotely("a remote server does not give the tokens of a text (perplexity needs them)")

    def decode(self, token_ids: list[int]) -> str:
        entries = self._entries
        return "".join(value for kind, value in (entries[i] for i in token_ids) if kind == "piece")

    def messages(self, prompt_ids: list[int]) -> list[dict]:
        """The conversation behind prompt ids from ``encode_chat``."""
        entries = self._entries
        return [dict(value) for kind, value in (entries[i] for i in prompt_ids) if kind == "message"]

    def _id(self, kind: str, name: str, value) -> int:
        with self._table:
            found = self._ids.get((kind, name))
            if found is None:
                found = self._ids[(kind, name)] = len(self._entries)
                self._entries.append((kind, value))
            return found

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset()  # the server ends an answer; its finish reason comes with ``row.served``

    @property
    def max_batch_size(self) -> int:
        return MAX_BATCH_SIZE  # a batch's requests are streamed at once; the server batches them its own way

    def nll(self, token_ids: list[int], first_target: int) -> float:
        raise NotAvailableRemotely("perplexity is not available for a remote server: an OpenAI-compatible server "
                                   "gives no log-probabilities of a given text")

    # -- generation

    def generate(self, rows: Sequence[Row], settings: GenerationSettings, on_token: OnToken) -> None:
        """Stream each row's answer (rows of one call at once, one connection each); ``on_token`` is called on this
        thread, per chunk, with the moment the chunk arrived. A row's failure goes on ``row.served.error``; with a
        single row it is raised as well (``complete`` has no other way to hear of it)."""
        if len(rows) == 1:
            served = self.stream(rows[0], lambda token_id, t: on_token(0, token_id, t))
            if served.error:
                raise RemoteError(served.error)
            return
        events: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=self._stream_into, args=(i, row, events), daemon=True,
                                    name=f"remote-row-{i}") for i, row in enumerate(rows)]
        for thread in threads:
            thread.start()
        running = len(threads)
        while running:
            i, token_id, t = events.get()
            if token_id is None:
                running -= 1
            else:
                on_token(i, token_id, t)

    def _stream_into(self, i: int, row: Row, events: queue.Queue) -> None:
        try:
            self.stream(row, lambda token_id, t: events.put((i, token_id, t)))
        finally:
            events.put((i, None, 0.0))

    def stream(self, row: Row, emit: Callable[[int, float], None]) -> Served:
        """One streamed chat completion for ``row``: ``emit(piece id, arrival time)`` per text chunk, until the
        server ends the answer or the row stops being active. Returns (and sets ``row.served`` to) what the
        server said; a failure is in its ``error``, never raised. A row stopped while the server has not sent its
        first chunk yet is seen stopping at that chunk (or at the read timeout)."""
        served = Served()
        row.served = served
        clock = _Clock()
        first_at, timings, done = None, None, False
        body = request_body(self.recipe.remote_model, self.messages(row.prompt_ids), row.settings)
        begin = time.perf_counter()
        try:
            with self._client.stream("POST", f"{self.recipe.model}/chat/completions", json=body,
                                     extensions={"trace": clock.event}) as response:
                if response.status_code >= 400:
                    response.read()
                    served.error = self._refused(response)
                    return served
                for data in sse_data(response.iter_lines()):
                    now = time.perf_counter()
                    if done or data.strip() == "[DONE]":
                        done = True  # read on to the body's end, so that the connection is kept for the next
                        continue
                    chunk = _json(data)
                    if chunk is None:
                        served.error = f"the server sent a chunk that is not JSON: {_scrub(data[:120], self._key)!r}"
                        break
                    if "error" in chunk:
                        served.error = f"the server reported an error mid-answer: {self._message(chunk)}"
                        break
                    text, reason = _choice(chunk)
                    if text:
                        first_at = first_at or now
                        served.chunks += 1
                        emit(self._id("piece", text, text), now)
                    if reason:
                        served.finish_reason = FINISH.get(reason, "eos")
                    _usage(chunk, served)
                    if isinstance(chunk.get("timings"), dict):
                        timings = chunk["timings"]
                    if not row.active:
                        break  # stopped: closing the response tells the server to stop generating
        except httpx.TimeoutException:
            served.error = (f"the server sent nothing for {self.timeout_s:g} s "
                            f"{'mid-answer' if served.chunks else 'before its first token'}")
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            served.error = f"the connection was lost ({_scrub(_reason(exc), self._key)})"
        except httpx.HTTPError as exc:
            served.error = f"cannot reach the server at {self.recipe.model} ({_scrub(_reason(exc), self._key)})"
        finally:
            served.network = clock.split(begin, first_at, timings, served)
        if not (done or served.finish_reason or served.error) and row.active:
            served.error = "the server closed the stream before the answer's end"
        if served.error and served.chunks and served.finish_reason is None:
            served.cut = True
            served.error = (f"{served.error}; the answer was cut after {served.chunks} chunks (the partial answer "
                            "is kept)")
        return served

    def _refused(self, response: httpx.Response) -> str:
        if response.status_code in (401, 403):
            return refused_key(response.status_code, self.recipe.api_key_env)
        return f"the server refused the request ({_http_status(response, self._key)})"

    def _message(self, chunk: dict) -> str:
        error = chunk.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        return _scrub(str(message)[:300], self._key)

    # -- scheduling

    def scheduler_problem(self, scheduler: str) -> str | None:
        return None if scheduler in ("static", "continuous") else f"unknown scheduler {scheduler!r}"

    def continuous(self, max_requests: int, listener: ContinuousListener) -> "_Streams":
        return _Streams(self, listener)

    def close(self) -> None:
        self._client.close()


class _Streams:
    """The continuous batcher of a server: every request streams on its own as soon as it is added (the server
    batches as it does), and ends on its own."""

    tokens_per_request = 1 << 62  # nothing is reserved here: the server decides what fits
    failed: str | None = None

    def __init__(self, model: RemoteModel, listener: ContinuousListener):
        self.model, self.listener = model, listener
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()  # one listener call at a time, as from a single batcher thread

    def add(self, row: Row) -> None:
        thread = threading.Thread(target=self._run, args=(row,), daemon=True, name="remote-stream")
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()

    def _run(self, row: Row) -> None:
        error = "the stream ended unexpectedly"
        try:
            with self.lock:
                self.listener.admitted(row, time.perf_counter())
            error = self.model.stream(row, self._token(row)).error
        finally:
            with self.lock:
                self.listener.finished(row, error)

    def _token(self, row: Row) -> Callable[[int, float], None]:
        def token(token_id: int, t: float) -> None:
            with self.lock:
                self.listener.token(row, token_id, t)
        return token

    def close(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))


# The wire --------------------------------------------------------------------------------------------------------


def request_body(model: str, messages: list[dict], settings: GenerationSettings) -> dict:
    """The chat-completion request of one answer: streamed, with the usage report asked for."""
    body = {"model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": settings.max_new_tokens, "temperature": float(settings.temperature)}
    if not settings.greedy:
        body["top_p"] = float(settings.top_p)
    if settings.seed is not None:
        body["seed"] = settings.seed
    if settings.ignore_eos:  # benchmarks: exactly max_new_tokens, where the server knows these (vLLM, llama.cpp)
        body.update(ignore_eos=True, min_tokens=settings.max_new_tokens)
    return body


def sse_data(lines: Iterator[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event, from the response's lines (comments and other fields skipped)."""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _json(data: str) -> dict | None:
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def _choice(chunk: dict) -> tuple[str, str | None]:
    """The first choice's new text and finish reason."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return "", None
    delta = choices[0].get("delta") or {}
    text = delta.get("content") if isinstance(delta, dict) else None
    return (text if isinstance(text, str) else ""), choices[0].get("finish_reason")


def _usage(chunk: dict, served: Served) -> None:
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        served.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            served.prompt_tokens = usage["prompt_tokens"]


class _Clock:
    """The moments httpx's trace extension reports for one request (``perf_counter``), by event name."""

    def __init__(self):
        self.at: dict[str, float] = {}

    def event(self, name: str, info: dict) -> None:
        # "connection.connect_tcp.started", "http11.send_request_body.complete", ...: the layer's prefix dropped.
        self.at.setdefault(name.split(".", 1)[-1], time.perf_counter())  # info (the request, its headers) unread

    def span(self, start: str, end: str) -> float | None:
        a, b = self.at.get(start), self.at.get(end)
        return None if a is None or b is None else b - a

    def split(self, begin: float, first_at: float | None, timings: dict | None, served: Served) -> dict:
        """The network split of the request (module docstring), in milliseconds."""
        connect = [self.span(f"{step}.started", f"{step}.complete") for step in ("connect_tcp", "start_tls")]
        sent = self.at.get("send_request_body.complete")
        prefill, decode = (_ms_field(timings, "prompt_ms"), _ms_field(timings, "predicted_ms"))
        waited = _ms_field(timings, "queue_ms")  # the server's own queue, where it reports one (workbench serve)
        first_chunk = None if sent is None or first_at is None else (first_at - sent) * 1000
        beyond = None if prefill is None or first_chunk is None else first_chunk - prefill - (waited or 0.0)
        return {
            "connect_ms": _round(sum(s for s in connect if s is not None) * 1000),
            "reused_connection": "connect_tcp.started" not in self.at,
            "request_ms": _round(None if sent is None else (sent - begin) * 1000),
            "headers_ms": _round(_times_ms(self.span("send_request_body.complete",
                                                     "receive_response_headers.complete"))),
            "first_chunk_ms": _round(first_chunk),
            "server_prefill_ms": _round(prefill),
            "server_decode_ms": _round(decode),
            "server_queue_ms": _round(waited),
            "server_ms": _round(None if prefill is None or decode is None else prefill + decode),
            "network_ms": _round(beyond),
            "chunks": served.chunks,
            "tokens_from": "chunks" if served.per_chunk else "usage",
        }


def _ms_field(timings: dict | None, name: str) -> float | None:
    value = (timings or {}).get(name)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _times_ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _auth(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _scrub(text: str, key: str | None) -> str:
    """``text`` without the API key (a server may echo what it was sent)."""
    return text.replace(key, "***") if key else text


def _http_status(response: httpx.Response, key: str | None) -> str:
    """'HTTP 400: the server's message' in one short line, without the key."""
    try:
        body = response.json()
        error = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
    except ValueError:
        message = response.text
    message = " ".join(str(message).split())[:300]
    return f"HTTP {response.status_code}" + (f": {_scrub(message, key)}" if message else "")


RUNTIME = Runtime(NAME, check=check, build=build, backends=backends, problem=problem, dtypes=(REMOTE_DTYPE,))
