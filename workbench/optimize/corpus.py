"""The training text of a student: the teacher's own answers to the project's prompts.

``teacher_corpus`` writes it once per student (chat-formatted token ids, sampled by a generator seeded from the
spec, never the process-wide RNG) and caches it as ``corpus.json`` in the student's work folder, replaced
atomically. The prompts (``assets/distill/prompts.txt``) are disjoint from every evaluation set.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from .. import store
from ..conversation import encode_chat
from ..recipe import StudentSpec

PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "distill" / "prompts.txt"
log = logging.getLogger(__name__)


def is_corpus(value) -> bool:
    """Whether a corpus file's JSON is what ``_corpus`` writes: a non-empty list of non-empty token id lists."""
    return (isinstance(value, list) and bool(value) and all(
        isinstance(seq, list) and seq and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in seq)
        for seq in value))


def teacher_corpus(teacher, tokenizer, spec: StudentSpec, work: Path) -> list[list[int]]:
    """Teacher-written answers to the project's prompts (chat-formatted token ids), cached in the work dir."""
    path = work / "corpus.json"
    if path.is_file():
        try:
            sequences = json.loads(path.read_text())
        except ValueError:  # cut short by an older version's in-place write: written again
            log.warning("%s is not complete JSON; the teacher writes the training text again", path)
        else:
            if is_corpus(sequences):
                return sequences
            log.warning("%s does not hold token sequences; the teacher writes the training text again", path)
    prompts = [p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Sampled (temperature 0.8, top-p 0.95) by a draw of its own; generate itself is greedy, so draws nothing.
    config = GenerationConfig(
        max_new_tokens=spec.corpus_new_tokens, do_sample=False, top_k=None, temperature=None, top_p=None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=teacher.generation_config.eos_token_id,
    )
    draw = _SeededDraw(spec.seed, temperature=0.8, top_p=0.95)
    sequences = []
    for _ in range(spec.samples_per_prompt):
        for i in range(0, len(prompts), 16):
            chunk = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts[i : i + 16]]
            width = max(map(len, chunk))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk])
            mask = (torch.arange(width).unsqueeze(0) >= torch.tensor([width - len(c) for c in chunk]).unsqueeze(1)).long()
            with torch.no_grad():
                out = teacher.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                       logits_processor=[draw])
            for row, prompt in zip(out, chunk):
                answer = row[width:].tolist()
                while answer and answer[-1] == tokenizer.pad_token_id and tokenizer.pad_token_id != teacher.generation_config.eos_token_id:
                    answer.pop()
                sequences.append((prompt + answer)[: spec.seq_len])
    try:
        store.write_file(path, json.dumps(sequences))
    except OSError as exc:
        unable = store.write_failure(exc, work)
        if unable is None:
            raise
        raise unable from None
    return sequences


class _SeededDraw(LogitsProcessor):
    """Temperature and top-p sampling from a generator of its own: it draws each row's token and leaves only that
    token possible, so that greedy generate picks it without touching the process-wide RNG."""

    def __init__(self, seed: int, temperature: float, top_p: float):
        self.warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        chosen = torch.multinomial(scores.float().softmax(-1), 1, generator=self.generator)  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)
