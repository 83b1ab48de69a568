"""The ``workbench`` command: answer (``generate``), benchmark (``bench``), measure quality (``eval``) or build
a distilled student (``distill``) for a recipe, from the shell.

Exit status: 0 on success; 2 on bad input, with one line on stderr naming the flag and what it accepts;
1 when generation itself fails; 130 when interrupted. Progress goes to stderr, so ``--json`` output on stdout
is pure JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, replace

from .recipe import (
    DEVICES,
    DTYPES,
    EMBEDDED,
    MAX_PRUNE_RATIO,
    PRUNE_CRITERIA,
    PRUNE_METHODS,
    PruneSpec,
    Recipe,
    RecipeError,
)

PROG = "workbench"
DEFAULT_MAX_NEW_TOKENS = {"generate": 256, "bench": 128}
MODEL_SOURCES = "allowed: embedded, a hub id, a local model directory or a .gguf file"


class UsageError(Exception):
    """A command line that cannot be accepted (argparse's errors and a few of our own); one line."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors become one line (no usage block), formatted by ``main``."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``workbench``: subcommands sharing the recipe flags (and generation flags where they apply)."""
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
    bench.add_argument("--runs", type=_int_at_least(1), default=5,
                       help="measured runs per simulated user (default 5)")
    bench.add_argument("--warmup", type=_int_at_least(0), default=1,
                       help="warm-up runs per user, excluded from every figure (default 1)")
    bench.add_argument("--batch-sizes", type=_int_list, default=None, metavar="N[,N...]",
                       help="batch sizes to measure, e.g. 1,4,16 (default: --batch-size)")
    bench.add_argument("--concurrency", type=_int_at_least(1), default=None, metavar="N",
                       help="simulated users sending requests at once, each the next as soon as its answer ends "
                            "(default: the largest batch size)")
    bench.add_argument("--schedulers", type=_word_list, default=["static"], metavar="NAME[,NAME...]",
                       help="static (a batch runs to its end; default) and/or continuous (requests join a running "
                            "batch at every step, transformers' continuous batching)")
    bench.add_argument("--batch-window-ms", type=_float_in(0, 10_000), default=None, metavar="MS",
                       help="how long the worker waits to fill a batch (default 20)")
    bench.add_argument("--eval", action="store_true",
                       help="also measure perplexity and QA accuracy of each recipe (after the timed runs)")
    _quality_flags(bench, max_eval_tokens=None)
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate = commands.add_parser(
        "eval", parents=[recipe_flags], allow_abbrev=False,
        help="perplexity, agreement with the baseline recipe and QA accuracy",
    )
    _quality_flags(evaluate, max_eval_tokens=None)
    evaluate.add_argument("--agreement-tokens", type=_int_at_least(1), default=32, metavar="N",
                          help="greedy tokens per eval prompt compared with the baseline's (default 32)")
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
    _metrics_server_parser(commands)
    return parser


def _cache_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("response cache")
    group.add_argument("--semantic", action="store_true",
                       help="also reuse the answer to a differently worded question (same recipe and settings)")
    group.add_argument("--similarity", type=_float_in(0.5, 1.0), default=None, metavar="S",
                       help="cosine similarity a --semantic match needs (default 0.9)")
    group.add_argument("--cache-sampled", action="store_true",
                       help="also cache and reuse sampled answers (temperature > 0); off by default")
    group.add_argument("--cache-ttl", type=_positive_float, default=None, metavar="SECONDS",
                       help="a stored answer expires after this long (default: kept until evicted)")


def _quality_flags(parser: argparse.ArgumentParser, max_eval_tokens: int | None) -> None:
    group = parser.add_argument_group("quality")
    whole = "the whole text" if max_eval_tokens is None else str(max_eval_tokens)
    group.add_argument("--max-eval-tokens", type=_int_at_least(2), default=max_eval_tokens, metavar="N",
                       help=f"perplexity on the first N tokens of the evaluation text (default: {whole})")
    group.add_argument("--qa-limit", type=_int_at_least(1), default=None, metavar="N",
                       help="QA accuracy on the first N questions (default: all 50)")


def _distill_flags(parser: argparse.ArgumentParser) -> None:
    # Spec flags default to None so that the library's StudentSpec defaults apply (the help repeats them).
    group = parser.add_argument_group("student")
    group.add_argument("--steps", type=_int_at_least(1), default=None, metavar="N",
                       help="total training steps; a student trained fewer steps resumes (default 100)")
    group.add_argument("--layers-ratio", type=_float_in(0.0, 0.9), default=None, metavar="R",
                       help="share of the teacher's decoder layers the student drops (default 0.3)")
    group.add_argument("--channels-ratio", type=_float_in(0.0, 0.9), default=None, metavar="R",
                       help="share of the MLP channels the student drops as well (default 0)")
    group.add_argument("--temperature", type=_positive_float, default=None, metavar="T",
                       help="softens teacher and student distributions in the loss (default 2.0)")
    group.add_argument("--lr", type=_positive_float, default=None, metavar="LR", help="learning rate (default 1e-4)")
    group.add_argument("--train-batch-size", type=_int_at_least(1), default=None, metavar="N",
                       help="sequences per training step (default 4)")
    group.add_argument("--seq-len", type=_int_at_least(2), default=None, metavar="N",
                       help="tokens per training sequence, prompt and answer (default 160)")
    group.add_argument("--corpus-new-tokens", type=_int_at_least(1), default=None, metavar="N",
                       help="length of each training answer the teacher writes (default 112)")
    group.add_argument("--samples-per-prompt", type=_int_at_least(1), default=None, metavar="N",
                       help="teacher answers per training prompt (default 2)")
    group.add_argument("--seed", type=_int_at_least(0), default=None, metavar="S",
                       help="seed of the training text and batch order (default 0)")
    group.add_argument("--no-eval", action="store_true", help="skip measuring the student's and teacher's quality")
    _quality_flags(parser, max_eval_tokens=1024)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def _recipe_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("recipe")
    group.add_argument("--model", default=EMBEDDED,
                       help="'embedded' (default), a hub id, a local model directory or a .gguf file")
    group.add_argument("--device", choices=DEVICES, default="auto", help="default: auto (the fastest present)")
    group.add_argument("--dtype", choices=DTYPES, default="fp32", help="weight format (default fp32)")
    # Backend names come from the quantization registry, which imports torch: the library checks them.
    group.add_argument("--backend", default="auto",
                       help="library that runs a quantized dtype, e.g. torch-dynamic or bnb-nf4 (default: auto, the "
                            "fastest measured here); a name that cannot run --dtype here is refused with the list "
                            "of those that can")
    group.add_argument("--prune-method", choices=PRUNE_METHODS, default="none", help="default: none")
    group.add_argument("--prune-ratio", type=float, default=0.0, metavar="R",
                       help=f"share removed by pruning, 0 to {MAX_PRUNE_RATIO} (default 0)")
    group.add_argument("--prune-criterion", choices=PRUNE_CRITERIA, default="magnitude",
                       help="how magnitude and 2:4 pruning rank weights (default: magnitude)")
    group.add_argument("--variant", default="none",
                       help="distilled variant: none (default), a public student of --model, or the name of a "
                            "student built by `workbench distill`")
    group.add_argument("--batch-size", type=int, default=1, metavar="N",
                       help="requests the worker may run together (default 1)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow model code from the hub; only for authors you trust")
    return flags


def _generation_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("generation")
    # default=None: the two commands share these argument objects, so per-command defaults live in
    # DEFAULT_MAX_NEW_TOKENS (set_defaults on one subparser would change the other's too).
    group.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                       help="tokens to generate at most (generate: 256, bench: exactly 128 by default)")
    group.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    group.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default 1)")
    group.add_argument("--seed", type=int, default=None, metavar="S", help="seed for sampling")
    group.add_argument("--no-cache", action="store_true",
                       help="bypass the response cache: neither look the answer up nor store it (bench "
                            "always does)")
    return flags


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer of {low} or more, got {text!r}")
        return value

    return parse


