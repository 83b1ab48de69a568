"""Which decoder layers to drop: a student's starting point under each layer choice, before any healing.

For each share of the layers removed (``--ratios``) and each choice of ``LAYER_CHOICES`` ("similarity": the
layers whose output is most like their input; "angular": the contiguous block whose input and output are closest
in angle, Gromov et al. 2024; "loss": the layers whose skipping moves the next-token distributions least), a copy
of the teacher loses its layers with ``prune.drop_layers_`` on the project's calibration text; then, for about
the same parameter count, a mix: fewer layers (``--mix-layers``) and narrower MLPs (``--mix-channels``, channel
pruning after the layers go). Nothing is healed: these are the models distillation would start from.

Each model is measured against the teacher: parameters, perplexity on the first ``--tokens`` tokens of the
evaluation text, KL(teacher || model) of the next-token distributions on the same tokens, greedy agreement with
the teacher's answers to the first ``--prompts`` evaluation prompts, and the time the choice took. Prints a
markdown table and the machine; asserts nothing.

Run: ``python benchmarks/layer_choice.py [--model embedded] [--ratios 0.2 0.3] [--choices similarity angular loss]
[--mix-layers 0.2] [--mix-channels 0.15] [--mix-choices ...] [--tokens 1024] [--prompts 6]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import dataclass

import torch

from workbench import quality
from workbench.loading import load
from workbench.machine import cpu_model
from workbench.optimize import pipeline
from workbench.optimize.prune import calibration_inputs, decoder_layers, drop_layers_, prune_
from workbench.recipe import LAYER_CHOICES, PruneSpec, Recipe
from workbench.runtimes.transformers import TransformersModel


@dataclass
class Row:
    label: str
    params: int
    perplexity: float
    kl: float | None
    agreement: float
    choice_s: float
    removed: str


@dataclass
class Teacher:
    """What every pruned model is compared with: the teacher's own figures and distributions."""

    model: TransformersModel
    perplexity: float
    kl_reference: quality.KLReference
    answers: list[list[int]]


def wrap(model: torch.nn.Module, tokenizer) -> TransformersModel:
    """An in-memory model as the LoadedModel the quality functions take (fp32 on the CPU)."""
    return TransformersModel(pipeline.from_model(model, tokenizer, Recipe(device="cpu", dtype="fp32")))


def measure_teacher(model: torch.nn.Module, tokenizer, tokens: int, prompts: list[str]) -> Teacher:
    teacher = wrap(model, tokenizer)
    text = quality.load_eval_text()
    return Teacher(teacher, quality.perplexity(teacher, text, max_tokens=tokens),
                   quality.kl_reference(teacher, text, max_tokens=tokens), quality.greedy_tokens(teacher, prompts))


def measure(label: str, model: torch.nn.Module, tokenizer, teacher: Teacher, tokens: int, prompts: list[str],
            choice_s: float, removed: str) -> Row:
    """One pruned model's figures against the teacher."""
    loaded = wrap(model, tokenizer)
    ppl = quality.perplexity(loaded, teacher.kl_reference.text, max_tokens=tokens)
    kl = quality.kl_divergence(loaded, teacher.kl_reference)["kl"]
    agree = quality.agreement(quality.greedy_tokens(loaded, prompts), teacher.answers)
    params, _ = pipeline.count_params(model)
    return Row(label, params, ppl, kl, agree, choice_s, removed)


def pruned(teacher: torch.nn.Module, layers_ratio: float, choice: str, calibration,
           channels_ratio: float = 0.0) -> tuple[torch.nn.Module, float, str]:
    """A copy of the teacher without ``layers_ratio`` of its layers (then ``channels_ratio`` of its MLP channels):
    (model, seconds the layer choice took, the layers removed)."""
    model = copy.deepcopy(teacher)
    n = len(decoder_layers(model))
    start = time.perf_counter()
    note = drop_layers_(model, round(layers_ratio * n), calibration, choice)
    choice_s = time.perf_counter() - start
    if channels_ratio:
        prune_(model, PruneSpec("channels", channels_ratio), calibration)
    return model, choice_s, note[0].rsplit(": ", 1)[-1] if note else "[]"


def print_table(rows: list[Row], teacher_row: Row) -> None:
    print(f"| model | params (M) | perplexity | KL to teacher (nats/token) | greedy agreement | choice time (s) "
          f"| layers removed |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in [teacher_row, *rows]:
        kl = "n/a" if r.kl is None else f"{r.kl:.3f}"
        print(f"| {r.label} | {r.params / 1e6:.1f} | {r.perplexity:.2f} | {kl} | {r.agreement:.0%} | "
              f"{r.choice_s:.1f} | {r.removed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.3], help="shares of the layers removed")
    parser.add_argument("--choices", nargs="+", default=list(LAYER_CHOICES), choices=LAYER_CHOICES)
    parser.add_argument("--mix-layers", type=float, default=0.2, help="layers removed in the mix (default 0.2)")
    parser.add_argument("--mix-channels", type=float, default=0.15, help="MLP channels removed in the mix (0.15)")
    parser.add_argument("--mix-choices", nargs="*", default=list(LAYER_CHOICES), choices=LAYER_CHOICES,
                        help="layer choices the mix is made with (none: no mix)")
    parser.add_argument("--tokens", type=int, default=1024, help="evaluation tokens for perplexity and KL (1024)")
    parser.add_argument("--prompts", type=int, default=6, help="evaluation prompts for greedy agreement (6)")
    args = parser.parse_args()

    teacher, tokenizer, _ = load(args.model)
    calibration = calibration_inputs(tokenizer)
    prompts = quality.load_prompts()[: args.prompts]
    reference = measure_teacher(teacher, tokenizer, args.tokens, prompts)
    params, _ = pipeline.count_params(teacher)
    teacher_row = Row("teacher", params, reference.perplexity, 0.0, 1.0, 0.0, "[]")
    n_layers = len(decoder_layers(teacher))
    plans = [(f"{ratio:.0%} layers, {choice}", ratio, choice, 0.0) for ratio in args.ratios for choice in args.choices]
    plans += [(f"{args.mix_layers:.0%} layers ({choice}) + {args.mix_channels:.0%} MLP channels", args.mix_layers,
               choice, args.mix_channels) for choice in args.mix_choices]
    rows = []
    for label, layers_ratio, choice, channels_ratio in plans:
        model, choice_s, removed = pruned(teacher, layers_ratio, choice, calibration, channels_ratio)
        rows.append(measure(label, model, tokenizer, reference, args.tokens, prompts, choice_s, removed))
        print(f"measured {label}", flush=True)
        del model
    print(f"\n{args.model}: {n_layers} decoder layers; calibration {len(calibration)} x {calibration[0].shape[1]} "
          f"tokens; perplexity and KL on {args.tokens} tokens of the evaluation text; agreement on {len(prompts)} "
          f"prompts x 32 greedy tokens; no healing\n")
    print_table(rows, teacher_row)
    print(f"\n{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} on {torch.get_num_threads()} "
          f"threads")


if __name__ == "__main__":
    main()
