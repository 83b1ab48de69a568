"""Quality: perplexity against direct computations, agreement and QA scoring rules, the eval assets; and
sane figures for the real embedded model (slow)."""

import json
import math
import time

import pytest
import torch

from workbench import quality
from workbench.optimize.pipeline import from_model
from workbench.recipe import Recipe
from workbench.runtimes.transformers import TransformersModel

PROMPTS = ["What is the capital of France?", "Write a haiku about rain.", "Hello!"]
QA = [{"question": "What is the capital of France?", "answers": ["Paris"]}, {"question": "Hi?", "answers": ["hello"]}]


@pytest.fixture(scope="module")
def other_seed(tiny_model):
    """A tiny model with the same tokenizer and shape but different random weights."""
    from tiny import make_model

    tokenizer = tiny_model.tokenizer
    recipe = Recipe(model=tiny_model.recipe.model + "-seed1", device="cpu")
    return TransformersModel(from_model(make_model(tokenizer, seed=1), tokenizer, recipe))


@pytest.fixture(scope="module")
def tiny_ids(tiny_model):
    return torch.tensor([quality.text_ids(tiny_model, quality.load_eval_text(), max_tokens=300)])


# ------------------------------------------------------------------------------------------ perplexity


def test_perplexity_is_finite_and_above_one(tiny_model):
    ppl = quality.perplexity(tiny_model, max_tokens=200)
    assert math.isfinite(ppl) and ppl > 1


def test_single_window_equals_exp_mean_nll_of_one_forward(tiny_model, tiny_ids):
    with torch.inference_mode():
        loss = tiny_model.module(input_ids=tiny_ids, labels=tiny_ids).loss  # mean NLL over tokens 1..N-1
    ppl = quality.perplexity(tiny_model, quality.load_eval_text(), window=512, max_tokens=300)
    assert ppl == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_strided_equals_the_labelled_window_method(tiny_model, tiny_ids):
    # The usual strided recipe: each window's overlap with the previous one gets label -100 (context only).
    model, n = tiny_model.module, tiny_ids.shape[1]
    nll, count, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, n, 64):
            end = min(begin + 128, n)
            window = tiny_ids[:, begin:end]
            labels = window.clone()
            labels[:, : max(prev_end - begin, 0)] = -100
            scored = int((labels[:, 1:] != -100).sum())
            nll += model(input_ids=window, labels=labels).loss.item() * scored
            count, prev_end = count + scored, end
            if end == n:
                break
    assert count == n - 1  # every token after the first scored exactly once
    ppl = quality.perplexity(tiny_model, quality.load_eval_text(), window=128, stride=64, max_tokens=300)
    assert ppl == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_strided_is_close_to_single_window(tiny_model):
    # Less context per token changes the figure a little; compare the mean NLL per token.
    text = quality.load_eval_text()
    full = quality.perplexity(tiny_model, text, window=512, max_tokens=300)
    strided = quality.perplexity(tiny_model, text, window=128, stride=64, max_tokens=300)
    assert strided != full
    assert math.log(strided) == pytest.approx(math.log(full), rel=0.1)


def test_half_precision_model_gives_a_float32_figure_close_to_fp32(tiny_model):
    from tiny import make_model

    tokenizer = tiny_model.tokenizer
    recipe = Recipe(model=tiny_model.recipe.model, device="cpu", dtype="bf16")
    bf16 = TransformersModel(from_model(make_model(tokenizer), tokenizer, recipe))  # same seed, weights rounded
    ppl, ref = quality.perplexity(bf16, max_tokens=300), quality.perplexity(tiny_model, max_tokens=300)
    assert isinstance(ppl, float) and math.isfinite(ppl)
    assert math.log(ppl) == pytest.approx(math.log(ref), rel=0.02)


def test_windows_score_every_token_once():
    for n, window, stride in [(2, 2, 1), (10, 4, 2), (1000, 512, 256), (513, 512, 256), (100, 512, 256), (37, 8, 3)]:
        spans = quality.windows(n, window, stride)
        targets = [t for begin, start, end in spans for t in range(start, end)]
        assert targets == list(range(1, n))
        assert all(end - begin <= window and begin < start for begin, start, end in spans)


