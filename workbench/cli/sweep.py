"""``workbench sweep``: the recipe frontier headless — measure what is missing of a grid, print the table and the
Pareto frontier (or JSON), and say which recipe is the fastest within N quality points of the baseline."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .. import frontier
from ..formats import human_bytes
from ..recipe import Recipe, RecipeError, is_url
from . import output
from .parser import PROG, default, float_in, int_at_least


def add_parser(commands) -> argparse.ArgumentParser:
    """Add ``sweep`` to the ``workbench`` subcommands (``commands`` = the subparsers object)."""
    sweep = commands.add_parser(
        "sweep", allow_abbrev=False,
        help="speed and quality of a grid of recipes, stored and resumable, with the Pareto frontier",
    )
    settings = frontier.SweepSettings()
    sweep.add_argument("--grid", default=None, metavar="FILE",
                       help=f"grid of recipes as JSON (default: ${frontier.GRID_ENV}, else "
                            f"{frontier.DEFAULT_GRID.relative_to(frontier.DEFAULT_GRID.parents[1])})")
    sweep.add_argument("--model", default=None,
                       help=f"model of every recipe (default: the grid's, else {default(Recipe, 'model')})")
    sweep.add_argument("--device", default=None, help="device of every recipe (default: the grid's)")
    sweep.add_argument("--rounds", type=int_at_least(1), default=settings.rounds, metavar="N",
                       help=f"interleaved rounds over all recipes; decode tok/s is their median (default "
                            f"{settings.rounds})")
    sweep.add_argument("--runs", type=int_at_least(1), default=settings.runs, metavar="N",
                       help=f"measured requests per recipe and round (default {settings.runs})")
    sweep.add_argument("--warmup", type=int_at_least(0), default=settings.warmup, metavar="N",
                       help=f"warm-up requests before them (default {settings.warmup})")
    sweep.add_argument("--max-new-tokens", type=int_at_least(2), default=settings.max_new_tokens, metavar="N",
                       help=f"tokens of every timed request, exactly (default {settings.max_new_tokens})")
    sweep.add_argument("--max-eval-tokens", type=int_at_least(2), default=settings.max_eval_tokens, metavar="N",
                       help=f"perplexity on the first N tokens of the evaluation text (default "
                            f"{settings.max_eval_tokens})")
    sweep.add_argument("--qa-limit", type=int_at_least(1), default=settings.qa_limit, metavar="N",
                       help="QA accuracy on the first N questions (default: all)")
    sweep.add_argument("--agreement-tokens", type=int_at_least(1), default=settings.agreement_tokens, metavar="N",
                       help=f"greedy tokens per prompt compared with the baseline's (default "
                            f"{settings.agreement_tokens})")
    sweep.add_argument("--agreement-prompts", type=int_at_least(1), default=settings.agreement_prompts, metavar="N",
                       help="agreement on the first N evaluation prompts (default: all)")
    sweep.add_argument("--within", type=float_in(0, 100), default=frontier.DEFAULT_WITHIN, metavar="N",
                       help=f"quality points a recipe may lose against the baseline and still count (default "
                            f"{frontier.DEFAULT_WITHIN:g})")
    sweep.add_argument("--quality", choices=tuple(frontier.QUALITY_AXES), default="qa",
                       help="the quality axis: qa (QA accuracy, default) or agreement (with the baseline's tokens)")
    sweep.add_argument("--fresh", action="store_true", help="measure every recipe again, ignoring stored results")
    sweep.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return sweep


def run(args: argparse.Namespace) -> int:
    """Run the sweep; 0 when done (or stopped by Ctrl-C, keeping what finished), 2 on a bad grid or flag."""
    if is_url(args.model):
        return _fail("--model: sweep builds a grid of recipes of a model run here; a server runs one recipe of its "
                     "own: measure it with workbench bench / generate / eval --model URL")
    try:
        recipes = frontier.load_grid(args.grid, model=args.model, device=args.device)
        settings = frontier.SweepSettings(rounds=args.rounds, runs=args.runs, warmup=args.warmup,
                                          max_new_tokens=args.max_new_tokens, max_eval_tokens=args.max_eval_tokens,
                                          qa_limit=args.qa_limit, agreement_tokens=args.agreement_tokens,
                                          agreement_prompts=args.agreement_prompts)
        frontier.check_grid(recipes)
    except frontier.GridError as exc:
        return _fail(f"--grid: {exc}")
    except RecipeError as exc:
        return _fail(f"--{exc.field}: {exc}")
    with output.StopOnInterrupt("stopping: the recipe being measured is dropped, finished ones are kept "
                                "(Ctrl-C again to quit at once)") as stop:
        result = frontier.run_sweep(recipes, settings, on_step=_progress, stop=stop, fresh=args.fresh,
                                    within=args.within, axis=args.quality)
    print(json.dumps(result, indent=2) if args.json else text(result))
    if result["stopped"]:
        print(f"{PROG}: sweep stopped; {result['measured']} item(s) stored: run the same command to resume",
              file=sys.stderr)
    return 0


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


QUALITY_EVERY_S = 15.0  # a quality line at most this often: QA and agreement take minutes per recipe
_last_quality = [0.0]


def _progress(i: int, total: int, metrics: dict) -> None:
    eta = metrics.get("eta_s")
    left = f", about {eta / 60:.1f} min left" if eta is not None else ""
    if metrics.get("quality"):
        q = metrics["quality"]
        if time.monotonic() - _last_quality[0] >= QUALITY_EVERY_S:
            _last_quality[0] = time.monotonic()
            print(f"[{i + 1}/{total}] {metrics['label']}: quality, {q['stage']} {q['done']}/{q['of']}",
                  file=sys.stderr, flush=True)
    elif metrics.get("phase") == "measuring":
        _last_quality[0] = time.monotonic()
        print(f"[{i + 1}/{total}] round {metrics['round']}: {metrics['label']}{left}", file=sys.stderr, flush=True)
    elif metrics.get("decode_tok_s") is not None:
        print(f"[{i}/{total}] {metrics['label']}: {metrics['decode_tok_s']:.1f} tok/s", file=sys.stderr, flush=True)


def text(result: dict) -> str:
    """The sweep as a table, its frontier, the sentence, and what was skipped or kept apart."""
    on = {row["key"] for row in result["frontier"]}
    axis = result["axis"]
    header = ("recipe", "rounds", "decode tok/s", "speed-up", "TTFT ms", "weights", "peak RSS MB", "perplexity",
              "QA", "agreement", "frontier")
    rows = [header]
    for r in result["recipes"]:
        ci = frontier.interval_points(r["quality"], "qa")
        qa = "n/a" if r["qa_points"] is None else f"{r['qa_points']:.0f}%" + (
            f" [{ci[0]:.0f}–{ci[1]:.0f}]" if ci else "")
        rows.append((r["label"], str(r["rounds"]), _num(r["decode_tok_s"], 1), _times(r["speedup"]),
                     _num(r["ttft_ms"], 0), human_bytes(r["weight_bytes"]) if r["weight_bytes"] else "n/a",
                     _num(r["peak_rss_mb"], 0), _num(r["perplexity"], 2), qa,
                     "n/a" if r["agreement"] is None else f"{r['agreement']:.0%}", "●" if r["key"] in on else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"{frontier.describe_machine(result['machine'])} (machine {result['machine_id']}); quality axis: "
             f"{frontier.QUALITY_AXES[axis]}; {result['measured']} item(s) measured now, the rest stored"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(result["within"]["sentence"])
    for s in result["skipped"]:
        lines.append(f"skipped {s['label']}: {s['reason']}")
    for f in result.get("failed", []):
        lines.append(f"failed {f['label']}: {f['reason']}")
    for m in result["missing"]:
        lines.append(f"not measured yet: {m}")
    for other in result["other_machines"]:
        lines.append(f"kept apart: {len(other['recipes'])} recipe(s) measured on another machine or library "
                     f"versions ({other['described']}); not mixed into this table")
    return "\n".join(lines)


def _num(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _times(value) -> str:
    return "n/a" if value is None else f"{value:.2f}×"
