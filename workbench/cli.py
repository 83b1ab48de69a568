"""The ``workbench`` command: one answer (``generate``) or a benchmark (``bench``) of a recipe, from the shell.

Exit status: 0 on success; 2 on bad input, with one line on stderr naming the flag and what it accepts;
1 when generation itself fails. Build progress goes to stderr, so ``--json`` output on stdout is pure JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

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
    """The parser of ``workbench``: subcommands ``generate`` and ``bench`` sharing recipe and generation flags."""
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
    bench = commands.add_parser(
        "bench", parents=[recipe_flags, generation_flags], allow_abbrev=False,
        help="measure TTFT, TPOT, decode tok/s and throughput on fixed prompts",
    )
    bench.add_argument("--runs", type=_int_at_least(1), default=5, help="measured runs (default 5)")
    bench.add_argument("--warmup", type=_int_at_least(0), default=1,
                       help="warm-up runs, excluded from every figure (default 1)")
    bench.add_argument("--batch-sizes", type=_int_list, default=None, metavar="N[,N...]",
                       help="batch sizes to measure, e.g. 1,4,16 (default: --batch-size); only 1 is available "
                            "until dynamic batching arrives")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def _recipe_flags() -> argparse.ArgumentParser:
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("recipe")
    group.add_argument("--model", default=EMBEDDED,
                       help="'embedded' (default), a hub id, a local model directory or a .gguf file")
    group.add_argument("--device", choices=DEVICES, default="auto", help="default: auto (the fastest present)")
    group.add_argument("--dtype", choices=DTYPES, default="fp32", help="weight format (default fp32)")
    # Backend names come from the quantization registry, which imports torch: the library checks them.
    group.add_argument("--backend", default="auto",
                       help="library that runs a quantized dtype (default: auto, the fastest measured here)")
    group.add_argument("--prune-method", choices=PRUNE_METHODS, default="none", help="default: none")
    group.add_argument("--prune-ratio", type=float, default=0.0, metavar="R",
                       help=f"share removed by pruning, 0 to {MAX_PRUNE_RATIO} (default 0)")
    group.add_argument("--prune-criterion", choices=PRUNE_CRITERIA, default="magnitude",
                       help="how magnitude and 2:4 pruning rank weights (default: magnitude)")
    group.add_argument("--variant", default="none", help="distilled variant name (default: none)")
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
                       help="bypass the response cache (not implemented yet, so this has no effect: "
                            "every answer comes from the model)")
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

    try:
        args = build_parser().parse_args(argv)
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
    bench.check_batch_size(resolved.batch_size)  # one worker, one request at a time
    try:
        loading.resolve_source(resolved.model)
    except loading.ModelSourceError as exc:
        raise loading.ModelSourceError(f"{exc}; {MODEL_SOURCES}") from None
    return resolved


def _print_build_step(stage: str, fraction: float) -> None:
    print(f"{PROG}: [{fraction:4.0%}] {stage}", file=sys.stderr, flush=True)


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
    """``workbench generate``: build the recipe, answer one prompt, print the answer and its metrics."""
    from .engine import Engine
    from .optimize import build

    if not args.prompt.strip():
        raise UsageError("--prompt: the prompt is empty; give the text to answer")
    settings = settings_from_args(args)
    recipe = check_buildable(recipe_from_args(args))
    optimized = build(recipe, trust_remote_code=args.trust_remote_code, on_step=_print_build_step)
    engine = Engine(optimized, _history())
    try:
        result = _answer(engine.submit(args.prompt, settings, origin="cli"), stream=not args.json)
    finally:
        engine.close()
    if result.error:
        return _fail(f"generation failed: {result.error}", status=1)
    if args.json:
        print(json.dumps(generate_report(optimized, settings, result), indent=2))
    else:
        print(f"\n[{metrics_line(result, optimized.stats.backend)}]")
    return 0


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
        entries = bench.sweep(
            [recipe], batch_sizes, settings, args.runs, args.warmup, _print_run,
            history=_history(), trust_remote_code=args.trust_remote_code, on_build=_print_build_step,
        )
    except bench.BenchError as exc:
        return _fail(str(exc), status=1)
    report = {"settings": asdict(settings), "runs": args.runs, "warmup": args.warmup,
              "batch_sizes": batch_sizes, "results": entries}
    print(json.dumps(report, indent=2) if args.json else bench_table(entries))
    return 0


def _print_run(i: int, total: int, metrics: dict) -> None:
    print(
        f"{PROG}: run {i}/{total} ({metrics['phase']}): {metrics['new_tokens']} tokens, "
        f"TTFT {_fmt(metrics['ttft_ms'], 'ms')}, decode {_fmt(metrics['decode_tok_s'], 'tok/s')}",
        file=sys.stderr,
        flush=True,
    )


def bench_table(entries: list[dict]) -> str:
    """A plain-text table of bench entries: one row per recipe and batch size."""
    header = ("recipe", "batch", "TTFT p50 ms", "TTFT p90 ms", "TPOT p50 ms", "decode tok/s med [min-max]",
              "throughput tok/s", "peak RSS MB", "backend")
    rows = [header] + [_table_row(e) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


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
        entry["model"]["backend"],
    )


COMMANDS = {"generate": cmd_generate, "bench": cmd_bench}
