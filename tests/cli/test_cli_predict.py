"""``workbench predict``: the JSON contract, the text table, and a config that cannot be read."""

from __future__ import annotations

import argparse
import json

import pytest

from workbench import frontier, machine, predict
from workbench.recipe import Recipe
from workbench.cli import predict as predict_cli
from workbench.cli.parser import UsageError


@pytest.fixture(autouse=True)
def measured_machine(tmp_path, monkeypatch):
    """A home of this test's own whose machine figures are already cached (a quick, small measurement)."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return machine.roofline(size_bytes=64 << 20, matmul_n=256)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="workbench")
    predict_cli.add_parser(parser.add_subparsers(dest="command"))
    return predict_cli.run(parser.parse_args(["predict", *argv]))


def test_json_has_the_contracts_keys_for_the_embedded_model(capsys, measured_machine):
    assert run(["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("params", "weight_bytes", "kv_bytes_per_token", "bandwidth_gb_s", "decode_tok_s", "here",
                "accelerators", "flops_per_token", "peak_gflops", "machine", "efficiency"):
        assert key in report, key
    arch = predict.architecture(None)
    assert report["params"] == predict.params(arch) == 134_515_008
    assert report["weight_bytes"]["llama.cpp"]["q4_0"] == predict.weight_bytes(arch, "llama.cpp", "q4_0")
    assert report["kv_bytes_per_token"]["fp16"] == predict.kv_bytes_per_token(arch, 2)
    assert report["bandwidth_gb_s"] == measured_machine["bandwidth_gb_s"] and report["machine"]["cached"] is True
    assert set(report["decode_tok_s"]) == {"transformers", "llama.cpp"}
    decode = report["decode_tok_s"]
    assert decode["llama.cpp"]["q4_0"]["bound"] > decode["transformers"]["fp32"]["bound"]
    assert report["decode_tok_s"]["transformers"]["fp32"]["expected"] is None  # no efficiency measured in this home
    assert all(row["estimate"] for row in report["accelerators"])
    assert "validation" not in report
    assert report["frontier_validation"] == []  # no sweep stored in this home


def store_frontier_row(recipe: Recipe, tok_s: float) -> None:
    print_ = frontier.fingerprint()
    record = frontier.new_record(recipe, print_, frontier.fingerprint_id(print_), frontier.SweepSettings())
    record["rounds"] = [{"decode_tok_s": tok_s, "prompt_tokens": 30}]
    frontier.save_record(record)


def test_the_frontier_measured_here_is_printed_against_the_prediction(capsys):
    store_frontier_row(Recipe(device="cpu", dtype="fp32"), 10.0)
    store_frontier_row(Recipe(runtime="llama.cpp", device="cpu", dtype="q8_0"), 60.0)
    assert run(["--json"]) == 0
    rows = {r["dtype"]: r for r in json.loads(capsys.readouterr().out)["frontier_validation"]}
    assert rows["fp32"]["measured_tok_s"] == 10.0 and rows["fp32"]["basis"]
    assert rows["q8_0"]["measured_tok_s"] == 60.0 and rows["q8_0"]["same_run_tok_s"] is None  # no q4_0 row
    assert rows["q8_0"]["predicted_tok_s"] is None  # no efficiency cached in this home
    assert run([]) == 0
    out = capsys.readouterr().out
    assert "against the frontier measured here" in out and "llama.cpp q8_0" in out


def test_a_shipped_config_and_a_model_directory(capsys, tiny_model_dir):
    assert run(["--config", "qwen2.5-0.5b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 494_032_768
    assert run(["--config", str(tiny_model_dir), "--context", "0"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "bound tok/s" in out and "not measured yet (run with --measure)" in out


def test_a_config_that_cannot_be_read_is_one_line_naming_the_flag(tmp_path):
    with pytest.raises(UsageError, match="^--config: .*huggingface-cli download"):
        run(["--config", "nobody/not-cached"])
    with pytest.raises(UsageError, match="^--config: .*without a config.json"):
        run(["--config", str(tmp_path)])
