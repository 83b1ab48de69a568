"""Building a distilled student here.

A student starts as a structurally pruned copy of the teacher (fewer layers and/or narrower MLPs)
and is healed by knowledge distillation: KL divergence between the teacher's and the student's
temperature-softened next-token distributions, on text the teacher generates from the project's own prompts.
Training checkpoints to the artifact cache (safetensors), so a run can stop and resume.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig

from .. import loading, store
from ..conversation import encode_chat
from ..progress import OnStep, no_step
from ..recipe import DEFAULT_STUDENT_STEPS, PruneSpec, Recipe, RecipeError, StudentSpec
from .prune import calibration_inputs, prune_
from .variants import find_student, student_key, student_name

PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "distill" / "prompts.txt"


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

    start = time.perf_counter()
    teacher, tokenizer, _ = loading.load(model)
    teacher.eval().requires_grad_(False)
    work = store.artifacts_dir() / f".{key}-work"
    work.mkdir(exist_ok=True)
    on_step(0, steps, {"stage": "teacher writes the training text"})
    if done is not None and not (work / "corpus.json").is_file() and (done / "corpus.json").is_file():
        shutil.copy(done / "corpus.json", work / "corpus.json")  # resuming a published student: same text
    corpus = _corpus(teacher, tokenizer, spec, work)
    student, done_steps, losses = _init_or_resume(teacher, tokenizer, spec, work, done)
    optimizer = torch.optim.AdamW(student.parameters(), lr=spec.lr, weight_decay=0.0)
    _load_optimizer(optimizer, work)
    rng = random.Random(spec.seed + done_steps)
    t0 = time.perf_counter()
    first = done_steps
    student.train()
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
    student.eval()
    final_steps = len(losses)
    path = _publish(model, name, key, student, tokenizer, spec, final_steps, losses, teacher, work,
                    time.perf_counter() - start)
    return _summary(name, path)


def _corpus(teacher, tokenizer, spec: StudentSpec, work: Path) -> list[list[int]]:
    """Teacher-written answers to the project's prompts (chat-formatted token ids), cached in the work dir."""
    path = work / "corpus.json"
    if path.is_file():
        return json.loads(path.read_text())
    prompts = [p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()]
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = GenerationConfig(
        max_new_tokens=spec.corpus_new_tokens, do_sample=True, temperature=0.8, top_p=0.95, top_k=0,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=teacher.generation_config.eos_token_id,
    )
    torch.manual_seed(spec.seed)
    sequences = []
    for _ in range(spec.samples_per_prompt):
        for i in range(0, len(prompts), 16):
            chunk = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in prompts[i : i + 16]]
            width = max(map(len, chunk))
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk])
            mask = (torch.arange(width).unsqueeze(0) >= torch.tensor([width - len(c) for c in chunk]).unsqueeze(1)).long()
            with torch.no_grad():
                out = teacher.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row, prompt in zip(out, chunk):
                answer = row[width:].tolist()
                while answer and answer[-1] == tokenizer.pad_token_id and tokenizer.pad_token_id != teacher.generation_config.eos_token_id:
                    answer.pop()
                sequences.append((prompt + answer)[: spec.seq_len])
    path.write_text(json.dumps(sequences))
    return sequences


def _init_or_resume(teacher, tokenizer, spec: StudentSpec, work: Path, done: Path | None):
    """A checkpointed student if there is one (work dir, else the published artifact), else a pruned teacher."""
    for source in (work / "checkpoint", done):
        if source is not None and (Path(source) / "config.json").is_file():
            state = json.loads((Path(source) / "progress.json").read_text())
            student = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
            return student, state["steps"], state["losses"]
    student = copy.deepcopy(teacher).requires_grad_(True)
    calibration = calibration_inputs(tokenizer)
    if spec.layers_ratio:
        prune_(student, PruneSpec("layers", spec.layers_ratio), calibration)
    if spec.channels_ratio:
        prune_(student, PruneSpec("channels", spec.channels_ratio), calibration)
    return student, 0, []


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
    tmp = work / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp, safe_serialization=True)
    tensors, scalars = {}, {}
    for i, p in enumerate(student.parameters()):
        state = optimizer.state.get(p, {})
        for name, value in state.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{i}.{name}"] = value.contiguous()
            else:
                scalars[f"{i}.{name}"] = float(value)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "progress.json").write_text(json.dumps({"steps": step, "losses": losses, "optimizer_scalars": scalars}))
    final = work / "checkpoint"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _load_optimizer(optimizer, work: Path) -> None:
    path = work / "checkpoint" / "optimizer.safetensors"
    if not path.is_file():
        return
    tensors = load_file(str(path))
    scalars = json.loads((work / "checkpoint" / "progress.json").read_text())["optimizer_scalars"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        state = {n.split(".", 1)[1]: v for n, v in tensors.items() if n.split(".", 1)[0] == str(i)}
        state.update({n.split(".", 1)[1]: torch.tensor(v) for n, v in scalars.items() if n.split(".", 1)[0] == str(i)})
        if state:
            optimizer.state[p] = state


def _publish(model, name, key, student, tokenizer, spec, steps, losses, teacher, work: Path, seconds: float) -> Path:
    """Write the student as a finished artifact (replacing an older one with fewer steps)."""
    final = store.artifact_path(key)
    old = final.with_name(final.name + ".old")
    if final.exists():
        final.rename(old)  # a resumed student supersedes the shorter one
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
        (tmp / "progress.json").write_text(json.dumps({"steps": steps, "losses": losses}))
        if (work / "corpus.json").is_file():
            shutil.copy(work / "corpus.json", tmp / "corpus.json")

    try:
        path = store.write_artifact(key, write, meta)
    except BaseException:
        if old.exists() and not final.exists():
            old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)  # the published artifact is the new resume point
    return path


def _meta(path: Path) -> dict:
    return json.loads((path / "recipe.json").read_text())


def _summary(name: str, path: Path) -> dict:
    student = _meta(path)["student"]
    return {"name": name, "path": str(path), **{k: student[k] for k in ("steps", "loss", "first_loss", "params", "teacher_params", "seconds")}}