def _float_in(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a number between {low:g} and {high:g}, got {text!r}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def _word_list(text: str) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"must be comma-separated names such as static,continuous, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers such as 1,4,16, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    """Run the ``workbench`` command.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 generation failed, 2 bad input, 130 interrupted.
    """
    from .loading import ModelSourceError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # to repeat the command line in hints (resuming a student)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        return _fail(_argparse_message(str(exc)))
    except RecipeError as exc:
        return _fail(f"--{exc.field}: {exc}")
    except ModelSourceError as exc:
        return _fail(f"--model: {exc}")
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _fail(message: str, status: int = 2) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status


def _argparse_message(message: str) -> str:
    # "argument --dtype: invalid choice: ..." -> "--dtype: invalid choice: ..."
    return message.removeprefix("argument ")


# ---- recipe and settings from flags -------------------------------------------------------------


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The Recipe the flags describe (device not yet resolved); raises RecipeError naming the flag."""
    return Recipe(
        model=args.model,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        prune=PruneSpec(args.prune_method, args.prune_ratio, args.prune_criterion),
        variant=args.variant,
        batch_size=args.batch_size,
    )


def settings_from_args(args: argparse.Namespace):
    """GenerationSettings from the flags; raises RecipeError naming the flag."""
    from .engine import GenerationSettings

    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else DEFAULT_MAX_NEW_TOKENS[args.command]
    return GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        ignore_eos=args.command == "bench",
    )


