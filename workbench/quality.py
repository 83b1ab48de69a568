"""Quality of a loaded model: perplexity, agreement with the baseline's greedy tokens, small QA accuracy.

The three measures answer different questions. Perplexity on a fixed text says how much the optimization
changed the model's next-token predictions overall. Agreement says how often the optimized model, decoding
greedily, picks exactly the token the baseline picks on the same chat prompts: what a user of the chat
would notice. QA accuracy says whether short factual answers survived. All inputs are the files under
``assets/eval/``, so every recipe is measured on the same work.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .progress import OnStep
from .recipe import GenerationSettings
from .runtimes.base import LoadedModel, complete

EVAL_DIR = Path(__file__).resolve().parents[1] / "assets" / "eval"

WINDOW = 512  # tokens per perplexity forward pass
STRIDE = 256  # so every scored token has at least 256 tokens of context (except in the first window)


# ---------------------------------------------------------------------------------------------- assets


def _asset(name: str) -> Path:
    path = EVAL_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"evaluation asset not found: {path} (the workbench expects it under assets/eval/)")
    return path


def load_eval_text() -> str:
    """The evaluation text (varied English prose) that perplexity is measured on."""
    return _asset("eval_text.md").read_text(encoding="utf-8")


def load_prompts() -> list[str]:
    """The chat prompts that agreement is measured on, one per non-empty line of prompts.txt."""
    lines = _asset("prompts.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def load_qa() -> list[dict]:
    """The QA items: dicts with ``question`` (str) and ``answers`` (non-empty list of accepted strings)."""
    path = _asset("qa.jsonl")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            items.append(_qa_item(json.loads(line), f"{path.name}:{number}"))
    return items


def _qa_item(item: dict, where: str) -> dict:
    question, answers = item.get("question"), item.get("answers")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: 'answers' must be a non-empty list of non-empty strings")
    return {"question": question, "answers": answers}


# ------------------------------------------------------------------------------------------ perplexity


def perplexity(
    model: LoadedModel,
    text: str | None = None,
    window: int = WINDOW,
    stride: int = STRIDE,
    max_tokens: int | None = None,
    on_step: OnStep | None = None,
) -> float:
    """Perplexity of the model on a text, by the strided sliding-window method.

    Windows of ``window`` tokens start every ``stride`` tokens; each window scores only the tokens that the
    previous window did not (the overlap is context only), so with ``stride < window`` every token after the
    first is scored exactly once, with at least ``window - stride`` tokens of context. The result is
    ``exp(total negative log-likelihood / tokens scored)``, with the loss computed and summed in float32
    whatever the model's dtype. When the text fits in one window this is exactly ``exp(mean NLL)`` of a
    single forward pass.

    Args:
        model: the loaded model.
        text: the text to score; None = the evaluation text under assets/eval/.
        window: tokens per forward pass; capped at the model's ``max_position_embeddings``.
        stride: tokens between the starts of consecutive windows (1..window).
        max_tokens: score only the first this many tokens of the text (None = all of it).
        on_step: progress callback ``(window i, windows in total, {"perplexity", "tokens"})``.
    """
    ids = text_ids(model, load_eval_text() if text is None else text, max_tokens)
    window = _model_window(model, window)
    spans = windows(len(ids), window, stride)
    nll, scored = 0.0, 0
    for i, (begin, start, end) in enumerate(spans, start=1):
        nll += model.nll(ids[begin:end], start - begin)
        scored += end - start
        if on_step:
            on_step(i, len(spans), {"perplexity": math.exp(nll / scored), "tokens": scored})
    return math.exp(nll / scored)


def text_ids(model: LoadedModel, text: str, max_tokens: int | None = None) -> list[int]:
    """Token ids of a text, cut to the first ``max_tokens``; at least 2 tokens (one to predict)."""
    ids = model.tokenize(text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("perplexity needs a text of at least 2 tokens")
    return ids


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """The (begin, start, end) of each window: tokens [begin, end) go in, targets [start, end) are scored."""
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be from 1 to the window ({window}), got {stride}")
    spans, prev_end = [], 0
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + window, n_tokens)
        spans.append((begin, max(prev_end, begin + 1), end))  # a window's first token has no context
        prev_end = end
        if end == n_tokens:
            break
    return spans


def _model_window(model: LoadedModel, window: int) -> int:
    limit = model.context_length
    return min(window, limit) if limit else window


# ------------------------------------------------------------------------------------------- agreement


def greedy_tokens(
    model: LoadedModel, prompts: list[str], max_new_tokens: int = 32, on_step: OnStep | None = None
) -> list[list[int]]:
    """Greedy answer tokens to each prompt, asked as a one-turn chat through the model's chat template.

    Args:
        model: the loaded model.
        prompts: user messages, one chat each.
        max_new_tokens: the most tokens generated per prompt (fewer if the model ends its answer).
        on_step: progress callback ``(prompt i, prompts in total, {"new_tokens"})``.
    """
    answers = []
    for i, prompt in enumerate(prompts, start=1):
        answers.append(_greedy(model, prompt, max_new_tokens))
        if on_step:
            on_step(i, len(prompts), {"new_tokens": len(answers[-1])})
    return answers


def _greedy(model: LoadedModel, prompt: str, max_new_tokens: int) -> list[int]:
    ids = model.encode_chat([{"role": "user", "content": prompt}])
    return complete(model, ids, GenerationSettings(max_new_tokens=max_new_tokens))


def agreement(tokens: list[list[int]], baseline_tokens: list[list[int]]) -> float:
    """Share of the baseline's greedy tokens that the other model reproduces at the same position.

    For each prompt p, positions ``0 .. len(baseline_tokens[p]) - 1`` are compared; a position agrees when
    ``tokens[p]`` has the same token there. Positions the other answer does not reach (it ended sooner)
    disagree; tokens past the baseline's length are ignored. The result is agreeing positions over all
    baseline positions, pooled over prompts: 1.0 for identical answers, 0.0 for nothing in common. With no
    baseline positions at all there is nothing to disagree with, and the result is 1.0.

    Args:
        tokens: greedy tokens of the model under test, one list per prompt.
        baseline_tokens: greedy tokens of the baseline, for the same prompts in the same order.
    """
    if len(tokens) != len(baseline_tokens):
        raise ValueError(f"agreement needs answers to the same prompts: got {len(tokens)} and {len(baseline_tokens)}")
    same = sum(sum(a == b for a, b in zip(mine, base)) for mine, base in zip(tokens, baseline_tokens))
    total = sum(len(base) for base in baseline_tokens)
    return same / total if total else 1.0


# ------------------------------------------------------------------------------------------------- QA


def is_correct(answer: str, expected: list[str]) -> bool:
    """Whether any accepted answer occurs in ``answer`` as a whole word or phrase, ignoring case.

    Spaces and hyphens inside an accepted answer match any run of spaces or hyphens ("twenty four" matches
    "twenty-four"); numbers count only as whole numbers ("8" is not found in "18", "0" not in "18.0").
    """
    return any(_alias_pattern(alias).search(answer) for alias in expected)


def _alias_pattern(alias: str) -> re.Pattern:
    words = re.split(r"[\s\-]+", alias.strip())
    # Not inside a longer word or number: "0" is not found in "18.0", nor "1" in "1,000".
    before, after = r"(?<!\w)(?<!\d[.,])", r"(?!\w)(?![.,]\d)"
    return re.compile(before + r"[\s\-]+".join(map(re.escape, words)) + after, re.IGNORECASE)


def qa_accuracy(
    model: LoadedModel, items: list[dict] | None = None, max_new_tokens: int = 24, on_step: OnStep | None = None
) -> dict:
    """Share of short factual questions the model answers correctly, decoding greedily.

    Args:
        model: the loaded model.
        items: dicts with ``question`` and ``answers`` (accepted strings); None = assets/eval/qa.jsonl.
        max_new_tokens: the most tokens of each answer that are generated and scored.
        on_step: progress callback ``(question i, questions in total, {"accuracy", "correct"})``.

    Returns:
        ``{"accuracy", "n", "correct", "answers": [{"question", "answer", "expected", "ok"}]}``.
    """
    items = load_qa() if items is None else items
    answers = []
    for i, item in enumerate(items, start=1):
        text = model.decode(_greedy(model, item["question"], max_new_tokens))
        ok = is_correct(text, item["answers"])
        answers.append({"question": item["question"], "answer": text.strip(), "expected": item["answers"], "ok": ok})
        if on_step:
            correct = sum(a["ok"] for a in answers)
            on_step(i, len(items), {"accuracy": correct / i, "correct": correct})
    correct = sum(a["ok"] for a in answers)
    return {"accuracy": correct / len(items) if items else 0.0, "n": len(items), "correct": correct, "answers": answers}


# -------------------------------------------------------------------------------------------- evaluate


def evaluate(
    model: LoadedModel,
    baseline: LoadedModel | None = None,
    *,
    max_tokens: int | None = None,
    prompts: list[str] | None = None,
    qa: list[dict] | None = None,
    on_step: OnStep | None = None,
) -> dict:
    """Perplexity, agreement with the baseline and QA accuracy of a model: what ``workbench eval`` prints.

    Args:
        model: the model under test.
        baseline: the baseline to compare with; None = no comparison (``agreement`` is None). When it is the
            same recipe (or the same object), nothing is measured twice and agreement is 1.0.
        max_tokens: perplexity on the first this many tokens of the evaluation text (None = all of it).
        prompts: chat prompts for agreement; None = assets/eval/prompts.txt.
        qa: QA items; None = assets/eval/qa.jsonl.
        on_step: progress callback ``(step i, steps in total, {"stage", ...the stage's running metrics})``;
            one step per perplexity window, question and prompt.

    Returns:
        ``{"perplexity", "agreement", "qa_accuracy", "qa_correct", "qa_n", "eval_tokens"}``, plus
        ``"baseline": {"perplexity", "qa_accuracy", "agreement": 1.0}`` when a baseline is given.
    """
    work = {"text": load_eval_text(), "max_tokens": max_tokens, "qa": load_qa() if qa is None else qa}
    same = baseline is not None and (baseline is model or baseline.recipe == model.recipe)
    models = {"": model} if baseline is None or same else {"": model, "baseline ": baseline}
    if len(models) == 2:  # greedy tokens only matter when there is a different baseline to compare with
        work["prompts"] = load_prompts() if prompts is None else prompts
    progress = _StageCounter(on_step, sum(_steps(m, **work) for m in models.values()))
    results = [_measure(m, label, progress, **work) for label, m in models.items()]
    own, base = results[0], results[-1]  # the same measurements when the baseline is the model itself
    report = {
        "perplexity": own["perplexity"],
        "agreement": None if baseline is None else 1.0 if same else agreement(own["tokens"], base["tokens"]),
        "qa_accuracy": own["qa"]["accuracy"],
        "qa_correct": own["qa"]["correct"],
        "qa_n": own["qa"]["n"],
        "eval_tokens": own["eval_tokens"],
    }
    if baseline is not None:
        report["baseline"] = {"perplexity": base["perplexity"], "qa_accuracy": base["qa"]["accuracy"], "agreement": 1.0}
    return report


def _measure(model: LoadedModel, label: str, progress: "_StageCounter", text, max_tokens, qa, prompts=None) -> dict:
    # Stages run in this order; each stage's callback is made when it starts, so progress counts on.
    ppl = perplexity(model, text, max_tokens=max_tokens, on_step=progress.stage(label + "perplexity"))
    answers = qa_accuracy(model, qa, on_step=progress.stage(label + "qa"))
    tokens = None if prompts is None else greedy_tokens(model, prompts, on_step=progress.stage(label + "agreement"))
    n_tokens = len(text_ids(model, text, max_tokens))
    return {"perplexity": ppl, "eval_tokens": n_tokens, "qa": answers, "tokens": tokens}


def _steps(model: LoadedModel, text, max_tokens, qa, prompts=None) -> int:
    n_tokens = len(text_ids(model, text, max_tokens))
    n_windows = len(windows(n_tokens, _model_window(model, WINDOW), STRIDE))
    return n_windows + len(qa) + len(prompts or [])


class _StageCounter:
    """Turns each stage's own (i, total, metrics) into one running count over the whole evaluation."""

    def __init__(self, on_step: OnStep | None, total: int):
        self.on_step, self.total, self.done = on_step, total, 0

    def stage(self, name: str) -> OnStep | None:
        if self.on_step is None:
            return None
        offset = self.done

        def step(i: int, total: int, metrics: dict) -> None:
            self.done = offset + i
            self.on_step(self.done, self.total, {"stage": name, **metrics})

        return step
