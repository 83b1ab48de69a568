"""The response cache from the command line: generate's hits (without building the model), stats, clear."""

import json
import os

from answers import asides
from commands import run_cli, run_module

from workbench.observe.history import HistoryStore
from workbench.response_cache.keys import DEFAULT_THRESHOLD


def test_cli_cache_stats_reports_a_broken_directory_without_a_traceback(capsys, workbench_home, monkeypatch,
                                                                       tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    (tmp_path / "responses").mkdir()
    (tmp_path / "responses" / "cache.db").write_bytes(b"\x00garbage" * 512)
    code, out, err = run_cli(capsys, "cache", "stats", "--json")
    assert code == 0 and "Traceback" not in err
    assert err.startswith("workbench: warning: The response cache in") and "moved to" in err
    assert json.loads(out)["entries"] == 0 and len(asides(tmp_path / "responses")) == 1


def test_hit_after_restart_in_a_new_process_and_no_cache_bypasses(tiny, tmp_path):
    env = {**os.environ, "WORKBENCH_HOME": str(tmp_path)}
    prompt = ["--prompt", "Say something new.", "--max-new-tokens", 7, "--json"]
    first = run_module("generate", *tiny, *prompt, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_module("generate", *tiny, *prompt, env=env)  # a new process reads the cache from disk
    assert second.returncode == 0, second.stderr[-2000:]
    miss, hit = json.loads(first.stdout), json.loads(second.stdout)
    assert miss["cache"] == "miss" and miss["cache_hit"] is None
    assert hit["cache"] == "exact" and hit["text"] == miss["text"] and hit["new_tokens"] == miss["new_tokens"]
    assert hit["model"] == miss["model"] and hit["recipe_key"] == miss["recipe_key"]
    assert hit["cache_hit"]["kind"] == "exact" and hit["cache_hit"]["lookup_ms"] > 0
    assert "Building" not in second.stderr and "Ready" not in second.stderr  # no model was built for the hit
    bypass = run_module("generate", *tiny, *prompt, "--no-cache", env=env)
    assert bypass.returncode == 0 and json.loads(bypass.stdout)["cache"] == "miss"
    stats = json.loads(run_module("cache", "stats", "--json", env=env).stdout)
    assert stats["hits"]["exact"] == 1 and stats["misses"] == 1 and stats["entries"] == 1  # --no-cache: no lookup
    cleared = run_module("cache", "clear", "--json", env=env)
    assert cleared.returncode == 0 and json.loads(cleared.stdout)["cleared"] == 1
    rows = [r["cache"] for r in HistoryStore(tmp_path / "metrics.sqlite").recent()]
    assert rows == ["miss", "exact", "miss"]


def test_cli_cache_stats_and_clear_text(capsys, tiny):
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Cache this one.", "--max-new-tokens", 5)
    assert code == 0 and "cache miss" in out
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Cache this one.", "--max-new-tokens", 5)
    assert code == 0 and out.rstrip().splitlines()[-1].startswith("[cache exact hit · lookup ")
    code, out, _ = run_cli(capsys, "cache", "stats")
    assert code == 0 and "hit rate" in out and "model time saved" in out
    code, out, _ = run_cli(capsys, "cache", "clear")
    assert code == 0 and out.startswith("removed ")
    code, out, _ = run_cli(capsys, "cache", "stats", "--json")
    assert json.loads(out)["entries"] == 0


def test_cli_cache_needs_an_action(capsys):
    code, out, err = run_cli(capsys, "cache", "flush")
    assert code == 2 and out == "" and err.startswith("workbench: error: action: invalid choice")


def test_cli_semantic_flag_reuses_a_reworded_question(capsys, tiny):
    ask_cli = ["generate", *tiny, "--max-new-tokens", 4, "--json"]
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why is the sky blue?")
    assert code == 0 and json.loads(out)["cache"] == "miss"
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why does the sky look blue?")
    assert code == 0 and json.loads(out)["cache"] == "miss"  # exact only by default: the model answers
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why does the sky appear blue?", "--semantic")
    report = json.loads(out)
    assert code == 0 and report["cache"] == "semantic"
    assert report["cache_hit"]["matched_question"] in ("Why is the sky blue?", "Why does the sky look blue?")
    assert report["cache_hit"]["similarity"] >= DEFAULT_THRESHOLD
    code, out, _ = run_cli(capsys, *ask_cli, "--prompt", "Why isn't the sky blue?", "--semantic")
    assert code == 0 and json.loads(out)["cache"] == "miss"  # the negation guard
