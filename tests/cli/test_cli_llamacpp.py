"""The command line with --runtime llama.cpp: the contract's JSON fields with the runtime, eval against the
transformers baseline, bench; the embedded model's q4_0 answer (slow)."""

import json

import pytest
from commands import run_cli, run_module

from workbench.runtimes import llamacpp

pytestmark = pytest.mark.skipif(llamacpp.problem() is not None, reason=llamacpp.problem() or "")

CONTRACT_KEYS = {"recipe", "recipe_key", "text", "prompt_tokens", "new_tokens", "ttft_ms", "tpot_ms", "e2e_ms",
                 "decode_tok_s", "cache", "model"}


def test_generate_json_names_the_runtime_threads_and_stored_types(capsys, tiny):
    code, out, err = run_cli(capsys, "generate", *tiny, "--runtime", "llama.cpp", "--dtype", "int8", "--prompt",
                             "Hello!", "--max-new-tokens", 6, "--json", "--no-cache")
    assert code == 0, err
    report = json.loads(out)
    assert CONTRACT_KEYS <= report.keys()
    assert report["recipe"]["runtime"] == "llama.cpp" and report["recipe"]["dtype"] == "q8_0"
    assert report["recipe"]["threads"] >= 1 and report["model"]["threads"] == report["recipe"]["threads"]
    assert "Q8_0" in report["model"]["tensor_types"] and report["model"]["bits_per_weight"] < 16
    assert report["model"]["backend"].startswith("llama.cpp q8_0") and report["new_tokens"] >= 1


def test_runtime_mistakes_are_one_line_naming_the_flag(capsys, tiny):
    for argv, flag in [(["--runtime", "llama.cpp", "--dtype", "nf4"], "--dtype"),
                       (["--dtype", "q4_k_m"], "--dtype"), (["--threads", 4], "--threads"),
                       (["--runtime", "vllm"], "--runtime"), (["--runtime", "llama.cpp", "--threads", -1], "--threads")]:
        code, out, err = run_cli(capsys, "generate", *tiny, "--prompt", "hi", *argv)
        assert code == 2 and out == "" and err.startswith(f"workbench: error: {flag}") and err.count("\n") == 1, err


def test_eval_compares_a_gguf_recipe_with_the_transformers_baseline(capsys, tiny):
    code, out, err = run_cli(capsys, "eval", *tiny, "--runtime", "llama.cpp", "--dtype", "fp32",
                             "--max-eval-tokens", 100, "--qa-limit", 3, "--agreement-tokens", 6, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["recipe"]["runtime"] == "llama.cpp" and report["baseline"]["recipe"]["runtime"] == "transformers"
    # The same weights in F32 score the same text alike, whichever runtime computes them.
    assert report["perplexity"] == pytest.approx(report["baseline"]["perplexity"], rel=0.01)


def test_bench_measures_a_gguf_recipe_at_two_batch_sizes(capsys, tiny):
    code, out, err = run_cli(capsys, "bench", *tiny, "--runtime", "llama.cpp", "--dtype", "q8_0", "--runs", 1,
                             "--warmup", 0, "--max-new-tokens", 4, "--batch-sizes", "1,2", "--json")
    assert code == 0, err
    entries = json.loads(out)["results"]
    assert [e["batch_size"] for e in entries] == [1, 2]
    assert all(e["recipe"]["runtime"] == "llama.cpp" and e["ttft_ms"]["n"] == 2 for e in entries)
    assert max(run["batch_size"] for run in entries[1]["per_run"]) == 2  # two users ran as one batch


@pytest.mark.slow
def test_embedded_q4_0_answers_paris_with_every_contract_field():
    proc = run_module("generate", "--runtime", "llama.cpp", "--dtype", "q4_0", "--prompt",
                      "What is the capital of France?", "--temperature", 0, "--json", "--no-cache")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert CONTRACT_KEYS <= report.keys() and "Paris" in report["text"]
    assert report["recipe"]["runtime"] == "llama.cpp" and report["model"]["tensor_types"]["Q4_0"] > 100
