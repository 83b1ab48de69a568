"""Building a distilled student here.

A student starts as a structurally pruned copy of the teacher (fewer decoder layers, chosen by one of
``LAYER_CHOICES``, and/or narrower MLPs) and is healed by knowledge distillation on text the teacher writes from
the project's own prompts (``corpus``): KL divergence between the teacher's and the student's softened next-token
distributions, and, TinyBERT-style, each student layer's output against the teacher layer it was copied from and
optionally their attention distributions (``losses``), each term weighted by the spec. The teacher's targets are
computed once per corpus (``targets``), so a training step is the student's compute alone. A run trains for a
number of steps or for minutes, measuring a small held-out perplexity as it goes, and checkpoints to the artifact
cache (safetensors), so it can stop and resume.

What a kill -9 at any moment leaves behind is usable: the training text (``corpus.json``) and the teacher's targets
are replaced atomically, a checkpoint is written whole to ``checkpoint.new`` and swapped in (so a complete one
always exists), and the finished student is swapped in over a shorter one in one step (readers see the old student
or the new one). One process builds a given student at a time: a second one is told who is building it.

Every random draw (the teacher's sampling of the training text, the order of the batches) comes from generators
seeded from the spec's seed, never from the process-wide RNG: the same spec gives the same student, and engines
sampling in this process at the same time are not disturbed (their seeded answers stay their own).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import math
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from .. import loading, store
from ..progress import OnStep, no_step
from ..recipe import DEFAULT_STUDENT_MINUTES, PruneSpec, Recipe, RecipeError, StudentSpec
from .corpus import PROMPTS, heldout_corpus, teacher_corpus  # noqa: F401  (PROMPTS: the training prompts' file)
from .losses import (attention_loss, kd_loss, layer_map, layer_outputs, layers_loss, masked_mean, top_k_kl,
                     use_eager_attention)
from .prune import calibration_inputs, decoder_layers, drop_layers_, prune_
from .targets import Targets, pad_right, teacher_targets
from .variants import find_student, student_key, student_name

PROGRESS = "progress.json"  # written last into a checkpoint: its presence means the checkpoint is complete
log = logging.getLogger(__name__)


# --- building a student ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    """How long a student trains in all: a number of steps, or minutes of training (its time on this machine,
    summed over runs; writing the training text and the teacher's targets comes before and does not count)."""

    steps: int | None = None
    minutes: float | None = None

    def __post_init__(self):
        if (self.steps is None) == (self.minutes is None):
            raise RecipeError("steps", "give the student a number of steps or of minutes, not both")
        if self.steps is not None and self.steps < 1:
            raise RecipeError("steps", f"steps must be at least 1, got {self.steps}")
        if self.minutes is not None and not 0 < self.minutes < float("inf"):
            raise RecipeError("minutes", f"minutes must be a number above 0, got {self.minutes!r}")

    def reached(self, steps: int, seconds: float) -> bool:
        return steps >= self.steps if self.steps is not None else seconds >= self.minutes * 60

    def eval_every(self) -> float:
        """Steps (or seconds) between two held-out perplexity checks: ten over the run."""
        return max(1, self.steps // 10) if self.steps is not None else self.minutes * 6


def distill(
    model: str,
    spec: StudentSpec = StudentSpec(),
    steps: int | None = None,
    *,
    minutes: float | None = None,
    on_step: OnStep | None = None,
    checkpoint_every: int = 25,
    stop: Callable[[], bool] | None = None,
    device: str | None = None,
) -> dict:
    """Build (or resume) a distilled student of ``model`` and cache it as a variant.

    Args:
        model: the teacher (a recipe's model field).
        spec: how the student is made; the same spec resumes the same student.
        steps: total optimisation steps wanted; a student trained further is returned as is.
        minutes: instead of steps, total minutes of training wanted (summed over runs).
            Neither: ``DEFAULT_STUDENT_MINUTES``.
        on_step: progress callback ``(done, total, metrics)``: steps, or seconds of training under a budget in
            minutes (then ``metrics["unit"] == "s"``); metrics hold "stage", and while distilling "step", "loss",
            its "parts", "eta_s", and "heldout_ppl" when it was measured.
        checkpoint_every: steps between checkpoints (safetensors) that a later run resumes from.
        stop: returns True to end early (the progress so far is checkpointed).
        device: where the teacher and student run: "cuda" when a GPU is present, else "cpu", unless given.

    Returns:
        {"name", "steps", "loss", "first_loss", "path", "params", "teacher_params", "seconds", "train_seconds",
        "evals", "teacher_heldout_ppl"}.
    """
    goal = Goal(steps=steps, minutes=DEFAULT_STUDENT_MINUTES if steps is None and minutes is None else minutes)
    on_step = on_step or no_step
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = student_name(model, spec)
    key = student_key(model, name)
    done = find_student(model, name)
    if done is not None and _reached(done, goal):
        return _summary(name, done)
    with store.building(key, f"student {name} of {model}", wait_s=0):
        store.recover(store.artifact_path(key), store.MARKER)  # a publish killed between its two renames
        done = find_student(model, name)  # another process may have finished it before this one took the lock
        if done is not None and _reached(done, goal):
            return _summary(name, done)
        return _Run(model, spec, goal, name, key, done, on_step, checkpoint_every, stop, device).train()


def _reached(done: Path, goal: Goal) -> bool:
    student = _meta(done)["student"]
    return goal.reached(student["steps"], student.get("train_seconds", student.get("seconds", 0.0)))


def initial_student(teacher, tokenizer, spec: StudentSpec):
    """The student before any healing: a copy of the teacher without the layers (and channels) ``spec`` drops."""
    student = copy.deepcopy(teacher).requires_grad_(True)
    calibration = calibration_inputs(tokenizer)
    if spec.layers_ratio:
        n = len(decoder_layers(student))
        drop_layers_(student, min(n - 1, round(spec.layers_ratio * n)), calibration, spec.layer_choice)
    if spec.channels_ratio:
        prune_(student, PruneSpec("channels", spec.channels_ratio), calibration)
    return student


class _Run:
    """One run of a student's training, under its build lock: resume from the furthest complete checkpoint,
    train until the goal, a Stop or the end of the budget, checkpointing on the way, then publish."""

    def __init__(self, model, spec: StudentSpec, goal: Goal, name: str, key: str, done: Path | None,
                 on_step: OnStep, checkpoint_every: int, stop: Callable[[], bool] | None, device: str):
        self.model, self.spec, self.goal, self.name, self.key, self.done = model, spec, goal, name, key, done
        self.on_step, self.checkpoint_every, self.stop, self.device = on_step, checkpoint_every, stop, device

    def train(self) -> dict:
        start = time.perf_counter()
        spec, device = self.spec, self.device
        teacher, tokenizer, _ = loading.load(self.model)
        teacher.eval().requires_grad_(False).to(device)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.tokenizer, self.teacher_params = tokenizer, sum(p.numel() for p in teacher.parameters())
        work = self.work = _work_dir(self.key)
        self.on_step(0, 0, {"stage": "teacher writes the training text"})
        texts = _texts_dir(self.model, spec, work, self.done)
        corpus = teacher_corpus(teacher, tokenizer, spec, texts, model=self.model, on_step=self.on_step)
        heldout = heldout_corpus(teacher, tokenizer, spec, texts, model=self.model)
        for text in ("corpus.json", "heldout.json"):  # the student keeps the texts it was trained on
            if texts != work and (texts / text).is_file():
                store.write_file(work / text, (texts / text).read_bytes())
        student, progress, optimizer_state = _init_or_resume(teacher, tokenizer, spec, work, self.key, self.done,
                                                             self.on_step)
        student.to(device)
        mapped = layer_map(student)
        targets = None
        if spec.teacher_top_k:
            targets = teacher_targets(teacher, corpus, k=spec.teacher_top_k, temperature=spec.temperature,
                                      layers=mapped if spec.layers_weight else [], pad_token_id=tokenizer.pad_token_id,
                                      work=work, device=device, on_step=self.on_step)
        if "teacher_heldout_ppl" not in progress:
            progress["teacher_heldout_ppl"] = heldout_perplexity(teacher, heldout, tokenizer.pad_token_id, device)
        if spec.attention_weight:
            use_eager_attention(teacher)
            use_eager_attention(student)
        elif targets is not None and not spec.hidden_weight:
            del teacher  # every signal is cached: training is the student's compute alone
            teacher = None
            gc.collect()
        optimizer = torch.optim.AdamW(student.parameters(), lr=spec.lr, weight_decay=0.0)
        _load_optimizer(optimizer, *optimizer_state)
        if not progress["evals"]:  # the unhealed student (or, resuming an older student, where it stands)
            progress["evals"].append({"step": progress["steps"], "train_seconds": round(progress["train_seconds"], 1),
                                      "heldout_ppl": heldout_perplexity(student, heldout, tokenizer.pad_token_id,
                                                                        device)})
        self._loop(teacher, student, optimizer, corpus, heldout, targets, mapped, progress)
        path = _publish(self.model, self.name, self.key, student, tokenizer, spec, progress, self.teacher_params,
                        work, time.perf_counter() - start, device)
        return _summary(self.name, path)

    def _loop(self, teacher, student, optimizer, corpus, heldout, targets, mapped, progress) -> None:
        spec, goal, work = self.spec, self.goal, self.work
        done_steps = progress["steps"]
        rng = random.Random(spec.seed + done_steps)
        # Left in eval mode, so without dropout: dropout draws from the process-wide RNG (see the module's docstring).
        student.eval()
        trained_before = progress["train_seconds"]
        t0 = time.perf_counter()
        first = done_steps
        next_eval = _next_eval(progress, goal)
        step = done_steps
        while not goal.reached(step, progress["train_seconds"]):
            step += 1
            rows = rng.sample(range(len(corpus)), min(spec.batch_size, len(corpus)))
            batch = _collate([corpus[r] for r in rows], self.tokenizer, spec.seq_len)
            loss, parts = train_step(student, optimizer, batch, spec, mapped, targets=targets, rows=rows,
                                     teacher=teacher, device=self.device)
            progress["steps"] = step
            progress["losses"].append(round(loss, 5))
            for part, value in parts.items():
                progress["parts"].setdefault(part, []).append(round(value, 5))
            progress["train_seconds"] = trained_before + time.perf_counter() - t0
            metrics = {"stage": "distilling", "step": step, "loss": loss, "parts": parts}
            at = step if goal.steps is not None else progress["train_seconds"]
            if at >= next_eval or goal.reached(step, progress["train_seconds"]):
                ppl = heldout_perplexity(student, heldout, self.tokenizer.pad_token_id, self.device)
                progress["evals"].append({"step": step, "train_seconds": round(progress["train_seconds"], 1),
                                          "heldout_ppl": ppl})
                metrics["heldout_ppl"] = ppl
                next_eval = _next_eval(progress, goal)
                progress["train_seconds"] = trained_before + time.perf_counter() - t0
            stopping = bool(self.stop and self.stop())
            if step % self.checkpoint_every == 0 or goal.reached(step, progress["train_seconds"]) or stopping:
                _checkpoint(student, optimizer, progress, work)
            if goal.steps is not None:
                eta = (time.perf_counter() - t0) / (step - first) * (goal.steps - step)
                self.on_step(step, goal.steps, {**metrics, "eta_s": eta})
            else:
                budget = goal.minutes * 60
                self.on_step(min(round(progress["train_seconds"]), round(budget)), round(budget),
                             {**metrics, "unit": "s", "eta_s": max(0.0, budget - progress["train_seconds"])})
            if stopping:
                break


# StudentSpec fields that decide the teacher's texts: students that share them share the texts.
TEXT_FIELDS = ("prompts", "samples_per_prompt", "corpus_new_tokens", "seq_len", "seed", "corpus_runtime")


def _texts_dir(model: str, spec: StudentSpec, work: Path, done: Path | None) -> Path:
    """Where the student's training and held-out texts live: its own work folder when it has its texts already (a
    resumed student: copied from its published folder if need be), else a folder shared by every student whose
    spec asks for the same texts (``artifacts/.texts-<digest>``), so that the teacher writes them once."""
    own = work / "corpus.json"
    if done is not None and not own.is_file() and (done / "corpus.json").is_file():
        for text in ("corpus.json", "heldout.json"):
            if (done / text).is_file():
                store.write_file(work / text, (done / text).read_bytes())
    if own.is_file():
        return work
    fields = {"model": model, **{f: getattr(spec, f) for f in TEXT_FIELDS}}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
    shared = store.artifacts_dir() / f".texts-{digest}"
    try:
        shared.mkdir(exist_ok=True)
    except OSError as exc:
        raise store.StoreError(store.unwritable(shared.parent, exc)) from None
    return shared


def _next_eval(progress: dict, goal: Goal) -> float:
    """When the next held-out check is due: the step (or training second) after the last one's."""
    last = progress["evals"][-1] if progress["evals"] else {"step": 0, "train_seconds": 0.0}
    return (last["step"] if goal.steps is not None else last["train_seconds"]) + goal.eval_every()


def _work_dir(key: str) -> Path:
    """``artifacts/.<key>-work``: the training text and the checkpoint, tidied after a kill (a checkpoint swap
    cut short is undone; half-written files, half-written and half-deleted folders go)."""
    work = store.artifacts_dir() / f".{key}-work"
    try:
        work.mkdir(exist_ok=True)
    except OSError as exc:
        raise store.StoreError(store.unwritable(work.parent, exc)) from None
    store.recover(work / "checkpoint", PROGRESS)
    for leftover in [work / "checkpoint.new", work / "checkpoint.tmp", *work.glob(".*.trash-*"), *work.glob(".*.tmp")]:
        store.discard(leftover)
    return work


def _init_or_resume(teacher, tokenizer, spec: StudentSpec, work: Path, key: str, done: Path | None,
                    on_step: OnStep):
    """The furthest complete checkpoint (the work dir's, else the published student), else a pruned teacher.

    Returns (student, progress, (optimizer tensors, optimizer scalars)). A checkpoint that cannot be read
    is damaged: it is moved aside (said through ``on_step``) and the next one is tried.
    """
    found = [p for p in (work / "checkpoint", done) if p is not None and (p / PROGRESS).is_file()]
    for source in sorted(found, key=_steps_of, reverse=True):
        seen = store.artifact_id(key) if source == done else None
        try:
            return _resume(source)
        except (SafetensorError, OSError, ValueError, KeyError) as exc:
            aside = store.set_aside_artifact(key, seen) if source == done else store.set_aside(source)
            where = f"; moved to {aside.name}" if aside else ""
            on_step(0, 0, {"stage": f"checkpoint {source} is damaged ({type(exc).__name__}: {exc}){where}"})
            log.warning("checkpoint %s is damaged (%s)%s", source, exc, where)
    on_step(0, 0, {"stage": f"choosing the layers to drop ({spec.layer_choice})"})
    return initial_student(teacher, tokenizer, spec), _progress({}), ({}, {})


def _progress(saved: dict) -> dict:
    """A checkpoint's progress record, with what older checkpoints lack filled in."""
    losses = list(saved.get("losses", []))
    return {"steps": int(saved.get("steps", len(losses))), "losses": losses,
            "parts": {k: list(v) for k, v in saved.get("parts", {}).items()},
            "train_seconds": float(saved.get("train_seconds", 0.0)), "evals": list(saved.get("evals", [])),
            **({"teacher_heldout_ppl": saved["teacher_heldout_ppl"]} if "teacher_heldout_ppl" in saved else {})}


def _steps_of(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / PROGRESS).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _resume(source: Path):
    """Read a checkpoint whole (weights, progress, optimizer state) before any of it is used."""
    state = json.loads((source / PROGRESS).read_text())
    progress = _progress(state)
    student = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
    optimizer_file = source / "optimizer.safetensors"
    tensors = load_file(str(optimizer_file)) if optimizer_file.is_file() else {}
    return student, progress, (tensors, state.get("optimizer_scalars", {}))


def _collate(batch: list[list[int]], tokenizer, seq_len: int):
    return pad_right(batch, tokenizer.pad_token_id, min(seq_len, max(map(len, batch))))


def distill_loss(student, batch, spec: StudentSpec, mapped: list[int], *, targets: Targets | None = None,
                 rows: list[int] | None = None, teacher=None, device="cpu") -> tuple[torch.Tensor, dict]:
    """The student's loss on one batch and its parts ({"kl", "layers", "attention"}, the ones weighted above 0).

    The KL and layer terms come from the cached ``targets`` (``rows`` of the corpus) when given, else from a
    teacher forward; the attention term always needs ``teacher`` (attention maps are too large to cache).
    ``mapped``: the teacher layer of each student layer (``losses.layer_map``).
    """
    ids, mask = (t.to(device) for t in batch)
    want_layers, want_attention = spec.layers_weight > 0, spec.attention_weight > 0
    teacher_out, teacher_layers = None, None
    if targets is None or want_attention:
        with torch.no_grad(), layer_outputs(teacher, mapped if want_layers and targets is None else []) as outs:
            teacher_out = teacher(input_ids=ids, attention_mask=mask, output_attentions=want_attention,
                                  use_cache=False)
        teacher_layers = list(outs)
    with layer_outputs(student, list(range(len(mapped))) if want_layers else []) as student_layers:
        out = student(input_ids=ids, attention_mask=mask, output_attentions=want_attention, use_cache=False)
    parts: dict[str, torch.Tensor] = {}
    hidden = None
    if targets is not None:
        values, indices, norm, hidden = targets.batch(rows, ids.shape[1], device)
        if spec.kl_weight:
            parts["kl"] = top_k_kl(out.logits, values, indices, norm, mask, spec.temperature)
    elif spec.kl_weight:
        parts["kl"] = kd_loss(out.logits, teacher_out.logits, mask, spec.temperature)
    if want_layers:
        parts["layers"] = layers_loss(list(student_layers), hidden if hidden is not None else teacher_layers, mask)
    if want_attention:
        parts["attention"] = attention_loss(out.attentions, [teacher_out.attentions[i] for i in mapped], mask)
    if spec.hidden_weight:  # the final normed hidden state (older students' extra term)
        final = student.model.norm(student_layers[-1]) if want_layers else None
        parts["hidden"] = _final_hidden_mse(student, teacher, ids, mask, final)
    weights = {"kl": spec.kl_weight, "layers": spec.layers_weight, "attention": spec.attention_weight,
               "hidden": spec.hidden_weight}
    loss = sum(weights[k] * v for k, v in parts.items())
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def _final_hidden_mse(student, teacher, ids, mask, final=None) -> torch.Tensor:
    if teacher is None:
        raise RecipeError("steps", "hidden_weight needs the teacher every step: set teacher_top_k to 0")
    with torch.no_grad():
        t = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states[-1]
    if final is None:
        final = student(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                        use_cache=False).hidden_states[-1]
    return masked_mean((final - t).pow(2).mean(-1), mask)


def train_step(student, optimizer, batch, spec: StudentSpec, mapped: list[int], **sources) -> tuple[float, dict]:
    """One optimisation step on ``distill_loss``; returns the loss and its parts as floats."""
    loss, parts = distill_loss(student, batch, spec, mapped, **sources)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach()), parts


def heldout_perplexity(model, sequences: list[list[int]], pad_token_id: int, device="cpu") -> float:
    """exp(mean next-token loss) of ``model`` on held-out teacher text (prompt and answer), rounded: the quality
    checkpoint a build shows as it goes."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(sequences), 8):
            ids, mask = (t.to(device) for t in pad_right(sequences[start : start + 8], pad_token_id))
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
            real = mask[:, 1:].bool()
            # Only the real positions' rows, contiguous: (positions, vocabulary).
            nll = F.cross_entropy(logits[real].float(), ids[:, 1:][real], reduction="sum")
            total += float(nll)
            count += int(real.sum())
    return round(math.exp(total / max(count, 1)), 4)


def _checkpoint(student, optimizer, progress: dict, work: Path) -> None:
    """Write a checkpoint whole to ``checkpoint.new`` (its progress.json last, every file fsynced), then swap it
    in for the last one: at every moment a complete checkpoint exists. StoreError on a full disk."""
    new = work / "checkpoint.new"
    store.discard(new)
    try:
        student.save_pretrained(new, safe_serialization=True)
        tensors, scalars = {}, {}
        for i, p in enumerate(student.parameters()):
            state = optimizer.state.get(p, {})
            for name, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0:
                    tensors[f"{i}.{name}"] = value.detach().cpu().contiguous()
                else:
                    scalars[f"{i}.{name}"] = float(value)
        save_file(tensors, str(new / "optimizer.safetensors"))
        store.finish_dir(new, PROGRESS, json.dumps({**progress, "optimizer_scalars": scalars}))
    except Exception as exc:
        store.discard(new)
        unable = store.write_failure(exc, work)
        if unable is not None:
            raise unable from None
        raise
    store.swap_in(new, work / "checkpoint")


def _load_optimizer(optimizer, tensors: dict, scalars: dict) -> None:
    """Put a checkpoint's optimizer state (tensors and scalars keyed ``<param index>.<name>``) back."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        state = {n.split(".", 1)[1]: v.to(p.device) for n, v in tensors.items() if n.split(".", 1)[0] == str(i)}
        state.update({n.split(".", 1)[1]: torch.tensor(v) for n, v in scalars.items() if n.split(".", 1)[0] == str(i)})
        if state:
            optimizer.state[p] = state


def _publish(model, name, key, student, tokenizer, spec, progress: dict, teacher_params: int, work: Path,
             seconds: float, device: str) -> Path:
    """Write the student as a finished artifact, swapped in over an older one with fewer steps in one step.

    The work folder keeps the training texts and the teacher's targets (a later run resumes without computing
    them again); its checkpoint goes, since the published student is the new resume point.
    """
    losses = progress["losses"]
    meta = {
        "recipe": Recipe(model=model, device="cpu", dtype="fp32", variant=name).to_dict(),
        "student": {
            "steps": progress["steps"],
            "loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None,
            "spec": asdict(spec),
            "params": sum(p.numel() for p in student.parameters()),
            "teacher_params": teacher_params,
            "seconds": round(seconds, 1),
            "train_seconds": round(progress["train_seconds"], 1),
            "evals": progress["evals"],
            "teacher_heldout_ppl": progress.get("teacher_heldout_ppl"),
            "device": device,
        },
    }

    def write(tmp: Path) -> None:
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / PROGRESS).write_text(json.dumps(progress))
        for text in ("corpus.json", "heldout.json"):
            if (work / text).is_file():
                shutil.copy(work / text, tmp / text)

    path = store.write_artifact(key, write, meta, replace=True, what=f"student {name} of {model}")
    store.discard(work / "checkpoint")
    return path


def _meta(path: Path) -> dict:
    return json.loads((path / "recipe.json").read_text())


def _summary(name: str, path: Path) -> dict:
    student = _meta(path)["student"]
    return {"name": name, "path": str(path),
            **{k: student[k] for k in ("steps", "loss", "first_loss", "params", "teacher_params", "seconds")},
            **{k: student.get(k) for k in ("train_seconds", "evals", "teacher_heldout_ppl")}}
