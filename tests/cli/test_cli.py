"""The `workbench` command: the contract's JSON fields, exit statuses and one-line errors."""

import json

import pytest
import torch
from commands import assert_usage_error, run_cli, run_module

from workbench.observe.history import HistoryStore
from workbench.recipe import Recipe

CONTRACT_KEYS = {"recipe", "recipe_key", "text", "prompt_tokens", "new_tokens", "ttft_ms", "tpot_ms", "e2e_ms",
                 "decode_tok_s", "cache", "model"}
MODEL_KEYS = {"params", "nonzero_params", "weight_bytes", "build_s", "backend", "threads"}
SUMMARY_KEYS = {"n", "mean", "p50", "p90", "p99"}


def test_generate_json_has_every_contract_field(capsys, tiny, tiny_model_dir):
    code, out, err = run_cli(capsys, "generate", *tiny, "--prompt", "Hello!", "--max-new-tokens", 12, "--json")
    assert code == 0
    report = json.loads(out)  # stdout is pure JSON; build progress went to stderr
    assert CONTRACT_KEYS <= report.keys()
    assert set(report["model"]) == MODEL_KEYS
    recipe = Recipe(model=str(tiny_model_dir), device="cpu", dtype="fp32")
    assert report["recipe"] == recipe.to_dict() and report["recipe_key"] == recipe.key()
    assert 1 <= report["new_tokens"] <= 12 and report["prompt_tokens"] > 0
    assert report["cache"] == "miss"
    assert 0 < report["ttft_ms"] <= report["e2e_ms"]
    assert report["model"]["params"] > 0 and report["model"]["backend"] == "dense fp32 (PyTorch CPU)"
    assert "Ready" in err


def test_generate_text_prints_the_answer_then_a_metrics_line(capsys, tiny):
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Hello!", "--max-new-tokens", 8,
                           "--temperature", 0, "--no-cache")
    assert code == 0
    last = out.rstrip("\n").splitlines()[-1]
    assert last.startswith("[") and "TTFT" in last and "tok/s" in last and "cache miss" in last


def test_recipe_flags_reach_the_build(capsys, tiny):
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Hi", "--max-new-tokens", 4, "--json",
                           "--dtype", "int8", "--prune-method", "magnitude", "--prune-ratio", 0.5)
    assert code == 0
    report = json.loads(out)
    assert report["recipe"]["dtype"] == "int8" and report["recipe"]["backend"] not in ("auto", "torch")
    assert report["recipe"]["prune"]["method"] == "magnitude" and report["recipe"]["prune"]["ratio"] == 0.5
    assert report["model"]["nonzero_params"] < report["model"]["params"]
    assert not report["model"]["backend"].startswith("dense fp32")


def test_int8_generates_with_the_default_cpu_backend(capsys, tiny):
    code, out, err = run_cli(capsys, "generate", *tiny, "--prompt", "Hello!", "--max-new-tokens", 6, "--json",
                             "--dtype", "int8", "--temperature", 0)
    assert code == 0, err
    report = json.loads(out)
    assert report["recipe"]["backend"] == "torch-dynamic" and report["new_tokens"] >= 1
    assert report["model"]["backend"].startswith("PyTorch dynamic int8")
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Hello!", "--max-new-tokens", 1, "--json")
    fp32 = json.loads(out)["model"]
    # Linear weights stored as int8 (embeddings stay fp32): the stats count the quantized bytes.
    assert report["model"]["weight_bytes"] < 0.6 * fp32["weight_bytes"]
    assert report["model"]["params"] == fp32["params"]


@pytest.mark.parametrize("backend", ["bnb-int8", "torchao-int8-weight-only", "quanto-int8"])
def test_every_cpu_int8_backend_generates(capsys, tiny, backend):
    code, out, err = run_cli(capsys, "generate", *tiny, "--prompt", "Hi", "--max-new-tokens", 3, "--json",
                             "--dtype", "int8", "--backend", backend)
    assert code == 0, err
    assert json.loads(out)["recipe"]["backend"] == backend


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(capsys, tiny):
    def text(*extra):
        code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Tell me about pruning.",
                               "--max-new-tokens", 16, "--json", "--no-cache", *extra)  # the model, every time
        assert code == 0
        return json.loads(out)["text"]

    assert text("--temperature", 0) == text("--temperature", 0)
    assert text("--temperature", 1.0, "--seed", 7) == text("--temperature", 1.0, "--seed", 7)


