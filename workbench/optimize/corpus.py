"""The training text of a student: the teacher's own answers to the project's prompts.

``teacher_corpus`` writes it once per student (chat-formatted token ids, sampled at temperature 0.8 and top-p 0.95
by draws seeded from the spec, never the process-wide RNG) and caches it as ``corpus.json`` in the student's work
folder, replaced atomically; ``heldout_corpus`` does the same for the held-out prompts (``heldout.json``), from a
seed stream of its own. The prompts (``assets/distill/prompts.txt``, whose first ``spec.prompts`` lines are used,
and ``assets/distill/heldout.txt``) are disjoint from each other and from every evaluation set.

The answers are written by transformers (``generate``, 16 prompts a batch), or by llama.cpp when the spec's
``corpus_runtime`` says so: the teacher's own float weights exported as an F32 GGUF file (the llama.cpp runtime's
export of the same model, so the same vocabulary), sampled the same way on ``LLAMA_THREADS`` threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from .. import store
from ..conversation import encode_chat
from ..progress import OnStep, no_step
from ..recipe import RecipeError, StudentSpec

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "distill"
PROMPTS = ASSETS / "prompts.txt"
HELDOUT = ASSETS / "heldout.txt"
TEMPERATURE, TOP_P = 0.8, 0.95
BATCH = 16  # prompts answered together
LLAMA_THREADS = 2
WRITING = "teacher writes the training text"
log = logging.getLogger(__name__)


def is_corpus(value) -> bool:
    """Whether a corpus file's JSON is what this module writes: a non-empty list of non-empty token id lists."""
    return (isinstance(value, list) and bool(value) and all(
        isinstance(seq, list) and seq and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in seq)
        for seq in value))


def read_prompts(path: Path) -> list[str]:
    """The prompts of a prompt file, one per non-empty line."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def training_prompts(count: int) -> list[str]:
    """The first ``count`` training prompts; RecipeError("prompts") when the file holds fewer."""
    prompts = read_prompts(PROMPTS)
    if count > len(prompts):
        raise RecipeError("prompts", f"--prompts {count} asks for more training prompts than {PROMPTS.name} holds: "
                                     f"it has {len(prompts)}; choose {len(prompts)} or fewer")
    return prompts[:count]


def teacher_corpus(teacher, tokenizer, spec: StudentSpec, work: Path, *, model: str,
                   on_step: OnStep | None = None) -> list[list[int]]:
    """Teacher-written answers to the first ``spec.prompts`` prompts (chat-formatted token ids, each cut to
    ``spec.seq_len``), ``spec.samples_per_prompt`` per prompt, cached in the work dir as ``corpus.json``.

    Args:
        teacher: the teacher's float PyTorch model (it writes the text under the transformers runtime).
        tokenizer: its tokenizer.
        spec: the student's spec: prompts, samples per prompt, answer length, seed, corpus runtime.
        work: the student's work folder.
        model: the teacher's recipe model field (what the llama.cpp runtime exports).
        on_step: progress ``(answers written, answers in all, {"stage": WRITING})``, after every batch.
    """
    prompts = training_prompts(spec.prompts)
    return _cached(work / "corpus.json", "training text", lambda: _write(
        teacher, tokenizer, spec, model, prompts, spec.samples_per_prompt, "training", on_step or no_step))


def heldout_corpus(teacher, tokenizer, spec: StudentSpec, work: Path, *, model: str) -> list[list[int]]:
    """The teacher's answers to the held-out prompts, one each, written like the training text (same runtime,
    another seed stream) and cached in the work dir as ``heldout.json``."""
    prompts = read_prompts(HELDOUT)
    return _cached(work / "heldout.json", "held-out text", lambda: _write(
        teacher, tokenizer, spec, model, prompts, 1, "heldout", no_step))


def _cached(path: Path, what: str, write: Callable[[], list[list[int]]]) -> list[list[int]]:
    """The token sequences cached at ``path``, or ``write()``'s, stored there atomically (a damaged file is
    written again, with a warning naming it)."""
    if path.is_file():
        try:
            sequences = json.loads(path.read_text())
        except ValueError:  # cut short by an older version's in-place write: written again
            log.warning("%s is not complete JSON; the teacher writes the %s again", path, what)
        else:
            if is_corpus(sequences):
                return sequences
            log.warning("%s does not hold token sequences; the teacher writes the %s again", path, what)
    sequences = write()
    try:
        store.write_file(path, json.dumps(sequences))
    except OSError as exc:
        unable = store.write_failure(exc, path.parent)
        if unable is None:
            raise
        raise unable from None
    return sequences


def _write(teacher, tokenizer, spec: StudentSpec, model: str, prompts: list[str], samples: int, stream: str,
           on_step: OnStep) -> list[list[int]]:
    """Prompt + answer token ids, ``samples`` passes over the prompts in order, by the spec's corpus runtime.

    A batch holds BATCH prompts of one pass: never one prompt twice (under llama.cpp the rows of a call share a
    seed, so two copies of a prompt would get the same answer)."""
    chats = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    batches = [chats[i : i + BATCH] for _ in range(samples) for i in range(0, len(chats), BATCH)]
    seed, end_ids = stream_seed(spec.seed, stream), _eos_ids(teacher)
    writer = WRITERS.get(spec.corpus_runtime)
    if writer is None:
        raise RecipeError("corpus-runtime", f"no writer of training text for the {spec.corpus_runtime} runtime is "
                                            "registered: import workbench.runtimes first (the runtime registers it)")
    answers = writer(teacher, model, tokenizer, prompts, batches, spec, seed, end_ids, on_step)
    return [(chat + answer)[: spec.seq_len] for chat, answer in zip(chats * samples, answers)]


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one stream of draws: the spec's seed itself for the training text (the text earlier versions
    wrote), a 63-bit seed hashed from it and the stream's name for any other, so no two streams share draws."""
    if stream == "training":
        return int(seed)
    return int.from_bytes(hashlib.sha256(f"{stream}:{seed}".encode()).digest()[:8], "big") >> 1


