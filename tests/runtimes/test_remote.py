"""The remote runtime against real servers on loopback: the workbench's own OpenAI-compatible server on the tiny
model (it reports llama.cpp-style timings), a delay proxy between client and server (the added delay is the
network's, not the server's), a small FastAPI app for the failures (401, a stream cut mid-answer, a server too
slow, a client that stops), and llama-cpp-python's own server on the embedded GGUF (slow)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx
import pytest
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import StreamingResponse
from processes import free_port, stop, wait_for
from proxies import delay_proxy

from workbench import catalog, runtimes
from workbench.recipe import GenerationSettings, Recipe, RecipeError
from workbench.runtimes import remote
from workbench.serving.engine import Engine
from workbench.serving.http import HttpServer, create_app, model_id

WAIT_S = 60  # far more than anything here takes: still waiting then is a hang
DELAY_S = 0.3  # the proxy's added one-way delay on the way back
KEY = "sk-test-9f8e7d6c5b4a"
PROMPT = "What is the capital of France?"


@contextmanager
def running(app):
    """An ASGI app on a uvicorn server of its own thread, on a free loopback port."""
    server = HttpServer(app, "127.0.0.1", free_port(), graceful_s=1.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tiny_engine(tiny_model):
    engine = Engine(tiny_model)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def tiny_server(tiny_engine):
    """``workbench serve``'s app on the tiny model: a real OpenAI-compatible server that reports its timings."""
    with running(create_app(tiny_engine, max_queue=16)) as server:
        yield server


def fixture_app(key: str = KEY) -> FastAPI:
    """A small OpenAI-shaped server for what real ones do when things go wrong: "cut" drops the connection after
    three chunks, "slow" answers nothing for 2 s, "endless" streams until the client leaves (and notes that it
    left), "echo" refuses with a message that repeats the Authorization header."""
    app = FastAPI()
    app.state.left = asyncio.Event()

    def authorize(authorization: str | None = Header(None)):
        if authorization != f"Bearer {key}":
            raise HTTPException(401, detail=f"invalid key {authorization}")

    def chunk(text: str | None, finish: str | None = None) -> str:
        delta = {} if text is None else {"content": text}
        return "data: " + json.dumps({"object": "chat.completion.chunk",
                                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models():
        names = ("cut", "slow", "endless", "echo")
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in names]}

    @app.post("/v1/chat/completions")
    async def chat(body: dict, authorization: str | None = Header(None)):
        authorize(authorization)
        if body["model"] == "echo":
            raise HTTPException(400, detail=f"cannot use this request (sent {authorization})")
        if body["model"] == "slow":
            await asyncio.sleep(2.0)

        async def cut():
            for word in ("one ", "two ", "three "):
                yield chunk(word)
                await asyncio.sleep(0.02)
            raise RuntimeError("the stream drops here (a server that died mid-answer)")

        async def endless():
            try:
                for n in range(400):
                    yield chunk(f"w{n} ")
                    await asyncio.sleep(0.02)
                yield chunk(None, "length") + "data: [DONE]\n\n"
            except asyncio.CancelledError:
                app.state.left.set()
                raise
            finally:
                app.state.left.set()

        return StreamingResponse(endless() if body["model"] == "endless" else cut(), media_type="text/event-stream")

    return app


def remote_model(url: str, timeout_s: float = WAIT_S, **fields):
    return remote.build(Recipe(model=url, **fields), timeout_s=timeout_s)


def ask(model, prompt: str = PROMPT, settings: GenerationSettings | None = None, **engine_kwargs):
    engine = Engine(model, **engine_kwargs)
    try:
        return engine.generate(prompt, settings or GenerationSettings(max_new_tokens=12))
    finally:
        engine.close()


# The workbench's own server: answers and the split -------------------------------------------------------------


