"""What the ``workbench`` command prints: JSON reports, plain-text tables and lines, progress on stderr.

Results go to stdout (pure JSON with ``--json``); progress and warnings go to stderr, one line each.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict

from ..formats import duration, figure, human_count
from ..recipe import Recipe
from .parser import PROG

DEBUG_ENV = "WORKBENCH_DEBUG"  # set to 1: an error's traceback is printed too, before its one line
_shown: set[str] = set()  # warnings said once per command

# Progress on stderr -------------------------------------------------------------------------------------------


def warn(message: str) -> None:
    print(f"{PROG}: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


def warn_once(message: str) -> None:
    """``warn``, unless this command said it already (a problem the library logs and the command reports)."""
    if message not in _shown:
        _shown.add(message)
        warn(message)


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "no", "false")


class _LogLines(logging.Handler):
    """The library's warnings as ``workbench: warning:`` lines, each once; the traceback only when debugging."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            warn_once(record.getMessage())
            if record.exc_info and debugging():
                traceback.print_exception(*record.exc_info, file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextmanager
def session():
    """For one command: the library's log warnings go to stderr as one line each, and ``warn_once`` starts over."""
    _shown.clear()
    handler = _LogLines(logging.WARNING)
    logger = logging.getLogger(__package__.rsplit(".", 1)[0])
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def print_build_stage(stage: str, fraction: float) -> None:
    """An ``OnStage`` for a build: one line per stage."""
    say(f"[{fraction:4.0%}] {stage}")


def build_stages(who: str):
    """An ``OnStage`` whose lines say which model is being built (e.g. "baseline")."""

    def on_stage(stage: str, fraction: float) -> None:
        say(f"{who}: [{fraction:4.0%}] {stage}")

    return on_stage


class StepPrinter:
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
        detail = ", ".join(_describe(k, v) for k, v in metrics.items()
                           if k not in ("stage", "unit", "step") and v is not None)
        stage_text = f" {stage}" if stage else ""
        if metrics.get("unit") == "s":  # a budget in seconds: i of total seconds
            count = f"{duration(i)} of {duration(total)}" + (f", step {metrics['step']}" if "step" in metrics else "")
        else:
            count = f"step {i}/{total}" if i else "starting"  # step 0: a stage that comes before the steps
        say(f"{self.who}{stage_text}: {count}" + (f", {detail}" if detail else ""))


def _describe(key: str, value) -> str:
    if isinstance(value, dict):  # a loss's parts
        return " ".join(_describe(k, v) for k, v in value.items())
    if key == "eta_s":
        return f"ETA {duration(value)}"
    if key == "accuracy":
        return f"accuracy {value:.0%}"
    if isinstance(value, float):
        return f"{key.replace('_', ' ')} {value:.4g}"
    return f"{key.replace('_', ' ')} {value}"


def print_run(i: int, total: int, metrics: dict) -> None:
    """A benchmark's ``on_step``: one line per request."""
    say(f"run {i}/{total} ({metrics['phase']}): {metrics['new_tokens']} tokens, "
        f"TTFT {figure(metrics['ttft_ms'], unit='ms')}, decode {figure(metrics['decode_tok_s'], unit='tok/s')}"
        + (f", ran in a batch of {metrics['batch_size']}" if metrics.get("batch_size", 1) > 1 else ""))


# Streaming an answer ---------------------------------------------------------------------------------------


def answer(request, stream: bool):
    """The request's result, its text printed as it streams when ``stream``; Ctrl-C stops generation."""
    try:
        return _stream(request) if stream else request.result()
    except KeyboardInterrupt:
        request.stop()  # end generation after the current token, so that closing the engine is quick
        raise


def _stream(request):
    shown = ""
    for event in request:
        print(event.text, end="", flush=True)
        shown += event.text
    result = request.result()
    if result.text.startswith(shown):  # the tail of an incomplete UTF-8 sequence held back by the stream
        print(result.text[len(shown):], end="")
    print()
    return result


# generate ---------------------------------------------------------------------------------------------------


def generate_report(model, settings, result) -> dict:
    """The JSON object of ``generate --json`` for an answer from the model (keys as in DESIGN.md, and a few more).

    Args:
        model: the ``LoadedModel`` that answered.
        settings: its generation settings.
        result: the ``GenerationResult``.
    """
    return {
        "recipe": model.recipe.to_dict(),
        "recipe_key": result.recipe_key,
        "text": result.text,
        **result.metrics(),  # prompt_tokens, new_tokens, ttft_ms, tpot_ms, e2e_ms, decode_tok_s, cache, ...
        "model": model.stats.to_dict(),
        "settings": asdict(settings),
        "notes": list(model.notes),
        "cache_hit": None,
    }


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


def metrics_line(result, backend: str) -> str:
    """One human line: tokens, TTFT, TPOT, decode tok/s, E2E, cache, backend."""
    m = result.metrics()
    parts = [f"{m['prompt_tokens']} prompt + {m['new_tokens']} new tokens", f"TTFT {figure(m['ttft_ms'], unit='ms')}"]
    parts += [f"TPOT {figure(m['tpot_ms'], unit='ms')}", f"decode {figure(m['decode_tok_s'], unit='tok/s')}"]
    parts += [f"E2E {figure(m['e2e_ms'], unit='ms')}", f"cache {m['cache']}", backend]
    return " · ".join(parts)


def hit_line(result, hit) -> str:
    """One human line for a cached answer: kind, lookup time, what it saved, tokens."""
    parts = [f"cache {hit.kind} hit", f"lookup {hit.lookup_s * 1000:.1f} ms",
             f"the model took {hit.entry.get('e2e_s') or 0:.2f} s", f"{result.new_tokens} tokens replayed"]
    if hit.kind == "semantic":
        parts.append(f"matched {hit.matched_question!r} (similarity {hit.similarity:.3f})")
    return " · ".join(parts)


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


# bench ------------------------------------------------------------------------------------------------------

_HEADER = ("recipe", "batch", "TTFT p50 ms", "TTFT p90 ms", "TPOT p50 ms", "decode tok/s med [min-max]",
           "throughput tok/s", "peak RSS MB", "weight MB", "backend")
_LOAD_HEADER = ("recipe", "scheduler", "batch", "users", "ran in batches of (mean)", "TTFT p50 ms", "TTFT p99 ms",
                "E2E p50 ms", "E2E p99 ms", "TPOT p50 ms", "throughput tok/s", "peak RSS MB")


def bench_table(entries: list[dict]) -> str:
    """A plain-text table of bench entries: one row per recipe and batch size."""
    if any(e.get("concurrency", 1) > 1 or e.get("scheduler", "static") != "static" for e in entries):
        return columns([_LOAD_HEADER, *[_load_row(e) for e in entries]])
    header, rows = _HEADER, [_table_row(e) for e in entries]
    if any("quality" in e for e in entries):
        header += ("perplexity", "QA accuracy")
        rows = [row + quality_cells(e.get("quality")) for row, e in zip(rows, entries)]
    return columns([header, *rows])


def _load_row(entry: dict) -> tuple[str, ...]:
    """A row of a sweep under load: per-request latency next to aggregate throughput."""
    return (
        entry["label"], entry.get("scheduler", "static"), str(entry["batch_size"]), str(entry.get("concurrency", 1)),
        figure((entry.get("batches") or {}).get("mean")),
        figure(entry["ttft_ms"]["p50"]), figure(entry["ttft_ms"]["p99"]),
        figure(entry["e2e_ms"]["p50"]), figure(entry["e2e_ms"]["p99"]),
        figure(entry["tpot_ms"]["p50"], 2), figure(entry["throughput_tok_s"]), figure(entry["peak_rss_mb"], 0),
    )


def _table_row(entry: dict) -> tuple[str, ...]:
    decode = entry["decode_tok_s"]
    return (
        entry["label"],
        str(entry["batch_size"]),
        figure(entry["ttft_ms"]["p50"]),
        figure(entry["ttft_ms"]["p90"]),
        figure(entry["tpot_ms"]["p50"], 2),
        f"{figure(decode['median'])} [{figure(decode['min'])}-{figure(decode['max'])}]",
        figure(entry["throughput_tok_s"]),
        figure(entry["peak_rss_mb"], 0),
        figure(entry["model"]["weight_bytes"] / 2**20),
        entry["model"]["backend"],
    )


def columns(rows: list[tuple[str, ...]]) -> str:
    """Rows of cells as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def quality_cells(q: dict | None) -> tuple[str, str]:
    """Perplexity and QA accuracy as two cells, each with its 95% interval where it was measured."""
    if not q:
        return ("n/a", "n/a")
    return (_with_interval(q["perplexity"], q.get("perplexity_ci"), ".2f"), qa_cell(q))


def qa_cell(q: dict, prefix: str = "") -> str:
    """``7/20 (35%, 15-59%)``: correct of asked, the share and its 95% interval; "–" when not measured."""
    share = q.get(f"{prefix}qa_accuracy")
    if share is None:
        return "–"
    ci = q.get(f"{prefix}qa_accuracy_ci")
    interval = f", {ci[0]:.0%}-{ci[1]:.0%}" if ci else ""
    return f"{q[f'{prefix}qa_correct']}/{q[f'{prefix}qa_n']} ({share:.0%}{interval})"


def _with_interval(value, ci, fmt: str) -> str:
    if value is None:
        return "–"
    return f"{value:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "")


# eval and distill -------------------------------------------------------------------------------------------


def eval_table(report: dict) -> str:
    """Recipe and baseline side by side: perplexity, agreement, QA accuracy (dev, held-out), KL divergence, each
    with its 95% interval."""
    heldout = report.get("heldout_qa_accuracy") is not None
    rows = [("", "perplexity", "agreement", "QA accuracy", *(("held-out QA",) if heldout else ()), "KL", "recipe")]
    for who, m in (("recipe", report), ("baseline", report["baseline"])):
        rows.append((who, _with_interval(m["perplexity"], m.get("perplexity_ci"), ".2f"),
                     _with_interval(m["agreement"], m.get("agreement_ci"), ".1%"), qa_cell(m),
                     *((qa_cell(m, "heldout_"),) if heldout else ()), _with_interval(m.get("kl"), m.get("kl_ci"), ".3f"),
                     m["label"]))
    note = (f"perplexity on {report['eval_tokens']} tokens of the evaluation text; agreement on "
            f"{report['settings']['agreement_prompts']} prompts x {report['settings']['agreement_tokens']} "
            "greedy tokens; [95% intervals]")
    if report.get("kl") is not None and report.get("kl_tokens"):
        note += f"; KL(baseline || recipe) in nats per token on {report['kl_tokens']} held-out tokens"
    elif report.get("kl_problem") and "kl" in report["settings"].get("sets", ()):
        note += f"; no KL: {report['kl_problem']}"
    return columns(rows) + "\n" + note


def distill_text(report: dict) -> str:
    """The student's name, how it was trained, and its card: quality beside the teacher's and the unhealed
    student's, and its speed-up on each runtime."""
    steps = f"{report['steps']} step{'s' if report['steps'] != 1 else ''}"
    trained = report.get("train_seconds")
    lines = [
        f"{report['name']}: {steps}, loss {_loss(report['first_loss'])} -> {_loss(report['loss'])}, "
        f"{human_count(report['params'])} parameters (teacher {human_count(report['teacher_params'])}), "
        f"{duration(trained if trained is not None else report['seconds'])} of training",
        f"use it with: {report['variant_flag']}",
    ]
    evals = report.get("evals") or []
    if len(evals) >= 2:
        teacher = report.get("teacher_heldout_ppl")
        lines.append(f"held-out perplexity: {evals[0]['heldout_ppl']:.2f} unhealed -> {evals[-1]['heldout_ppl']:.2f} "
                     f"healed" + (f" (teacher {teacher:.2f})" if teacher else ""))
    if report["student"] and report["teacher"]:
        rows = [("", "perplexity", "QA accuracy", "agreement")]
        for who in ("student", "unhealed", "teacher"):
            if report.get(who):
                agree = report[who].get("agreement")
                rows.append((who,) + quality_cells(report[who]) + ("n/a" if agree is None else f"{agree:.2f}",))
        lines += ["", columns(rows)]
    card = report.get("card")
    if card:
        lines.append("")
        for runtime, speed in card["speed"].items():
            if "error" in speed:
                lines.append(f"speed-up on {runtime}: not measured ({speed['error']})")
            else:
                lines.append(f"speed-up on {runtime}: {speed['speedup']:.2f}x ({speed['student_tok_s']:.1f} vs "
                             f"{speed['teacher_tok_s']:.1f} decode tok/s, {card['machine']})")
    return "\n".join(lines)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


class StopOnInterrupt:
    """The ``stop`` callable of a long run (training, a sweep): the first Ctrl-C makes it return True and says
    ``message`` (the run then ends cleanly); a second Ctrl-C raises KeyboardInterrupt as usual."""

    def __init__(self, message: str):
        self.message = message
        self.requested = False

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
        os.write(2, f"\n{PROG}: {self.message}\n".encode())


def strict_json(value):
    """``value`` with every infinite or NaN float written as the string "inf", "-inf" or "nan": strict JSON has no
    such numbers (Python writes them as ``Infinity``, which jq and most parsers reject)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
