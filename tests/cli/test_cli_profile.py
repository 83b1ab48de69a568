"""``workbench profile`` through its own ``run(args)``: the JSON report's keys, the text table, bad input."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from workbench.cli import profile as profile_cli
from workbench.cli.parser import UsageError


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="workbench")
    profile_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def test_json_report_has_the_contract_keys(tiny, capsys):
    args = parse(["profile", *tiny, "--device", "cpu", "--prompt", "Hello there", "--max-new-tokens", "8",
                  "--json"])
    assert profile_cli.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"e2e_ms", "parts", "unaccounted_ms", "modules", "ops", "trace", "counters", "model"} <= set(report)
    assert report["e2e_ms"] > 0 and "unaccounted_ms" not in report["parts"]
    assert {"tokenize", "queue", "prefill", "decode", "sampling", "detokenize", "cache_lookup"} <= set(report["parts"])
    assert report["cache"] == "miss"  # the response cache applies to a greedy turn: its lookup is a part
    assert abs(sum(report["parts"].values()) + report["unaccounted_ms"] - report["e2e_ms"]) < 0.01
    assert "traceEvents" in json.loads(Path(report["trace"]).read_text())
    assert {m["name"] for m in report["modules"]} >= {"attention", "mlp", "lm_head", "norms"}


def test_text_report_and_no_cache(tiny, capsys):
    args = parse(["profile", *tiny, "--device", "cpu", "--prompt", "Hello", "--max-new-tokens", "4",
                  "--no-cache", "--no-trace", "--warmup", "0"])
    assert profile_cli.run(args) == 0
    out = capsys.readouterr().out
    assert "E2E (measured)" in out and "unaccounted" in out and "cache off" in out
    assert "response-cache lookup" not in out and "trace:" not in out


def test_an_empty_prompt_is_refused_with_one_line(tiny):
    with pytest.raises(UsageError, match="--prompt"):
        profile_cli.run(parse(["profile", *tiny, "--prompt", "  "]))