def test_a_server_answers_as_the_model_does_with_its_network_split(tiny_server, tiny_engine):
    settings = GenerationSettings(max_new_tokens=12)
    model = remote_model(tiny_server.url)
    try:
        assert model.recipe.runtime == "remote" and model.recipe.remote_model == model_id(tiny_engine.recipe)
        assert model.context_length is None and model.eos_ids == frozenset()
        result = ask(model, settings=settings)
    finally:
        model.close()
    local = tiny_engine.generate(PROMPT, settings)
    assert result.error is None and not result.cut
    assert result.text == local.text  # greedy, the same model behind the server
    assert result.new_tokens == local.new_tokens and not result.per_chunk  # the usage report's count
    assert result.prompt_tokens == local.prompt_tokens
    assert result.finish_reason == local.finish_reason
    net = result.network
    assert {"connect_ms", "headers_ms", "server_ms", "network_ms"} <= set(net)
    assert net["tokens_from"] == "usage" and 1 <= net["chunks"] <= result.new_tokens
    assert len(result.token_times) == len(result.token_ids) == net["chunks"]  # one time per chunk, as it arrived
    assert net["connect_ms"] >= 0 and net["headers_ms"] > 0 and net["first_chunk_ms"] >= net["headers_ms"] * 0.5
    assert net["server_ms"] == pytest.approx(net["server_prefill_ms"] + net["server_decode_ms"], abs=0.01)
    assert net["server_queue_ms"] is not None and net["server_queue_ms"] >= 0  # workbench serve reports its queue
    assert net["network_ms"] == pytest.approx(net["first_chunk_ms"] - net["server_prefill_ms"] - net["server_queue_ms"],
                                              abs=0.01)
    assert result.ttft_s * 1000 >= net["first_chunk_ms"]  # TTFT counts from the request's start, before it was sent
    assert result.metrics()["network"] == net


def test_the_added_delay_is_the_networks_not_the_servers(tiny_server):
    """A delay line of DELAY_S on the way back: first chunk and network time grow by about DELAY_S, the server's
    own prefill does not."""
    settings = GenerationSettings(max_new_tokens=8)
    with running(delay_proxy(tiny_server.url.removesuffix("/v1"), DELAY_S)) as proxy:
        measured = {}
        for name, url in (("direct", tiny_server.url), ("proxied", proxy.url)):
            model = remote_model(url)
            try:
                runs = [ask(model, settings=settings).network for _ in range(3)]
            finally:
                model.close()
            measured[name] = {key: min(run[key] for run in runs) for key in
                              ("first_chunk_ms", "network_ms", "server_prefill_ms", "headers_ms")}
    direct, proxied = measured["direct"], measured["proxied"]
    delay_ms = DELAY_S * 1000
    added = proxied["network_ms"] - direct["network_ms"]
    assert 0.8 * delay_ms <= added <= delay_ms + 400, measured
    assert proxied["first_chunk_ms"] - direct["first_chunk_ms"] >= 0.8 * delay_ms, measured
    assert proxied["headers_ms"] - direct["headers_ms"] >= 0.8 * delay_ms, measured
    assert abs(proxied["server_prefill_ms"] - direct["server_prefill_ms"]) < delay_ms / 2, measured


def test_requests_stream_at_once_in_a_batch_and_continuously(tiny_server, tiny_engine):
    settings = GenerationSettings(max_new_tokens=6)
    prompts = ["What is the capital of France?", "Latency or throughput?", "Tell me about pruning."]
    expected = [tiny_engine.generate(p, settings).text for p in prompts]
    model = remote_model(tiny_server.url)
    try:
        for scheduler in ("static", "continuous"):
            engine = Engine(model, batch_size=3, batch_window_s=0.2, scheduler=scheduler)
            try:
                handles = [engine.submit(p, settings) for p in prompts]
                results = [h.result(WAIT_S) for h in handles]
            finally:
                engine.close()
            assert [r.text for r in results] == expected, scheduler
            assert all(r.error is None and r.network["server_ms"] is not None for r in results), scheduler
    finally:
        model.close()


