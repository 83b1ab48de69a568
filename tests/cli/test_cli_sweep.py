"""``workbench sweep`` on the tiny model: JSON with recipes and frontier, a re-run measures nothing, bad grids
answer in one line. Driven through ``add_parser`` / ``run`` on a parser of the test's own."""

from __future__ import annotations

import argparse
import json

import pytest
from commands import assert_usage_error

from workbench.cli import sweep

FAST = ["--rounds", "1", "--runs", "1", "--warmup", "0", "--max-new-tokens", "4", "--max-eval-tokens", "64",
        "--qa-limit", "2", "--agreement-tokens", "4", "--agreement-prompts", "2"]


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))


def run_sweep(capsys, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="workbench")
    sweep.add_parser(parser.add_subparsers(dest="command"))
    code = sweep.run(parser.parse_args(["sweep", *map(str, argv)]))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def grid_file(tmp_path, tiny_model_dir):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"model": str(tiny_model_dir), "device": "cpu", "blocks": [
        {"dtype": ["fp32"], "prune": [{"method": "none"}, {"method": "layers", "ratio": 0.5}]},
        {"dtype": ["int8"], "backend": ["no-such-backend"]},
    ]}))
    return path


def test_sweep_json_has_recipes_and_frontier_and_resumes(capsys, grid_file):
    code, out, err = run_sweep(capsys, "--grid", grid_file, "--json", *FAST)
    assert code == 0, err
    report = json.loads(out)
    assert report["measured"] == 2 and len(report["recipes"]) == 2
    for row in report["recipes"]:
        assert {"recipe", "key", "decode_tok_s", "ttft_ms", "weight_bytes", "peak_rss_mb", "speedup", "perplexity",
                "qa_accuracy", "agreement"} <= set(row)
        assert row["decode_tok_s"] > 0 and row["perplexity"] > 1
    assert report["frontier"] and {f["key"] for f in report["frontier"]} <= {r["key"] for r in report["recipes"]}
    assert report["skipped"][0]["reason"].startswith("--backend: ")
    assert "[1/2] round 1" in err  # progress, with the recipe being measured
    code, out, err = run_sweep(capsys, "--grid", grid_file, "--json", *FAST)
    assert code == 0 and json.loads(out)["measured"] == 0  # everything stored: nothing measured again


def test_sweep_table_names_the_fastest_recipe_within_n_points(capsys, grid_file):
    code, out, _ = run_sweep(capsys, "--grid", grid_file, "--within", "100", *FAST)
    assert code == 0
    assert "speed-up" in out and "frontier" in out
    assert "within 100 points of the baseline's QA accuracy" in out
    assert "skipped" in out and "no-such-backend" in out


def test_a_bad_grid_is_one_line(capsys, tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"blocks": [{"dtype": "fp99"}]}))
    assert_usage_error(*run_sweep(capsys, "--grid", path), "--grid", "unknown dtype 'fp99'")
    assert_usage_error(*run_sweep(capsys, "--grid", tmp_path / "none.json"), "--grid", "not found")


def test_the_sweep_parser_loads_no_model_library():
    import subprocess
    import sys

    code = ("import sys, argparse, workbench.cli.sweep as s; s.add_parser(argparse.ArgumentParser()"
            ".add_subparsers()); print(sorted(m for m in ('torch', 'transformers', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