def test_generate_is_recorded_in_the_history_as_cli(capsys, tiny):
    history = HistoryStore()
    before = history.count()
    code, out, _ = run_cli(capsys, "generate", *tiny, "--prompt", "Hi", "--max-new-tokens", 4, "--json")
    assert code == 0
    assert history.count() == before + 1
    row = history.recent(limit=1)[-1]
    assert row["origin"] == "cli" and row["recipe_key"] == json.loads(out)["recipe_key"]


def test_bench_json_has_one_entry_per_batch_size(capsys, tiny):
    code, out, err = run_cli(capsys, "bench", *tiny, "--runs", 2, "--warmup", 1, "--max-new-tokens", 6,
                             "--batch-sizes", "1", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["runs"] == 2 and report["warmup"] == 1 and report["batch_sizes"] == [1]
    (entry,) = report["results"]
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        assert SUMMARY_KEYS <= entry[key].keys() and entry[key]["n"] == 2
    assert set(entry["decode_tok_s"]) == {"median", "min", "max"}
    assert entry["throughput_tok_s"] > 0 and entry["peak_rss_mb"] > 0
    assert set(entry["model"]) == MODEL_KEYS
    assert [r["new_tokens"] for r in entry["per_run"]] == [6, 6]
    assert "run 3/3 (measure)" in err


def test_bench_sweeps_batch_sizes_under_concurrent_users(capsys, tiny):
    code, out, err = run_cli(capsys, "bench", *tiny, "--runs", 2, "--warmup", 1, "--max-new-tokens", 6,
                             "--batch-sizes", "1,4", "--concurrency", 4, "--batch-window-ms", 100, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["batch_sizes"] == [1, 4] and report["concurrency"] == 4 and report["schedulers"] == ["static"]
    one, four = report["results"]
    assert (one["batch_size"], four["batch_size"]) == (1, 4)
    for entry in (one, four):
        for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
            assert SUMMARY_KEYS <= entry[key].keys() and entry[key]["n"] == 2 * 4  # runs per user x users
        assert set(entry["decode_tok_s"]) == {"median", "min", "max"} and set(entry["model"]) == MODEL_KEYS
        assert entry["throughput_tok_s"] > 0 and entry["peak_rss_mb"] > 0 and entry["concurrency"] == 4
        assert [r["new_tokens"] for r in entry["per_run"]] == [6] * 8
    assert one["batches"]["max"] == 1 and {r["batch_size"] for r in one["per_run"]} == {1}
    assert four["batches"]["max"] > 1 and four["recipe"]["batch_size"] == 4
    assert one["recipe_key"] != four["recipe_key"]
    assert "run 24/24 (measure)" in err


def test_bench_prints_a_load_table_for_a_sweep(capsys, tiny):
    code, out, _ = run_cli(capsys, "bench", *tiny, "--runs", 1, "--warmup", 0, "--max-new-tokens", 3,
                           "--batch-sizes", "1,2", "--concurrency", 2)
    assert code == 0
    header, *rows = out.strip().splitlines()
    assert "E2E p99 ms" in header and "throughput tok/s" in header and "users" in header and len(rows) == 2


def test_bench_prints_a_table(capsys, tiny):
    code, out, _ = run_cli(capsys, "bench", *tiny, "--runs", 1, "--warmup", 0, "--max-new-tokens", 4)
    assert code == 0
    header, row = out.strip().splitlines()
    assert "TTFT p50 ms" in header and "decode tok/s" in header and "dense fp32" in row


BAD_INPUTS = [
    (["generate", "--prompt", "x", "--dtype", "int9"], "--dtype", "fp32"),
    (["generate", "--prompt", "x", "--dtype", "int8", "--backend", "no-such-backend"], "--backend", "available"),
    (["generate", "--prompt", "x", "--prune-ratio", "2"], "--prune-ratio", "between 0 and 0.9"),
    (["generate", "--prompt", "x", "--prune-method", "pick"], "--prune-method", "magnitude"),
    (["generate", "--prompt", "x", "--prune-criterion", "random"], "--prune-criterion", "wanda"),
    (["generate", "--prompt", "x", "--variant", "no-such-student"], "--variant", "available"),
    (["generate", "--prompt", "x", "--device", "tpu"], "--device", "cpu"),
    (["generate", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens", "from 1 to 8192"),
    (["generate", "--prompt", "x", "--temperature", "-1"], "--temperature", "between 0 and 5"),
    (["generate", "--prompt", "x", "--top-p", "0"], "--top-p", "(0, 1]"),
    (["generate", "--prompt", "x", "--batch-size", "0"], "--batch-size", "from 1 to 256"),
    (["generate", "--prompt", "   "], "--prompt", "empty"),
    (["generate"], "--prompt", "required"),
    (["bench", "--batch-sizes", "1,0"], "--batch-sizes", "batch size must be an integer from 1 to 256"),
    (["bench", "--batch-sizes", "1,4,300"], "--batch-sizes", "from 1 to 256"),
    (["bench", "--concurrency", "0"], "--concurrency", "1 or more"),
    (["bench", "--schedulers", "static,magic"], "--schedulers", "static, continuous"),
    (["bench", "--batch-sizes", "one"], "--batch-sizes", "1,4,16"),
    (["bench", "--runs", "0"], "--runs", "1 or more"),
    (["bench", "--warmup", "-1"], "--warmup", "0 or more"),
    (["generate", "--prompt", "x", "--model", "/no/such/dir"], "--model", "a local model directory"),
    (["generate", "--prompt", "x", "--model", "missing.gguf"], "--model", "GGUF file not found"),
    (["generate", "--prompt", "x", "--dtype", "int8", "--backend", "bnb-nf4"], "--backend",
     "bnb-nf4 does not run int8 on cpu; available: torch-dynamic"),
    (["generate", "--prompt", "x", "--dtype", "fp32", "--backend", "torch-dynamic"], "--backend",
     "available backend: torch"),
    (["generate", "--prompt", "x", "--variant", "student-nope"], "--variant", "no variant 'student-nope'"),
    (["cache"], "action", "required"),
    ([], "command", "required"),
    (["generate", "--prompt", "x", "--frobnicate"], "--frobnicate", "unrecognized"),
]


@pytest.mark.parametrize("argv, flag, allowed", BAD_INPUTS, ids=[" ".join(a[0]) or "none" for a in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_naming_the_flag(capsys, tiny, argv, flag, allowed):
    if argv and argv[0] in ("generate", "bench", "eval", "distill") and "--model" not in argv:
        argv = [*argv, *tiny]  # so that only the flag under test is wrong
    code, out, err = run_cli(capsys, *argv)
    assert_usage_error(code, out, err, flag, allowed)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_absent_device_exits_2_naming_the_devices_present(capsys, tiny):
    code, _, err = run_cli(capsys, "generate", *tiny, "--prompt", "x", "--device", "cuda")
    assert code == 2
    assert err.splitlines() == ["workbench: error: --device: device 'cuda' is not available on this machine; "
                                "available: auto, cpu" + (", mps" if "mps" in err else "")]


def test_help_exits_0_and_names_the_response_cache_flags(capsys):
    code, out, _ = run_cli(capsys, "generate", "--help")
    assert code == 0
    assert "--no-cache" in out and "bypass the response cache" in " ".join(out.split())
    assert "--semantic" in out and "--cache-sampled" in out and "--cache-ttl" in out
    assert "--trust-remote-code" in out and "--prune-method" in out


def test_python_m_workbench_bad_flag_is_one_line_without_traceback():
    proc = run_module("generate", "--prompt", "x", "--dtype", "int9")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "--dtype" in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""


def test_python_m_workbench_json_stdout_is_pure_json(tiny):
    proc = run_module("generate", *tiny, "--prompt", "Hello!", "--max-new-tokens", 5, "--json")
    assert proc.returncode == 0, proc.stderr
    assert CONTRACT_KEYS <= json.loads(proc.stdout).keys()


@pytest.mark.slow
def test_embedded_model_answers_paris_with_every_contract_field():
    proc = run_module("generate", "--prompt", "What is the capital of France?", "--temperature", 0, "--json",
                      "--no-cache")  # the chat tests may have cached this question
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert CONTRACT_KEYS <= report.keys() and set(report["model"]) == MODEL_KEYS
    assert "Paris" in report["text"]
    assert report["recipe"]["model"] == "embedded" and report["recipe"]["dtype"] == "fp32"
    assert report["cache"] == "miss" and report["new_tokens"] >= 1 and report["ttft_ms"] > 0
    assert report["model"]["params"] > 100_000_000  # SmolLM2-135M
