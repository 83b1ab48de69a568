"""The teacher's training text written by llama.cpp: ``optimize.corpus`` asks for it when a student's spec says
``corpus_runtime="llama.cpp"`` (registered in ``optimize.corpus.WRITERS`` by this runtime's package).

The teacher runs as its F32 GGUF export (made and cached by this runtime), so its answers come from the teacher's
own float weights, sampled at the training text's temperature and top-p.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ...optimize.corpus import LLAMA_THREADS, TEMPERATURE, TOP_P, WRITING
from ...progress import OnStep
from ...recipe import GenerationSettings, Recipe, RecipeError, StudentSpec
from . import export


def teacher_answers(teacher, model: str, tokenizer, prompts: list[str], batches: list[list[list[int]]],
                    spec: StudentSpec, seed: int, end_ids: list[int], on_step: OnStep, *, build: Callable,
                    problem: Callable[[], str | None]) -> list[list[int]]:
    """Every chat's answer from llama.cpp running the teacher's F32 GGUF export, one call a batch.

    A row stops at the answer length, at one of the teacher's end tokens, or once prompt + answer fill
    ``spec.seq_len`` (the rest would be cut). Each call's sampler seed comes from a generator seeded with ``seed``
    (the runtime gives the rows of one call that seed, each drawing from its own distribution).
    """
    llama = _llama_teacher(model, tokenizer, prompts, build, problem)
    seeds = random.Random(seed)
    answers, total = [], sum(map(len, batches))
    try:
        for chunk in batches:
            rows = [_Answer(chat, min(spec.corpus_new_tokens, spec.seq_len - len(chat)), frozenset(end_ids))
                    for chat in chunk]
            live = [row for row in rows if row.open]
            if live:
                settings = GenerationSettings(max_new_tokens=max(row.settings.max_new_tokens for row in live),
                                              temperature=TEMPERATURE, top_p=TOP_P, seed=seeds.getrandbits(32))
                llama.generate(live, settings, lambda k, token, t: live[k].ids.append(token))
            answers.extend(row.ids for row in rows)
            on_step(len(answers), total, {"stage": WRITING})
    finally:
        llama.close()
    return answers


class _Answer:
    """One prompt's row in a llama.cpp generate call (the runtime's ``Row``): open until it holds ``new_tokens``
    tokens or ends with an end token."""

    def __init__(self, prompt_ids: list[int], new_tokens: int, end_ids: frozenset[int]):
        self.prompt_ids, self.wanted, self.end_ids = prompt_ids, new_tokens, end_ids
        self.settings = GenerationSettings(max_new_tokens=max(1, new_tokens), temperature=TEMPERATURE, top_p=TOP_P)
        self.ids: list[int] = []

    @property
    def open(self) -> bool:
        return len(self.ids) < self.wanted and not (self.ids and self.ids[-1] in self.end_ids)

    active = open


def _llama_teacher(model: str, tokenizer, prompts: list[str], build: Callable, problem: Callable[[], str | None]):
    """The teacher under llama.cpp: its F32 GGUF file (made and cached by the llama.cpp runtime when not there
    yet), loaded on LLAMA_THREADS threads, after checking that llama.cpp splits text into the same token ids as
    the teacher's tokenizer (the answers' ids are then ids of that vocabulary)."""
    why = problem()
    if why:
        raise RecipeError("corpus-runtime", f"--corpus-runtime llama.cpp writes the training text with llama.cpp, "
                                            f"but {why}; or choose --corpus-runtime transformers")
    llama = build(Recipe(model=model, runtime="llama.cpp", device="cpu", dtype="fp32",
                                  threads=LLAMA_THREADS))
    mismatch = export.tokenizer_mismatch(llama.path, tokenizer, [*export.PROBE_TEXTS, *prompts])
    if mismatch is not None:
        llama.close()
        raise RecipeError("corpus-runtime", f"llama.cpp splits {mismatch!r} into other tokens than the teacher's "
                                            "tokenizer does, so its answers would not be in the teacher's vocabulary; "
                                            "choose --corpus-runtime transformers")
    return llama
