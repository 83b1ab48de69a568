"""``workbench generate / eval / bench --model http://…/v1`` against real servers on loopback: the workbench's own
OpenAI-compatible server on the tiny model (with and without an API key) and a small app whose stream drops
mid-answer. Every figure comes from a real request; every mistake is one line naming its flag; the key is never
printed or stored."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import contextmanager
from pathlib import Path

import pytest
from commands import assert_usage_error, run_cli
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from processes import free_port

from workbench.observe.history import HistoryStore
from workbench.recipe import GenerationSettings
from workbench.serving.engine import Engine
from workbench.serving.http import HttpServer, create_app, model_id

KEY = "sk-cli-test-0123456789abcdef"
PROMPT = "What is the capital of France?"


@contextmanager
def running(app):
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
def server(tiny_engine):
    with running(create_app(tiny_engine, max_queue=16)) as server:
        yield server


@pytest.fixture(scope="module")
def keyed_server(tiny_engine):
    with running(create_app(tiny_engine, max_queue=16, api_key=KEY)) as server:
        yield server


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A WORKBENCH_HOME of this test's own: its cache and history hold only what this test wrote."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def generate(capsys, url, *flags):
    return run_cli(capsys, "generate", "--model", url, "--prompt", PROMPT, "--max-new-tokens", "8", *flags)


def test_generate_json_has_the_network_split(capsys, server, tiny_engine, home):
    code, out, err = generate(capsys, server.url, "--json", "--no-cache")
    assert code == 0, err
    report = json.loads(out)
    local = tiny_engine.generate(PROMPT, GenerationSettings(max_new_tokens=8))
    assert report["text"] == local.text and report["new_tokens"] == local.new_tokens
    assert report["recipe"]["runtime"] == "remote" and report["recipe"]["model"] == server.url
    assert report["recipe"]["remote_model"] == model_id(tiny_engine.recipe)  # the first (only) model it lists
    net = report["network"]
    assert {"connect_ms", "headers_ms", "server_ms", "network_ms"} <= set(net)
    assert net["server_ms"] > 0 and net["headers_ms"] > 0 and net["network_ms"] is not None
    assert report["per_chunk"] is False and report["cut"] is False and report["ttft_ms"] >= net["first_chunk_ms"]
    code, out, err = generate(capsys, server.url, "--no-cache")
    assert code == 0 and "[network: connect" in out and "server " in out and "network " in out, out


def test_a_repeated_question_is_answered_from_the_cache_of_that_endpoint_and_model(capsys, server, home):
    first = json.loads(generate(capsys, server.url, "--json")[1])
    second = json.loads(generate(capsys, server.url, "--json")[1])
    assert first["cache"] == "miss" and second["cache"] == "exact"
    assert second["text"] == first["text"] and second["recipe_key"] == first["recipe_key"]
    other = json.loads(generate(capsys, server.url.replace("127.0.0.1", "localhost"), "--json")[1])
    assert other["cache"] == "miss" and other["recipe_key"] != first["recipe_key"]  # another endpoint, its own key


def test_the_api_key_is_sent_but_never_printed_or_stored(capsys, keyed_server, home, monkeypatch):
    monkeypatch.setenv("WB_CLI_KEY", KEY)
    outputs = []
    for flags in (["--json"], ["--json"], []):  # a miss, a hit, a text answer
        code, out, err = generate(capsys, keyed_server.url, "--api-key-env", "WB_CLI_KEY", *flags)
        assert code == 0, err
        outputs += [out, err]
    report = json.loads(outputs[0])
    assert report["recipe"]["api_key_env"] == "WB_CLI_KEY" and json.loads(outputs[2])["cache"] == "exact"
    monkeypatch.setenv("WB_CLI_KEY", KEY[::-1])
    code, out, err = generate(capsys, keyed_server.url, "--api-key-env", "WB_CLI_KEY")
    assert_usage_error(code, out, err, "--api-key-env", "refused the API key in WB_CLI_KEY")
    outputs += [out, err]
    assert not any(KEY in text or KEY[::-1] in text for text in outputs)
    rows = HistoryStore(home / "metrics.sqlite").recent()
    assert len(rows) >= 2
    stored = [f for f in home.rglob("*") if f.is_file()]
    assert stored and not any(KEY.encode() in f.read_bytes() for f in stored)


def test_every_mistake_is_one_line_naming_its_flag(capsys, server, keyed_server, monkeypatch):
    code, out, err = generate(capsys, f"http://127.0.0.1:{free_port()}/v1")
    assert_usage_error(code, out, err, "--model", "cannot reach the server at")
    code, out, err = generate(capsys, server.url, "--remote-model", "gpt-4")
    assert_usage_error(code, out, err, "--remote-model", "it serves: ")
    code, out, err = generate(capsys, keyed_server.url)
    assert_usage_error(code, out, err, "--api-key-env", "asks for an API key")
    monkeypatch.delenv("WB_CLI_UNSET", raising=False)
    code, out, err = generate(capsys, keyed_server.url, "--api-key-env", "WB_CLI_UNSET")
    assert_usage_error(code, out, err, "--api-key-env", "WB_CLI_UNSET is not set")
    code, out, err = generate(capsys, server.url, "--dtype", "int8")
    assert_usage_error(code, out, err, "--dtype", "a server runs its own weights")
    code, out, err = generate(capsys, "http://user:hunter2@127.0.0.1:1/v1")
    assert_usage_error(code, out, err, "--model", "must not hold credentials")
    assert "hunter2" not in err
    code, out, err = run_cli(capsys, "generate", "--prompt", PROMPT, "--remote-model", "x")
    assert_usage_error(code, out, err, "--remote-model", "is for a server's model")
    code, out, err = run_cli(capsys, "bench", "--model", server.url, "--eval")
    assert_usage_error(code, out, err, "--eval", "not available for a remote server")
    code, out, err = run_cli(capsys, "profile", "--model", server.url, "--prompt", PROMPT)
    assert_usage_error(code, out, err, "--model", "a server runs its turn elsewhere")
    code, out, err = run_cli(capsys, "distill", "--model", server.url, "--steps", "1")
    assert_usage_error(code, out, err, "--model", "a server's weights stay on the server")
    code, out, err = run_cli(capsys, "sweep", "--model", server.url)
    assert_usage_error(code, out, err, "--model", "a server runs one recipe of its own")


def cut_app() -> FastAPI:
    """A server whose stream drops after three chunks (no finish reason, no [DONE])."""
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "dropping", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        async def chunks():
            for word in ("Paris ", "is ", "the "):
                yield "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": word},
                                                          "finish_reason": None}]}) + "\n\n"
                await asyncio.sleep(0.02)
            raise RuntimeError("the stream drops here (a server that died mid-answer)")

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return app


def test_a_cut_stream_prints_the_partial_answer_marked_and_fails(capsys, home, monkeypatch):
    with running(cut_app()) as server:
        # The fixture server's own report of its dropped stream (uvicorn configures its logger as it starts).
        monkeypatch.setattr(logging.getLogger("uvicorn.error"), "disabled", True)
        code, out, err = generate(capsys, server.url, "--json")
        text_code, text_out, text_err = generate(capsys, server.url)
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("workbench: error: ")]
    assert len(errors) == 1 and "generation failed" in errors[0] and "cut after 3 chunks" in errors[0], err
    report = json.loads(out)
    assert report["cut"] is True and report["text"] == "Paris is the " and report["new_tokens"] == 3
    assert report["finish_reason"] == "error" and report["per_chunk"] is True and report["network"]["chunks"] == 3
    assert text_code == 1 and "Paris is the" in text_out and "CUT mid-answer" in text_out


def test_eval_of_a_server_measures_qa_and_says_perplexity_is_not_available(capsys, server, home):
    code, out, err = run_cli(capsys, "eval", "--model", server.url, "--qa-limit", "2", "--sets", "dev", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["perplexity"] is None and "not available for a remote server" in report["perplexity_problem"]
    assert report["qa_n"] == 2 and 0.0 <= report["qa_accuracy"] <= 1.0
    assert report["kl"] is None and report["agreement"] is None and report["agreement_problem"]
    code, out, err = run_cli(capsys, "eval", "--model", server.url, "--qa-limit", "1", "--sets", "dev")
    assert code == 0 and "perplexity: not available for a remote server" in out, err


def test_bench_measures_a_server(capsys, server, home):
    code, out, err = run_cli(capsys, "bench", "--model", server.url, "--runs", "2", "--warmup", "0",
                             "--max-new-tokens", "4", "--json")
    assert code == 0, err
    entry = json.loads(out)["results"][0]
    assert entry["runs"] == 2 and entry["ttft_ms"]["n"] == 2 and entry["new_tokens"] == 8  # exactly 4 each


def test_closed_loop_users_of_a_server_send_at_once_whatever_the_clients_batch_size(capsys, server, home):
    code, out, err = run_cli(capsys, "bench", "--model", server.url, "--runs", "2", "--warmup", "0",
                             "--concurrency", "3", "--max-new-tokens", "4", "--json")
    assert code == 0, err
    entry = json.loads(out)["results"][0]
    assert entry["batch_size"] == 1 and entry["scheduler"] == "continuous" and entry["runs"] == 6
    # One request after another, the answers' E2E would add up to less than the round's wall time; three users
    # sending at once overlap (the server, at batch 1, queues them).
    assert sum(run["e2e_ms"] for run in entry["per_run"]) > entry["wall_s"] * 1000, entry["per_run"]
