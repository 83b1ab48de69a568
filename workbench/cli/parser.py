"""The ``workbench`` command line: subcommands and flags, with every default read from the dataclass it sets.

Recipe flags set ``Recipe`` and ``PruneSpec`` fields, generation flags ``GenerationSettings``, student flags
``StudentSpec``: a default written in one of those dataclasses shows up here, in the help, by itself. Building
the parser imports no model library, so ``--help`` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from ..load import DEFAULT_GRACE_S, DEFAULT_NUM_REQUESTS, MAX_NUM_REQUESTS
from ..observe.prometheus import DEFAULT_METRICS_PORT
from ..recipe import (CORPUS_RUNTIMES, DEFAULT_STUDENT_MINUTES, DEVICES, LAYER_CHOICES, DTYPES, LLAMA_CPP_ALIASES, LLAMA_CPP_DTYPES, MAX_PRUNE_RATIO,
                      PRUNE_CRITERIA, PRUNE_METHODS, RUNTIMES, TRANSFORMERS_DTYPES, GenerationSettings, PruneSpec, Recipe,
                      StudentSpec)
from ..response_cache.keys import DEFAULT_THRESHOLD
from ..serving.options import DEFAULT_BATCH_WINDOW_S, SCHEDULERS

PROG = "workbench"
BENCH_MAX_NEW_TOKENS = 128  # bench's default: every run generates exactly this many tokens
MODEL_SOURCES = ("allowed: embedded, a hub id, a local model directory, a .gguf file or a server URL "
                 "http(s)://HOST:PORT/v1")


class UsageError(Exception):
    """A command line that cannot be accepted (argparse's errors and a few of our own); one line."""


class Failed(Exception):
    """The command ran but could not do its work (generation failed, a port is taken); exits with ``status``."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one line (no usage block), formatted by ``main``."""

    def error(self, message):
        raise UsageError(message)


def default(cls, name: str):
    """The default of dataclass ``cls``'s field ``name``."""
    field = next(f for f in fields(cls) if f.name == name)
    return field.default_factory() if field.default is MISSING else field.default


def max_new_tokens_default(command: str) -> int:
    """``--max-new-tokens`` when not given: the dataclass's default for generate, BENCH_MAX_NEW_TOKENS for bench."""
    return BENCH_MAX_NEW_TOKENS if command == "bench" else default(GenerationSettings, "max_new_tokens")


def build_parser(extra=()) -> argparse.ArgumentParser:
    """The parser of ``workbench``: subcommands sharing the recipe flags (and generation flags where they apply).

    Args:
        extra: ``add_parser(commands)`` of subcommands kept in modules of their own (they import this one).
    """
    recipe_flags, generation_flags = _recipe_flags(), _generation_flags()
    parser = _Parser(prog=PROG, description="Measure what latency optimizations buy, on this machine.",
                     allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate", parents=[recipe_flags, generation_flags], allow_abbrev=False,
        help="answer one prompt and report its latency",
    )
    generate.add_argument("--prompt", required=True, help="the user message to answer")
    generate.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    _cache_flags(generate)
    bench = commands.add_parser(
        "bench", parents=[recipe_flags, generation_flags], allow_abbrev=False,
        help="measure TTFT, TPOT, decode tok/s and throughput on fixed prompts",
    )
    _bench_flags(bench)
    evaluate = commands.add_parser(
        "eval", parents=[recipe_flags], allow_abbrev=False,
        help="perplexity, agreement with the baseline recipe and QA accuracy",
    )
    _quality_flags(evaluate, max_eval_tokens=None)
    evaluate.add_argument("--agreement-tokens", type=int_at_least(1), default=32, metavar="N",
                          help="greedy tokens per eval prompt compared with the baseline's (default 32)")
    evaluate.add_argument("--sets", type=eval_sets, default=("dev", "kl"), metavar="dev,heldout,kl",
                          help="what to measure besides perplexity and agreement: dev QA, held-out QA (never tuned "
                               "on; about twice the dev set's time), KL divergence to the baseline (default dev,kl)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    cache = commands.add_parser(
        "cache", allow_abbrev=False, help="response cache: show its stats or clear it",
    )
    cache.add_argument("action", choices=("stats", "clear"), help="stats: entries, size, hit rate, time saved; "
                                                                  "clear: remove every stored answer")
    cache.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    distill = commands.add_parser(
        "distill", parents=[recipe_flags], allow_abbrev=False,
        help="build (or resume) a distilled student of --model, usable as --variant",
    )
    _distill_flags(distill)
    _metrics_server_flags(commands)
    for add_parser in extra:
        add_parser(commands)
    return parser


def _recipe_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("recipe")
    model, device, dtype = (default(Recipe, name) for name in ("model", "device", "dtype"))
    group.add_argument("--model", default=model,
                       help=f"'{model}' (default), a hub id, a local model directory, a .gguf file, or the URL of an "
                            "OpenAI-compatible server, http(s)://HOST:PORT/v1 (vLLM, TGI, llama.cpp, Ollama, "
                            "workbench serve), measured with the network's part split out")
    group.add_argument("--remote-model", default=default(Recipe, "remote_model"), metavar="NAME",
                       help="with a server URL: the server's model to ask (default: the first it lists)")
    group.add_argument("--api-key-env", default=None, metavar="VAR",
                       help="with a server URL: the environment variable that holds its API key (default: no key); "
                            "the key itself is never a flag, and is never stored")
    runtime = default(Recipe, "runtime")
    group.add_argument("--runtime", choices=RUNTIMES, default=runtime,
                       help=f"what runs the model (default {runtime}); llama.cpp writes the recipe as a GGUF file, "
                            "quantizes it with llama.cpp's quantizer and runs it in llama.cpp; remote measures a "
                            "server (a URL --model means it)")
    group.add_argument("--device", choices=DEVICES, default=device, help=f"default: {device} (the fastest present)")
    aliases = ", ".join(f"{a} means {b}" for a, b in LLAMA_CPP_ALIASES.items())
    group.add_argument("--dtype", choices=DTYPES, default=dtype, metavar="DTYPE",
                       help=f"weight format (default {dtype}): under transformers {', '.join(TRANSFORMERS_DTYPES)}; "
                            f"under llama.cpp {', '.join(LLAMA_CPP_DTYPES)} ({aliases}; shipped runs a .gguf "
                            "source as it is)")
    # Backend names come from the quantization registry, which imports torch: the library checks them.
    group.add_argument("--backend", default=default(Recipe, "backend"),
                       help="library that runs a quantized dtype, e.g. torch-dynamic or bnb-nf4 (default: auto, the "
                            "fastest measured here); a name that cannot run --dtype here is refused with the list "
                            "of those that can")
    method, ratio, criterion = (default(PruneSpec, name) for name in ("method", "ratio", "criterion"))
    group.add_argument("--prune-method", choices=PRUNE_METHODS, default=method, help=f"default: {method}")
    group.add_argument("--prune-ratio", type=float, default=ratio, metavar="R",
                       help=f"share removed by pruning, 0 to {MAX_PRUNE_RATIO} (default {ratio:g})")
    group.add_argument("--prune-criterion", choices=PRUNE_CRITERIA, default=criterion,
                       help=f"how magnitude and 2:4 pruning rank weights (default: {criterion})")
    variant = default(Recipe, "variant")
    group.add_argument("--variant", default=variant,
                       help=f"distilled variant: {variant} (default), a public student of --model, or the name of a "
                            "student built by `workbench distill`")
    batch_size = default(Recipe, "batch_size")
    group.add_argument("--batch-size", type=int, default=batch_size, metavar="N",
                       help=f"requests the worker may run together (default {batch_size})")
    threads = default(Recipe, "threads")
    group.add_argument("--threads", type=int_at_least(0), default=threads, metavar="N",
                       help=f"llama.cpp's threads (default {threads}: one per physical core)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow model code from the hub; only for authors you trust")
    return flags


def _generation_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("generation")
    # default=None: the two commands share these argument objects, so per-command defaults come from
    # max_new_tokens_default (set_defaults on one subparser would change the other's too).
    group.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                       help=f"tokens to generate at most (generate: {max_new_tokens_default('generate')}, bench: "
                            f"exactly {max_new_tokens_default('bench')} by default)")
    temperature, top_p = default(GenerationSettings, "temperature"), default(GenerationSettings, "top_p")
    group.add_argument("--temperature", type=float, default=temperature, metavar="T",
                       help=f"0 = greedy (default {temperature:g})")
    group.add_argument("--top-p", type=float, default=top_p, metavar="P",
                       help=f"nucleus sampling mass (default {top_p:g})")
    group.add_argument("--seed", type=int, default=default(GenerationSettings, "seed"), metavar="S",
                       help="seed for sampling")
    group.add_argument("--no-cache", action="store_true",
                       help="bypass the response cache: neither look the answer up nor store it (bench "
                            "always does)")
    return flags


