"""``workbench metrics-server``: the history served to Prometheus, following requests of other processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from processes import fetch, free_port, stop, wait_for
from records import T0, record

from workbench.cli.main import main
from workbench.observe.history import HistoryStore

ROOT = Path(__file__).resolve().parents[2]


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
