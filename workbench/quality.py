"""Quality of a loaded model: perplexity, agreement with the baseline's greedy tokens, QA accuracy, KL divergence.

The measures answer different questions. Perplexity on a fixed text says how much the optimization
changed the model's next-token predictions overall. Agreement says how often the optimized model, decoding
greedily, picks exactly the token the baseline picks on the same chat prompts: what a user of the chat
would notice. QA accuracy says whether short factual answers survived, on a "dev" set (qa.jsonl) and on a
held-out set (qa_heldout.jsonl) that nothing in the project is tuned on. KL divergence from the baseline's
next-token distributions, on a text of its own (kl_text.md), sees a change before it flips a greedy token.
All inputs are the files under ``assets/eval/``, so every recipe is measured on the same work.

Every figure comes with a 95% interval: Wilson for QA accuracy (independent questions); a bootstrap over
prompts for agreement (tokens of one answer are not independent: once it diverges, the rest disagrees); a
block bootstrap over runs of 32 scored tokens for perplexity and KL (neighbouring tokens' losses correlate).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .progress import OnStep
from .recipe import GenerationSettings
from .runtimes import distribution
from .runtimes.base import LoadedModel, complete

EVAL_DIR = Path(__file__).resolve().parents[1] / "assets" / "eval"

WINDOW = 512  # tokens per perplexity forward pass
STRIDE = 256  # so every scored token has at least 256 tokens of context (except in the first window)
KL_TOKENS = 512  # KL on the first this many tokens of kl_text.md: one window, ~100 MB of baseline distributions
QA_FILES = {"dev": "qa.jsonl", "heldout": "qa_heldout.jsonl"}
SETS = ("dev", "heldout", "kl")  # what evaluate can measure besides perplexity
DEFAULT_SETS = ("dev", "kl")  # the held-out questions take ~2x the dev set's time: asked for, not by default
Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
BLOCK = 32  # scored tokens per bootstrap block
RESAMPLES = 2000
CI_METHODS = {
    "perplexity": f"95% block bootstrap over runs of {BLOCK} scored tokens (per window where a runtime gives sums only)",
    "qa_accuracy": "95% Wilson score interval over questions",
    "agreement": "95% bootstrap over prompts",
    "kl": f"95% block bootstrap over runs of {BLOCK} scored tokens",
}


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


def load_kl_text() -> str:
    """The held-out text (not the perplexity text) that KL divergence to the baseline is measured on."""
    return _asset("kl_text.md").read_text(encoding="utf-8")


def load_qa(part: str = "dev") -> list[dict]:
    """The QA items of one part ("dev": qa.jsonl; "heldout": qa_heldout.jsonl, which nothing is tuned on):
    dicts with ``question`` (str) and ``answers`` (non-empty list of accepted strings)."""
    if part not in QA_FILES:
        raise ValueError(f"QA part must be one of {', '.join(QA_FILES)}, got {part!r}")
    path = _asset(QA_FILES[part])
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
    return perplexity_report(model, text, window, stride, max_tokens, on_step)["perplexity"]


def perplexity_report(
    model: LoadedModel,
    text: str | None = None,
    window: int = WINDOW,
    stride: int = STRIDE,
    max_tokens: int | None = None,
    on_step: OnStep | None = None,
) -> dict:
    """Perplexity (as ``perplexity``) with its 95% interval: ``{"perplexity", "ci", "tokens"}``.

    The interval resamples blocks of ``BLOCK`` consecutive scored tokens (whole windows where the runtime
    gives only a window's summed loss); it is None when there are fewer than two blocks.
    """
    ids = text_ids(model, load_eval_text() if text is None else text, max_tokens)
    window = _model_window(model, window)
    spans = windows(len(ids), window, stride)
    nll, scored, per_token, per_window = 0.0, 0, [], []
    for i, (begin, start, end) in enumerate(spans, start=1):
        losses = distribution.token_nlls(model, ids[begin:end], start - begin)
        loss = model.nll(ids[begin:end], start - begin) if losses is None else float(np.sum(losses))
        per_token = None if losses is None or per_token is None else per_token + [losses]
        per_window.append((loss, end - start))
        nll += loss
        scored += end - start
        if on_step:
            on_step(i, len(spans), {"perplexity": math.exp(nll / scored), "tokens": scored})
    if per_token is not None:
        sums, counts = _blocks(np.concatenate(per_token))
    else:
        sums, counts = np.array([w[0] for w in per_window]), np.array([w[1] for w in per_window])
    ci = bootstrap_interval(sums, counts, transform=np.exp)
    return {"perplexity": math.exp(nll / scored), "ci": ci, "tokens": scored}


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


# ------------------------------------------------------------------------------------------- intervals


def wilson_interval(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a binomial share (95% by default); None when there are no trials.

    Unlike the normal approximation it stays inside [0, 1] and is not zero-width at 0/n or n/n.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be from 0 to n ({n}), got {successes}")
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # 0/n and n/n touch the bound exactly (the subtraction leaves ~1e-17 of rounding).
    return [0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half)]


def bootstrap_interval(
    sums: Sequence[float], counts: Sequence[float], transform=None, resamples: int = RESAMPLES, seed: int = 0,
    level: float = 0.95, empty: float = 1.0,
) -> list[float] | None:
    """Percentile bootstrap interval of a pooled ratio ``sum(sums) / sum(counts)`` over independent units.

    Units (blocks of tokens, windows, prompts) are resampled with replacement; each resample's ratio goes
    through ``transform`` (e.g. ``exp`` for perplexity). Seeded, so a figure's interval is reproducible.
    None with fewer than two units: one unit says nothing about spread.

    Args:
        sums: each unit's numerator (summed loss, agreeing tokens, summed KL).
        counts: each unit's denominator (tokens scored, baseline tokens).
        transform: applied to each ratio (vectorised); None = identity.
        empty: the ratio of a resample whose counts are all zero.
    """
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if len(sums) < 2:
        return None
    picks = np.random.default_rng(seed).integers(0, len(sums), size=(resamples, len(sums)))
    num, den = sums[picks].sum(axis=1), counts[picks].sum(axis=1)
    ratios = np.where(den > 0, num / np.where(den > 0, den, 1), empty)
    if transform is not None:
        ratios = transform(ratios)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _blocks(values: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Per-token values cut into consecutive blocks: (each block's sum, each block's length)."""
    starts = np.arange(0, len(values), block)
    return np.add.reduceat(values, starts) if len(values) else values, np.minimum(block, len(values) - starts)


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


def agreement_interval(tokens: list[list[int]], baseline_tokens: list[list[int]]) -> list[float] | None:
    """95% bootstrap interval of ``agreement``, resampling prompts (None with fewer than two prompts)."""
    same = [sum(a == b for a, b in zip(mine, base)) for mine, base in zip(tokens, baseline_tokens)]
    return bootstrap_interval(same, [len(base) for base in baseline_tokens])


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
        ``{"accuracy", "ci", "n", "correct", "answers": [{"question", "answer", "expected", "ok"}]}``, ``ci``
        the 95% Wilson interval of the accuracy (None with no questions).
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
    return {"accuracy": correct / len(items) if items else 0.0, "ci": wilson_interval(correct, len(items)),
            "n": len(items), "correct": correct, "answers": answers}


# ------------------------------------------------------------------------------------------------- KL


@dataclass
class KLReference:
    """The baseline's next-token distributions on the KL text, kept so that a model can be compared with them
    after the baseline is freed (``workbench eval`` never holds two models).

    Attributes:
        text, max_tokens: what was scored (the model under test must split it into the same ``ids``).
        ids: the baseline's token ids of the text.
        spans: the (begin, start, end) windows scored.
        logprobs: per span, float32 ``(end - start, vocab)`` log-probabilities; None when unavailable.
        problem: why the baseline gave no distributions (None when it did).
    """

    text: str
    max_tokens: int | None
    ids: list[int]
    spans: list[tuple[int, int, int]]
    logprobs: list[np.ndarray] | None
    problem: str | None = None


def kl_reference(
    baseline: LoadedModel, text: str | None = None, max_tokens: int | None = KL_TOKENS, on_step: OnStep | None = None
) -> KLReference:
    """The baseline's next-token distributions on the KL text (windows as for perplexity).

    Args:
        baseline: the model every other is compared with.
        text: the text; None = assets/eval/kl_text.md (held out: not the perplexity text).
        max_tokens: the first this many tokens of it (None = all; each 512 tokens hold ~100 MB for a 49k vocab).
        on_step: progress callback ``(window i, windows in total, {})``.
    """
    text = load_kl_text() if text is None else text
    ids = text_ids(baseline, text, max_tokens)
    spans = windows(len(ids), _model_window(baseline, WINDOW), STRIDE)
    reason = distribution.problem(baseline)
    if reason:
        return KLReference(text, max_tokens, ids, spans, None, f"the baseline: {reason}")
    logprobs = []
    for i, (begin, start, end) in enumerate(spans, start=1):
        found = distribution.next_token_logprobs(baseline, ids[begin:end], start - begin)
        if found is None:
            return KLReference(text, max_tokens, ids, spans, None, "the baseline's runtime gives no next-token distributions")
        logprobs.append(found)
        if on_step:
            on_step(i, len(spans), {})
    return KLReference(text, max_tokens, ids, spans, logprobs)


def kl_divergence(model: LoadedModel, reference: KLReference, on_step: OnStep | None = None) -> dict:
    """Mean KL(baseline || model) of the next-token distributions, in nats per scored token, with its interval.

    0 for the baseline itself; it grows as the model moves probability away from what the baseline predicts,
    long before the greedy choice (agreement, QA) changes.

    Args:
        model: the model under test.
        reference: the baseline's distributions (``kl_reference``).
        on_step: progress callback ``(window i, windows in total, {"kl", "tokens"})``.

    Returns:
        ``{"kl", "ci", "tokens", "problem"}``: ``kl`` and ``ci`` are None, and ``problem`` says why, when it
        cannot be computed (a runtime without distributions, a different tokenizer or vocabulary).
    """
    problem = reference.problem or _kl_problem(model, reference)
    per_token = []
    for i, ((begin, start, end), base) in enumerate(zip(reference.spans, reference.logprobs or []), start=1):
        if problem:
            break
        found = distribution.next_token_logprobs(model, reference.ids[begin:end], start - begin)
        if found is None or found.shape != base.shape:
            problem = ("the model's runtime gives no next-token distributions" if found is None else
                       f"the vocabularies differ ({found.shape[1]} and {base.shape[1]} entries)")
            break
        per_token.append(_kl_rows(base, found))
        if on_step:
            values = np.concatenate(per_token)
            on_step(i, len(reference.spans), {"kl": float(values.mean()), "tokens": len(values)})
    if problem:
        return {"kl": None, "ci": None, "tokens": 0, "problem": problem}
    values = np.concatenate(per_token)
    sums, counts = _blocks(values)
    return {"kl": float(values.mean()), "ci": bootstrap_interval(sums, counts), "tokens": len(values), "problem": None}


def _kl_problem(model: LoadedModel, reference: KLReference) -> str | None:
    reason = distribution.problem(model)
    if reason:
        return f"the model: {reason}"
    if text_ids(model, reference.text, reference.max_tokens) != reference.ids:
        return "the model's tokenizer splits the KL text differently from the baseline's"
    widest = max(end - begin for begin, _, end in reference.spans)
    if _model_window(model, WINDOW) < widest:
        return f"the model attends to fewer than the {widest} tokens of the baseline's windows"
    return None


def _kl_rows(base: np.ndarray, other: np.ndarray, rows: int = 64) -> np.ndarray:
    """Per position sum_v p(v) (log p(v) - log q(v)), in float64, ``rows`` positions at a time (memory)."""
    out = np.empty(len(base))
    for k in range(0, len(base), rows):
        p_log = base[k:k + rows].astype(np.float64)
        p = np.exp(p_log)
        out[k:k + rows] = np.where(p > 0, p * (p_log - other[k:k + rows]), 0.0).sum(axis=1)
    return out


# -------------------------------------------------------------------------------------------- evaluate


def evaluate(
    model: LoadedModel,
    baseline: LoadedModel | None = None,
    *,
    max_tokens: int | None = None,
    prompts: list[str] | None = None,
    qa: list[dict] | None = None,
    heldout: list[dict] | None = None,
    sets: Sequence[str] = DEFAULT_SETS,
    kl_tokens: int | None = KL_TOKENS,
    on_step: OnStep | None = None,
) -> dict:
    """Perplexity, agreement with the baseline, QA accuracy and KL divergence, each with its 95% interval:
    what ``workbench eval`` prints.

    Args:
        model: the model under test.
        baseline: the baseline to compare with; None = no comparison (``agreement`` and ``kl`` are None). When
            it is the same recipe (or the same object), nothing is measured twice: agreement 1.0, KL 0.0.
        max_tokens: perplexity on the first this many tokens of the evaluation text (None = all of it).
        prompts: chat prompts for agreement; None = assets/eval/prompts.txt.
        qa: dev QA items; None = assets/eval/qa.jsonl.
        heldout: held-out QA items; None = assets/eval/qa_heldout.jsonl.
        sets: what to measure besides perplexity (and agreement, with a baseline): "dev" QA, "heldout" QA,
            "kl"; the default leaves the held-out questions out (they double the QA time).
        kl_tokens: KL on the first this many tokens of assets/eval/kl_text.md (None = all of it).
        on_step: progress callback ``(step i, steps in total, {"stage", ...the stage's running metrics})``;
            one step per perplexity or KL window, question and prompt.

    Returns:
        ``{"perplexity", "perplexity_ci", "agreement", "agreement_ci", "qa_accuracy", "qa_accuracy_ci",
        "qa_correct", "qa_n", "heldout_qa_accuracy", "heldout_qa_accuracy_ci", "heldout_qa_correct",
        "heldout_qa_n", "kl", "kl_ci", "kl_tokens", "kl_problem", "eval_tokens", "ci_methods"}`` (a set not
        measured gives None, and ``kl_problem`` says why KL is None), plus ``"baseline": {"perplexity",
        "perplexity_ci", "qa_accuracy", "qa_accuracy_ci", "heldout_qa_accuracy", "heldout_qa_accuracy_ci",
        "agreement": 1.0, "kl": 0.0}`` when a baseline is given. Intervals are ``[low, high]``.
    """
    sets = _checked_sets(sets)
    work = {"text": load_eval_text(), "max_tokens": max_tokens,
            "qa": (load_qa() if qa is None else qa) if "dev" in sets else [],
            "heldout": (load_qa("heldout") if heldout is None else heldout) if "heldout" in sets else []}
    same = baseline is not None and (baseline is model or baseline.recipe == model.recipe)
    models = {"": model} if baseline is None or same else {"": model, "baseline ": baseline}
    if len(models) == 2:  # greedy tokens and KL only matter when there is a different baseline to compare with
        work["prompts"] = load_prompts() if prompts is None else prompts
    kl_work = {"text": load_kl_text(), "max_tokens": kl_tokens} if "kl" in sets and len(models) == 2 else None
    kl_steps = 2 * _n_windows(model, **kl_work) if kl_work else 0
    progress = _StageCounter(on_step, sum(_steps(m, **work) for m in models.values()) + kl_steps)
    results = [_measure(m, label, progress, **work) for label, m in models.items()]
    own, base = results[0], results[-1]  # the same measurements when the baseline is the model itself
    if kl_work:
        reference = kl_reference(baseline, **kl_work, on_step=progress.stage("baseline kl"))
        kl = kl_divergence(model, reference, on_step=progress.stage("kl"))
        del reference  # ~100 MB per 512 tokens
    else:
        kl = _kl_not_measured(model, baseline, same, sets, kl_tokens)
    report = {
        **_figures(own),
        "agreement": None if baseline is None else 1.0 if same else agreement(own["tokens"], base["tokens"]),
        "agreement_ci": None if baseline is None else [1.0, 1.0] if same else
        agreement_interval(own["tokens"], base["tokens"]),
        "qa_correct": own["qa"]["correct"] if own["qa"] else None,
        "qa_n": own["qa"]["n"] if own["qa"] else 0,
        "heldout_qa_correct": own["heldout"]["correct"] if own["heldout"] else None,
        "heldout_qa_n": own["heldout"]["n"] if own["heldout"] else 0,
        "kl": kl["kl"], "kl_ci": kl["ci"], "kl_tokens": kl["tokens"], "kl_problem": kl["problem"],
        "eval_tokens": own["eval_tokens"],
        "ci_methods": CI_METHODS,
    }
    if baseline is not None:
        report["baseline"] = {**_figures(base), "agreement": 1.0, "kl": 0.0}
    return report


def _checked_sets(sets: Sequence[str]) -> tuple[str, ...]:
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise ValueError(f"unknown evaluation set {unknown[0]!r}: choose from {', '.join(SETS)}")
    return tuple(sets)


def _figures(measured: dict) -> dict:
    """A model's own figures with their intervals (what the report and its baseline both carry)."""
    qa, held = measured["qa"], measured["heldout"]
    return {
        "perplexity": measured["perplexity"]["perplexity"],
        "perplexity_ci": measured["perplexity"]["ci"],
        "qa_accuracy": qa["accuracy"] if qa else None,
        "qa_accuracy_ci": qa["ci"] if qa else None,
        "heldout_qa_accuracy": held["accuracy"] if held else None,
        "heldout_qa_accuracy_ci": held["ci"] if held else None,
    }


def _kl_not_measured(model, baseline, same: bool, sets: tuple[str, ...], kl_tokens: int | None) -> dict:
    if "kl" not in sets:
        return {"kl": None, "ci": None, "tokens": 0, "problem": "not measured (\"kl\" is not among the sets)"}
    if baseline is None:
        return {"kl": None, "ci": None, "tokens": 0, "problem": "no baseline to compare with"}
    n = len(text_ids(model, load_kl_text(), kl_tokens)) - 1  # same: a model against itself is 0 everywhere
    return {"kl": 0.0, "ci": [0.0, 0.0], "tokens": n, "problem": None}


def _measure(model: LoadedModel, label: str, progress: "_StageCounter", text, max_tokens, qa, heldout,
             prompts=None) -> dict:
    # Stages run in this order; each stage's callback is made when it starts, so progress counts on.
    ppl = perplexity_report(model, text, max_tokens=max_tokens, on_step=progress.stage(label + "perplexity"))
    answers = qa_accuracy(model, qa, on_step=progress.stage(label + "qa")) if qa else None
    held = qa_accuracy(model, heldout, on_step=progress.stage(label + "heldout qa")) if heldout else None
    tokens = None if prompts is None else greedy_tokens(model, prompts, on_step=progress.stage(label + "agreement"))
    n_tokens = len(text_ids(model, text, max_tokens))
    return {"perplexity": ppl, "eval_tokens": n_tokens, "qa": answers, "heldout": held, "tokens": tokens}


def _steps(model: LoadedModel, text, max_tokens, qa, heldout, prompts=None) -> int:
    return _n_windows(model, text, max_tokens) + len(qa) + len(heldout) + len(prompts or [])


def _n_windows(model: LoadedModel, text: str, max_tokens: int | None) -> int:
    return len(windows(len(text_ids(model, text, max_tokens)), _model_window(model, WINDOW), STRIDE))


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
