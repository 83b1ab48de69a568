"""``workbench predict``: a model's size and decode speed from its config.json alone, here and on accelerators.

This machine's bandwidth and peak are measured once (a few seconds) and cached; ``--measure`` benchmarks the
embedded model now under each runtime and prints what the predictor said before it against what was measured.
"""

from __future__ import annotations

import argparse
import json

from .. import frontier, machine, predict
from ..formats import figure, human_bytes, human_count
from . import output
from .parser import PROG, Failed, UsageError, int_at_least


def _roofline():
    """workbench.roofline, which loads the model libraries: imported once the command line is good."""
    from .. import roofline

    return roofline

VALIDATION_TOLERANCE = 0.25  # the bar: a prediction within 25% of the measurement


def add_parser(commands) -> argparse.ArgumentParser:
    """Add ``predict`` to the ``workbench`` subcommands (``commands``: argparse's subparsers object)."""
    parser = commands.add_parser(
        "predict", allow_abbrev=False,
        help="size and decode tok/s of a model from its config.json alone, here and on accelerators",
    )
    parser.add_argument("--config", default=None, metavar="PATH|HUB_ID|NAME",
                        help="a config.json, a model directory, a hub id in the local cache, or a shipped config ("
                             f"{', '.join(predict.shipped_names())}); default: the embedded model")
    parser.add_argument("--context", type=int_at_least(0), default=predict.DEFAULT_CONTEXT, metavar="N",
                        help=f"tokens in the KV cache when a token is decoded (default {predict.DEFAULT_CONTEXT})")
    parser.add_argument("--prompt-tokens", type=int_at_least(1), default=predict.DEFAULT_PROMPT, metavar="N",
                        help=f"prompt length of the prefill estimate (default {predict.DEFAULT_PROMPT})")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure this machine's bandwidth and peak again instead of reading the cache")
    parser.add_argument("--measure", action="store_true",
                        help="benchmark the embedded model now (transformers fp32, llama.cpp q4_0) and print the "
                             "prediction against the measurement; the efficiencies measured replace the cached ones")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``workbench predict``; a config that cannot be read is a UsageError naming --config."""
    try:
        predict.architecture(args.config)
    except predict.PredictError as exc:
        raise UsageError(f"--config: {exc}") from None
    if not machine.cached_roofline() or args.remeasure:
        output.say("measuring this machine's memory bandwidth and matmul peak (a few seconds, once)")
    roof = machine.roofline(remeasure=args.remeasure)
    before = _roofline().cached_efficiency()
    validation = None
    if args.measure:
        validation, before = _validate(roof, before)
    report = _report(args, roof, before)
    if validation is not None:
        report["validation"] = validation
    if args.config is None:  # the embedded model: what the frontier measured here, if it ran
        rows = frontier.report(None, frontier.SweepSettings())["recipes"]
        report["frontier_validation"] = _roofline().against_frontier(rows, roof, before)
    print(json.dumps(report, indent=2) if args.json else text(report))
    return 0


def _report(args, roof: dict, efficiency: dict | None) -> dict:
    found = predict.predict(args.config, roof["bandwidth_gb_s"], roof["peak_gflops"], _roofline().efficiencies(efficiency),
                            args.context, args.prompt_tokens)
    decode = {}
    for row in found["here"]:
        decode.setdefault(row["runtime"], {})[row["dtype"]] = {"bound": row["bound_tok_s"],
                                                               "expected": row["expected_tok_s"]}
    found["decode_tok_s"] = decode
    found["machine"] = {"cpu": roof["fingerprint"]["cpu"], "threads": roof["threads"],
                        "fingerprint_key": roof["fingerprint_key"], "measured_at": roof["measured_at"],
                        "cached": roof["cached"]}
    found["efficiency"] = (efficiency or {}).get("runtimes", {})
    return found


def _validate(roof: dict, before: dict | None) -> tuple[list[dict], dict]:
    """Measure the embedded model now; each row sets the prediction made before (bound x the efficiency cached
    then, when there was one) against the measured tok/s."""
    output.say("measuring the embedded model under each runtime (builds it first if needed)")
    try:
        now = _roofline().measure_efficiency(roof=roof, on_step=output.StepPrinter("measure", every_s=5.0))
    except Exception as exc:
        raise Failed(f"the measurement failed: {exc}") from None
    earlier = _roofline().efficiencies(before)
    rows = []
    for runtime, m in now["runtimes"].items():
        if "problem" in m:
            rows.append({"runtime": runtime, "dtype": m["dtype"], "problem": m["problem"]})
            continue
        share = earlier.get(runtime, {}).get("efficiency")
        predicted = m["bound_tok_s"] * share if share else None
        error = (predicted - m["achieved_tok_s"]) / m["achieved_tok_s"] if predicted and m["achieved_tok_s"] else None
        rows.append({"runtime": runtime, "dtype": m["dtype"], "bound_tok_s": m["bound_tok_s"],
                     "predicted_tok_s": predicted, "measured_tok_s": m["achieved_tok_s"], "relative_error": error,
                     "within_25pct": None if error is None else abs(error) <= VALIDATION_TOLERANCE,
                     "efficiency_now": m["efficiency"], "efficiency_before": share, "limit": m["limit"],
                     "busy": _roofline().busy(m)})
    return rows, now


def frontier_lines(rows: list[dict] | None) -> list[str]:
    """The predictor against the frontier sweep stored for this machine (default settings), or a hint to run it."""
    if rows is None:
        return []
    if not rows:
        return ["", "against the frontier: no sweep with the default settings is stored for this machine "
                    f"(run {PROG} sweep); nothing to check the predictions against"]
    table = [("recipe", "measured tok/s", "predicted", "error", "same-run prediction", "error")]
    for r in rows:
        if r["predicted_tok_s"] is None:
            predicted = error = "-"
        else:
            predicted = figure(r["predicted_tok_s"], 1) + ("" if r["efficiency_from"] == r["dtype"] else
                                                           f" (efficiency of {r['efficiency_from']})")
            error = f"{r['relative_error']:+.0%}" + ("" if r["within_25pct"] else " (outside 25%)")
        same = "-" if r["same_run_tok_s"] is None else (
            "basis" if r["basis"] else figure(r["same_run_tok_s"], 1))
        same_error = "-" if r["same_run_error"] is None or r["basis"] else f"{r['same_run_error']:+.0%}"
        table.append((r["format"], figure(r["measured_tok_s"], 1), predicted, error, same, same_error))
    notes = [f"{r['format']}: not predicted: {r['not_predicted']}" for r in rows if r.get("not_predicted")]
    return ["", "against the frontier measured here (default sweep settings): predicted = bound x the efficiency "
                "cached for the runtime (another run); same-run = bound x the efficiency of the sweep's own row of "
                "the runtime's basis format", output.columns(table), *notes]


def text(report: dict) -> str:
    lines = [f"{report['model']}: {human_count(report['params'])} parameters "
             f"({report['params']:,}), KV cache {human_bytes(report['kv_bytes_per_token']['fp16'])}/token in fp16, "
             f"{figure(report['flops_per_token'] / 1e9, 2)} GFLOP/token at {report['context_tokens']} tokens of "
             "context",
             f"this machine: {report['machine']['cpu']}, {figure(report['bandwidth_gb_s'], 1)} GB/s read with "
             f"{report['machine']['threads']} threads, {figure(report['peak_gflops'], 0)} GFLOP/s fp32 matmul"
             + (" (cached)" if report["machine"]["cached"] else " (measured now)"), ""]
    rows = [("runtime", "dtype", "weights", "bound tok/s", "expected tok/s", "prefill bound")]
    for row in report["here"]:
        expected = figure(row["expected_tok_s"], 1)
        if row["expected_tok_s"] is not None and row["efficiency_from"] != row["dtype"]:
            expected += f" (efficiency of {row['efficiency_from']})"
        rows.append((row["runtime"], row["dtype"], human_bytes(report["weight_bytes"][row["runtime"]][row["dtype"]]),
                     figure(row["bound_tok_s"], 1), expected,
                     f"{figure(row['prefill_bound_ms'], 0)} ms / {report['prompt_tokens']} tokens"))
    lines.append(output.columns(rows))
    if not report["efficiency"]:
        lines.append("expected = bound x each runtime's efficiency here: not measured yet (run with --measure)")
    lines += ["", "accelerators (published figures, estimates; bound = an upper limit):"]
    acc = [("accelerator", "dtype", "bound tok/s", "prefill bound")]
    acc += [(r["accelerator"], r["dtype"], figure(r["bound_tok_s"], 0), f"{figure(r['prefill_bound_ms'], 1)} ms")
            for r in report["accelerators"]]
    lines.append(output.columns(acc))
    lines += frontier_lines(report.get("frontier_validation"))
    for row in report.get("validation", []):
        lines.append("")
        if "problem" in row:
            lines.append(f"{row['runtime']} {row['dtype']}: not measured: {row['problem']}")
            continue
        verdict = ("no earlier efficiency to predict from; this measurement is now the basis" if row["predicted_tok_s"]
                   is None else f"predicted {figure(row['predicted_tok_s'], 1)} tok/s, error "
                                f"{row['relative_error']:+.0%} ({'within' if row['within_25pct'] else 'outside'} 25%)")
        lines.append(f"{row['runtime']} {row['dtype']}: measured {figure(row['measured_tok_s'], 1)} tok/s, bound "
                     f"{figure(row['bound_tok_s'], 1)} ({row['efficiency_now']:.0%} of it); {verdict}")
        lines.append(f"  {row['limit']}")
        if row.get("busy"):
            lines.append(f"  warning: {row['busy']}")
    return "\n".join(lines)
