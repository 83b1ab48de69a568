"""Building a distilled student here.

A student starts as a structurally pruned copy of the teacher (fewer layers and/or narrower MLPs)
and is healed by knowledge distillation: KL divergence between the teacher's and the student's
temperature-softened next-token distributions, on text the teacher generates from the project's own prompts.
Training checkpoints to the artifact cache (safetensors), so a run can stop and resume.

What a kill -9 at any moment leaves behind is usable: the training text (``corpus.json``) is replaced atomically,
a checkpoint is written whole to ``checkpoint.new`` and swapped in (so a complete one always exists), and the
finished student is swapped in over a shorter one in one step (readers see the old student or the new one). One
process builds a given student at a time: a second one is told who is building it.

Every random draw (the teacher's sampling of the training text, the order of the batches) comes from generators
seeded from the spec's seed, never from the process-wide RNG: the same spec gives the same student, and engines
sampling in this process at the same time are not disturbed (their seeded answers stay their own).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from .. import loading, store
from ..progress import OnStep, no_step
from ..recipe import DEFAULT_STUDENT_STEPS, PruneSpec, Recipe, RecipeError, StudentSpec
from .corpus import PROMPTS, teacher_corpus  # noqa: F401  (PROMPTS: where the training prompts live)
from .prune import calibration_inputs, prune_
from .variants import find_student, student_key, student_name

PROGRESS = "progress.json"  # written last into a checkpoint: its presence means the checkpoint is complete
log = logging.getLogger(__name__)


# --- building a student ------------------------------------------------------------------------------------


def distill(
    model: str,
    spec: StudentSpec = StudentSpec(),
    steps: int = DEFAULT_STUDENT_STEPS,
    *,
    on_step: OnStep | None = None,
    checkpoint_every: int = 25,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Build (or resume) a distilled student of ``model`` and cache it as a variant.

    Args:
        model: the teacher (a recipe's model field).
        spec: how the student is made; the same spec resumes the same student.
        steps: total optimisation steps wanted; a student already trained further is returned as is.
        on_step: progress callback ``(step, total, {"loss", "eta_s", "stage"})``.
        checkpoint_every: steps between checkpoints (safetensors) that a later run resumes from.
        stop: returns True to end early (the progress so far is checkpointed).

    Returns:
        {"name", "steps", "loss", "path", "params", "teacher_params", "seconds"}.
    """
    if steps < 1:
        raise RecipeError("steps", f"steps must be at least 1, got {steps}")
    on_step = on_step or no_step
    name = student_name(model, spec)
    key = student_key(model, name)
    done = find_student(model, name)
    if done is not None and _meta(done)["student"]["steps"] >= steps:
        return _summary(name, done)
    with store.building(key, f"student {name} of {model}", wait_s=0):
        store.recover(store.artifact_path(key), store.MARKER)  # a publish killed between its two renames
        done = find_student(model, name)  # another process may have finished it before this one took the lock
        if done is not None and _meta(done)["student"]["steps"] >= steps:
            return _summary(name, done)
        return _train(model, spec, steps, name, key, done, on_step, checkpoint_every, stop)


def _train(model, spec: StudentSpec, steps: int, name: str, key: str, done: Path | None, on_step: OnStep,
           checkpoint_every: int, stop: Callable[[], bool] | None) -> dict:
    """Distill under the student's build lock: resume from the furthest complete checkpoint, then publish."""
    start = time.perf_counter()
    teacher, tokenizer, _ = loading.load(model)
    teacher.eval().requires_grad_(False)
    work = _work_dir(key)
    on_step(0, steps, {"stage": "teacher writes the training text"})
    if done is not None and not (work / "corpus.json").is_file() and (done / "corpus.json").is_file():
        store.write_file(work / "corpus.json", (done / "corpus.json").read_bytes())  # resuming: the same text
    corpus = teacher_corpus(teacher, tokenizer, spec, work)
    student, done_steps, losses, optimizer_state = _init_or_resume(teacher, tokenizer, spec, work, key, done, on_step)
    optimizer = torch.optim.AdamW(student.parameters(), lr=spec.lr, weight_decay=0.0)
    _load_optimizer(optimizer, *optimizer_state)
    rng = random.Random(spec.seed + done_steps)
    t0 = time.perf_counter()
    first = done_steps
    # Left in eval mode, so without dropout: dropout draws from the process-wide RNG (see the module's docstring).
    student.eval()
    for step in range(done_steps + 1, steps + 1):
        batch = rng.sample(corpus, min(spec.batch_size, len(corpus)))
        loss = _train_step(teacher, student, optimizer, _collate(batch, tokenizer, spec.seq_len), spec)
        losses.append(round(loss, 5))
        eta = (time.perf_counter() - t0) / (step - first) * (steps - step)
        on_step(step, steps, {"stage": "distilling", "loss": loss, "eta_s": eta})
        if step % checkpoint_every == 0 or step == steps or (stop and stop()):
            _checkpoint(student, optimizer, step, losses, work)
            if stop and stop() and step < steps:
                break
    final_steps = len(losses)
    path = _publish(model, name, key, student, tokenizer, spec, final_steps, losses, teacher, work,
                    time.perf_counter() - start)
    return _summary(name, path)


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

    Returns (student, steps, losses, (optimizer tensors, optimizer scalars)). A checkpoint that cannot be read
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
    student = copy.deepcopy(teacher).requires_grad_(True)
    calibration = calibration_inputs(tokenizer)
    if spec.layers_ratio:
        prune_(student, PruneSpec("layers", spec.layers_ratio), calibration)
    if spec.channels_ratio:
        prune_(student, PruneSpec("channels", spec.channels_ratio), calibration)
    return student, 0, [], ({}, {})