def check_buildable(recipe: Recipe) -> Recipe:
    """Every cheap check of a recipe, before anything is loaded, so a bad flag fails in a second.

    Returns the recipe with device and backend resolved. Raises RecipeError or ModelSourceError.
    """
    from . import bench, loading, optimize

    resolved = optimize.check_supported(recipe)
    bench.check_batch_size(resolved.batch_size)
    try:
        loading.resolve_source(resolved.model)
    except loading.ModelSourceError as exc:
        raise loading.ModelSourceError(f"{exc}; {MODEL_SOURCES}") from None
    return resolved


def _print_build_step(stage: str, fraction: float) -> None:
    print(f"{PROG}: [{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)


def _build_progress(who: str):
    """A build progress callback whose lines say which model is being built (e.g. "baseline")."""

    def on_step(stage: str, fraction: float) -> None:
        print(f"{PROG}: {who}: [{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)

    return on_step


class _Progress:
    """A long job's ``on_step(i, total, metrics)`` that prints to stderr: a stage's first and last step, and
    in between at most one line every ``every_s`` seconds."""

    def __init__(self, who: str, every_s: float = 3.0):
        self.who, self.every_s = who, every_s
        self.last_stage, self.last_print = None, 0.0

    def __call__(self, i: int, total: int, metrics: dict) -> None:
        stage, now = metrics.get("stage", ""), time.monotonic()
        if stage == self.last_stage and i not in (1, total) and now - self.last_print < self.every_s:
            return
        self.last_stage, self.last_print = stage, now
        detail = ", ".join(_describe(k, v) for k, v in metrics.items() if k != "stage" and v is not None)
        stage_text = f" {stage}" if stage else ""
        count = f"step {i}/{total}" if i else "starting"  # step 0: a stage that comes before the steps
        print(f"{PROG}: {self.who}{stage_text}: {count}" + (f", {detail}" if detail else ""),
              file=sys.stderr, flush=True)


def _describe(key: str, value) -> str:
    if key == "eta_s":
        return f"ETA {_duration(value)}"
    if key == "accuracy":
        return f"accuracy {value:.0%}"
    if isinstance(value, float):
        return f"{key.replace('_', ' ')} {value:.4g}"
    return f"{key.replace('_', ' ')} {value}"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _history():
    """The request history, or None (with a warning) if it cannot be opened: answers matter more."""
    import sqlite3

    from .metrics import HistoryStore

    try:
        return HistoryStore()
    except (OSError, sqlite3.Error) as exc:
        print(f"{PROG}: warning: request history not recorded: {exc}", file=sys.stderr)
        return None


# ---- generate -----------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    """``workbench generate``: answer one prompt (from the response cache when it can, without building the
    model), print the answer and its metrics."""
    from . import cache
    from .engine import Engine
    from .optimize import build

    if not args.prompt.strip():
        raise UsageError("--prompt: the prompt is empty; give the text to answer")
    settings = settings_from_args(args)
    recipe = check_buildable(recipe_from_args(args))
    messages = [{"role": "user", "content": args.prompt}]
    responses, policy, embed = _cache_for(args, settings)
    key = cache.model_key(recipe)
    hit = responses.lookup(key, messages, settings, policy, embed) if responses else None
    if hit is not None and hit.entry.get("model"):
        result = _answer(cache.ReplayRequest(hit, recipe, settings, "cli", _history()), stream=not args.json)
        if args.json:
            print(json.dumps(hit_report(recipe, settings, result, hit), indent=2))
        else:
            print(f"\n[{hit_line(result, hit)}]")
        return 0
    optimized = build(recipe, trust_remote_code=args.trust_remote_code, on_step=_print_build_step)
    engine = Engine(optimized, _history())
    try:
        request = engine.submit(messages, settings, origin="cli")
        if responses is not None:
            request = cache.StoringRequest(request, responses, key, messages, settings, policy,
                                           engine.tokenizer, optimized.stats.to_dict(), embed)
        result = _answer(request, stream=not args.json)
    finally:
        engine.close()
    if result.error:
        return _fail(f"generation failed: {result.error}", status=1)
    if args.json:
        print(json.dumps({**generate_report(optimized, settings, result), "cache_hit": None}, indent=2))
    else:
        print(f"\n[{metrics_line(result, optimized.stats.backend)}]")
    return 0


def _cache_for(args: argparse.Namespace, settings):
    """(response cache or None, policy, embedder or None) for ``generate``'s flags; warnings go to stderr."""
    from . import cache

    policy = cache.CachePolicy(
        enabled=not args.no_cache, semantic=args.semantic, cache_sampled=args.cache_sampled, ttl_s=args.cache_ttl,
        threshold=args.similarity if args.similarity is not None else cache.DEFAULT_THRESHOLD,
    )
    if not policy.applies_to(settings):
        return None, policy, None
    responses = cache.ResponseCache()
    if responses.problem:
        print(f"{PROG}: warning: {responses.problem}", file=sys.stderr)
    policy, embed, notice = cache.usable_policy(policy)
    if notice:
        print(f"{PROG}: warning: {notice}", file=sys.stderr)
    return (responses if responses.available else None), policy, embed


def hit_report(recipe: Recipe, settings, result, hit) -> dict:
    """The JSON object of ``generate --json`` for an answer from the cache: the same keys, ``cache`` = the kind
    of hit, ``model`` = the stats of the model that wrote the answer, and ``cache_hit`` with the lookup."""
    return {
        "recipe": recipe.to_dict(),
        "recipe_key": result.recipe_key,
        "text": result.text,
        **result.metrics(),
        "model": hit.entry.get("model"),
        "settings": asdict(settings),
        "notes": [],
        "cache_hit": hit.info(),
    }


def hit_line(result, hit) -> str:
    """One human line for a cached answer: kind, lookup time, what it saved, tokens."""
    parts = [f"cache {hit.kind} hit", f"lookup {hit.lookup_s * 1000:.1f} ms",
             f"the model took {hit.entry.get('e2e_s') or 0:.2f} s", f"{result.new_tokens} tokens replayed"]
    if hit.kind == "semantic":
        parts.append(f"matched {hit.matched_question!r} (similarity {hit.similarity:.3f})")
    return " · ".join(parts)


def cmd_cache(args: argparse.Namespace) -> int:
    """``workbench cache stats|clear``: the response cache's entries, size, hit rate and time saved; or empty it."""
    from . import cache

    responses = cache.ResponseCache()
    if responses.problem:
        print(f"{PROG}: warning: {responses.problem}", file=sys.stderr)
    if args.action == "clear":
        removed = responses.clear()
        report = {"cleared": removed, **responses.stats()}
        print(json.dumps(report, indent=2) if args.json else f"removed {removed} cached answers from "
                                                              f"{report['directory']}")
    else:
        report = responses.stats()
        print(json.dumps(report, indent=2) if args.json else cache_stats_text(report))
    status = 0 if responses.available else 1
    responses.close()
    return status


def cache_stats_text(stats: dict) -> str:
    """The cache stats as a few human lines."""
    rate = "n/a" if stats["hit_rate"] is None else f"{stats['hit_rate']:.0%}"
    hits, n = stats["hits"], stats["entries"]
    return "\n".join([
        f"response cache: {stats['directory']}",
        f"{n} answer{'' if n == 1 else 's'}, {stats['size_bytes'] / 2**20:.1f} MB of "
        f"{stats['size_limit_bytes'] / 2**20:.0f} MB",
        f"hit rate {rate}: {hits['exact']} exact + {hits['semantic']} semantic hits, {stats['misses']} misses",
        f"model time saved: {stats['saved_s']:.1f} s",
    ])


def _answer(request, stream: bool):
    try:
        return _stream(request) if stream else request.result()
    except KeyboardInterrupt:
        request.stop()  # end generation after the current token, so that closing the engine is quick
        raise


def _stream(request):
    """Print the answer as the engine yields it; returns the GenerationResult."""
    shown = ""
    for event in request:
        print(event.text, end="", flush=True)
        shown += event.text
    result = request.result()
    if result.text.startswith(shown):  # the tail of an incomplete UTF-8 sequence held back by the stream
        print(result.text[len(shown):], end="")
    print()
    return result


def generate_report(optimized, settings, result) -> dict:
    """The JSON object of ``generate --json`` (keys as in DESIGN.md, plus a few extras)."""
    return {
        "recipe": optimized.recipe.to_dict(),
        "recipe_key": result.recipe_key,
        "text": result.text,
        **result.metrics(),  # prompt_tokens, new_tokens, ttft_ms, tpot_ms, e2e_ms, decode_tok_s, cache, ...
        "model": optimized.stats.to_dict(),
        "settings": asdict(settings),
        "notes": list(optimized.notes),
    }


def metrics_line(result, backend: str) -> str:
    """One human line: tokens, TTFT, TPOT, decode tok/s, E2E, cache, backend."""
    m = result.metrics()
    parts = [f"{m['prompt_tokens']} prompt + {m['new_tokens']} new tokens", f"TTFT {_fmt(m['ttft_ms'], 'ms')}"]
    parts += [f"TPOT {_fmt(m['tpot_ms'], 'ms')}", f"decode {_fmt(m['decode_tok_s'], 'tok/s')}"]
    parts += [f"E2E {_fmt(m['e2e_ms'], 'ms')}", f"cache {m['cache']}", backend]
    return " · ".join(parts)


def _fmt(value, unit: str) -> str:
    return "n/a" if value is None else f"{value:.1f} {unit}"


# ---- bench --------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    """``workbench bench``: measure the recipe at each batch size; print a table or JSON."""
    from . import bench

    settings = settings_from_args(args)
    recipe = check_buildable(recipe_from_args(args))
    batch_sizes = args.batch_sizes or [recipe.batch_size]
    try:
        for batch_size in batch_sizes:
            bench.check_batch_size(batch_size)
    except RecipeError as exc:
        raise RecipeError("batch-sizes", str(exc)) from None
    try:
        for scheduler in args.schedulers:
            bench.check_scheduler(scheduler)
    except RecipeError as exc:
        raise RecipeError("schedulers", str(exc)) from None
    concurrency = args.concurrency or max(batch_sizes)
    bench.check_concurrency(concurrency)
    window_s = None if args.batch_window_ms is None else args.batch_window_ms / 1000
    evaluate = None
    if args.eval:
        def evaluate(optimized):
            return quality_of(optimized, args.max_eval_tokens, args.qa_limit, _Progress("eval"))

    try:
        entries = bench.sweep(
            [recipe], batch_sizes, settings, args.runs, args.warmup, _print_run,
            history=_history(), trust_remote_code=args.trust_remote_code, on_build=_print_build_step,
            evaluate=evaluate, concurrency=concurrency, schedulers=args.schedulers, batch_window_s=window_s,
        )
    except bench.BenchError as exc:
        return _fail(str(exc), status=1)
    report = {"settings": asdict(settings), "runs": args.runs, "warmup": args.warmup,
              "batch_sizes": batch_sizes, "concurrency": concurrency, "schedulers": args.schedulers,
              "results": entries}
    if args.eval:
        report["quality_settings"] = _quality_settings(args)
    if len(entries) > 1 or concurrency > 1:
        try:
            bench.save_sweep(report)  # the Benchmark page lists it among the earlier sweeps
        except OSError:
            pass
    print(json.dumps(report, indent=2) if args.json else bench_table(entries))
    return 0


def _print_run(i: int, total: int, metrics: dict) -> None:
    print(
        f"{PROG}: run {i}/{total} ({metrics['phase']}): {metrics['new_tokens']} tokens, "
        f"TTFT {_fmt(metrics['ttft_ms'], 'ms')}, decode {_fmt(metrics['decode_tok_s'], 'tok/s')}"
        + (f", ran in a batch of {metrics['batch_size']}" if metrics.get("batch_size", 1) > 1 else ""),
        file=sys.stderr,
        flush=True,
    )


def bench_table(entries: list[dict]) -> str:
    """A plain-text table of bench entries: one row per recipe and batch size."""
    header = ("recipe", "batch", "TTFT p50 ms", "TTFT p90 ms", "TPOT p50 ms", "decode tok/s med [min-max]",
              "throughput tok/s", "peak RSS MB", "weight MB", "backend")
    if any(e.get("concurrency", 1) > 1 or e.get("scheduler", "static") != "static" for e in entries):
        return _columns([_LOAD_HEADER, *[_load_row(e) for e in entries]])
    rows = [_table_row(e) for e in entries]
    if any("quality" in e for e in entries):
        header += ("perplexity", "QA accuracy")
        rows = [row + _quality_cells(e.get("quality")) for row, e in zip(rows, entries)]
    return _columns([header, *rows])


_LOAD_HEADER = ("recipe", "scheduler", "batch", "users", "ran in batches of (mean)", "TTFT p50 ms", "TTFT p99 ms",
                "E2E p50 ms", "E2E p99 ms", "TPOT p50 ms", "throughput tok/s", "peak RSS MB")


def _load_row(entry: dict) -> tuple[str, ...]:
    """A row of a sweep under load: per-request latency next to aggregate throughput."""
    def num(value, digits=1):
        return "n/a" if value is None else f"{value:.{digits}f}"

    return (
        entry["label"], entry.get("scheduler", "static"), str(entry["batch_size"]), str(entry.get("concurrency", 1)),
        num((entry.get("batches") or {}).get("mean"), 1),
        num(entry["ttft_ms"]["p50"]), num(entry["ttft_ms"]["p99"]),
        num(entry["e2e_ms"]["p50"]), num(entry["e2e_ms"]["p99"]),
        num(entry["tpot_ms"]["p50"], 2), num(entry["throughput_tok_s"]), num(entry["peak_rss_mb"], 0),
    )


def _columns(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _quality_cells(q: dict | None) -> tuple[str, str]:
    if not q:
        return ("n/a", "n/a")
    return (f"{q['perplexity']:.2f}", f"{q['qa_correct']}/{q['qa_n']} ({q['qa_accuracy']:.0%})")


def _table_row(entry: dict) -> tuple[str, ...]:
    def num(value, digits=1):
        return "n/a" if value is None else f"{value:.{digits}f}"

    decode = entry["decode_tok_s"]
    return (
        entry["label"],
        str(entry["batch_size"]),
        num(entry["ttft_ms"]["p50"]),
        num(entry["ttft_ms"]["p90"]),
        num(entry["tpot_ms"]["p50"], 2),
        f"{num(decode['median'])} [{num(decode['min'])}-{num(decode['max'])}]",
        num(entry["throughput_tok_s"]),
        num(entry["peak_rss_mb"], 0),
        num(entry["model"]["weight_bytes"] / 2**20),
        entry["model"]["backend"],
    )


# ---- quality ------------------------------------------------------------------------------------


QUALITY_KEYS = ("perplexity", "qa_accuracy", "qa_correct", "qa_n", "eval_tokens")


def quality_of(optimized, max_eval_tokens: int | None, qa_limit: int | None, on_step=None) -> dict:
    """Perplexity and QA accuracy of one built model (no baseline): ``{perplexity, qa_accuracy, qa_correct,
    qa_n, eval_tokens}``."""
    from . import quality

    items = quality.load_qa()[:qa_limit] if qa_limit else None
    report = quality.evaluate(optimized, None, max_tokens=max_eval_tokens, qa=items, on_step=on_step)
    return {k: report[k] for k in QUALITY_KEYS}


def _quality_settings(args: argparse.Namespace) -> dict:
    return {"max_eval_tokens": args.max_eval_tokens, "qa_limit": args.qa_limit}


def cmd_eval(args: argparse.Namespace) -> int:
    """``workbench eval``: perplexity, agreement with the baseline recipe and QA accuracy, of both.

    The baseline is built and measured first, then freed, then the recipe: never two models in memory.
    A recipe that is its own baseline is measured once (agreement 1.0).
    """
    from . import quality
    from .optimize import build

    recipe = check_buildable(recipe_from_args(args))
    baseline = recipe.baseline()
    check_buildable(baseline)
    prompts = quality.load_prompts()
    start = time.perf_counter()
    measured = {}
    for who, r in ([("recipe", recipe)] if recipe == baseline else [("baseline", baseline), ("recipe", recipe)]):
        optimized = build(r, trust_remote_code=args.trust_remote_code, on_step=_build_progress(who))
        measured[who] = _eval_one(optimized, args, prompts, _Progress(who))
        del optimized
        gc.collect()  # free this model before the next one is built: never two in memory
    own = measured["recipe"]
    base = measured.get("baseline", own)
    report = {
        **_without_tokens(own),
        "agreement": quality.agreement(own["tokens"], base["tokens"]) if base is not own else 1.0,
        "baseline": {**_without_tokens(base), "agreement": 1.0},
        "settings": {**_quality_settings(args), "agreement_tokens": args.agreement_tokens,
                     "agreement_prompts": len(prompts)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2) if args.json else eval_table(report))
    return 0


def _eval_one(optimized, args: argparse.Namespace, prompts: list[str], progress: _Progress) -> dict:
    """Quality of one built model, plus its greedy tokens on the agreement prompts."""
    from . import quality

    measured = quality_of(optimized, args.max_eval_tokens, args.qa_limit, progress)
    tokens = quality.greedy_tokens(optimized, prompts, args.agreement_tokens,
                                   on_step=lambda i, n, m: progress(i, n, {"stage": "agreement", **m}))
    recipe = optimized.recipe
    return {"recipe": recipe.to_dict(), "recipe_key": recipe.key(), "label": recipe.label(), **measured,
            "model": optimized.stats.to_dict(), "tokens": tokens}


def _without_tokens(measured: dict) -> dict:
    return {k: v for k, v in measured.items() if k != "tokens"}


def eval_table(report: dict) -> str:
    """Recipe and baseline side by side: perplexity, agreement, QA accuracy."""
    header = ("", "perplexity", "agreement", "QA accuracy", "recipe")
    rows = [header]
    for who, m in (("recipe", report), ("baseline", report["baseline"])):
        rows.append((who, f"{m['perplexity']:.2f}", f"{m['agreement']:.1%}",
                     f"{m['qa_correct']}/{m['qa_n']} ({m['qa_accuracy']:.0%})", m["label"]))
    note = (f"perplexity on {report['eval_tokens']} tokens of the evaluation text; agreement on "
            f"{report['settings']['agreement_prompts']} prompts x {report['settings']['agreement_tokens']} "
            "greedy tokens")
    return _columns(rows) + "\n" + note


# ---- distill ------------------------------------------------------------------------------------

SPEC_FLAGS = {  # StudentSpec field -> the flag that sets it
    "layers_ratio": "layers_ratio", "channels_ratio": "channels_ratio", "temperature": "temperature", "lr": "lr",
    "batch_size": "train_batch_size", "seq_len": "seq_len", "corpus_new_tokens": "corpus_new_tokens",
    "samples_per_prompt": "samples_per_prompt", "seed": "seed",
}


def spec_from_args(args: argparse.Namespace):
    """The StudentSpec the flags describe (library defaults for flags not given)."""
    from .optimize.distill import StudentSpec

    given = {field: getattr(args, flag) for field, flag in SPEC_FLAGS.items() if getattr(args, flag) is not None}
    defaults = StudentSpec.__dataclass_fields__
    if given.get("layers_ratio", defaults["layers_ratio"].default) == 0 and not given.get("channels_ratio"):
        raise RecipeError("layers-ratio", "a student must be smaller than its teacher: set --layers-ratio or "
                                          "--channels-ratio above 0")
    try:
        return StudentSpec(**given)
    except RecipeError as exc:  # the library names its own fields; say which flags set them
        raise RecipeError("layers-ratio" if exc.field == "prune-ratio" else exc.field, str(exc)) from None


def cmd_distill(args: argparse.Namespace) -> int:
    """``workbench distill``: build or resume a student of --model, then measure it and its teacher.

    Ctrl-C asks the training loop to stop after the current step; it saves a checkpoint that the same
    command resumes. A second Ctrl-C quits at once (back to the last periodic checkpoint).
    """
    from .optimize import distill as distillation

    if args.variant != "none":
        raise UsageError("--variant: distill builds a new student of --model; leave --variant out "
                         "(give the student's name to --variant of the other commands)")
    recipe = check_buildable(recipe_from_args(args))
    spec = spec_from_args(args)
    steps = args.steps or distillation.DEFAULT_STEPS
    name = distillation.student_name(recipe.model, spec)
    print(f"{PROG}: student {name} of {recipe.model}: {steps} steps", file=sys.stderr, flush=True)
    try:
        with _StopOnInterrupt() as interrupt:
            result = distillation.distill(recipe.model, spec, steps, on_step=_Progress("distill"), stop=interrupt)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; {_resume_hint(args)} (from its last checkpoint)", file=sys.stderr)
        return 130
    stopped = result["steps"] < steps
    report = {**result, "requested_steps": steps, "stopped": stopped, "spec": asdict(spec),
              "student": None, "teacher": None, "variant_flag": f"--variant {result['name']}"}
    if stopped:
        print(f"{PROG}: stopped at step {result['steps']} of {steps}; {_resume_hint(args)}", file=sys.stderr)
    if not (args.no_eval or interrupt.requested):
        student_recipe = replace(recipe, variant=result["name"])
        report["student"] = _quality_of_recipe(student_recipe, "student", args)
        report["teacher"] = _quality_of_recipe(recipe.baseline(), "teacher", args)
        report["quality_settings"] = _quality_settings(args)
    print(json.dumps(report, indent=2) if args.json else distill_text(report))
    return 130 if interrupt.requested else 0


def _quality_of_recipe(recipe: Recipe, who: str, args: argparse.Namespace) -> dict:
    """Build a recipe, measure its quality, free it."""
    from .optimize import build

    optimized = build(recipe, trust_remote_code=args.trust_remote_code, on_step=_build_progress(who))
    measured = {"recipe": recipe.to_dict(), **quality_of(optimized, args.max_eval_tokens, args.qa_limit,
                                                         _Progress(who))}
    del optimized
    gc.collect()
    return measured


def _resume_hint(args: argparse.Namespace) -> str:
    return f"run the same command to resume: {PROG} {shlex.join(args.argv)}"


class _StopOnInterrupt:
    """The ``stop`` callable of a training loop: the first Ctrl-C makes it return True (the loop then saves a
    checkpoint and returns); a second Ctrl-C raises KeyboardInterrupt as usual."""

    requested = False

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():  # only the main thread receives signals
            self.previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def __call__(self) -> bool:
        return self.requested

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not print: a signal handler may run while print holds stderr's buffer.
        os.write(2, f"\n{PROG}: stopping after this step and saving a checkpoint "
                    "(Ctrl-C again to quit without saving)\n".encode())


def distill_text(report: dict) -> str:
    """The student's name, how it was trained, and its quality beside the teacher's."""
    steps = f"{report['steps']} step{'s' if report['steps'] != 1 else ''}"
    lines = [
        f"{report['name']}: {steps}, loss {_num(report['first_loss'], 4)} -> {_num(report['loss'], 4)}, "
        f"{_count(report['params'])} parameters (teacher {_count(report['teacher_params'])}), "
        f"{report['seconds']:.0f} s of training",
        f"use it with: {report['variant_flag']}",
    ]
    if report["student"] and report["teacher"]:
        rows = [("", "perplexity", "QA accuracy")]
        for who in ("student", "teacher"):
            rows.append((who,) + _quality_cells(report[who]))
        lines += ["", _columns(rows)]
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


# ---- metrics-server -----------------------------------------------------------------------------


def _metrics_server_parser(commands) -> None:
    from .metrics import DEFAULT_METRICS_PORT

    server = commands.add_parser(
        "metrics-server", allow_abbrev=False,
        help="serve the request history's figures to Prometheus (/metrics), following new requests of every process",
    )
    server.add_argument("--port", type=_int_in(0, 65535), default=DEFAULT_METRICS_PORT,
                        help=f"port to listen on (default {DEFAULT_METRICS_PORT}; 0 = any free port)")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: only this machine can scrape)")
    server.add_argument("--interval", type=_positive_float, default=2.0, metavar="S",
                        help="seconds between reads of new history rows (default 2)")
    server.add_argument("--new-only", action="store_true",
                        help="count only requests recorded from now on (default: replay the whole history first)")


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}, got {text!r}")
        return value

    return parse


