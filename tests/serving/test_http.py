"""The OpenAI-compatible app on a real uvicorn server on loopback, driven by the official ``openai`` client, serving
the tiny random model through the engine: answers equal the engine's own, streaming and not, concurrent clients,
a client that leaves mid-stream (its generation stops and the history says "stopped"), a full queue (429), a
wrong key (401), a server still loading (503), /health and /metrics."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import httpx
import openai
import pytest
from processes import free_port, wait_for

from workbench.observe import listeners
from workbench.observe.history import HistoryStore
from workbench.observe.prometheus import PrometheusExporter
from workbench.recipe import GenerationSettings
from workbench.response_cache.answers import CachedAnswers
from workbench.response_cache.disk import ResponseCache
from workbench.runtimes.base import LoadedModel
from workbench.serving.engine import Engine
from workbench.serving.http import HttpServer, create_app, model_id

WAIT_S = 60  # far more than anything here takes on the tiny model: still waiting then is a hang
PROMPTS = ["What is the capital of France?", "Latency or throughput?", "Tell me about pruning."]


@contextmanager
def running(app):
    """The app on a uvicorn server of its own, on a free loopback port."""
    server = HttpServer(app, "127.0.0.1", free_port(), graceful_s=2.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def client(server: HttpServer, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=WAIT_S)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def rows(store: HistoryStore) -> list[dict]:
    store.flush()
    return store.recent()


class Gated(LoadedModel):
    """The tiny model, whose generation holds after each call's first ``hold_after`` tokens until ``gate`` opens:
    a test can keep the worker busy, or a stream open, for as long as it needs."""

    def __init__(self, model: LoadedModel, hold_after: int = 1):
        self.model, self.hold_after = model, hold_after
        self.recipe, self.stats, self.notes = model.recipe, model.stats, []
        self.gate = threading.Event()

    def encode_chat(self, messages):
        return self.model.encode_chat(messages)

    def tokenize(self, text):
        return self.model.tokenize(text)

    def decode(self, token_ids):
        return self.model.decode(token_ids)

    @property
    def eos_ids(self):
        return self.model.eos_ids

    @property
    def context_length(self):
        return self.model.context_length

    def nll(self, token_ids, first_target):
        return self.model.nll(token_ids, first_target)

    def generate(self, rows, settings, on_token):
        produced = [0]

        def token(i, token_id, now):
            on_token(i, token_id, now)
            produced[0] += 1
            if produced[0] >= self.hold_after:
                self.gate.wait(WAIT_S)

        self.model.generate(rows, settings, token)


@pytest.fixture(scope="module")
def exporter():
    exporter = PrometheusExporter(process_metrics=False)
    listeners.add_listener(exporter.record)
    yield exporter
    listeners.remove_listener(exporter.record)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return HistoryStore(tmp_path_factory.mktemp("serve-history") / "metrics.sqlite")


@pytest.fixture(scope="module")
def engine(tiny_model, store):
    engine = Engine(tiny_model, store, batch_size=4)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def served(engine, exporter, tmp_path_factory):
    """The tiny model's engine served with the response cache, the history's exporter on /metrics."""
    answers = CachedAnswers(ResponseCache(tmp_path_factory.mktemp("serve-responses")))
    with running(create_app(engine, max_queue=8, answer=answers.ask, metrics=exporter.text)) as server:
        yield server


def test_models_and_health(served, engine):
    models = client(served).models.list().data
    assert [m.id for m in models] == [model_id(engine.recipe)] == [engine.recipe.key()]
    assert models[0].model_extra["label"] == engine.recipe.label()
    health = httpx.get(served.url.removesuffix("/v1") + "/health", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": engine.recipe.key(), "waiting": 0, "running": 0,
                             "max_queue": 8}


def test_chat_completion_is_the_engines_answer_with_usage_and_timings(served, engine, store):
    expected = engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=12, ignore_eos=True))
    response = client(served).chat.completions.create(
        model=engine.recipe.key(), messages=user(PROMPTS[0]), max_tokens=12, extra_body={"ignore_eos": True})
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == "length"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (expected.prompt_tokens, 12)
    assert response.usage.total_tokens == expected.prompt_tokens + 12
    timings = response.model_extra["timings"]
    assert timings["prompt_n"] == expected.prompt_tokens and timings["predicted_n"] == 12
    assert timings["prompt_ms"] > 0 and timings["predicted_ms"] > 0 and timings["queue_ms"] >= 0
    assert timings["cache"] == "miss"
    row = rows(store)[-1]
    assert (row["origin"], row["finish_reason"], row["new_tokens"]) == ("serve", "length", 12)
    # The timings add up to the engine's E2E, the one the history keeps.
    served_ms = timings["queue_ms"] + timings["prompt_ms"] + timings["predicted_ms"]
    assert served_ms == pytest.approx(row["e2e_s"] * 1000, abs=0.01)


def test_streamed_answer_matches_the_whole_one_and_ends_with_usage(served, engine):
    api = client(served)
    whole = api.chat.completions.create(model=engine.recipe.key(), messages=user(PROMPTS[1]), max_tokens=10,
                                        extra_body={"ignore_eos": True})
    chunks = list(api.chat.completions.create(
        model=engine.recipe.key(), messages=user(PROMPTS[1]), max_tokens=10, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 10
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert last.model_extra["timings"]["predicted_n"] == 10
    # Without include_usage the timings ride on the finishing chunk.
    plain = list(api.chat.completions.create(model=engine.recipe.key(), messages=user(PROMPTS[2]), max_tokens=4,
                                             stream=True, extra_body={"ignore_eos": True}))
    assert plain[-1].choices[0].finish_reason == "length" and plain[-1].model_extra["timings"]["predicted_n"] == 4


def test_raw_stream_ends_with_done(served, engine):
    body = {"model": engine.recipe.key(), "messages": user(PROMPTS[0]), "max_tokens": 3, "stream": True}
    with httpx.stream("POST", served.url + "/chat/completions", json=body, timeout=WAIT_S) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and len(data) >= 3


def test_a_repeated_greedy_question_is_answered_from_the_cache(served, engine):
    api = client(served)
    ask = dict(model=engine.recipe.key(), messages=user("Hello there, cache!"), max_tokens=6)
    first, second = api.chat.completions.create(**ask), api.chat.completions.create(**ask)
    assert first.model_extra["timings"]["cache"] == "miss"
    assert second.model_extra["timings"]["cache"] == "exact"
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.model_extra["timings"]["predicted_ms"] == 0  # a replay claims no decode speed


def test_three_concurrent_clients_each_get_their_own_answer(served, engine, store):
    settings = GenerationSettings(max_new_tokens=16, ignore_eos=True)
    expected = [engine.generate(p, settings).text for p in PROMPTS]
    before = len(rows(store))
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        api = client(served)
        kwargs = dict(model=engine.recipe.key(), messages=user(PROMPTS[i]), max_tokens=16,
                      extra_body={"ignore_eos": True})
        if i % 2:
            answers[i] = "".join(c.choices[0].delta.content or "" for c in
                                 api.chat.completions.create(stream=True, **kwargs) if c.choices)
        else:
            answers[i] = api.chat.completions.create(**kwargs).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert [answers.get(i) for i in range(3)] == expected
    new = rows(store)[before:]
    assert [r["origin"] for r in new] == ["serve"] * 3


def test_bad_requests_are_openai_errors(served, engine):
    api = client(served)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        api.chat.completions.create(model="gpt-4o", messages=user("hi"))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        api.chat.completions.create(model=engine.recipe.key(), messages=user("hi"), max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="messages"):
        api.chat.completions.create(model=engine.recipe.key(), messages=[])
    with pytest.raises(openai.BadRequestError, match="context"):
        api.chat.completions.create(model=engine.recipe.key(), messages=user("word " * 600), max_tokens=8)
    response = httpx.post(served.url + "/chat/completions", content=b"{not json", timeout=10,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_metrics_serve_the_history_and_the_queue(served, engine):
    client(served).chat.completions.create(model=engine.recipe.key(), messages=user("metrics"), max_tokens=2)
    text = httpx.get(served.url.removesuffix("/v1") + "/metrics", timeout=10).text
    assert f'recipe="{engine.recipe.key()}"' in text and "workbench_ttft_seconds_count" in text
    assert 'origin="serve"' in text
    assert "workbench_serve_waiting_requests 0.0" in text and "workbench_serve_client_disconnects_total" in text


def test_a_wrong_key_is_401_and_the_key_is_never_echoed(tiny_model):
    engine = Engine(tiny_model)
    try:
        with running(create_app(engine, max_queue=8, api_key="s3cret-key")) as server:
            with pytest.raises(openai.AuthenticationError) as refused:
                client(server, "wrong-key").models.list()
            assert "s3cret-key" not in str(refused.value) and "wrong-key" not in str(refused.value)
            bare = httpx.post(server.url + "/chat/completions", json={"messages": user("hi")}, timeout=10)
            assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
            answer = client(server, "s3cret-key").chat.completions.create(
                model=engine.recipe.key(), messages=user("hi"), max_tokens=2)
            assert answer.usage.completion_tokens >= 1
            assert httpx.get(server.url.removesuffix("/v1") + "/health", timeout=10).status_code == 200
    finally:
        engine.close()


def test_a_server_without_a_model_answers_503(tiny_model):
    app = create_app(None, max_queue=8)
    with running(app) as server:
        health = httpx.get(server.url.removesuffix("/v1") + "/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "loading"
        with pytest.raises(openai.InternalServerError, match="loading"):
            client(server).chat.completions.create(model="any", messages=user("hi"))
        engine = Engine(tiny_model)
        try:
            app.state.service.attach(engine)
            assert client(server).chat.completions.create(model=engine.recipe.key(), messages=user("hi"),
                                                          max_tokens=2).usage.completion_tokens >= 1
            app.state.service.close(grace_s=0)
            with pytest.raises(openai.InternalServerError, match="shutting down"):
                client(server).chat.completions.create(model=engine.recipe.key(), messages=user("hi"))
        finally:
            engine.close()


def health_of(server: HttpServer) -> dict:
    return httpx.get(server.url.removesuffix("/v1") + "/health", timeout=10).json()


def test_a_full_queue_is_429(tiny_model, tmp_path):
    store = HistoryStore(tmp_path / "metrics.sqlite")
    gated = Gated(tiny_model, hold_after=1)
    engine = Engine(gated, store, batch_size=1)
    try:
        with running(create_app(engine, max_queue=1)) as server:
            ask = dict(model=engine.recipe.key(), max_tokens=4, extra_body={"ignore_eos": True})
            first = client(server).chat.completions.create(messages=user(PROMPTS[0]), stream=True, **ask)
            next(iter(first))  # the worker holds this one after its first token
            wait_for(lambda: health_of(server)["running"] == 1, WAIT_S, "the first request runs")
            waiting: dict = {}
            second = threading.Thread(target=lambda: waiting.setdefault("answer", client(server).chat.completions
                                                                         .create(messages=user(PROMPTS[1]), **ask)))
            second.start()
            wait_for(lambda: health_of(server)["waiting"] == 1, WAIT_S, "the second request waits")
            with pytest.raises(openai.RateLimitError, match="queue is full") as refused:
                client(server).chat.completions.create(messages=user(PROMPTS[2]), **ask)
            assert refused.value.response.headers["retry-after"] == "1"
            assert refused.value.body["code"] == "queue_full"
            gated.gate.set()
            rest = "".join(c.choices[0].delta.content or "" for c in first if c.choices)
            second.join(WAIT_S)
            assert waiting["answer"].usage.completion_tokens == 4 and isinstance(rest, str)
            text = httpx.get(server.url.removesuffix("/v1") + "/metrics", timeout=10).text
            assert 'workbench_serve_rejected_requests_total{reason="queue_full"} 1.0' in text
        assert [r["finish_reason"] for r in rows(store)] == ["length", "length"]  # the refused one never ran
    finally:
        gated.gate.set()
        engine.close()


def test_a_client_that_leaves_mid_stream_stops_its_generation(tiny_model, tmp_path):
    store = HistoryStore(tmp_path / "metrics.sqlite")
    gated = Gated(tiny_model, hold_after=3)
    engine = Engine(gated, store)
    try:
        with running(create_app(engine, max_queue=8)) as server:
            stream = client(server).chat.completions.create(
                model=engine.recipe.key(), messages=user(PROMPTS[0]), max_tokens=200, stream=True,
                extra_body={"ignore_eos": True})
            chunks = iter(stream)
            next(chunks), next(chunks)  # the role, then the first token
            stream.close()  # the client goes away while the model holds at its third token
            metrics = server.url.removesuffix("/v1") + "/metrics"
            wait_for(lambda: "workbench_serve_client_disconnects_total 1.0" in httpx.get(metrics, timeout=10).text,
                     WAIT_S, "the server notices the client left")
            gated.gate.set()  # the model may go on: the engine stops the row at its next token
            wait_for(lambda: rows(store), WAIT_S, "the request is recorded")
            row = rows(store)[-1]
            # Stopped at the token after the client left: at most one past the third, where the model held.
            assert row["finish_reason"] == "stopped" and 1 <= row["new_tokens"] <= 4
            assert row["origin"] == "serve"
            assert health_of(server)["running"] == 0
    finally:
        gated.gate.set()
        engine.close()


def test_closing_refuses_new_requests_and_stops_those_still_running(tiny_model, tmp_path):
    store = HistoryStore(tmp_path / "metrics.sqlite")
    gated = Gated(tiny_model, hold_after=2)
    engine = Engine(gated, store)
    try:
        app = create_app(engine, max_queue=8)
        with running(app) as server:
            stream = client(server).chat.completions.create(
                model=engine.recipe.key(), messages=user(PROMPTS[1]), max_tokens=200, stream=True,
                extra_body={"ignore_eos": True})
            chunks = iter(stream)
            next(chunks)
            wait_for(lambda: health_of(server)["running"] == 1, WAIT_S, "the request runs")
            assert app.state.service.close(grace_s=0) == 1
            gated.gate.set()
            rest = list(chunks)
            assert [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason] == ["stop"]
            with pytest.raises(openai.InternalServerError, match="shutting down"):
                client(server).chat.completions.create(model=engine.recipe.key(), messages=user("hi"))
            assert httpx.get(server.url.removesuffix("/v1") + "/health", timeout=10).status_code == 503
        row = rows(store)[-1]
        assert row["finish_reason"] == "stopped" and row["new_tokens"] < 200
    finally:
        gated.gate.set()
        engine.close()