def _cache_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("response cache")
    group.add_argument("--semantic", action="store_true",
                       help="also reuse the answer to a differently worded question (same recipe and settings)")
    group.add_argument("--similarity", type=float_in(0.5, 1.0), default=None, metavar="S",
                       help=f"cosine similarity a --semantic match needs (default {DEFAULT_THRESHOLD:g})")
    group.add_argument("--cache-sampled", action="store_true",
                       help="also cache and reuse sampled answers (temperature > 0); off by default")
    group.add_argument("--cache-ttl", type=positive_float, default=None, metavar="SECONDS",
                       help="a stored answer expires after this long (default: kept until evicted)")


def _bench_flags(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--runs", type=int_at_least(1), default=5,
                       help="measured runs per simulated user (default 5; without --request-rate)")
    bench.add_argument("--warmup", type=int_at_least(0), default=1,
                       help="warm-up runs per user, excluded from every figure (default 1)")
    bench.add_argument("--batch-sizes", type=int_list, default=None, metavar="N[,N...]",
                       help="batch sizes to measure, e.g. 1,4,16 (default: --batch-size)")
    bench.add_argument("--concurrency", type=int_at_least(1), default=None, metavar="N",
                       help="simulated users sending requests at once, each the next as soon as its answer ends "
                            "(default: the largest batch size); with --request-rate, the most requests in flight "
                            "(default: no cap)")
    bench.add_argument("--schedulers", type=word_list, default=[SCHEDULERS[0]], metavar="NAME[,NAME...]",
                       help=f"{SCHEDULERS[0]} (a batch runs to its end; default) and/or {SCHEDULERS[1]} (requests "
                            "join a running batch at every step, transformers' continuous batching)")
    bench.add_argument("--batch-window-ms", type=float_in(0, 10_000), default=None, metavar="MS",
                       help=f"how long the worker waits to fill a batch (default {DEFAULT_BATCH_WINDOW_S * 1000:g})")
    _load_flags(bench)
    bench.add_argument("--eval", action="store_true",
                       help="also measure perplexity and QA accuracy of each recipe (after the timed runs)")
    _quality_flags(bench, max_eval_tokens=None)
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _load_flags(bench: argparse.ArgumentParser) -> None:
    group = bench.add_argument_group("load (open-loop arrivals and goodput)")
    group.add_argument("--request-rate", type=rate_list, default=None, metavar="R[,R...]",
                       help="requests per second arriving at random (Poisson, seeded by --seed), one entry per "
                            "rate, e.g. 0.5,2; inf sends them all at once (default: closed-loop users)")
    group.add_argument("--num-requests", type=int_in(1, MAX_NUM_REQUESTS), default=None, metavar="N",
                       help=f"requests per rate with --request-rate (default {DEFAULT_NUM_REQUESTS})")
    group.add_argument("--duration-s", type=positive_float, default=None, metavar="S",
                       help=f"send no request after S seconds; with --request-rate, those still running "
                            f"{DEFAULT_GRACE_S:g} s later are cut (default: no time bound)")
    group.add_argument("--ttft-slo-ms", type=positive_float, default=None, metavar="MS",
                       help="goodput: a request meets its objective with a time to first token of at most MS")
    group.add_argument("--tpot-slo-ms", type=positive_float, default=None, metavar="MS",
                       help="goodput: a request meets its objective with a time per output token after the "
                            "first of at most MS (give either objective or both)")


