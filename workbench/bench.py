"""Benchmarks: fixed prompts through the engine, warm-up excluded, one summary per recipe and batch size.

Used by ``workbench bench`` and the Benchmark page. Requests go through ``Engine.submit`` exactly as the
app's do, so these are the figures a user sees. Every run generates exactly ``max_new_tokens`` tokens (EOS
is ignored), so runs of different recipes do the same amount of work.

Load comes in one of two modes. Closed (the default): simulated users; each of ``concurrency`` threads sends a
request, waits for its whole answer, then sends the next. With more users than the batch size, requests queue;
that wait is part of their TTFT and E2E, as it would be for a person. Poisson (``request_rate``): open-loop
arrivals at a rate, at most ``concurrency`` in flight, as vLLM's serving benchmark sends them (``workbench.load``
says how requests are scheduled, timed, bounded and counted toward goodput). Throughput is all new tokens / the
round's wall time. Every entry carries a ``load`` object (``LoadRun.report``) in either mode.

Against a server (the remote runtime) every request's prompt ends with a tag of its own, so that no response
cache on the server can answer it (its hits would pass for model latency); each greedy request streams as soon
as it is sent, in either mode (the engine's continuous scheduler, one stream per request), never held back by
the client's batch size.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from . import devices, load, runtimes, store
from .latency import itl
from .load import DEFAULT_GRACE_S, DEFAULT_NUM_REQUESTS, LoadRun, Slo, summary_ms
from .progress import OnStage, OnStep
from .recipe import REMOTE, GenerationSettings, Recipe, RecipeError, check_batch_size
from .runtimes.base import LoadedModel
from .serving.engine import Engine
from .serving.options import DEFAULT_BATCH_WINDOW_S, check_scheduler
from .serving.results import Recorder

Evaluate = Callable[[LoadedModel], dict]  # built model -> quality figures (e.g. perplexity, qa_accuracy)

# Fixed prompts of a few lengths, used in this order by every recipe so that recipes are compared on the
# same work. Run i uses PROMPTS[i % len(PROMPTS)].
PROMPTS = (
    "What is the capital of France?",
    "Explain in a few sentences why the first token of an answer takes longer than the ones after it.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "List five ways to make a small language model answer faster on a laptop, with one line on each.",
    "Summarize the difference between latency and throughput for someone who runs a web service.",
)

class BenchError(RuntimeError):
    """A benchmark run failed inside the engine; the message carries the engine's error."""


class BenchStopped(RuntimeError):
    """The sweep was asked to stop (``stop()`` returned True); what was measured before is discarded."""


MAX_CONCURRENCY = 256


