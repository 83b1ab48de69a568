"""How fast the teacher writes a student's training text: transformers (``generate``, 16 prompts a batch) against
llama.cpp (the teacher's F32 GGUF export, 16 rows a call, 2 threads), measured in one run.

Each runtime writes the corpus a student gets, through ``optimize.corpus.teacher_corpus``: the first ``--prompts``
training prompts, one sampled answer (temperature 0.8, top-p 0.95, seed ``--seed``) of up to ``--new-tokens``
tokens each, with the sequence length set so that no answer is cut. The teacher is loaded once, the GGUF file is
made beforehand (its one-time export is reported apart), and each runtime writes into a fresh work folder, so
nothing is read from a cache. tokens/s = answer tokens written / seconds (answers that end at the end token are
shorter, so the two runtimes' token counts differ a little).

    python benchmarks/corpus.py [--model embedded] [--prompts 128] [--new-tokens 112] [--seed 0]
        [--runtimes transformers,llama.cpp]

Prints a markdown table with the CPU; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass
class Written:
    runtime: str
    seconds: float
    answers: int
    tokens: int
    ended: int  # answers that stopped at the end token before their budget

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="the teacher (default: embedded)")
    parser.add_argument("--prompts", type=int, default=128, help="training prompts answered (default 128)")
    parser.add_argument("--new-tokens", type=int, default=112, help="most tokens of each answer (default 112)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtimes", default="transformers,llama.cpp", help="comma-separated, in the order run")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from workbench import loading
    from workbench.conversation import encode_chat
    from workbench.machine import cpu_model
    from workbench.optimize.corpus import BATCH, LLAMA_THREADS, teacher_corpus, training_prompts
    from workbench.recipe import StudentSpec, model_label

    teacher, tokenizer, _ = loading.load(args.model)
    teacher.eval().requires_grad_(False)
    prompts = training_prompts(args.prompts)
    chats = [len(encode_chat(tokenizer, [{"role": "user", "content": p}])) for p in prompts]
    spec = StudentSpec(layers_ratio=0.5, prompts=args.prompts, corpus_new_tokens=args.new_tokens,
                       seq_len=max(chats) + args.new_tokens, seed=args.seed)
    runtimes = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    export_s = prepare_gguf(args.model) if "llama.cpp" in runtimes else None
    rows = []
    for runtime in runtimes:
        with tempfile.TemporaryDirectory(prefix="corpus-bench-") as work:
            start = time.perf_counter()
            sequences = teacher_corpus(teacher, tokenizer, replace(spec, corpus_runtime=runtime), Path(work),
                                       model=args.model)
            seconds = time.perf_counter() - start
        answers = [seq[n:] for seq, n in zip(sequences, chats)]
        ended = sum(len(a) < args.new_tokens for a in answers)
        rows.append(Written(runtime, seconds, len(answers), sum(map(len, answers)), ended))
        print(f"{runtime}: {seconds:.1f} s", file=sys.stderr, flush=True)

    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__} on {torch.get_num_threads()} "
          f"threads, llama.cpp on {LLAMA_THREADS}; load average before the run {os.getloadavg()[0]:.1f}")
    print(f"{model_label(args.model)}: {args.prompts} prompts x up to {args.new_tokens} new tokens, "
          f"{BATCH} prompts a batch, seed {args.seed}"
          + (f"; F32 GGUF export made first in {export_s:.1f} s (once per teacher, not counted)" if export_s else ""))
    print()
    print("| runtime | answers | answer tokens | ended early | seconds | tokens/s | vs transformers |")
    print("|---|---|---|---|---|---|---|")
    base = next((r for r in rows if r.runtime == "transformers"), None)
    for r in rows:
        ratio = f"{r.tokens_per_s / base.tokens_per_s:.2f}x" if base else ""
        print(f"| {r.runtime} | {r.answers} | {r.tokens} | {r.ended} | {r.seconds:.1f} | {r.tokens_per_s:.1f} | "
              f"{ratio} |")
    return 0


def prepare_gguf(model: str) -> float:
    """Make (or find) the teacher's F32 GGUF file before the timing; the seconds it took."""
    from workbench.recipe import Recipe
    from workbench.runtimes import llamacpp

    start = time.perf_counter()
    llamacpp.gguf_file(llamacpp.check(Recipe(model=model, runtime="llama.cpp", device="cpu", dtype="fp32")))
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