def _quality_flags(parser: argparse.ArgumentParser, max_eval_tokens: int | None) -> None:
    group = parser.add_argument_group("quality")
    whole = "the whole text" if max_eval_tokens is None else str(max_eval_tokens)
    group.add_argument("--max-eval-tokens", type=int_at_least(2), default=max_eval_tokens, metavar="N",
                       help=f"perplexity on the first N tokens of the evaluation text (default: {whole})")
    group.add_argument("--qa-limit", type=int_at_least(1), default=None, metavar="N",
                       help="QA accuracy on the first N questions of each set (default: all)")


def student_dest(field: str) -> str:
    """The argparse attribute of a StudentSpec field's flag."""
    return STUDENT_FLAGS[field][0].removeprefix("--").replace("-", "_")


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _distill_flags(parser: argparse.ArgumentParser) -> None:
    # Spec flags default to None so that only the flags given override the StudentSpec defaults.
    group = parser.add_argument_group("student")
    budget = group.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, default=None, metavar="M",
                        help=f"minutes of training in all, summed over runs (writing the training text and the "
                             f"teacher's targets comes first and is not counted); a student trained less resumes "
                             f"(default {DEFAULT_STUDENT_MINUTES:g})")
    budget.add_argument("--steps", type=int_at_least(1), default=None, metavar="N",
                        help="total training steps instead of minutes; a student trained fewer steps resumes")
    for field, (flag, parse, metavar, what) in STUDENT_FLAGS.items():
        group.add_argument(flag, type=parse, default=None, metavar=metavar,
                           help=f"{what} (default {_shown(default(StudentSpec, field))})")
    group.add_argument("--no-eval", action="store_true", help="skip measuring the student's card (quality of teacher, "
                                                                "unhealed and healed student; speed-up per runtime)")
    group.add_argument("--agreement-tokens", type=int_at_least(1), default=32, metavar="N",
                       help="greedy tokens per eval prompt compared with the teacher's (default 32)")
    group.add_argument("--speed-rounds", type=int_at_least(1), default=3, metavar="N",
                       help="interleaved rounds timing teacher and student on each runtime (default 3)")
    _quality_flags(parser, max_eval_tokens=1024)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _metrics_server_flags(commands) -> None:
    server = commands.add_parser(
        "metrics-server", allow_abbrev=False,
        help="serve the request history's figures to Prometheus (/metrics), following new requests of every process",
    )
    server.add_argument("--port", type=int_in(0, 65535), default=DEFAULT_METRICS_PORT,
                        help=f"port to listen on (default {DEFAULT_METRICS_PORT}; 0 = any free port)")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: only this machine can scrape)")
    server.add_argument("--interval", type=positive_float, default=2.0, metavar="S",
                        help="seconds between reads of new history rows (default 2)")
    server.add_argument("--new-only", action="store_true",
                        help="count only requests recorded from now on (default: replay the whole history first)")