def check_concurrency(concurrency: int) -> None:
    """Raise RecipeError unless the number of simulated users is from 1 to MAX_CONCURRENCY."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or not 1 <= concurrency <= MAX_CONCURRENCY:
        raise RecipeError("concurrency",
                          f"concurrency must be an integer from 1 to {MAX_CONCURRENCY}, got {concurrency!r}")


def check_runs(runs: int, warmup: int) -> None:
    """Raise RecipeError unless there is at least one measured run and no negative warm-up."""
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise RecipeError("runs", f"runs must be an integer of 1 or more, got {runs!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise RecipeError("warmup", f"warm-up runs must be an integer of 0 or more, got {warmup!r}")


def check_load(request_rate: float | None, num_requests: int | None, duration_s: float | None,
               slo: Slo | None) -> int | None:
    """Raise RecipeError (naming the flag) for a bad load setting; returns the number of requests per rate
    (``DEFAULT_NUM_REQUESTS`` when not given; None in the closed mode, where users send ``runs`` each)."""
    if duration_s is not None:
        load.check_duration(duration_s)
    if slo is not None and not isinstance(slo, Slo):
        raise RecipeError("ttft-slo-ms", f"objectives must be a bench.Slo, got {type(slo).__name__}")
    if request_rate is None:
        if num_requests is not None:
            raise RecipeError("num-requests", "the number of requests applies with a request rate "
                                              "(--request-rate); without one, each user sends --runs requests")
        return None
    load.check_request_rate(request_rate)
    return load.check_num_requests(DEFAULT_NUM_REQUESTS if num_requests is None else num_requests)


def run_bench(
    recipe: Recipe,
    settings: GenerationSettings,
    runs: int = 5,
    warmup: int = 1,
    on_step: OnStep | None = None,
    *,
    model: LoadedModel | None = None,
    history: Recorder | None = None,
    trust_remote_code: bool = False,
    on_build: OnStage | None = None,
    evaluate: Evaluate | None = None,
    concurrency: int | None = None,
    scheduler: str = "static",
    batch_window_s: float | None = None,
    stop: Callable[[], bool] | None = None,
    request_rate: float | None = None,
    num_requests: int | None = None,
    duration_s: float | None = None,
    slo: Slo | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> dict:
    """Build a recipe's model and measure it on the fixed prompts, under closed-loop users or Poisson arrivals.

    The closed mode (``request_rate`` None): ``concurrency`` users, each sending ``runs`` requests one after
    another. The Poisson mode (``request_rate`` given): ``num_requests`` requests arriving at that rate (seeded
    by ``settings.seed``, 0 when unset, so that a run repeats), at most ``concurrency`` in flight; see
    ``workbench.load``.

    Args:
        recipe: what to build and measure; its ``batch_size`` is how many requests the engine runs together.
        settings: generation settings; ``ignore_eos`` is forced on so that every run generates exactly
            ``max_new_tokens`` tokens.
        runs: measured requests per user (at least 1); ``runs * concurrency`` in all (closed mode only).
        warmup: requests per user before the measured ones, excluded from every figure and from the history;
            in the Poisson mode, ``warmup`` requests one after another before the arrivals start.
        on_step: progress callback ``(requests done, requests in total, metrics)``; metrics are the request's
            ``GenerationResult.metrics()`` plus ``phase`` ("warmup" or "measure"). Called from the users'
            (or the requests' waiting) threads, one call at a time. In the Poisson mode the total counts every
            scheduled request; a duration bound can end the run before it is reached.
        model: an already built model of this recipe (any batch size: the weights serve every one), to skip
            the build.
        history: where the measured runs are recorded (origin "bench"), e.g. the request history, or None.
        trust_remote_code: allow hub model code (opt-in), passed to the build.
        on_build: build progress callback ``(stage, fraction)``.
        evaluate: called with the built model after the timed runs (so that memory and time figures are
            the runs' alone); what it returns is the entry's ``quality``.
        concurrency: closed mode: simulated users, each sending its next request as soon as its previous answer
            ends (default 1). Poisson mode: the most requests in flight (vLLM's ``--max-concurrency``; default
            no cap).
        scheduler: the engine's scheduler, "static" or "continuous" (a server's Poisson load always streams
            each request at once, as "continuous").
        batch_window_s: how long the engine waits to fill a batch (default: the engine's).
        stop: polled before every request; once it returns True the run ends with ``BenchStopped``.
        request_rate: requests per second of the Poisson mode (``math.inf``: all at once); None: closed mode.
        num_requests: requests of the Poisson mode (default ``load.DEFAULT_NUM_REQUESTS``); the closed mode
            refuses it (its count is ``runs * concurrency``).
        duration_s: no request is sent later than this many seconds after the measured round starts (either
            mode); in the Poisson mode those still in flight ``grace_s`` later are stopped and counted as cut.
        slo: TTFT / TPOT objectives; the entry's ``load.goodput`` counts the finished requests meeting them.
        grace_s: see ``duration_s``.

    Returns:
        One entry: the recipe, TTFT / TPOT / E2E / ITL / queue summaries in ms (of finished requests), decode
        tok/s median, min and max, throughput, memory, the batch sizes the engine ran, the model's stats, each
        measured run, and ``load``: ``mode``, ``request_rate``, ``achieved_rate``, ``concurrency``, ``requests``
        {scheduled, sent, finished, failed, cut}, ``ended_by`` ("count" | "duration" | "stop"),
        ``duration_limit_s``, ``duration_s`` (the round's wall time), ``max_in_flight``, ``request_throughput``,
        ``throughput_tok_s``, ``ttft_ms`` / ``tpot_ms`` / ``e2e_ms`` / ``itl_ms`` / ``send_wait_ms`` {n, mean,
        p50, p90, p95, p99}, ``goodput`` {ttft_slo_ms, tpot_slo_ms, requests_ok, share, req_s} (None without
        ``slo``), ``errors`` (up to 3 distinct messages of failed requests); and ``quality`` with ``evaluate``.
        TTFT and E2E count from each request's send (vLLM's start); a Poisson request's wait for a free slot
        under the cap, before its send, is its ``send_wait_ms``.

    Raises:
        RecipeError: a bad setting, naming its flag (``request-rate``, ``num-requests``, ``duration-s``,
            ``ttft-slo-ms``, ``tpot-slo-ms``, ``concurrency``, ...), before anything is built.
        BenchError: a request failed (closed mode), or none finished (Poisson mode, where failures are counted).
        BenchStopped: ``stop()`` returned True.
    """
    check_batch_size(recipe.batch_size)
    check_runs(runs, warmup)
    num_requests = check_load(request_rate, num_requests, duration_s, slo)
    if concurrency is not None or request_rate is None:
        check_concurrency(1 if concurrency is None else concurrency)
    check_scheduler(scheduler)
    if request_rate is not None and recipe.runtime == REMOTE and not settings.greedy:
        raise RecipeError("temperature", "a server's load test sends greedy requests (--temperature 0): the client's "
                                         "engine would send sampled ones one at a time")
    if model is None:
        model = runtimes.build(recipe, trust_remote_code=trust_remote_code, on_stage=on_build)
    entry = measure(model, replace(settings, ignore_eos=True), runs, warmup, on_step, history,
                    batch_size=recipe.batch_size, concurrency=concurrency, scheduler=scheduler,
                    batch_window_s=batch_window_s, stop=stop, request_rate=request_rate,
                    num_requests=num_requests, duration_s=duration_s, slo=slo, grace_s=grace_s)
    if evaluate is not None:
        entry["quality"] = evaluate(model)
    return entry


def sweep(
    recipes: Iterable[Recipe],
    batch_sizes: Iterable[int],
    settings,
    runs: int = 5,
    warmup: int = 1,
    on_step: OnStep | None = None,
    *,
    concurrency: int | None = None,
    schedulers: Iterable[str] = ("static",),
    model: LoadedModel | None = None,
    on_entry: Callable[[dict], None] | None = None,
    request_rates: Iterable[float | None] = (None,),
    **kwargs,
) -> list[dict]:
    """Benchmark every recipe at every scheduler, batch size and request rate, one after another (never concurrently).

    Each recipe is built once; its batch sizes share the built weights.

    Args:
        recipes: the recipes to measure; their own ``batch_size`` is replaced by each of ``batch_sizes``.
        batch_sizes: batch sizes to measure each recipe at; all are checked before anything is built.
        settings, runs, warmup, on_step: as in ``run_bench``; ``on_step`` counts requests across the whole
            sweep, so one progress bar covers it.
        concurrency: closed mode: simulated users, the same at every batch size so that they serve the same
            load (default: the largest batch size, enough to fill every batch). Poisson mode: the cap on requests
            in flight (default: none).
        schedulers: "static" and/or "continuous".
        model: an already built model of the (single) recipe, to skip the build.
        on_entry: called with each entry as soon as it is measured.
        request_rates: requests per second, one entry each (None: the closed mode); all checked first.
        **kwargs: passed to ``run_bench`` (history, trust_remote_code, on_build, evaluate, batch_window_s, stop,
            num_requests, duration_s, slo, grace_s).

    Returns:
        One ``run_bench`` entry per recipe, scheduler, batch size and request rate, in that order.
    """
    batch_sizes, schedulers, rates = list(batch_sizes), list(schedulers), list(request_rates)
    for batch_size in batch_sizes:
        check_batch_size(batch_size)
    for scheduler in schedulers:
        check_scheduler(scheduler)
    check_runs(runs, warmup)
    counts = {rate: check_load(rate, kwargs.get("num_requests"), kwargs.get("duration_s"), kwargs.get("slo"))
              for rate in rates}
    users = max(batch_sizes) if concurrency is None else concurrency
    check_concurrency(users)
    recipes = list(recipes)
    # Requests each entry counts in on_step's total: warm-up and measured.
    per_rate = {rate: (warmup + runs) * users if counts[rate] is None else warmup + counts[rate] for rate in rates}
    total = sum(per_rate.values()) * len(recipes) * len(schedulers) * len(batch_sizes)
    entries, offset = [], 0
    for recipe in recipes:
        built = model or runtimes.build(recipe, trust_remote_code=kwargs.get("trust_remote_code", False),
                                        on_stage=kwargs.get("on_build"))
        for scheduler in schedulers:
            for b in batch_sizes:
                for rate in rates:
                    step = None if on_step is None else (lambda i, _t, m, o=offset: on_step(o + i, total, m))
                    entry = run_bench(replace(recipe, batch_size=b), settings, runs, warmup, step, model=built,
                                      concurrency=users if rate is None else concurrency, scheduler=scheduler,
                                      request_rate=rate, **kwargs)
                    offset += per_rate[rate]
                    entries.append(entry)
                    if on_entry is not None:
                        on_entry(entry)
    return entries


def measure(model: LoadedModel, settings: GenerationSettings, runs: int, warmup: int, on_step: OnStep | None = None,
            history: Recorder | None = None, *, batch_size: int | None = None, concurrency: int | None = None,
            scheduler: str = "static", batch_window_s: float | None = None,
            stop: Callable[[], bool] | None = None, request_rate: float | None = None,
            num_requests: int | None = None, duration_s: float | None = None, slo: Slo | None = None,
            grace_s: float = DEFAULT_GRACE_S) -> dict:
    """Measure a built model through an engine of its own: a warm-up round first, then the measured round.

    Nothing else may generate with ``model`` meanwhile: its figures would be skewed, and the continuous
    scheduler switches the model's attention implementation while it runs (the app leases a shared model first).

    Args:
        model: the model to measure.
        settings: generation settings used for every run, as given.
        batch_size: the engine's batch size (default: the model's recipe's).
        runs, warmup, on_step, history, concurrency, scheduler, batch_window_s, stop, request_rate, num_requests,
            duration_s, slo, grace_s: as in ``run_bench`` (``num_requests`` None: the default count).
    """
    poisson = request_rate is not None
    if poisson and num_requests is None:
        num_requests = DEFAULT_NUM_REQUESTS
    users = 1 if poisson else concurrency or 1  # the warm-up's users; and the closed mode's
    total = warmup * users + (num_requests if poisson else runs * users)
    progress = _RequestCounter(on_step, total)
    window = DEFAULT_BATCH_WINDOW_S if batch_window_s is None else batch_window_s
    remote = model.recipe.runtime == REMOTE
    if remote and (poisson or settings.greedy):
        # A server's requests each stream at once, whatever the client's batch size (the server batches them its
        # way), so that the client never holds one back; sampled ones (closed mode only) go as the engine sends them.
        scheduler = "continuous"
    tag = uuid.uuid4().hex[:8] if remote else None
    engine = Engine(model, history=history, batch_size=batch_size, batch_window_s=window, scheduler=scheduler)
    try:
        _round(engine, settings, warmup, users, "warmup", progress, stop, tag=tag)
        _reset_peak_rss()
        if poisson:
            run = _open_round(engine, settings, request_rate, num_requests, concurrency, duration_s, grace_s,
                              progress, stop, tag)
        else:
            run = _closed_round(engine, settings, runs, users, duration_s, progress, stop, tag)
    finally:
        engine.close()
    results, wall_s = run.finished, run.wall_s
    entry = _entry(engine.recipe, model, settings, results, wall_s, warmup)
    entry.update(concurrency=concurrency if poisson else users, scheduler=scheduler, batch_window_ms=window * 1000,
                 requests=len(results), request_throughput_rps=len(results) / wall_s if wall_s > 0 else None,
                 queue_ms=summary_ms(r.queue_s for r in results),
                 batches=_batches([r.batch_size for r in results]), load=run.report(slo))
    return entry


def _closed_round(engine: Engine, settings, runs: int, users: int, duration_s: float | None,
                  progress: _RequestCounter, stop, tag: str | None) -> LoadRun:
    """The closed mode's measured round as a ``LoadRun`` (a failed request raises ``BenchError`` instead)."""
    sends: list[float] = []
    results, wall_s = _round(engine, settings, runs, users, "measure", progress, stop, tag=tag, sends=sends,
                             duration_s=duration_s)
    ended_by = "count" if len(sends) == runs * users else "duration"
    return LoadRun(mode="closed", request_rate=None, concurrency=users, scheduled=runs * users, send_times=sends,
                   finished=results, wall_s=wall_s, max_in_flight=min(users, len(sends)), duration_s=duration_s,
                   ended_by=ended_by)


def _open_round(engine: Engine, settings, rate: float, num_requests: int, cap: int | None,
                duration_s: float | None, grace_s: float, progress: _RequestCounter, stop,
                tag: str | None) -> LoadRun:
    """Poisson arrivals of ``num_requests`` requests, as ``load.drive`` sends them; failures are counted, and
    only a round in which none finished raises ``BenchError``."""
    arrivals = load.arrival_times(num_requests, rate, 0 if settings.seed is None else settings.seed)

    def send(k: int):
        return engine.submit(_prompt(k, tag), settings, origin="bench", record=True)

    sent, wall_s, most, ended_by = load.drive(send, arrivals, cap=cap, duration_s=duration_s, grace_s=grace_s,
                                              stop=stop, on_end=lambda item: progress("measure", item.result))
    if stop is not None and stop():
        raise BenchStopped("benchmark stopped")
    run = load.run_of("poisson", sent, wall_s, most, ended_by, scheduled=num_requests, request_rate=rate,
                      concurrency=cap, duration_s=duration_s)
    if not run.finished and run.failed:
        raise BenchError(f"none of the {run.sent} requests finished: {run.failed[0].error}")
    return run


def _prompt(i: int, tag: str | None) -> str:
    """Request i's prompt: PROMPTS[i % len(PROMPTS)], tagged for a server (so that no response cache answers it)."""
    prompt = PROMPTS[i % len(PROMPTS)]
    return prompt if tag is None else f"{prompt} (request {tag}-{i})"


class _RequestCounter:
    """A thread-safe request counter in front of ``on_step``."""

    def __init__(self, on_step: OnStep | None, total: int):
        self.on_step = on_step or (lambda i, total, metrics: None)
        self.total = total
        self.done = 0
        self.lock = threading.Lock()

    def __call__(self, phase: str, result) -> None:
        with self.lock:
            self.done += 1
            self.on_step(self.done, self.total, {"phase": phase, **result.metrics()})


def _round(engine: Engine, settings, per_user: int, users: int, phase: str, progress: _RequestCounter, stop=None,
           *, tag: str | None = None, sends: list[float] | None = None, duration_s: float | None = None):
    """``users`` threads, each sending ``per_user`` requests one after another; (results in finishing order, wall s).

    User u's k-th request uses PROMPTS[(k * users + u) % len(PROMPTS)], so one user asks them in order (tagged
    with ``tag``, see ``_prompt``). Each send's moment (seconds after the start) goes into ``sends``; none is
    sent later than ``duration_s`` after the start.
    """
    if per_user == 0:
        return [], 0.0
    results, failures = [], []
    lock = threading.Lock()
    start = threading.Barrier(users)
    begin = time.perf_counter()

    def user(u: int) -> None:
        try:
            start.wait()
            for k in range(per_user):
                if failures or (stop is not None and stop()):
                    return
                now = time.perf_counter() - begin
                if duration_s is not None and now > duration_s:
                    return
                if sends is not None:
                    with lock:
                        sends.append(now)
                prompt = _prompt(k * users + u, tag)
                result = engine.submit(prompt, settings, origin="bench", record=phase == "measure").result()
                if result.error:
                    raise BenchError(f"benchmark run failed: {result.error}")
                with lock:
                    results.append(result)
                progress(phase, result)
        except Exception as exc:  # raised on the caller's thread below
            failures.append(exc)
            start.abort()

    threads = [threading.Thread(target=user, args=(u,), name=f"bench-user-{u}", daemon=True) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - begin
    real = [f for f in failures if not isinstance(f, threading.BrokenBarrierError)]
    if real:
        raise real[0]
    if stop is not None and stop():
        raise BenchStopped("benchmark stopped")
    return results, wall


def _batches(sizes: list[int]) -> dict:
    """How many requests ran in generate calls of each size, and the mean size a request saw."""
    counts: dict[int, int] = {}
    for size in sizes:
        counts[size] = counts.get(size, 0) + 1
    return {"mean": statistics.fmean(sizes) if sizes else None, "max": max(sizes, default=None),
            "requests_by_size": {str(k): v for k, v in sorted(counts.items())}}


def _entry(recipe: Recipe, model: LoadedModel, settings, results: list, wall_s: float, warmup: int) -> dict:
    new_tokens = sum(r.new_tokens for r in results)
    decode = [r.decode_tok_s for r in results if r.decode_tok_s is not None]
    median_decode = statistics.median(decode) if decode else None
    return {
        "recipe": recipe.to_dict(),
        "recipe_key": recipe.key(),
        "label": recipe.label(),
        "batch_size": recipe.batch_size,
        "runs": len(results),
        "warmup": warmup,
        "max_new_tokens": settings.max_new_tokens,
        "ttft_ms": summary_ms(r.ttft_s for r in results),
        "tpot_ms": summary_ms(r.tpot_s for r in results),
        "e2e_ms": summary_ms(r.e2e_s for r in results),
        "itl_ms": summary_ms(gap for r in results for gap in itl(r.token_times)),
        "decode_tok_s": {
            "median": median_decode,
            "min": min(decode) if decode else None,
            "max": max(decode) if decode else None,
        },
        "throughput_tok_s": new_tokens / wall_s if wall_s > 0 else None,
        "new_tokens": new_tokens,
        "wall_s": wall_s,
        # gpt-fast's "bandwidth achieved": every decode step reads all weights once.
        "bandwidth_gb_s": model.stats.weight_bytes * median_decode / 1e9 if median_decode else None,
        "peak_rss_mb": devices.peak_rss_mb(),
        "rss_mb": devices.process_rss_mb(),
        "device_memory_mb": devices.device_memory_mb(recipe.device),
        "model": model.stats.to_dict(),
        "notes": list(model.notes),
        "per_run": [_run_row(r) for r in results],
    }


def _run_row(result) -> dict:
    metrics = result.metrics()
    keys = ("prompt_tokens", "new_tokens", "ttft_ms", "tpot_ms", "e2e_ms", "decode_tok_s", "finish_reason",
            "queue_ms", "batch_size")
    return {k: metrics[k] for k in keys}


def _reset_peak_rss() -> None:
    """Restart the process's peak-RSS mark (Linux), so the peak covers the measured runs only.

    Without it the peak would include loading (fp32 weights before a cast, a GGUF conversion) or an
    earlier recipe of the same sweep. Elsewhere the mark cannot be reset and stays process-wide.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


# Saved sweeps -----------------------------------------------------------------------------------------------


KEEP_SWEEPS_ENV = "WORKBENCH_SWEEPS_KEEP"
DEFAULT_KEEP_SWEEPS = 100


def sweeps_dir() -> Path:
    """``WORKBENCH_HOME/benchmarks``: one JSON file per finished sweep (its requests are in the history too)."""
    path = store.home() / "benchmarks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_sweep(report: dict) -> str:
    """Write a finished sweep (``{"settings", "runs", ..., "results": [entries]}``) and return its file's name.

    Written atomically (``store.write_file``), so a reader never sees half a file; then only the newest
    ``WORKBENCH_SWEEPS_KEEP`` sweeps (default 100) are kept. OSError when the folder cannot be written.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = f"sweep-{stamp}-{os.getpid()}-{threading.get_ident() % 10_000:04d}.json"
    store.write_file(sweeps_dir() / name, json.dumps({"saved_at": time.time(), **report}, indent=1))
    prune_sweeps()
    return name


def prune_sweeps(keep: int | None = None) -> list[str]:
    """Delete all but the newest ``keep`` saved sweeps (default: ``WORKBENCH_SWEEPS_KEEP``, 0 keeps them all), and
    temp files an interrupted save left over an hour ago. Returns the names deleted."""
    if keep is None:
        raw = os.environ.get(KEEP_SWEEPS_ENV, "")
        keep = int(raw) if raw.strip().isdigit() else DEFAULT_KEEP_SWEEPS
    folder = sweeps_dir()
    sweeps = sorted(folder.glob("sweep-*.json"), reverse=True)
    old = sweeps[keep:] if keep else []
    stale = [p for p in [*folder.glob(".sweep-*.tmp"), *folder.glob("sweep-*.tmp")] if _older_than(p, 3600)]
    for path in old + stale:
        path.unlink(missing_ok=True)
    return [p.name for p in old + stale]


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:  # renamed into place meanwhile
        return False


def load_sweeps(limit: int = 20) -> list[dict]:
    """The most recent saved sweeps, newest first, each with its ``name``; unreadable files are skipped."""
    sweeps = []
    for path in sorted(sweeps_dir().glob("sweep-*.json"), reverse=True)[:limit]:
        try:
            sweeps.append({"name": path.name, **json.loads(path.read_text())})
        except (OSError, ValueError):
            continue
    return sweeps


def tradeoff(entries: list[dict]) -> list[str]:
    """One sentence per scheduler and batch size above the smallest: throughput gained, latency paid.

    E.g. "static, batch 16: 4.9× the tokens per second of batch 1; each token 2.7× slower to come (TPOT p50);
    each request 0.27× as long from submit to last token (E2E p50, queueing included)". With more users than
    the batch size, requests queue at small batch sizes, so E2E can fall while every token comes slower.
    Entries under Poisson arrivals are compared at the same request rate ("static at 2 req/s, batch 4: ...").
    """
    lines = []
    group = lambda e: (e.get("scheduler", "static"), (e.get("load") or {}).get("request_rate"))  # noqa: E731
    for scheduler, rate in dict.fromkeys(group(e) for e in entries):
        rows = sorted((e for e in entries if group(e) == (scheduler, rate)), key=lambda e: e["batch_size"])
        if len(rows) < 2:
            continue
        base = rows[0]
        at = "" if rate is None else f" at {rate:g} req/s"
        for e in rows[1:]:
            speed = _ratio(e["throughput_tok_s"], base["throughput_tok_s"])
            e2e = _ratio(e["e2e_ms"]["p50"], base["e2e_ms"]["p50"])
            if speed is None or e2e is None:
                continue
            parts = [f"{scheduler}{at}, batch {e['batch_size']}: {_times(speed)} the tokens per second of batch "
                     f"{base['batch_size']}"]
            tpot = _ratio(e["tpot_ms"]["p50"], base["tpot_ms"]["p50"])
            if tpot is not None:
                parts.append(f"each token {_times(tpot)} {'slower' if tpot >= 1 else 'as slow'} to come (TPOT p50)")
            parts.append(f"each request {_times(e2e)} as long from submit to last token (E2E p50, queueing included)")
            lines.append("; ".join(parts) + ".")
    return lines


def _times(ratio: float) -> str:
    return f"{ratio:.1f}×" if ratio >= 0.995 else f"{ratio:.2f}×"


def _ratio(a, b) -> float | None:
    return a / b if a is not None and b else None
