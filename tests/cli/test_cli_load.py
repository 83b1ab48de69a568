"""``workbench bench --request-rate``: Poisson load against a real server on loopback (the workbench's own, on the
tiny model, with and without its response cache) and against the tiny model here; bad load flags are one line."""

from __future__ import annotations

import json
from contextlib import contextmanager

import pytest
from commands import assert_usage_error, run_cli
from processes import free_port

from workbench.response_cache.answers import CachedAnswers, ReplayRequest
from workbench.response_cache.disk import ResponseCache
from workbench.response_cache.keys import CachePolicy
from workbench.serving.engine import Engine
from workbench.serving.http import HttpServer, create_app

TOKENS = 4


# The servers of tests/cli/test_cli_remote.py: the workbench's own app over the tiny model, on loopback.


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


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A WORKBENCH_HOME of this test's own."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def bench_json(capsys, *flags):
    code, out, err = run_cli(capsys, "bench", "--max-new-tokens", TOKENS, "--warmup", 0, "--json", *flags)
    assert code == 0, err
    return json.loads(out, parse_constant=reject)  # strict JSON: an infinite rate is written "inf"


def reject(name: str):
    raise AssertionError(f"not strict JSON: {name}")


def assert_consistent(entry: dict, asked: int) -> None:
    """What every load entry must hold, whatever the machine's speed."""
    lo = entry["load"]
    requests = lo["requests"]
    assert requests["scheduled"] == asked
    assert requests["finished"] + requests["failed"] + requests["cut"] == requests["sent"] <= asked
    assert lo["goodput"]["requests_ok"] <= requests["finished"]
    assert lo["goodput"]["share"] == pytest.approx(lo["goodput"]["requests_ok"] / requests["finished"])
    assert lo["goodput"]["req_s"] == pytest.approx(lo["goodput"]["requests_ok"] / lo["duration_s"])
    assert lo["request_throughput"] == pytest.approx(requests["finished"] / lo["duration_s"])
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms"):
        summary = lo[key]
        assert summary["p50"] <= summary["p90"] <= summary["p95"] <= summary["p99"]
    assert lo["ttft_ms"]["n"] == requests["finished"] == entry["runs"]
    assert lo["ttft_ms"]["p50"] <= lo["e2e_ms"]["p50"]
    assert entry["new_tokens"] == TOKENS * requests["finished"]  # exactly --max-new-tokens each
    assert lo["achieved_rate"] is None or lo["achieved_rate"] > 0


def test_two_rates_against_a_server(capsys, server, home):
    report = bench_json(capsys, "--model", server.url, "--request-rate", "4,inf", "--num-requests", 5,
                        "--concurrency", 3, "--ttft-slo-ms", 60_000, "--tpot-slo-ms", 60_000, "--seed", 3)
    assert report["mode"] == "poisson" and report["request_rates"] == [4.0, "inf"]
    entries = report["results"]
    assert [e["load"]["request_rate"] for e in entries] == [4.0, "inf"]
    for entry in entries:
        lo = entry["load"]
        assert lo["mode"] == "poisson" and lo["concurrency"] == 3 and lo["max_in_flight"] <= 3
        assert entry["recipe"]["runtime"] == "remote" and entry["scheduler"] == "continuous"
        assert_consistent(entry, 5)
        assert lo["requests"]["finished"] == 5 and lo["goodput"]["requests_ok"] == 5  # a minute each: all meet it
        assert lo["goodput"]["ttft_slo_ms"] == 60_000 and lo["goodput"]["tpot_slo_ms"] == 60_000


def test_the_human_table_has_one_row_per_rate(capsys, server, home):
    code, out, err = run_cli(capsys, "bench", "--model", server.url, "--request-rate", "8,inf", "--num-requests", 3,
                             "--max-new-tokens", TOKENS, "--warmup", 0, "--ttft-slo-ms", 60_000)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["rate", "achieved"] and "goodput" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["8/s", "inf/s"]
    assert all("3/3 (100%" in line for line in lines[1:])


def test_a_servers_response_cache_never_answers_the_load(capsys, tiny_engine, home, tmp_path):
    hits = []
    cached = CachedAnswers(ResponseCache(tmp_path / "responses"), CachePolicy())

    def answer(engine, messages, settings, origin):
        handle = cached.ask(engine, messages, settings, origin)
        hits.append(isinstance(handle, ReplayRequest))
        return handle

    with running(create_app(tiny_engine, max_queue=16, answer=answer)) as caching:
        for _ in range(2):  # the same prompts twice: a cache would answer the second time, in no time
            entry = bench_json(capsys, "--model", caching.url, "--request-rate", "inf", "--num-requests", 6,
                               "--concurrency", 2, "--tpot-slo-ms", 60_000)["results"][0]
            assert_consistent(entry, 6)
    assert len(hits) == 12 and not any(hits)


def test_two_rates_on_a_local_model(capsys, tiny, home):
    report = bench_json(capsys, *tiny, "--request-rate", "20,inf", "--num-requests", 4, "--concurrency", 2,
                        "--ttft-slo-ms", 60_000, "--batch-sizes", 2)
    for entry, rate in zip(report["results"], (20.0, "inf"), strict=True):
        lo = entry["load"]
        assert lo["request_rate"] == rate and entry["batch_size"] == 2 and entry["scheduler"] == "static"
        assert_consistent(entry, 4)
        assert lo["requests"]["finished"] == 4 and lo["max_in_flight"] <= 2


def test_a_duration_bound_says_what_was_sent(capsys, tiny, home):
    # One request a second on average, 0.5 s to send in: the first goes at 0, few (if any) follow.
    entry = bench_json(capsys, *tiny, "--request-rate", "1", "--num-requests", 50, "--duration-s", 0.5,
                       "--ttft-slo-ms", 60_000)["results"][0]
    lo = entry["load"]
    assert lo["ended_by"] == "duration" and lo["duration_limit_s"] == 0.5
    assert 1 <= lo["requests"]["sent"] < 50
    assert_consistent(entry, 50)


@pytest.mark.parametrize(("flags", "flag", "allowed"), [
    (["--request-rate", "0"], "--request-rate", "above 0"),
    (["--request-rate", "1,-2"], "--request-rate", "above 0"),
    (["--request-rate", "fast"], "--request-rate", "such as 0.5,2"),
    (["--request-rate", "1", "--num-requests", "0"], "--num-requests", "from 1 to"),
    (["--num-requests", "5"], "--num-requests", "applies with a request rate"),
    (["--request-rate", "1", "--duration-s", "0"], "--duration-s", "above 0"),
    (["--ttft-slo-ms", "-1"], "--ttft-slo-ms", "above 0"),
    (["--request-rate", "2", "--tpot-slo-ms", "0"], "--tpot-slo-ms", "above 0"),
    (["--request-rate", "2", "--concurrency", "0"], "--concurrency", "1 or more"),
])
def test_bad_load_flags_are_one_line_naming_the_flag(capsys, tiny, flags, flag, allowed):
    code, out, err = run_cli(capsys, "bench", *tiny, *flags)
    assert_usage_error(code, out, err, flag, allowed)


def test_a_servers_load_test_is_greedy(capsys, server):
    code, out, err = run_cli(capsys, "bench", "--model", server.url, "--request-rate", "1", "--temperature", "0.7")
    assert_usage_error(code, out, err, "--temperature", "greedy")
