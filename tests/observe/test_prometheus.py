"""The Prometheus exporter: read from its registry, fed by every history store, over HTTP, following the history
of other processes, and scraped by a real Prometheus server; the Grafana dashboard's queries."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from processes import fetch, free_port, stop, wait_for
from records import T0, record, seeded_records

from workbench.observe import listeners, prometheus
from workbench.observe.history import HistoryStore
from workbench.observe.prometheus import HistoryFollower, PrometheusExporter

ROOT = Path(__file__).resolve().parents[2]


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
    listeners.add_listener(exporter.record)
    listeners.add_listener(exporter.record)  # once per listener, however often added
    try:
        store = HistoryStore(tmp_path / "m.sqlite")
        store.add(record("cccc3333", T0, 0.2, 0.05))
        store.add(record("cccc3333", T0 + 1, 0.3, 0.05))
        store.flush()  # listeners are told on the history's writer thread
    finally:
        listeners.remove_listener(exporter.record)
    store.add(record("cccc3333", T0 + 2, 0.4, 0.05))  # after removal: not counted
    store.flush()
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

    listeners.add_listener(broken)
    try:
        store = HistoryStore(tmp_path / "m.sqlite")
        store.add(record("dddd4444", T0, 0.2, 0.05))
    finally:
        listeners.remove_listener(broken)
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
    monkeypatch.delenv(prometheus.METRICS_PORT_ENV, raising=False)
    monkeypatch.delenv(prometheus.METRICS_HOST_ENV, raising=False)
    assert prometheus.exporter_address_from_env() == ("127.0.0.1", 9464)
    monkeypatch.setenv(prometheus.METRICS_PORT_ENV, "off")
    assert prometheus.exporter_address_from_env()[1] is None
    monkeypatch.setenv(prometheus.METRICS_PORT_ENV, "http")
    with pytest.raises(ValueError, match=prometheus.METRICS_PORT_ENV):
        prometheus.exporter_address_from_env()


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


def test_a_damaged_row_is_skipped_and_the_follower_goes_on(tmp_path):
    import sqlite3

    path = tmp_path / "m.sqlite"
    store = HistoryStore(path)
    for i in range(3):
        store.add(record("eeee5555", T0 + i, 0.2, 0.05))
    store.flush()
    with sqlite3.connect(path) as db:  # edited by hand: times that are not a list, figures that are not numbers
        db.execute("UPDATE requests SET token_times = '{' WHERE id = 1")
        db.execute("UPDATE requests SET recipe_label = NULL, ttft_s = 'x', new_tokens = 'many' WHERE id = 2")
    assert [r["token_times"] for r in store.after(0)][0] == []  # the unreadable times alone are left out
    exporter = PrometheusExporter(process_metrics=False)
    follower = HistoryFollower(store, exporter)
    assert follower.poll() == 3 and follower.last_id == 3
    store.add(record("eeee5555", T0 + 3, 0.2, 0.05))
    assert follower.poll() == 1
    assert sample(exporter, "workbench_requests_total", recipe="eeee5555", label="recipe eeee5555", cache="miss",
                  origin="chat") >= 3  # the row without its times counts; the one that is not numbers may not