def test_perplexity_reports_progress_and_rejects_bad_input(tiny_model):
    steps = []
    quality.perplexity(tiny_model, window=64, stride=32, max_tokens=160, on_step=lambda *a: steps.append(a))
    assert [(i, total) for i, total, _ in steps] == [(i, 4) for i in range(1, 5)]  # windows start at 0, 32, 64, 96
    assert steps[-1][2]["tokens"] == 159
    with pytest.raises(ValueError, match="stride"):
        quality.perplexity(tiny_model, window=64, stride=65, max_tokens=100)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        quality.perplexity(tiny_model, "a", max_tokens=1)


# ------------------------------------------------------------------------------------------- agreement


def test_agreement_definition_on_hand_made_tokens():
    assert quality.agreement([[1, 2, 3]], [[1, 2, 3]]) == 1.0
    assert quality.agreement([[1, 9, 3]], [[1, 2, 3]]) == pytest.approx(2 / 3)
    assert quality.agreement([[1, 2]], [[1, 2, 3, 4]]) == 0.5  # a shorter answer misses positions
    assert quality.agreement([[1, 2, 3, 4, 5]], [[1, 2, 3]]) == 1.0  # past the baseline's length: ignored
    assert quality.agreement([[2, 3, 4]], [[1, 2, 3]]) == 0.0  # position by position, no realignment
    # Pooled over prompts, weighted by the baseline's lengths: (1 + 3) / (2 + 3).
    assert quality.agreement([[1, 0], [5, 6, 7]], [[1, 2], [5, 6, 7]]) == pytest.approx(4 / 5)
    assert quality.agreement([[], []], [[], []]) == 1.0
    with pytest.raises(ValueError, match="same prompts"):
        quality.agreement([[1]], [[1], [2]])


def test_greedy_agreement_with_itself_and_with_another_model(tiny_model, other_seed):
    mine = quality.greedy_tokens(tiny_model, PROMPTS, max_new_tokens=12)
    again = quality.greedy_tokens(tiny_model, PROMPTS, max_new_tokens=12)
    other = quality.greedy_tokens(other_seed, PROMPTS, max_new_tokens=12)
    assert len(mine) == len(PROMPTS) and all(1 <= len(t) <= 12 for t in mine)
    assert quality.agreement(again, mine) == 1.0
    assert quality.agreement(other, mine) < 1.0


def test_greedy_ignores_the_models_sampling_defaults(tiny_model):
    config = tiny_model.module.generation_config
    saved = (config.do_sample, config.temperature)
    config.do_sample, config.temperature = True, 1.5
    try:
        runs = [quality.greedy_tokens(tiny_model, PROMPTS[:1], max_new_tokens=12) for _ in range(3)]
    finally:
        config.do_sample, config.temperature = saved
    assert runs[0] == runs[1] == runs[2]


# ------------------------------------------------------------------------------------------------- QA


@pytest.mark.parametrize(
    "answer, expected, ok",
    [
        ("The capital is Paris.", ["Paris"], True),
        ("paris", ["Paris"], True),
        ("Parisian food is famous.", ["Paris"], False),
        ("A spider has 8 legs.", ["eight", "8"], True),
        ("A spider has eight legs.", ["eight", "8"], True),
        ("About 18 of them.", ["eight", "8"], False),
        ("Eighteen.", ["eight", "8"], False),
        ("It freezes at 0°C.", ["0", "zero"], True),
        ("The freezing point is -18.0°C.", ["0", "zero"], False),
        ("About 100.", ["100"], True),
        ("Some 1,000 of them.", ["1"], False),
        ("There are twenty-four hours.", ["twenty four", "24"], True),
        ("It is carbon  dioxide.", ["carbon dioxide"], True),
        ("Water is H2O!", ["H2O"], True),
        ("The sky is blue on a clear day.", ["blue"], True),
        ("Blueish.", ["blue"], False),
        ("", ["blue"], False),
    ],
)
def test_qa_scoring_rules(answer, expected, ok):
    assert quality.is_correct(answer, expected) is ok


def test_qa_accuracy_shape(tiny_model):
    result = quality.qa_accuracy(tiny_model, QA, max_new_tokens=6)
    assert result["n"] == 2 and 0 <= result["correct"] <= 2
    assert result["accuracy"] == result["correct"] / 2
    assert [a["question"] for a in result["answers"]] == [q["question"] for q in QA]
    assert all(set(a) == {"question", "answer", "expected", "ok"} for a in result["answers"])


