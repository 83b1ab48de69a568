"""Monitoring: per-recipe tables and series over the history, the Prometheus exporter (read from its registry,
over HTTP, and scraped by a real Prometheus server), the metrics-server command, TensorBoard scalars, and the
Monitor page in AppTest."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from workbench import metrics
from workbench.cli import main
from workbench.metrics import (
    HistoryFollower,
    HistoryStore,
    PrometheusExporter,
    RequestRecord,
    cache_table,
    summary_table,
    throughput_series,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def record(key: str, t: float, ttft: float, gap: float, tokens: int = 5, cache: str = "miss", queue: float = 0.01,
           origin: str = "chat") -> RequestRecord:
    """A request whose tokens come ``gap`` seconds apart after ``ttft``."""
    times = [ttft + i * gap for i in range(tokens)]
    return RequestRecord(key, f"recipe {key}", t, 12, tokens, ttft, times[-1], queue, cache=cache, origin=origin,
                         token_times=times)


def seeded_records(start: float = T0) -> list[RequestRecord]:
    """Two recipes with known latencies, and cache hits for the first whose latencies are far lower."""
    rng = np.random.default_rng(7)
    out = []
    for i in range(40):
        out.append(record("aaaa1111", start + i, float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.02, 0.08))))
        out.append(record("bbbb2222", start + i + 0.5, float(rng.uniform(0.05, 0.3)), 0.012, tokens=9, origin="cli"))
    out += [record("aaaa1111", start + 50 + i, 0.0005, 0.0001, cache="exact", queue=0.0) for i in range(5)]
    out.append(record("aaaa1111", start + 60, 0.0004, 0.0001, cache="semantic", queue=0.0))
    return out


def seed(store: HistoryStore, records: list[RequestRecord]) -> list[dict]:
    for r in records:
        store.add(r)
    return store.recent(limit=10_000)


@pytest.fixture
def history(tmp_path) -> tuple[HistoryStore, list[dict]]:
    store = HistoryStore(tmp_path / "metrics.sqlite")
    return store, seed(store, seeded_records())


# Tables and series ------------------------------------------------------------------------------------------


def test_summary_percentiles_match_numpy_and_keep_cache_hits_apart(history):
    _, rows = history
    table = {(t["recipe_key"], t["series"], t["measure"]): t for t in summary_table(rows)}
    misses = [r for r in rows if r["recipe_key"] == "aaaa1111" and r["cache"] == "miss"]
    for measure, field in (("TTFT", "ttft_s"), ("TPOT", "tpot_s"), ("E2E", "e2e_s"), ("Queue", "queue_s")):
        values = np.array([r[field] for r in misses]) * 1000
        entry = table[("aaaa1111", "model", measure)]
        assert entry["n"] == 40
        assert entry["mean_ms"] == pytest.approx(values.mean())
        for q in (50, 90, 95, 99):
            assert entry[f"p{q}_ms"] == pytest.approx(np.percentile(values, q))
    gaps = np.concatenate([np.diff(r["token_times"]) for r in misses]) * 1000
    itl = table[("aaaa1111", "model", "ITL")]
    assert itl["n"] == 40 * 4 and itl["p90_ms"] == pytest.approx(np.percentile(gaps, 90))
    hits = table[("aaaa1111", "cache hit", "E2E")]
    hit_e2e = np.array([r["e2e_s"] for r in rows if r["cache"] != "miss"]) * 1000
    assert hits["n"] == 6 and hits["p50_ms"] == pytest.approx(np.percentile(hit_e2e, 50))
    # The hits' sub-millisecond latencies never reach the model's figures.
    assert table[("aaaa1111", "model", "TTFT")]["p50_ms"] > 100 > hits["p99_ms"]
    assert ("bbbb2222", "cache hit", "E2E") not in table
    assert table[("bbbb2222", "model", "TPOT")]["p50_ms"] == pytest.approx(12.0)


def test_cache_table_counts_outcomes_per_recipe(history):
    _, rows = history
    by_key = {c["recipe_key"]: c for c in cache_table(rows)}
    assert by_key["aaaa1111"] == {"recipe": "recipe aaaa1111", "recipe_key": "aaaa1111", "requests": 46,
                                  "model": 40, "exact": 5, "semantic": 1, "hit_rate": pytest.approx(6 / 46)}
    assert by_key["bbbb2222"]["hit_rate"] == 0.0
    assert metrics.cache_hit_rate(rows) == pytest.approx(6 / 86)
    assert metrics.cache_hit_rate([]) is None


def test_throughput_counts_model_tokens_per_bucket():
    rows = [dict(recipe_key="k", recipe_label="k", started_at=T0 + s, queue_s=0.0, e2e_s=1.0, new_tokens=n,
                 cache=c) for s, n, c in ((0, 10, "miss"), (3, 20, "miss"), (12, 30, "miss"), (13, 99, "exact"))]
    series = throughput_series(rows, bucket_s=10)
    assert [(s["t"] - T0, s["tokens_per_s"], s["requests_per_s"]) for s in series] == [
        (0, pytest.approx(3.0), pytest.approx(0.2)), (10, pytest.approx(3.0), pytest.approx(0.1))]
    assert throughput_series([r for r in rows if r["cache"] != "miss"]) == []
    assert metrics.bucket_seconds(60) == 5 and metrics.bucket_seconds(86400) == 3600


def test_filters_and_exports(history):
    _, rows = history
    assert {r["recipe_key"] for r in metrics.filter_rows(rows, ["bbbb2222"])} == {"bbbb2222"}
    assert {r["origin"] for r in metrics.filter_rows(rows, origins=["cli"])} == {"cli"}
    assert len(metrics.filter_rows(rows, since=T0 + 50)) == 6
    csv_text = metrics.rows_csv(rows)
    lines = csv_text.splitlines()
    assert lines[0].startswith("id,recipe_key,") and len(lines) == len(rows) + 1
    doc = json.loads(metrics.rows_json(rows, window="All time"))
    assert doc["window"] == "All time" and len(doc["requests"]) == len(rows)
    assert doc["requests"][0]["token_times"] == rows[0]["token_times"]
    assert {s["measure"] for s in doc["summary"]} >= {"TTFT", "TPOT", "E2E"}


# Prometheus exporter ----------------------------------------------------------------------------------------


def sample(exporter: PrometheusExporter, name: str, **labels) -> float | None:
    return exporter.registry.get_sample_value(name, labels)


def test_exporter_histograms_and_counters_after_known_records():
    exporter = PrometheusExporter()
    records = seeded_records()
    for r in records:
        exporter.record(r)
    a = dict(recipe="aaaa1111", label="recipe aaaa1111")
    misses = [r for r in records if r.recipe_key == "aaaa1111" and r.cache == "miss"]
    assert sample(exporter, "workbench_ttft_seconds_count", **a) == 40
    assert sample(exporter, "workbench_ttft_seconds_sum", **a) == pytest.approx(sum(r.ttft_s for r in misses))
    assert sample(exporter, "workbench_ttft_seconds_bucket", **a, le="0.5") == sum(r.ttft_s <= 0.5 for r in misses)
    assert sample(exporter, "workbench_tpot_seconds_sum", **a) == pytest.approx(sum(r.tpot_s for r in misses))
    assert sample(exporter, "workbench_itl_seconds_count", **a) == 40 * 4
    assert sample(exporter, "workbench_e2e_seconds_sum", **a) == pytest.approx(sum(r.e2e_s for r in misses))
    assert sample(exporter, "workbench_queue_seconds_count", **a) == 40
    assert sample(exporter, "workbench_requests_total", **a, cache="miss", origin="chat") == 40
    assert sample(exporter, "workbench_requests_total", **a, cache="exact", origin="chat") == 5
    assert sample(exporter, "workbench_cache_hits_total", **a, kind="exact") == 5
    assert sample(exporter, "workbench_cache_hits_total", **a, kind="semantic") == 1
    assert sample(exporter, "workbench_cache_hit_e2e_seconds_count", **a) == 6
    assert sample(exporter, "workbench_generated_tokens_total", **a) == 40 * 5  # the hits' tokens are not counted
    assert sample(exporter, "workbench_prompt_tokens_total", **a) == 40 * 12
    b = dict(recipe="bbbb2222", label="recipe bbbb2222")
    assert sample(exporter, "workbench_cache_hits_total", **b, kind="exact") == 0  # a zero series, not none
    assert sample(exporter, "workbench_generated_tokens_total", **b) == 40 * 9
    assert sample(exporter, "process_resident_memory_bytes") > 0
    text = exporter.text()
    assert 'workbench_requests_total{cache="miss",label="recipe bbbb2222",origin="cli",recipe="bbbb2222"} 40.0' in text


def test_history_store_feeds_listeners_and_the_http_endpoint(tmp_path):
    exporter = PrometheusExporter(process_metrics=False)
    metrics.add_listener(exporter.record)
    metrics.add_listener(exporter.record)  # once per listener, however often added
    try:
        store = HistoryStore(tmp_path / "m.sqlite")
        store.add(record("cccc3333", T0, 0.2, 0.05))
        store.add(record("cccc3333", T0 + 1, 0.3, 0.05))
    finally:
        metrics.remove_listener(exporter.record)
    store.add(record("cccc3333", T0 + 2, 0.4, 0.05))  # after removal: not counted
    server = exporter.serve(0, "127.0.0.1")
    try:
        port = server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'workbench_ttft_seconds_count{label="recipe cccc3333",recipe="cccc3333"} 2.0' in body
    assert 'workbench_ttft_seconds_sum{label="recipe cccc3333",recipe="cccc3333"} 0.5' in body


def test_a_failing_listener_never_loses_the_record(tmp_path):
    def broken(rec):
        raise RuntimeError("boom")

    metrics.add_listener(broken)
    try:
        store = HistoryStore(tmp_path / "m.sqlite")
        store.add(record("dddd4444", T0, 0.2, 0.05))
    finally:
        metrics.remove_listener(broken)
    assert store.count() == 1


def test_follower_replays_history_then_follows_new_rows(tmp_path):
    path = tmp_path / "m.sqlite"
    HistoryStore(path).add(record("eeee5555", T0, 0.2, 0.05))
    exporter = PrometheusExporter(process_metrics=False)
    follower = HistoryFollower(HistoryStore(path), exporter)
    assert follower.poll() == 1
    HistoryStore(path).add(record("eeee5555", T0 + 1, 0.3, 0.05))  # "another process"
    assert follower.poll() == 1 and follower.poll() == 0
    e = dict(recipe="eeee5555", label="recipe eeee5555")
    assert sample(exporter, "workbench_ttft_seconds_sum", **e) == pytest.approx(0.5)
    fresh = HistoryFollower(HistoryStore(path), PrometheusExporter(process_metrics=False), from_start=False)
    assert fresh.poll() == 0


def test_exporter_address_from_env(monkeypatch):
    monkeypatch.delenv(metrics.METRICS_PORT_ENV, raising=False)
    monkeypatch.delenv(metrics.METRICS_HOST_ENV, raising=False)
    assert metrics.exporter_address_from_env() == ("127.0.0.1", 9464)
    monkeypatch.setenv(metrics.METRICS_PORT_ENV, "off")
    assert metrics.exporter_address_from_env()[1] is None
    monkeypatch.setenv(metrics.METRICS_PORT_ENV, "http")
    with pytest.raises(ValueError, match=metrics.METRICS_PORT_ENV):
        metrics.exporter_address_from_env()


# The metrics-server command ---------------------------------------------------------------------------------


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            last = predicate()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout_s} s (last: {str(last)[-500:]})")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_metrics_server_serves_the_history_and_follows_other_processes(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    store = HistoryStore(home / "metrics.sqlite")
    store.add(record("ffff6666", T0, 0.25, 0.05))
    port = free_port()
    env = {**os.environ, "WORKBENCH_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "metrics-server", "--port", str(port),
                             "--interval", "0.5"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        line = 'workbench_ttft_seconds_count{label="recipe ffff6666",recipe="ffff6666"}'
        wait_for(lambda: f"{line} 1.0" in fetch(url), 60, "the replayed request is served", proc)
        store.add(record("ffff6666", T0 + 1, 0.35, 0.05))  # written while the server runs
        wait_for(lambda: f"{line} 2.0" in fetch(url), 30, "a new request is served", proc)
        assert 'workbench_ttft_seconds_sum{label="recipe ffff6666",recipe="ffff6666"} 0.6' in fetch(url)
    finally:
        stop(proc)
    assert f"serving http://127.0.0.1:{port}/metrics (1 requests" in proc.stderr.read()


def test_metrics_server_port_in_use_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["metrics-server", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error: --port: cannot listen on 127.0.0.1:") and err.count("\n") == 1
    assert main(["metrics-server", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


# A real Prometheus server -----------------------------------------------------------------------------------


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or next((p for p in ("/usr/bin/prometheus",) if Path(p).exists()), None)


def prom_query(base: str, query: str) -> list:
    reply = json.loads(fetch(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"))
    assert reply["status"] == "success", reply
    return reply["data"]["result"]


def test_a_real_prometheus_scrapes_the_exporter(tmp_path):
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("the prometheus binary is not installed (apt-get install prometheus; `make test` does)")
    exporter = PrometheusExporter()
    for r in seeded_records():
        exporter.record(r)
    server = exporter.serve(0, "127.0.0.1")
    target = f"127.0.0.1:{server.server_address[1]}"
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                      f"  - job_name: workbench\n    static_configs:\n      - targets: ['{target}']\n")
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        query = 'workbench_requests_total{recipe="aaaa1111",cache="exact"}'
        result = wait_for(lambda: prom_query(base, query), 90, "Prometheus scraped the exporter", proc)
        assert float(result[0]["value"][1]) == 5
        assert result[0]["metric"]["job"] == "workbench"
        ttft_sum = prom_query(base, 'workbench_ttft_seconds_sum{recipe="bbbb2222"}')
        expected = sum(r.ttft_s for r in seeded_records() if r.recipe_key == "bbbb2222")
        assert float(ttft_sum[0]["value"][1]) == pytest.approx(expected)
        # The dashboard's quantile query: the median TPOT of recipe bbbb2222 (every TPOT is 12 ms) lies in the
        # histogram bucket (0.01, 0.015].
        p50 = prom_query(base, 'histogram_quantile(0.5, sum by (le) (workbench_tpot_seconds_bucket'
                               '{recipe="bbbb2222"}))')
        assert 0.01 < float(p50[0]["value"][1]) <= 0.015
        # Every query of the Grafana dashboard is valid PromQL to this server (Grafana's variables filled in).
        for expr in dashboard_queries():
            expr = expr.replace("$__rate_interval", "1m").replace("$__range", "5m").replace("$recipe", ".*")
            prom_query(base, expr)
    finally:
        stop(proc)
        server.shutdown()
        server.server_close()


def dashboard_queries() -> list[str]:
    dashboard = json.loads((ROOT / "assets" / "grafana" / "workbench-dashboard.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_and_scrape_config_are_valid():
    import yaml

    exprs = dashboard_queries()
    assert any("histogram_quantile" in e and "workbench_ttft_seconds_bucket" in e for e in exprs)
    assert any("workbench_tpot_seconds_bucket" in e for e in exprs)
    assert any("workbench_e2e_seconds_bucket" in e for e in exprs)
    assert any("workbench_generated_tokens_total" in e for e in exprs)
    assert any("workbench_cache_hits_total" in e for e in exprs)
    scrape = yaml.safe_load((ROOT / "assets" / "grafana" / "prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert "127.0.0.1:9464" in targets


# TensorBoard (optional extra) -------------------------------------------------------------------------------


def test_tensorboard_writer_writes_the_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install .[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = metrics.TensorBoardWriter(tmp_path / "tb")
    writer.record(record("gggg7777", T0, 0.2, 0.05))
    writer.record(record("gggg7777", T0 + 1, 0.4, 0.05))
    writer.record(record("gggg7777", T0 + 2, 0.001, 0.0001, cache="exact"))
    writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    ttft = events.Scalars("ttft_ms/recipe_gggg7777")
    assert [(e.step, round(e.value, 3)) for e in ttft] == [(1, 200.0), (2, 400.0)]
    assert [e.value for e in events.Scalars("cache_hit/recipe_gggg7777")] == [0.0, 0.0, 1.0]
    assert len(events.Scalars("cache_hit_e2e_ms/recipe_gggg7777")) == 1
    assert ttft[0].wall_time == pytest.approx(T0)


def test_tensorboard_env_var_turns_it_on(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install .[tensorboard])")
    logdir = tmp_path / "tb"
    monkeypatch.setenv(metrics.TENSORBOARD_ENV, str(logdir))
    monkeypatch.setattr(metrics, "_env_listeners_added", False)
    before = list(metrics._listeners)
    try:
        HistoryStore(tmp_path / "m.sqlite").add(record("hhhh8888", T0, 0.2, 0.05))
        added = [fn for fn in metrics._listeners if fn not in before]
        assert len(added) == 1
        assert list(logdir.glob("events.out.tfevents.*"))
    finally:
        for fn in list(metrics._listeners):
            if fn not in before:
                metrics.remove_listener(fn)
                fn.__self__.close()
    monkeypatch.setenv(metrics.TENSORBOARD_ENV, "0")
    assert metrics.tensorboard_dir_from_env() is None
