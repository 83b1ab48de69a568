"""``workbench profile``: one chat turn's wall time split into its phases, with the per-module table and traces.

``add_parser(commands)`` adds the subcommand (recipe, generation and response-cache flags as ``generate`` has
them); ``run(args)`` builds the recipe's model, profiles one turn and prints a table or, with ``--json``, the
report: ``e2e_ms``, ``parts`` (name -> ms, measured phases only), ``unaccounted_ms``, ``modules``, ``ops``,
``counters`` and ``trace``. Building the parser imports no model library.
"""

from __future__ import annotations

import argparse
import json

from ..recipe import REMOTE
from . import output
from .parser import Failed, UsageError, _cache_flags, _generation_flags, _recipe_flags, int_at_least, int_in

NAME = "profile"
HOW_TO_OPEN = ("open it at https://ui.perfetto.dev (Open trace file) or chrome://tracing; TensorBoard: "
               "tensorboard --logdir {board} (the PyTorch Profiler tab needs the torch-tb-profiler plugin)")


def add_parser(commands) -> argparse.ArgumentParser:
    """Add ``profile`` to the ``workbench`` subcommands (``commands`` is argparse's subparsers object)."""
    parser = commands.add_parser(
        NAME, parents=[_recipe_flags(), _generation_flags()], allow_abbrev=False,
        help="split one chat turn's time into queue, tokenize, prefill, decode, sampling, detokenize and cache "
             "lookup; per-module table and a trace (Perfetto, TensorBoard)",
    )
    parser.add_argument("--prompt", required=True, help="the user message of the turn")
    parser.add_argument("--warmup", type=int_at_least(0), default=1, metavar="N",
                        help="turns run first and not counted (default 1)")
    parser.add_argument("--top", type=int_in(1, 200), default=15, metavar="N",
                        help="ops in the top-ops table (default 15)")
    parser.add_argument("--no-trace", action="store_true",
                        help="only the phases: no trace files and no torch.profiler turn")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _cache_flags(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """``workbench profile``: build the recipe, profile one turn of ``--prompt``, print the report."""
    if not args.prompt.strip():
        raise UsageError("--prompt: the prompt is empty; give the text of the turn to profile")
    from .. import profile, runtimes  # the model libraries load only once the command line is good
    from .commands import _cached_answers, check_buildable, recipe_from_args, settings_from_args

    settings = settings_from_args(args)
    recipe = recipe_from_args(args)
    if recipe.runtime == REMOTE:
        raise UsageError("--model: profile splits a turn into what runs in this process; a server runs its turn "
                         "elsewhere: workbench generate --model URL --json shows its network split")
    recipe = check_buildable(recipe)
    messages = [{"role": "user", "content": args.prompt}]
    answers = _cached_answers(args, settings)
    lookup = None
    if answers.applies_to(settings):
        def lookup() -> str:
            hit = answers.lookup(recipe, messages, settings)
            return hit.kind if hit is not None else "miss"

    model = runtimes.build(recipe, trust_remote_code=args.trust_remote_code, on_stage=output.print_build_stage)
    try:
        report = profile.profile_turn(model, args.prompt, settings, lookup=lookup, warmup=args.warmup,
                                      trace=not args.no_trace, on_step=_progress, top=args.top)
    except RuntimeError as exc:
        raise Failed(f"profiling failed: {exc}") from None
    finally:
        model.close()
    if answers.notice:
        output.warn(answers.notice)
    data = {**report.to_dict(), "model": model.stats.to_dict()}
    print(json.dumps(data, indent=2) if args.json else text(data))
    return 0


def _progress(i: int, total: int, metrics: dict) -> None:
    if i < total:
        output.say(f"[{i + 1}/{total}] {metrics.get('stage', '')}")


def text(report: dict) -> str:
    """The report as plain text: the parts with their shares, the modules and ops tables, the trace."""
    from ..profile import PART_LABELS

    e2e = report["e2e_ms"] or 0.0
    share = lambda ms: f"{ms / e2e:6.1%}" if e2e else "     -"  # noqa: E731
    lines = [f"one turn of {report['recipe_key']} ({report['runtime']}): {report['prompt_tokens']} prompt tokens, "
             f"{report['new_tokens']} new tokens, cache {report['cache']}",
             f"{'part':<36}{'ms':>12}{'share':>8}"]
    for name, ms in report["parts"].items():
        lines.append(f"{PART_LABELS.get(name, name):<36}{ms:>12.3f}{share(ms):>8}")
    lines.append(f"{'unaccounted (between the parts)':<36}{report['unaccounted_ms']:>12.3f}"
                 f"{share(report['unaccounted_ms']):>8}")
    lines.append(f"{'E2E (measured)':<36}{e2e:>12.3f}")
    steps = report["decode_steps"]
    if steps["n"]:
        lines.append(f"decode steps: {steps['n']}, mean {steps['mean_ms']:.3f} ms, median {steps['p50_ms']:.3f} ms, "
                     f"max {steps['max_ms']:.3f} ms")
    if report["counters"]:
        c = report["counters"]
        lines.append(f"llama.cpp counters: prompt eval {c['prompt_eval_ms']:.3f} ms / {c['prompt_eval_tokens']} "
                     f"tokens, eval {c['eval_ms']:.3f} ms / {c['eval_tokens']} runs")
    if report["modules"]:
        lines.append("\nper module kind (under torch.profiler, which slows every op):")
        lines += [f"  {m['name']:<40}{m['calls']:>6} calls{m['ms']:>12.3f} ms  {m['share'] or 0:6.1%}"
                  for m in report["modules"]]
    if report["ops"]:
        lines.append("top ops by self time:")
        lines += [f"  {o['name']:<48}{o['calls']:>6} calls{o['self_ms']:>12.3f} ms" for o in report["ops"]]
    for note in report["notes"]:
        lines.append(f"note: {note}")
    if report["trace"]:
        board = report["traces"].get("tensorboard", "")
        how = HOW_TO_OPEN.format(board=board) if board else "open it at https://ui.perfetto.dev or chrome://tracing"
        lines.append(f"trace: {report['trace']}\n  {how}")
    return "\n".join(lines)