def _steps_of(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / PROGRESS).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _resume(source: Path):
    """Read a checkpoint whole (weights, progress, optimizer state) before any of it is used."""
    state = json.loads((source / PROGRESS).read_text())
    student = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
    optimizer_file = source / "optimizer.safetensors"
    tensors = load_file(str(optimizer_file)) if optimizer_file.is_file() else {}
    return student, int(state["steps"]), list(state["losses"]), (tensors, state.get("optimizer_scalars", {}))


def _collate(batch: list[list[int]], tokenizer, seq_len: int):
    width = min(seq_len, max(map(len, batch)))
    pad = tokenizer.pad_token_id
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, seq in enumerate(batch):
        seq = seq[:width]
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return ids, mask


def _train_step(teacher, student, optimizer, batch, spec: StudentSpec) -> float:
    ids, mask = batch
    want_hidden = spec.hidden_weight > 0
    with torch.no_grad():
        t_out = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
    s_out = student(input_ids=ids, attention_mask=mask, output_hidden_states=want_hidden)
    loss = kd_loss(s_out.logits, t_out.logits, mask, spec.temperature)
    if want_hidden:
        diff = (s_out.hidden_states[-1] - t_out.hidden_states[-1]).pow(2).mean(-1)
        loss = loss + spec.hidden_weight * (diff * mask).sum() / mask.sum()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    optimizer.step()
    return float(loss.detach())


def kd_loss(student_logits, teacher_logits, mask, temperature: float) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, mean over real tokens, times T^2.

    The T^2 factor keeps gradient sizes comparable across temperatures (Hinton et al., 2015).
    """
    t = temperature
    s_log = F.log_softmax(student_logits.float() / t, dim=-1)
    t_log = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1)  # (B, T)
    return (kl * mask).sum() / mask.sum() * t * t


def _checkpoint(student, optimizer, step: int, losses: list[float], work: Path) -> None:
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
                    tensors[f"{i}.{name}"] = value.contiguous()
                else:
                    scalars[f"{i}.{name}"] = float(value)
        save_file(tensors, str(new / "optimizer.safetensors"))
        store.finish_dir(new, PROGRESS, json.dumps({"steps": step, "losses": losses, "optimizer_scalars": scalars}))
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
        state = {n.split(".", 1)[1]: v for n, v in tensors.items() if n.split(".", 1)[0] == str(i)}
        state.update({n.split(".", 1)[1]: torch.tensor(v) for n, v in scalars.items() if n.split(".", 1)[0] == str(i)})
        if state:
            optimizer.state[p] = state


def _publish(model, name, key, student, tokenizer, spec, steps, losses, teacher, work: Path, seconds: float) -> Path:
    """Write the student as a finished artifact, swapped in over an older one with fewer steps in one step."""
    meta = {
        "recipe": Recipe(model=model, device="cpu", dtype="fp32", variant=name).to_dict(),
        "student": {
            "steps": steps,
            "loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None,
            "spec": asdict(spec),
            "params": sum(p.numel() for p in student.parameters()),
            "teacher_params": sum(p.numel() for p in teacher.parameters()),
            "seconds": round(seconds, 1),
        },
    }

    def write(tmp: Path) -> None:
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / PROGRESS).write_text(json.dumps({"steps": steps, "losses": losses}))
        if (work / "corpus.json").is_file():
            shutil.copy(work / "corpus.json", tmp / "corpus.json")

    path = store.write_artifact(key, write, meta, replace=True, what=f"student {name} of {model}")
    store.discard(work)  # the published artifact is the new resume point
    return path


def _meta(path: Path) -> dict:
    return json.loads((path / "recipe.json").read_text())


def _summary(name: str, path: Path) -> dict:
    student = _meta(path)["student"]
    return {"name": name, "path": str(path), **{k: student[k] for k in ("steps", "loss", "first_loss", "params", "teacher_params", "seconds")}}
