"""`workbench eval`, `workbench bench --eval` and `workbench distill` on the tiny model: JSON fields, exit
statuses, the order models are built in, students usable as --variant, Ctrl-C that checkpoints."""

import json
import os
import signal
import subprocess
import sys

import pytest
from commands import assert_usage_error, run_cli

from workbench.optimize.variants import find_student
from workbench.recipe import Recipe

QUALITY = ["--max-eval-tokens", 100, "--qa-limit", 3]
SMALL_STUDENT = ["--seq-len", 32, "--corpus-new-tokens", 8, "--samples-per-prompt", 1, "--train-batch-size", 2,
                 "--lr", 1e-3]
EVAL_KEYS = {"recipe", "recipe_key", "label", "perplexity", "agreement", "qa_accuracy", "qa_correct", "qa_n",
             "eval_tokens", "model", "baseline", "settings"}
DISTILL_KEYS = {"name", "steps", "loss", "first_loss", "params", "teacher_params", "seconds", "student", "teacher",
                "unhealed", "card", "train_seconds", "evals", "teacher_heldout_ppl", "variant_flag"}
CARD = ["--speed-rounds", 1, "--agreement-tokens", 4]


# ------------------------------------------------------------------------------------------------ eval


def test_eval_json_compares_the_recipe_with_its_baseline(capsys, tiny, tiny_model_dir):
    code, out, err = run_cli(capsys, "eval", *tiny, "--dtype", "int8", *QUALITY, "--agreement-tokens", 6, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert EVAL_KEYS <= report.keys()
    assert report["recipe"]["dtype"] == "int8" and report["recipe"]["backend"] == "torch-dynamic"
    assert report["baseline"]["recipe"] == Recipe(model=str(tiny_model_dir), device="cpu").to_dict()
    assert {"perplexity", "qa_accuracy", "agreement", "recipe"} <= report["baseline"].keys()
    assert report["baseline"]["agreement"] == 1.0 and 0.0 <= report["agreement"] <= 1.0
    for measured in (report, report["baseline"]):
        assert measured["perplexity"] > 1 and measured["eval_tokens"] == 100
        assert measured["qa_n"] == 3 and 0.0 <= measured["qa_accuracy"] <= 1.0
    assert report["model"]["weight_bytes"] < report["baseline"]["model"]["weight_bytes"]  # int8 is smaller
    assert report["settings"] == {"max_eval_tokens": 100, "qa_limit": 3, "agreement_tokens": 6,
                                  "agreement_prompts": 20, "sets": ["dev", "kl"]}
    # Every figure with its 95% interval; KL against the baseline (0 for the baseline itself).
    lo, hi = report["qa_accuracy_ci"]
    assert 0 <= lo <= report["qa_accuracy"] <= hi <= 1
    assert report["perplexity_ci"][0] <= report["perplexity"] <= report["perplexity_ci"][1]
    assert report["kl"] > 0 and report["kl_tokens"] > 0 and report["kl_problem"] is None
    assert report["baseline"]["kl"] == 0.0 and report["heldout_qa_accuracy"] is None
    # The baseline is built and measured, then the recipe: one model in memory at a time.
    assert err.index("baseline: [100%] Ready") < err.index("baseline perplexity") < err.index("recipe: [  0%]")
    assert "Traceback" not in err


def test_eval_of_a_baseline_recipe_measures_once(capsys, tiny):
    code, out, err = run_cli(capsys, "eval", *tiny, *QUALITY, "--agreement-tokens", 4, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["agreement"] == 1.0
    for key in ("perplexity", "qa_accuracy", "recipe"):
        assert report["baseline"][key] == report[key]
    assert err.count("[100%] Ready") == 1


def test_eval_prints_a_table(capsys, tiny):
    code, out, _ = run_cli(capsys, "eval", *tiny, "--prune-method", "magnitude", "--prune-ratio", 0.5, *QUALITY,
                           "--agreement-tokens", 4)
    assert code == 0
    header, recipe, baseline, note = out.strip().splitlines()
    assert "perplexity" in header and "agreement" in header and "QA accuracy" in header
    assert recipe.startswith("recipe") and "magnitude 0.5" in recipe
    assert baseline.startswith("baseline") and "100.0%" in baseline
    assert "100 tokens" in note and "20 prompts" in note


def test_bench_eval_adds_quality_after_the_timed_runs(capsys, tiny):
    code, out, err = run_cli(capsys, "bench", *tiny, "--runs", 1, "--warmup", 0, "--max-new-tokens", 4, "--eval",
                             *QUALITY, "--json")
    assert code == 0, err
    report = json.loads(out)
    (entry,) = report["results"]
    assert {"perplexity", "perplexity_ci", "qa_accuracy", "qa_accuracy_ci", "qa_correct", "qa_n",
            "eval_tokens"} <= set(entry["quality"])
    assert entry["quality"]["heldout_qa_accuracy"] is None  # bench measures the dev questions only
    assert entry["quality"]["qa_n"] == 3 and entry["quality"]["eval_tokens"] == 100
    assert report["quality_settings"] == {"max_eval_tokens": 100, "qa_limit": 3}
    assert err.index("run 1/1 (measure)") < err.index("eval perplexity")


def test_bench_eval_table_has_quality_columns(capsys, tiny):
    code, out, _ = run_cli(capsys, "bench", *tiny, "--runs", 1, "--warmup", 0, "--max-new-tokens", 3, "--eval",
                           *QUALITY)
    assert code == 0
    header, row = out.strip().splitlines()
    assert "perplexity" in header and "QA accuracy" in header and "weight MB" in header
    assert "/3 (" in row


def test_bench_without_eval_measures_no_quality(capsys, tiny):
    code, out, err = run_cli(capsys, "bench", *tiny, "--runs", 1, "--warmup", 0, "--max-new-tokens", 3, "--json")
    assert code == 0
    assert "quality" not in json.loads(out)["results"][0] and "perplexity" not in err


# --------------------------------------------------------------------------------------------- distill


def test_distill_json_has_every_field_and_a_usable_variant_flag(capsys, tiny, tiny_model_dir):
    code, out, err = run_cli(capsys, "distill", *tiny, "--steps", 2, *SMALL_STUDENT, *QUALITY, *CARD, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert DISTILL_KEYS <= report.keys()
    assert report["name"].startswith("student-") and report["variant_flag"] == f"--variant {report['name']}"
    assert report["steps"] == 2 and report["params"] < report["teacher_params"]
    assert report["loss"] > 0 and report["first_loss"] > 0 and report["seconds"] >= 0
    for who in ("student", "unhealed", "teacher"):
        assert {"perplexity", "qa_accuracy", "agreement"} <= report[who].keys()
        assert report[who]["perplexity"] > 1 and report[who]["qa_n"] == 3 and 0 <= report[who]["agreement"] <= 1
    assert report["teacher"]["agreement"] == 1.0  # with itself
    assert report["unhealed"]["perplexity"] != report["student"]["perplexity"]  # two models, measured apart
    card = report["card"]
    assert card["steps"] == 2 and set(card["speed"]) == {"transformers fp32", "llama.cpp q4_0"}
    assert card == json.loads((find_student(str(tiny_model_dir), report["name"]) / "card.json").read_text())
    assert report["student"]["recipe"]["variant"] == report["name"]
    assert report["teacher"]["recipe"]["variant"] == "none"
    assert find_student(str(tiny_model_dir), report["name"]) is not None
    assert "distilling: step 2/2" in err and "loss" in err and "ETA" in err

    # The name works as --variant of the other commands; eval compares the student with its teacher.
    code, out, err = run_cli(capsys, "generate", *tiny, *report["variant_flag"].split(), "--prompt", "Hi",
                             "--max-new-tokens", 3, "--json")
    assert code == 0, err
    assert json.loads(out)["model"]["params"] == report["params"]
    code, out, err = run_cli(capsys, "eval", *tiny, *report["variant_flag"].split(), *QUALITY,
                             "--agreement-tokens", 4, "--json")
    assert code == 0, err
    compared = json.loads(out)
    assert compared["baseline"]["recipe"]["variant"] == "none" and 0 <= compared["agreement"] <= 1


def test_distill_resumes_and_no_eval_skips_quality(capsys, tiny):
    argv = ["distill", *tiny, *SMALL_STUDENT, "--layers-ratio", 0.5, "--channels-ratio", 0.25, "--no-eval", "--json"]
    code, out, err = run_cli(capsys, *argv, "--steps", 1)
    assert code == 0, err
    first = json.loads(out)
    assert first["steps"] == 1 and first["student"] is None and first["teacher"] is None
    assert "student: [" not in err  # nothing built for quality
    code, out, err = run_cli(capsys, *argv, "--steps", 3)
    assert code == 0, err
    again = json.loads(out)
    assert again["name"] == first["name"] and again["steps"] == 3
    assert "step 2/3" in err and "step 1/3" not in err  # resumed after step 1


def test_distill_text_names_the_variant_and_shows_the_card(capsys, tiny):
    code, out, _ = run_cli(capsys, "distill", *tiny, "--steps", 1, *SMALL_STUDENT, "--seed", 1, *QUALITY, *CARD)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].startswith("student-") and "1 step," in lines[0]
    assert lines[1] == f"use it with: --variant {lines[0].split(':')[0]}"
    assert lines[2].startswith("held-out perplexity: ") and "unhealed ->" in lines[2]
    table = [line for line in lines if line.startswith(("student ", "unhealed ", "teacher "))]
    assert [line.split()[0] for line in table] == ["student", "unhealed", "teacher"]
    assert any(line.startswith("speed-up on transformers fp32: ") for line in lines)


def test_distill_under_a_budget_in_minutes(capsys, tiny):
    argv = ["distill", *tiny, *SMALL_STUDENT, "--seed", 3, "--no-eval", "--json"]
    code, out, err = run_cli(capsys, *argv, "--minutes", 0.05)
    assert code == 0, err
    report = json.loads(out)
    assert report["train_seconds"] >= 3 and report["requested_minutes"] == 0.05 and not report["stopped"]
    assert report["evals"][0]["step"] == 0 and report["evals"][-1]["step"] == report["steps"]
    assert "of training" in err and " of 3 s" in err and "heldout ppl" in err
    code, out, err = run_cli(capsys, *argv, "--minutes", 0.05)  # reached: nothing more to train
    assert code == 0 and json.loads(out)["steps"] == report["steps"]
    assert_usage_error(*run_cli(capsys, *argv, "--minutes", 1, "--steps", 2), "--steps")


def test_ctrl_c_stops_distill_with_a_checkpoint_that_resumes(tiny, tiny_model_dir):
    argv = [sys.executable, "-m", "workbench", "distill", *tiny, *SMALL_STUDENT, "--seed", 2, "--steps", 100000]
    proc = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    seen = []
    for line in proc.stderr:  # wait until training runs
        seen.append(line)
        if "distilling: step 1/" in line:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, "".join(seen) + err
    assert "Traceback" not in err
    assert "saving a checkpoint" in err and "run the same command to resume" in err and "--steps 100000" in err
    name = out.split(":")[0]
    path = find_student(str(tiny_model_dir), name)
    assert path is not None  # the stopped student is saved and usable
    stopped_at = json.loads((path / "progress.json").read_text())["steps"]
    assert 1 <= stopped_at < 100000
    resumed = subprocess.run([str(a) for a in [*argv[:-1], stopped_at + 1, "--no-eval", "--json"]],
                             capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == stopped_at + 1
    assert f"step {stopped_at + 1}/{stopped_at + 1}" in resumed.stderr


# ------------------------------------------------------------------------------------------- bad input


BAD_INPUTS = [
    (["eval", "--qa-limit", "0"], "--qa-limit", "1 or more"),
    (["eval", "--max-eval-tokens", "1"], "--max-eval-tokens", "2 or more"),
    (["eval", "--agreement-tokens", "0"], "--agreement-tokens", "1 or more"),
    (["eval", "--dtype", "int8", "--backend", "bnb-nf4"], "--backend", "available: torch-dynamic"),
    (["eval", "--variant", "student-nope"], "--variant", "available"),
    (["eval", "--prompt", "x"], "--prompt", "unrecognized"),
    (["bench", "--eval", "--qa-limit", "-3"], "--qa-limit", "1 or more"),
    (["distill", "--steps", "0"], "--steps", "1 or more"),
    (["distill", "--layers-ratio", "0.95"], "--layers-ratio", "between 0 and 0.9"),
    (["distill", "--layers-ratio", "0"], "--layers-ratio", "--channels-ratio"),
    (["distill", "--channels-ratio", "x"], "--channels-ratio", "between 0 and 0.9"),
    (["distill", "--temperature", "0"], "--temperature", "above 0"),
    (["distill", "--lr", "-1"], "--lr", "above 0"),
    (["distill", "--train-batch-size", "0"], "--train-batch-size", "1 or more"),
    (["distill", "--variant", "student-x"], "--variant", "leave --variant out"),
    (["distill", "--dtype", "int8", "--backend", "nope"], "--backend", "available"),
    (["distill", "--model", "/no/such/dir"], "--model", "a local model directory"),
]


@pytest.mark.parametrize("argv, flag, allowed", BAD_INPUTS, ids=[" ".join(a[0]) for a in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line_naming_the_flag(capsys, tiny, argv, flag, allowed):
    if "--model" not in argv:
        argv = [*argv, *tiny]
    code, out, err = run_cli(capsys, *argv)
    assert_usage_error(code, out, err, flag, allowed)


def test_eval_measures_the_held_out_questions_when_asked(capsys, tiny):
    code, out, err = run_cli(capsys, "eval", *tiny, "--dtype", "int8", *QUALITY, "--agreement-tokens", 4,
                             "--sets", "heldout", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["heldout_qa_n"] == 3 and report["heldout_qa_accuracy_ci"] is not None
    assert report["qa_accuracy"] is None and report["kl"] is None  # only what was asked for
    code, out, _ = run_cli(capsys, "eval", *tiny, *QUALITY, "--agreement-tokens", 4, "--sets", "heldout")
    assert code == 0 and "held-out QA" in out


def test_eval_sets_must_be_known(capsys):
    code, out, err = run_cli(capsys, "eval", "--sets", "dev,tests")
    assert_usage_error(code, out, err, "--sets", "dev, heldout, kl")
