"""A student's card: what distillation bought, measured here, next to the teacher and the student before healing.

Quality (transformers fp32): QA accuracy on the dev questions, perplexity on the evaluation text and greedy-token
agreement with the teacher, for the teacher, the unhealed student (the teacher without the dropped layers, no
training) and the healed student. Speed: decode tokens/s of teacher and student on each runtime (transformers fp32,
llama.cpp Q4_0 where llama-cpp-python is installed), measured in interleaved rounds so that drift in the machine's
speed hits both alike; the speed-up is the ratio of medians. Plus the training curves the student recorded.

The card is written next to the student (``card.json``, replaced atomically) with the step it was measured at; a
student trained further has a stale card until it is measured again.
"""

from __future__ import annotations

import gc
import json
import statistics
from pathlib import Path

from . import machine, quality, runtimes, store
from .optimize import variants
from .progress import OnStep, no_step
from .recipe import GenerationSettings, Recipe
from .serving.engine import Engine

CARD = "card.json"
SPEED_PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
QUALITY = ("qa_accuracy", "qa_accuracy_ci", "qa_correct", "qa_n", "perplexity", "perplexity_ci", "eval_tokens")
SPEED_RUNTIMES = (("transformers fp32", {"runtime": "transformers", "dtype": "fp32"}),
                  ("llama.cpp q4_0", {"runtime": "llama.cpp", "dtype": "q4_0"}))


def card_path(teacher: str, name: str) -> Path | None:
    found = variants.find_student(teacher, name)
    return found / CARD if found is not None else None


def read_card(teacher: str, name: str) -> dict | None:
    """The student's card, if one was measured (it may be stale: compare its "steps" with the student's)."""
    path = card_path(teacher, name)
    try:
        return json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None


def measure_card(teacher: str, name: str, *, qa_limit: int | None = None, max_eval_tokens: int | None = 1024,
                 agreement_tokens: int = 32, speed_tokens: int = 64, rounds: int = 3,
                 known: dict | None = None, on_step: OnStep = no_step) -> dict:
    """Measure the card of student ``name`` of ``teacher`` and write it next to the student.

    Args:
        teacher: the recipe model the student was distilled from.
        name: the student's name (its ``--variant``).
        qa_limit: QA on the first N dev questions (None: all).
        max_eval_tokens: perplexity on the first N tokens of the evaluation text.
        agreement_tokens: greedy tokens per agreement prompt.
        speed_tokens: tokens per timed answer; ``rounds`` interleaved rounds of one answer each.
        known: quality rows already measured with these settings ("teacher", "unhealed": they do not change
            as the student trains further); the teacher's must come with its greedy "tokens".
        on_step: progress ``(i, n, {"stage"})``.
    """
    path = card_path(teacher, name)
    if path is None:
        raise variants.RecipeError("variant", f"no student {name!r} of {teacher} was built here")
    student_meta = json.loads((path.parent / store.MARKER).read_text())["student"]
    items = quality.load_qa()[:qa_limit] if qa_limit else None
    prompts = quality.load_prompts()
    base = Recipe(model=teacher, device="cpu", dtype="fp32")
    quality_rows: dict[str, dict] = {}
    teacher_tokens = None
    builds = [("teacher", lambda: runtimes.build(base)),
              ("unhealed", lambda: runtimes.build_unhealed_student(base, student_meta["spec"])),
              ("healed", lambda: runtimes.build(Recipe(model=teacher, device="cpu", dtype="fp32", variant=name)))]
    known = known or {}
    for who, build in builds:
        if who in known:
            quality_rows[who] = known[who]
            teacher_tokens = teacher_tokens or known[who].get("tokens")
            continue
        on_step(0, 0, {"stage": f"card: measuring the {who} model's quality"})
        model = build()
        try:
            measured = quality.evaluate(model, None, max_tokens=max_eval_tokens, qa=items, sets=("dev",),
                                        on_step=_staged(on_step, f"card: {who} quality"))
            tokens = quality.greedy_tokens(model, prompts, agreement_tokens)
        finally:
            model.close()
            del model
            gc.collect()
        if teacher_tokens is None:
            teacher_tokens = tokens
        quality_rows[who] = {**{k: measured.get(k) for k in QUALITY},
                             "agreement": quality.agreement(tokens, teacher_tokens),
                             "agreement_ci": quality.agreement_interval(tokens, teacher_tokens), "tokens": tokens}
    speed = {label: _speed(teacher, name, fields, speed_tokens, rounds, on_step) for label, fields in SPEED_RUNTIMES}
    card = {
        "student": name, "teacher": teacher, "steps": student_meta["steps"],
        "train_seconds": student_meta.get("train_seconds"), "params": student_meta["params"],
        "teacher_params": student_meta["teacher_params"], "spec": student_meta["spec"],
        "quality": quality_rows, "speed": speed,
        "settings": {"qa_limit": qa_limit, "max_eval_tokens": max_eval_tokens, "agreement_tokens": agreement_tokens,
                     "agreement_prompts": len(prompts), "speed_tokens": speed_tokens, "rounds": rounds},
        "machine": machine.cpu_model(),
    }
    store.write_file(path, json.dumps(card, indent=1))
    return card


def _staged(on_step: OnStep, stage: str) -> OnStep:
    return lambda i, n, metrics: on_step(i, n, {**metrics, "stage": stage})


def _speed(teacher: str, name: str, fields: dict, tokens: int, rounds: int, on_step: OnStep) -> dict:
    """Decode tok/s of teacher and student on one runtime, in interleaved rounds; or why it cannot be measured."""
    label = f"{fields['runtime']} {fields['dtype']}"
    models = {}
    try:
        for who, variant in (("teacher", "none"), ("student", name)):
            on_step(0, 0, {"stage": f"card: building the {who} on {label}"})
            models[who] = runtimes.build(Recipe(model=teacher, device="cpu", variant=variant, **fields))
        measured: dict[str, list[float]] = {"teacher": [], "student": []}
        for who in models:  # warm-up: first-use costs (weight repacking, allocations) are not latency
            _decode_tok_s(models[who], 8)
        for r in range(rounds):
            order = ["teacher", "student"] if r % 2 == 0 else ["student", "teacher"]
            for who in order:
                measured[who].append(_decode_tok_s(models[who], tokens))
            on_step(r + 1, rounds, {"stage": f"card: timing on {label}"})
    except Exception as exc:  # a runtime that cannot run here is a row that says why
        return {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
    finally:
        for model in models.values():
            model.close()
        models.clear()
        gc.collect()
    t, s = statistics.median(measured["teacher"]), statistics.median(measured["student"])
    return {"teacher_tok_s": round(t, 2), "student_tok_s": round(s, 2), "speedup": round(s / t, 3),
            "teacher_runs": measured["teacher"], "student_runs": measured["student"]}


def _decode_tok_s(model, tokens: int) -> float:
    engine = Engine(model)  # no history: these timings are not user requests
    try:
        result = engine.generate(SPEED_PROMPT, GenerationSettings(max_new_tokens=tokens, ignore_eos=True),
                                 origin="bench")
    finally:
        engine.close()
    if result.error:
        raise RuntimeError(result.error)
    return round(result.decode_tok_s, 2)