def test_the_remote_model_keeps_the_conversation_and_has_no_scores(tiny_server):
    model = remote_model(tiny_server.url)
    try:
        turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        ids = model.encode_chat(turns)
        assert model.messages(ids) == turns and model.encode_chat(turns) == ids
        assert runtimes.complete(model, ids, GenerationSettings(max_new_tokens=4))  # quality's path, no engine
        with pytest.raises(remote.NotAvailableRemotely, match="perplexity is not available for a remote server"):
            model.nll([1, 2, 3], 1)
        with pytest.raises(remote.NotAvailableRemotely):
            model.tokenize("text")
    finally:
        model.close()


# Failures ---------------------------------------------------------------------------------------------------------


def test_an_unreachable_server_a_wrong_model_and_a_refused_key_say_so(tiny_server, monkeypatch):
    with pytest.raises(RecipeError, match="cannot reach the server at http://127.0.0.1:") as caught:
        runtimes.check(Recipe(model=f"http://127.0.0.1:{free_port()}/v1"))
    assert caught.value.field == "model"
    with pytest.raises(RecipeError, match="serves no model 'gpt-4'; it serves: ") as caught:
        runtimes.check(Recipe(model=tiny_server.url, remote_model="gpt-4"))
    assert caught.value.field == "remote-model"
    with running(fixture_app()) as server:
        with pytest.raises(RecipeError, match="asks for an API key") as caught:
            runtimes.check(Recipe(model=server.url))
        assert caught.value.field == "api-key-env"
        monkeypatch.setenv("WB_REMOTE_KEY", "sk-wrong-1234567")
        with pytest.raises(RecipeError, match="refused the API key in WB_REMOTE_KEY") as caught:
            runtimes.check(Recipe(model=server.url, api_key_env="WB_REMOTE_KEY"))
        assert "sk-wrong" not in str(caught.value)
        monkeypatch.delenv("WB_REMOTE_KEY")
        with pytest.raises(RecipeError, match="WB_REMOTE_KEY is not set"):
            runtimes.check(Recipe(model=server.url, api_key_env="WB_REMOTE_KEY"))
        monkeypatch.setenv("WB_REMOTE_KEY", KEY)
        recipe = runtimes.check(Recipe(model=server.url, api_key_env="WB_REMOTE_KEY"))
        assert recipe.remote_model == "cut" and KEY not in json.dumps(recipe.to_dict())
        assert recipe.key() == Recipe(model=server.url, remote_model="cut").key()  # the variable is not the answer's
        echo = ask(remote.build(Recipe(model=server.url, api_key_env="WB_REMOTE_KEY", remote_model="echo")))
        assert echo.finish_reason == "error" and "HTTP 400" in echo.error and KEY not in echo.error, echo.error


def test_a_stream_cut_mid_answer_keeps_the_partial_answer_marked(monkeypatch):
    monkeypatch.setenv("WB_REMOTE_KEY", KEY)
    with running(fixture_app()) as server:
        model = remote_model(server.url, api_key_env="WB_REMOTE_KEY", remote_model="cut")
        try:
            result = ask(model)
        finally:
            model.close()
    assert result.cut and result.finish_reason == "error"
    assert result.text == "one two three " and result.new_tokens == 3 and result.per_chunk
    assert "cut after 3 chunks" in result.error and "Traceback" not in result.error
    assert len(result.token_times) == 3 and result.ttft_s is not None and result.network["chunks"] == 3
    assert result.metrics()["cut"] is True


def test_a_server_too_slow_times_out_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("WB_REMOTE_KEY", KEY)
    with running(fixture_app()) as server:
        model = remote_model(server.url, timeout_s=0.5, api_key_env="WB_REMOTE_KEY", remote_model="slow")
        try:
            started = time.monotonic()
            result = ask(model)
            waited = time.monotonic() - started
        finally:
            model.close()
    assert result.finish_reason == "error" and not result.cut and result.new_tokens == 0
    assert result.error == "the server sent nothing for 0.5 s before its first token"
    assert waited < 2.0  # it gave up at its timeout, not when the server answered