# Value parsers: each rejects a bad value with one line that says what is accepted.


def eval_sets(text: str) -> tuple[str, ...]:
    """``--sets``: a comma-separated choice of dev, heldout, kl."""
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in ("dev", "heldout", "kl")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more of dev, heldout, kl, separated by commas")
    return names


def number_in(kind: type, low: float, high: float | None = None):
    """A value parser for ``kind`` (int or float) from ``low`` to ``high`` (no upper bound when None)."""
    if kind is int:
        allowed = f"an integer of {low} or more" if high is None else f"an integer from {low} to {high}"
    else:
        allowed = f"a number between {low:g} and {high:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value or (high is not None and not value <= high):  # NaN fails too
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    return parse


def int_at_least(low: int):
    return number_in(int, low)


def int_in(low: int, high: int):
    return number_in(int, low, high)


def float_in(low: float, high: float):
    return number_in(float, low, high)


def one_of(allowed: tuple[str, ...]):
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(allowed)}, got {text!r}")
        return text

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def rate_list(text: str) -> list[float]:
    """``--request-rate``: comma-separated requests per second above 0, or inf."""
    values = []
    for part in (p.strip() for p in text.split(",")):
        try:
            value = float(part) if part else None
        except ValueError:
            value = None
        if value is None or not value > 0:  # NaN fails too
            values = []
            break
        values.append(value)
    if not values:
        raise argparse.ArgumentTypeError(f"must be requests per second above 0 (or inf), separated by commas, such "
                                         f"as 0.5,2, got {text!r}")
    return list(dict.fromkeys(values))