def cmd_metrics_server(args: argparse.Namespace) -> int:
    """``workbench metrics-server``: a Prometheus exporter fed by ``metrics.sqlite``, until Ctrl-C.

    Requests recorded by any process (the app, ``generate``, ``bench``) show up within ``--interval`` seconds.
    """
    import sqlite3

    from .metrics import HistoryFollower, HistoryStore, PrometheusExporter

    try:
        store = HistoryStore()
    except (OSError, sqlite3.Error) as exc:
        return _fail(f"cannot open the request history: {exc}", status=1)
    exporter = PrometheusExporter()
    follower = HistoryFollower(store, exporter, from_start=not args.new_only)
    replayed = follower.poll()
    try:
        server = exporter.serve(args.port, args.host)
    except OSError as exc:
        return _fail(f"--port: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                     "is another exporter running? choose another --port")
    host, port = server.server_address[:2]
    print(f"{PROG}: serving http://{host}:{port}/metrics ({replayed} requests from {store.path}; "
          f"new ones every {args.interval:g} s); Ctrl-C stops", file=sys.stderr, flush=True)
    stop = threading.Event()
    try:
        follower.run(stop, args.interval)
    except KeyboardInterrupt:
        print(f"{PROG}: metrics server stopped", file=sys.stderr)
    finally:
        server.shutdown()
        server.server_close()
    return 0


COMMANDS = {"generate": cmd_generate, "bench": cmd_bench, "eval": cmd_eval, "distill": cmd_distill,
            "cache": cmd_cache, "metrics-server": cmd_metrics_server}