def test_stopping_closes_the_stream_and_the_server_sees_the_client_leave(monkeypatch):
    monkeypatch.setenv("WB_REMOTE_KEY", KEY)
    app = fixture_app()
    with running(app) as server:
        model = remote_model(server.url, api_key_env="WB_REMOTE_KEY", remote_model="endless")
        engine = Engine(model)
        try:
            request = engine.submit(PROMPT, GenerationSettings(max_new_tokens=400))
            for event in request:
                if event.index == 1:
                    request.stop()
            result = request.result(WAIT_S)
            deadline = time.monotonic() + 10
            while not app.state.left.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            engine.close()
            model.close()
    assert result.finish_reason == "stopped" and result.error is None and 2 <= result.new_tokens < 20
    assert result.network["first_chunk_ms"] is not None
    assert app.state.left.is_set(), "the server went on streaming to a client that had stopped"


# llama-cpp-python's own server (a third-party server the workbench did not write) --------------------------------


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    gguf = catalog.embedded_gguf()
    if gguf is None:
        pytest.skip("the embedded model is not installed")
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python's [server] extra is not installed")
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "stderr.txt"
    with open(log, "w") as stderr:  # a file, not a pipe: llama.cpp's loading log would fill a pipe and block it
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_threads", "2", "--n_ctx", "2048",
                                 "--interrupt_requests", "False"],  # its default cuts an answer when another comes
                                stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    url = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"llama-cpp-python's server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        return answers(f"{url}/models")

    try:
        wait_for(up, 120, "llama-cpp-python's server answering /v1/models")
        yield url
    finally:
        stop(proc)


@pytest.mark.slow
def test_llama_cpp_python_server_is_measured_with_its_network_split(llama_server):
    settings = GenerationSettings(max_new_tokens=16)
    model = remote_model(llama_server)
    try:
        assert model.recipe.remote_model.endswith(".gguf")  # it names its model by the file it serves
        results = [ask(model, settings=settings) for _ in range(2)]
    finally:
        model.close()
    for result in results:
        assert result.error is None and result.text.strip() and result.finish_reason in ("eos", "length")
        net = result.network
        # It streams no usage report and no timings: tokens are counted as chunks, and said to be.
        assert result.per_chunk and net["tokens_from"] == "chunks" and result.new_tokens == net["chunks"]
        assert net["server_ms"] is None and net["network_ms"] is None and net["server_queue_ms"] is None
        assert net["headers_ms"] > 0 and net["first_chunk_ms"] > 0 and result.ttft_s * 1000 >= net["first_chunk_ms"]
    assert results[1].network["reused_connection"]  # the second request rode the first one's connection


@pytest.mark.slow
def test_a_delay_in_front_of_llama_cpp_python_server_shows_in_the_first_chunk(llama_server):
    settings = GenerationSettings(max_new_tokens=4)
    with running(delay_proxy(llama_server.removesuffix("/v1"), DELAY_S)) as proxy:
        firsts = {}
        for name, url in (("direct", llama_server), ("proxied", proxy.url)):
            model = remote_model(url, remote_model=remote.check(Recipe(model=llama_server)).remote_model)
            try:
                firsts[name] = min(ask(model, settings=settings).network["first_chunk_ms"] for _ in range(2))
            finally:
                model.close()
    assert firsts["proxied"] - firsts["direct"] >= 0.8 * DELAY_S * 1000, firsts


@pytest.mark.slow
def test_a_small_load_test_of_llama_cpp_python_server_reports_goodput(llama_server):
    from workbench import bench

    slo = bench.Slo(ttft_ms=120_000, tpot_ms=120_000)  # objectives every answer meets: goodput counts them all
    entry = bench.run_bench(Recipe(model=llama_server), GenerationSettings(max_new_tokens=4), warmup=0,
                            request_rate=4.0, num_requests=4, concurrency=2, slo=slo)
    load = entry["load"]
    assert load["mode"] == "poisson" and load["requests"] == {"scheduled": 4, "sent": 4, "finished": 4, "failed": 0,
                                                              "cut": 0}
    assert 1 <= load["max_in_flight"] <= 2 and load["ttft_ms"]["n"] == 4 and load["ttft_ms"]["p99"] > 0
    assert load["goodput"]["requests_ok"] == 4 and load["goodput"]["share"] == 1.0
    assert all(run["new_tokens"] >= 1 for run in entry["per_run"])