def word_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"must be comma-separated names such as static,continuous, got {text!r}")
    return values


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers such as 1,4,16, got {text!r}")
    return values


# StudentSpec field -> (flag, value parser, metavar, what it does); the default comes from the field.
STUDENT_FLAGS = {
    "layers_ratio": ("--layers-ratio", float_in(0.0, 0.9), "R", "share of the teacher's decoder layers the student "
                                                                "drops"),
    "channels_ratio": ("--channels-ratio", float_in(0.0, 0.9), "R", "share of the MLP channels the student drops as "
                                                                    "well"),
    "temperature": ("--temperature", positive_float, "T", "softens teacher and student distributions in the loss"),
    "lr": ("--lr", positive_float, "LR", "learning rate"),
    "batch_size": ("--train-batch-size", int_at_least(1), "N", "sequences per training step"),
    "seq_len": ("--seq-len", int_at_least(2), "N", "tokens per training sequence, prompt and answer"),
    "corpus_new_tokens": ("--corpus-new-tokens", int_at_least(1), "N", "length of each training answer the teacher "
                                                                       "writes"),
    "samples_per_prompt": ("--samples-per-prompt", int_at_least(1), "N", "teacher answers per training prompt"),
    "seed": ("--seed", int_at_least(0), "S", "seed of the training text and batch order"),
    # Weights are checked by StudentSpec (0 or more; not all 0), which names the flag.
    "kl_weight": ("--kl-weight", float, "W", "weight of the KL loss on the teacher's next-token distribution"),
    "layers_weight": ("--layers-weight", float, "W", "weight of the hidden-state loss of each student layer against "
                                                     "the teacher layer it was copied from"),
    "attention_weight": ("--attention-weight", float, "W", "weight of the attention-distribution loss of mapped "
                                                           "layers (runs the teacher every step)"),
    "teacher_top_k": ("--teacher-top-k", int_at_least(0), "K", "teacher log-probs per token cached once per corpus "
                                                               "(0 = run the teacher every step)"),
    "layer_choice": ("--layer-choice", one_of(LAYER_CHOICES), "{" + ",".join(LAYER_CHOICES) + "}",
                     "how the layers the student drops are chosen"),
    "prompts": ("--prompts", int_at_least(1), "N", "training prompts taken from the prompt file"),
    "corpus_runtime": ("--corpus-runtime", one_of(CORPUS_RUNTIMES), "{" + ",".join(CORPUS_RUNTIMES) + "}",
                       "what writes the teacher's training text"),
}