# ------------------------------------------------------------------------------------------------ assets


def test_qa_asset_has_fifty_valid_items():
    lines = [line for line in (quality.EVAL_DIR / "qa.jsonl").read_text().splitlines() if line.strip()]
    assert len(lines) == 50
    items = [json.loads(line) for line in lines]
    assert all(set(item) == {"question", "answers"} for item in items)
    assert all(item["question"].strip() and item["answers"] for item in items)
    assert all(answer.strip() for item in items for answer in item["answers"])
    assert len({item["question"] for item in items}) == 50
    assert quality.load_qa() == items


def test_eval_text_and_prompts_assets():
    assert len(quality.load_eval_text().split()) >= 2500
    prompts = quality.load_prompts()
    assert 15 <= len(prompts) <= 30 and all(p.strip() == p and p for p in prompts)


def test_missing_or_broken_assets_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "EVAL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="eval_text.md"):
        quality.load_eval_text()
    (tmp_path / "qa.jsonl").write_text('{"question": "Q?", "answers": ["a"]}\n{"question": "R?", "answers": []}\n')
    with pytest.raises(ValueError, match="qa.jsonl:2"):
        quality.load_qa()


# ------------------------------------------------------------------------------------------------ evaluate


def test_evaluate_without_baseline(tiny_model):
    report = quality.evaluate(tiny_model, max_tokens=100, prompts=PROMPTS, qa=QA)
    assert report["agreement"] is None and "baseline" not in report
    assert math.isfinite(report["perplexity"]) and report["eval_tokens"] == 100
    assert report["qa_n"] == 2 and report["qa_accuracy"] == report["qa_correct"] / 2


def test_evaluate_with_itself_measures_once(tiny_model):
    steps = []
    report = quality.evaluate(tiny_model, tiny_model, max_tokens=100, prompts=PROMPTS, qa=QA,
                              on_step=lambda *a: steps.append(a))
    assert report["agreement"] == 1.0
    own = {"perplexity": report["perplexity"], "qa_accuracy": report["qa_accuracy"], "agreement": 1.0}
    assert report["baseline"] == own
    assert [i for i, _, _ in steps] == list(range(1, 1 + 1 + len(QA)))  # one window, the questions, no prompts


def test_evaluate_against_a_different_baseline(tiny_model, other_seed):
    steps = []
    report = quality.evaluate(tiny_model, other_seed, max_tokens=100, prompts=PROMPTS, qa=QA,
                              on_step=lambda *a: steps.append(a))
    assert 0.0 <= report["agreement"] < 1.0
    assert report["baseline"]["agreement"] == 1.0
    assert report["baseline"]["perplexity"] != report["perplexity"]
    total = 2 * (1 + len(QA) + len(PROMPTS))
    assert [(i, t) for i, t, _ in steps] == [(i, total) for i in range(1, total + 1)]
    stages = ["perplexity"] + ["qa"] * len(QA) + ["agreement"] * len(PROMPTS)
    assert [m["stage"] for _, _, m in steps] == stages + ["baseline " + s for s in stages]


# ------------------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_embedded_perplexity_is_sane(embedded_model, capsys):
    start = time.perf_counter()
    ppl = quality.perplexity(embedded_model, max_tokens=1024)
    with capsys.disabled():
        print(f"\nembedded perplexity (first 1024 tokens): {ppl:.2f} in {time.perf_counter() - start:.1f} s")
    assert 2 < ppl < 100


@pytest.mark.slow
def test_embedded_qa_accuracy(embedded_model, capsys):
    start = time.perf_counter()
    result = quality.qa_accuracy(embedded_model)
    with capsys.disabled():
        print(f"\nembedded QA accuracy: {result['correct']}/{result['n']} in {time.perf_counter() - start:.1f} s")
    assert result["n"] == 50 and result["accuracy"] > 0.2


@pytest.mark.slow
def test_embedded_evaluate_against_itself(embedded_model):
    report = quality.evaluate(embedded_model, embedded_model, max_tokens=256, qa=quality.load_qa()[:5])
    assert report["agreement"] == 1.0 and report["baseline"]["agreement"] == 1.0
    assert report["baseline"]["perplexity"] == report["perplexity"]