def _eos_ids(teacher) -> list[int]:
    """The tokens that end the teacher's answer (its generation config's), as a list."""
    eos = teacher.generation_config.eos_token_id
    return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


# Transformers ------------------------------------------------------------------------------------------------


def _transformers_answers(teacher, model: str, tokenizer, prompts: list[str], batches: list[list[list[int]]],
                          spec: StudentSpec, seed: int, end_ids: list[int], on_step: OnStep) -> list[list[int]]:
    """Every chat's answer from ``teacher.generate``, a batch at a time, left-padded, drawn by ``_SeededDraw``."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Sampled by a draw of its own; generate itself is greedy, so draws nothing.
    config = GenerationConfig(
        max_new_tokens=spec.corpus_new_tokens, do_sample=False, top_k=None, temperature=None, top_p=None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=teacher.generation_config.eos_token_id,
    )
    draw = _SeededDraw(seed, temperature=TEMPERATURE, top_p=TOP_P)
    device = next(teacher.parameters()).device
    answers, total = [], sum(map(len, batches))
    for chunk in batches:
        width = max(map(len, chunk))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk])
        mask = (torch.arange(width).unsqueeze(0) >= torch.tensor([width - len(c) for c in chunk]).unsqueeze(1)).long()
        with torch.no_grad():
            out = teacher.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                                   logits_processor=[draw])
        answers.extend(_until_end(row[width:].tolist(), end_ids) for row in out)
        on_step(len(answers), total, {"stage": WRITING})
    return answers


def _until_end(answer: list[int], eos_ids: list[int]) -> list[int]:
    """A generated row up to and including its first end token: generate pads the rows that finish first (with
    the end token itself when it is also the pad token, as for the embedded model)."""
    ends = [answer.index(t) for t in eos_ids if t in answer]
    return answer[: min(ends) + 1] if ends else answer


class _SeededDraw(LogitsProcessor):
    """Temperature and top-p sampling from a generator of its own: it draws each row's token and leaves only that
    token possible, so that greedy generate picks it without touching the process-wide RNG."""

    def __init__(self, seed: int, temperature: float, top_p: float):
        self.warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(top_p)]
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        probs = scores.float().softmax(-1).cpu()  # the generator is a CPU one, wherever the teacher runs
        chosen = torch.multinomial(probs, 1, generator=self.generator).to(scores.device)  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)


# (teacher, model, tokenizer, prompts, batches of chat ids, spec, seed, end ids, on_step) -> one answer per chat
AnswerWriter = Callable[..., list[list[int]]]
# What writes the teacher's answers, by StudentSpec.corpus_runtime. Runtimes that can write them faster register
# themselves here (workbench.runtimes.llamacpp adds "llama.cpp"), so this layer never imports a runtime.
WRITERS: dict[str, AnswerWriter] = {"transformers": _transformers_answers}
