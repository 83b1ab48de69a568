"""``workbench serve``: the real command in a child process answering the official ``openai`` client, stopped by
Ctrl-C; bad flags, a missing key variable and a taken port are one line and exit 2."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from commands import assert_usage_error, run_cli
from processes import free_port, stop, wait_for

from workbench.observe.history import HistoryStore

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "WORKBENCH_TEST_SERVE_KEY"
KEY = "k3y-for-this-test-only"


def start(home: Path, *argv) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(home), KEY_ENV: KEY}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "serve", "--port", str(port), *map(str, argv)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, port


def ready(proc: subprocess.Popen, port: int, timeout_s: float) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(healthy, timeout_s, "the server is ready", proc)


def interrupt(proc: subprocess.Popen) -> tuple[int, str, str]:
    """Ctrl-C, as a terminal sends it; (exit status, stdout, stderr)."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def ask(port: int, key: str = KEY):
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=120)
    return api, api.models.list().data[0].id


def test_serve_answers_the_openai_client_and_stops_on_ctrl_c(tmp_path, tiny):
    proc, port = start(tmp_path, *tiny, "--device", "cpu", "--api-key-env", KEY_ENV, "--batch-size", "2")
    try:
        ready(proc, port, 180)
        api, name = ask(port)
        whole = api.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hello!"}],
                                            max_tokens=8, extra_body={"ignore_eos": True})
        assert whole.usage.completion_tokens == 8 and whole.model_extra["timings"]["predicted_n"] == 8
        streamed = list(api.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
            whole.choices[0].message.content
        assert streamed[-1].usage.completion_tokens == 8
        with pytest.raises(openai.AuthenticationError):
            ask(port, key="not-the-key")
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert f'recipe="{name}"' in metrics and "workbench_serve_running_requests" in metrics
        code, out, err = interrupt(proc)
    finally:
        if proc.poll() is None:
            stop(proc)
    assert code == 0, err
    assert out == f"http://127.0.0.1:{port}/v1\n"
    assert "server stopped" in err and "Traceback" not in err and KEY not in out + err
    history = HistoryStore(tmp_path / "metrics.sqlite")
    rows = history.recent()
    assert [r["origin"] for r in rows] == ["serve", "serve"]  # the streamed one was a cache hit, recorded too
    assert [r["cache"] for r in rows] == ["miss", "exact"]


@pytest.mark.slow
def test_serve_runs_the_embedded_model_under_llama_cpp(tmp_path):
    proc, port = start(tmp_path, "--runtime", "llama.cpp", "--dtype", "q8_0", "--device", "cpu", "--no-cache",
                       "--served-model-name", "smollm2-q8")
    try:
        ready(proc, port, 600)
        api, name = ask(port)
        assert name == "smollm2-q8"  # the name given, as vLLM's --served-model-name
        answer = api.chat.completions.create(model=name, messages=[{"role": "user", "content": "What is 2 + 2?"}],
                                             max_tokens=16)
        assert answer.choices[0].message.content.strip() and answer.model == "smollm2-q8"
        key = api.models.list().data[0].model_extra["recipe_key"]
        by_key = api.chat.completions.create(model=key, messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
        assert by_key.choices[0].message.content is not None  # the recipe's key still names it
        timings = answer.model_extra["timings"]
        assert timings["predicted_n"] == answer.usage.completion_tokens and timings["prompt_ms"] > 0
        code, _, err = interrupt(proc)
    finally:
        if proc.poll() is None:
            stop(proc)
    assert code == 0, err


@pytest.mark.parametrize("argv, flag, allowed", [
    (["--port", "70000"], "--port", "from 0 to 65535"),
    (["--max-queue", "-1"], "--max-queue", "0 or more"),
    (["--scheduler", "fast"], "--scheduler", "static"),
    (["--api-key-env", "WORKBENCH_TEST_UNSET_VARIABLE"], "--api-key-env", "not set"),
    (["--api-key-env", "sk-a key"], "--api-key-env", "not an environment variable name"),
    (["--model", "http://127.0.0.1:9/v1"], "--model", "local source"),
    (["--runtime", "remote"], "--runtime", "transformers, llama.cpp"),
    (["--served-model-name", "my model"], "--served-model-name", "no spaces"),
    (["--max-new-tokens", "100000"], "--max-new-tokens", "8192"),
])
def test_bad_serve_flags_are_one_line(capsys, argv, flag, allowed):
    os.environ.pop("WORKBENCH_TEST_UNSET_VARIABLE", None)
    assert_usage_error(*run_cli(capsys, "serve", *argv), flag, allowed)


def test_a_taken_port_is_one_line_before_any_model_loads(capsys, tiny):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = run_cli(capsys, "serve", *tiny, "--port", port)
    assert_usage_error(code, out, err, "--port", "cannot listen on 127.0.0.1")
    assert "[" not in err  # no build stage was printed: nothing was loaded
