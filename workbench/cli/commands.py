"""The ``workbench`` subcommands: each turns its flags into the library's objects, runs, and prints.

``generate`` answers one prompt (from the response cache when it can, without building the model), ``bench``
measures a recipe at several batch sizes, ``eval`` measures quality against the baseline, ``distill`` builds a
student, ``cache`` shows or clears the response cache, ``metrics-server`` serves the history to Prometheus.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sqlite3
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path

from .. import bench, loading, quality, runtimes, student_card
from ..formats import figure
from ..observe.history import HistoryStore
from ..observe.prometheus import HistoryFollower, PrometheusExporter
from ..optimize import distill as distillation
from ..optimize.corpus import is_corpus
from ..optimize.variants import student_key, student_name
from ..recipe import (DEFAULT_STUDENT_MINUTES, REMOTE, GenerationSettings, PruneSpec, Recipe, RecipeError, StudentSpec,
                      check_batch_size, is_url)
from ..response_cache.answers import CachedAnswers, ReplayRequest
from ..response_cache.disk import ResponseCache
from ..response_cache.keys import DEFAULT_THRESHOLD, CachePolicy
from ..serving.engine import Engine
from ..store import artifact_path, artifacts_dir
from ..serving.options import check_scheduler
from . import output
from .parser import (MODEL_SOURCES, PROG, STUDENT_FLAGS, Failed, UsageError, default, max_new_tokens_default,
                     student_dest)


# Flags -> library objects -------------------------------------------------------------------------------------


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The Recipe the flags describe (device not yet resolved); raises RecipeError naming the flag.

    ``--remote-model`` and ``--api-key-env`` belong to a server's recipe; ``workbench serve`` has an
    ``--api-key-env`` of its own (the key its clients send), which is not the recipe's.
    """
    remote = is_url(args.model) or args.runtime == REMOTE
    key_env = getattr(args, "api_key_env", None) if remote or args.command != "serve" else None
    return Recipe(
        model=args.model,
        runtime=args.runtime,
        device=args.device,
        dtype=args.dtype,
        backend=args.backend,
        prune=PruneSpec(args.prune_method, args.prune_ratio, args.prune_criterion),
        variant=args.variant,
        batch_size=args.batch_size,
        threads=args.threads,
        remote_model=getattr(args, "remote_model", "") or "",
        api_key_env=key_env or "",
    )


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    """GenerationSettings from the flags; raises RecipeError naming the flag."""
    max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else max_new_tokens_default(args.command)
    return GenerationSettings(
        max_new_tokens=max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        ignore_eos=args.command == "bench",
    )


def spec_from_args(args: argparse.Namespace) -> StudentSpec:
    """The StudentSpec the flags describe (the dataclass's defaults for flags not given)."""
    given = {field: getattr(args, student_dest(field)) for field in STUDENT_FLAGS
             if getattr(args, student_dest(field)) is not None}
    if given.get("layers_ratio", default(StudentSpec, "layers_ratio")) == 0 and not given.get("channels_ratio"):
        raise RecipeError("layers-ratio", "a student must be smaller than its teacher: set --layers-ratio or "
                                          "--channels-ratio above 0")
    try:
        return StudentSpec(**given)
    except RecipeError as exc:  # the library names its own fields; say which flags set them
        raise RecipeError("layers-ratio" if exc.field == "prune-ratio" else exc.field, str(exc)) from None


def check_buildable(recipe: Recipe) -> Recipe:
    """Every cheap check of a recipe, before anything is loaded, so a bad flag fails in a second.

    Returns the recipe with device and backend resolved. Raises RecipeError or ModelSourceError.
    """
    resolved = runtimes.check(recipe)
    check_batch_size(resolved.batch_size)
    if resolved.runtime == REMOTE:
        return resolved  # the server was asked for its models by the check
    try:
        loading.resolve_source(resolved.model)
    except loading.ModelSourceError as exc:
        raise loading.ModelSourceError(f"{exc}; {MODEL_SOURCES}") from None
    return resolved


def history() -> HistoryStore | None:
    """The request history, or None (with a warning) if it cannot be opened: answers matter more. A history
    that opened with a problem (moved aside, locked, read-only) says so."""
    try:
        store = HistoryStore()
    except (OSError, sqlite3.Error) as exc:
        output.warn(f"request history not recorded: {exc}")
        return None
    said_problem(store)
    return store


def said_problem(store: HistoryStore | None) -> None:
    """Warn of the history's latest problem, once."""
    if store is not None and store.problem:
        output.warn_once(store.problem)


# generate ---------------------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> int:
    """``workbench generate``: answer one prompt (from the response cache when it can, without building the
    model), print the answer and its metrics."""
    if not args.prompt.strip():
        raise UsageError("--prompt: the prompt is empty; give the text to answer")
    settings = settings_from_args(args)
    recipe = check_buildable(recipe_from_args(args))
    messages = [{"role": "user", "content": args.prompt}]
    answers = _cached_answers(args, settings)
    hit = answers.lookup(recipe, messages, settings)
    if answers.notice:
        output.warn(answers.notice)
    if hit is not None and hit.entry.get("model"):
        result = output.answer(ReplayRequest(hit, recipe, settings, "cli", history()), stream=not args.json)
        print(json.dumps(output.hit_report(recipe, settings, result, hit), indent=2) if args.json
              else f"\n[{output.hit_line(result, hit)}]")
        return 0
    model = runtimes.build(recipe, trust_remote_code=args.trust_remote_code, on_stage=output.print_build_stage)
    store = history()
    engine = Engine(model, store)
    try:
        request = answers.ask(engine, messages, settings, "cli", lookup=False)
        result = output.answer(request, stream=not args.json)
    finally:
        engine.close()
        model.close()
    said_problem(store)  # this answer's row may not have been written
    if result.error and not result.cut:
        raise Failed(f"generation failed: {result.error}")
    report = output.generate_report(model, settings, result)  # a server's answer carries its network split
    if result.cut:
        report["error"] = result.error
    print(json.dumps(report, indent=2) if args.json else f"\n[{output.metrics_line(result, model.stats.backend)}]"
          + network_text(result))
    if result.cut:  # the partial answer and its figures are printed above, marked as cut
        raise Failed(f"generation failed: {result.error}")
    return 0


def network_text(result) -> str:
    """The network split of a server's answer as one more human line ("" for a model run here)."""
    net = result.network
    if net is None:
        return ""
    ms = lambda key: "n/a" if net.get(key) is None else f"{net[key]:.1f} ms"  # noqa: E731
    parts = [f"connect {ms('connect_ms')}{' (kept)' if net.get('reused_connection') else ''}",
             f"headers {ms('headers_ms')}", f"first chunk {ms('first_chunk_ms')}"]
    if net.get("server_ms") is None:
        parts.append("the server reports no timings")
    else:
        queued = "" if net.get("server_queue_ms") is None else f", queue {ms('server_queue_ms')}"
        parts += [f"server {ms('server_ms')} (prefill {ms('server_prefill_ms')}{queued})",
                  f"network {ms('network_ms')}"]
    if result.per_chunk:
        parts.append(f"{net.get('chunks', result.new_tokens)} chunks counted as tokens (no usage report)")
    if result.cut:
        parts.append("CUT mid-answer")
    return "\n[network: " + " · ".join(parts) + "]"


def _cached_answers(args: argparse.Namespace, settings: GenerationSettings) -> CachedAnswers:
    """How ``generate`` uses the response cache, from its flags; warnings go to stderr."""
    policy = CachePolicy(
        enabled=not args.no_cache, semantic=args.semantic, cache_sampled=args.cache_sampled, ttl_s=args.cache_ttl,
        threshold=args.similarity if args.similarity is not None else DEFAULT_THRESHOLD,
    )
    if not policy.applies_to(settings):
        return CachedAnswers(None, policy)
    responses = ResponseCache()
    if responses.problem:
        output.warn(responses.problem)
    return CachedAnswers(responses if responses.available else None, policy)


# cache ------------------------------------------------------------------------------------------------------


def cmd_cache(args: argparse.Namespace) -> int:
    """``workbench cache stats|clear``: the response cache's entries, size, hit rate and time saved; or empty it."""
    responses = ResponseCache()
    if responses.problem:
        output.warn(responses.problem)
    if args.action == "clear":
        removed = responses.clear()
        report = {"cleared": removed, **responses.stats()}
        print(json.dumps(report, indent=2) if args.json else f"removed {removed} cached answers from "
                                                              f"{report['directory']}")
    else:
        report = responses.stats()
        print(json.dumps(report, indent=2) if args.json else output.cache_stats_text(report))
    status = 0 if responses.available else 1
    responses.close()
    return status


# bench ------------------------------------------------------------------------------------------------------


def cmd_bench(args: argparse.Namespace) -> int:
    """``workbench bench``: measure the recipe at each batch size (and request rate); print a table or JSON."""
    settings = settings_from_args(args)
    rates = args.request_rate or [None]
    slo = None
    if args.ttft_slo_ms is not None or args.tpot_slo_ms is not None:
        slo = bench.Slo(ttft_ms=args.ttft_slo_ms, tpot_ms=args.tpot_slo_ms)
    for rate in rates:  # a bad load flag fails before the server is asked or anything is built
        bench.check_load(rate, args.num_requests, args.duration_s, slo)
    recipe = check_buildable(recipe_from_args(args))
    if args.eval and recipe.runtime == REMOTE:
        raise UsageError(f"--eval: perplexity is {REMOTE_NO_PERPLEXITY}; run workbench eval on the server for its QA "
                         "accuracy")
    batch_sizes = args.batch_sizes or [recipe.batch_size]
    for batch_size in batch_sizes:
        check_batch_size(batch_size, flag="batch-sizes")
    for scheduler in args.schedulers:
        check_scheduler(scheduler, flag="schedulers")
    poisson = args.request_rate is not None
    concurrency = args.concurrency if poisson else args.concurrency or max(batch_sizes)
    if concurrency is not None:
        bench.check_concurrency(concurrency)
    if poisson and recipe.runtime == REMOTE and not settings.greedy:
        raise RecipeError("temperature", "a server's load test sends greedy requests (--temperature 0): the "
                                         "client's engine would send sampled ones one at a time")
    window_s = None if args.batch_window_ms is None else args.batch_window_ms / 1000
    evaluate = None
    if args.eval:
        def evaluate(model):
            return quality_of(model, args.max_eval_tokens, args.qa_limit, output.StepPrinter("eval"))

    try:
        entries = bench.sweep(
            [recipe], batch_sizes, settings, args.runs, args.warmup, output.print_run,
            history=history(), trust_remote_code=args.trust_remote_code, on_build=output.print_build_stage,
            evaluate=evaluate, concurrency=concurrency, schedulers=args.schedulers, batch_window_s=window_s,
            request_rates=rates, num_requests=args.num_requests, duration_s=args.duration_s, slo=slo,
        )
    except bench.BenchError as exc:
        raise Failed(str(exc)) from None
    report = {"settings": asdict(settings), "runs": args.runs, "warmup": args.warmup,
              "batch_sizes": batch_sizes, "concurrency": concurrency, "schedulers": args.schedulers,
              "mode": "poisson" if poisson else "closed", "request_rates": args.request_rate,
              "num_requests": entries[0]["load"]["requests"]["scheduled"] if poisson else None,
              "duration_s": args.duration_s, "slo": None if slo is None else asdict(slo), "results": entries}
    if args.eval:
        report["quality_settings"] = _quality_settings(args)
    if len(entries) > 1 or poisson or concurrency > 1:
        try:
            bench.save_sweep(report)  # the Benchmark page lists it among the earlier sweeps
        except OSError:
            pass
    if args.json:
        print(json.dumps(output.strict_json(report), indent=2, allow_nan=False))  # --request-rate inf: "inf"
    else:
        print(load_table(entries) if poisson or slo else output.bench_table(entries))
    return 0


def load_table(entries: list[dict]) -> str:
    """One row per entry of a load test: rate asked and achieved, requests, TTFT and TPOT p50 / p99 (ms),
    tokens per second and goodput; the recipe, scheduler and batch size where the entries differ in them."""
    which = [key for key in ("label", "scheduler", "batch_size") if len({str(e.get(key)) for e in entries}) > 1]
    header = (*which, "rate", "achieved", "sent", "finished", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99",
              "tok/s", "req/s", "goodput")
    rows = [header]
    for e in entries:
        lo = e["load"]
        requests = lo["requests"]
        rate = "closed" if lo["request_rate"] is None else f"{lo['request_rate']:g}/s"
        finished = f"{requests['finished']}" + "".join(f" ({requests[k]} {k})" for k in ("failed", "cut")
                                                     if requests[k])
        rows.append((*(str(e.get(key)) for key in which), rate, figure(lo["achieved_rate"], 2),
                     str(requests["sent"]), finished,
                     figure(lo["ttft_ms"]["p50"]), figure(lo["ttft_ms"]["p99"]),
                     figure(lo["tpot_ms"]["p50"], 2), figure(lo["tpot_ms"]["p99"], 2),
                     figure(lo["throughput_tok_s"]), figure(lo["request_throughput"], 2),
                     goodput_cell(lo["goodput"], requests["finished"])))
    return output.columns(rows)


def goodput_cell(goodput: dict | None, finished: int) -> str:
    """``9/12 (75%, 1.20 req/s)``: requests meeting the objectives of those finished; "–" without objectives."""
    if goodput is None:
        return "–"
    share = "n/a" if goodput["share"] is None else f"{goodput['share']:.0%}"
    return f"{goodput['requests_ok']}/{finished} ({share}, {figure(goodput['req_s'], 2)} req/s)"


# eval -------------------------------------------------------------------------------------------------------

QUALITY_KEYS = ("perplexity", "perplexity_ci", "qa_accuracy", "qa_accuracy_ci", "qa_correct", "qa_n",
                "heldout_qa_accuracy", "heldout_qa_accuracy_ci", "heldout_qa_correct", "heldout_qa_n", "eval_tokens")


def quality_of(model, max_eval_tokens: int | None, qa_limit: int | None, on_step=None,
               sets: tuple[str, ...] = ("dev",)) -> dict:
    """Perplexity and QA accuracy of one built model (no baseline), each with its 95% interval:
    ``{perplexity, perplexity_ci, qa_accuracy, qa_accuracy_ci, qa_correct, qa_n, heldout_qa_…, eval_tokens}``
    (the held-out figures None unless ``sets`` holds "heldout"). ``qa_limit`` applies to both QA sets."""
    items = quality.load_qa()[:qa_limit] if qa_limit else None
    heldout = quality.load_qa("heldout")[:qa_limit] if qa_limit and "heldout" in sets else None
    qa_sets = tuple(name for name in sets if name in ("dev", "heldout"))
    report = quality.evaluate(model, None, max_tokens=max_eval_tokens, qa=items, heldout=heldout, sets=qa_sets,
                              on_step=on_step)
    return {k: report.get(k) for k in QUALITY_KEYS}


def _quality_settings(args: argparse.Namespace) -> dict:
    return {"max_eval_tokens": args.max_eval_tokens, "qa_limit": args.qa_limit}


def cmd_eval(args: argparse.Namespace) -> int:
    """``workbench eval``: perplexity, agreement with the baseline recipe and QA accuracy, of both.

    The baseline is built and measured first, then freed, then the recipe: never two models in memory.
    A recipe that is its own baseline is measured once (agreement 1.0).
    """
    recipe = check_buildable(recipe_from_args(args))
    if recipe.runtime == REMOTE:
        return _eval_remote(recipe, args)
    baseline = recipe.baseline()
    check_buildable(baseline)
    prompts = quality.load_prompts()
    start = time.perf_counter()
    measured, reference, kl = {}, None, {"kl": None, "ci": None, "tokens": None, "problem": "not asked for"}
    for who, r in ([("recipe", recipe)] if recipe == baseline else [("baseline", baseline), ("recipe", recipe)]):
        model = runtimes.build(r, trust_remote_code=args.trust_remote_code, on_stage=output.build_stages(who))
        progress = output.StepPrinter(who)
        measured[who] = _eval_one(model, args, prompts, progress)
        if "kl" in args.sets and who == "baseline":  # its distributions, kept once the model is freed
            reference = quality.kl_reference(model, on_step=lambda i, n, m: progress(i, n, {"stage": "kl"}))
        elif reference is not None:
            kl = quality.kl_divergence(model, reference,
                                       on_step=lambda i, n, m: progress(i, n, {"stage": "kl", **m}))
        model.close()
        del model
        gc.collect()  # free this model before the next one is built: never two in memory
    own = measured["recipe"]
    base = measured.get("baseline", own)
    if base is own:
        kl = {"kl": 0.0, "ci": None, "tokens": None, "problem": None} if "kl" in args.sets else kl
    report = {
        **_without_tokens(own),
        "agreement": quality.agreement(own["tokens"], base["tokens"]) if base is not own else 1.0,
        "agreement_ci": quality.agreement_interval(own["tokens"], base["tokens"]) if base is not own else None,
        "kl": kl["kl"], "kl_ci": kl["ci"], "kl_tokens": kl["tokens"], "kl_problem": kl["problem"],
        "baseline": {**_without_tokens(base), "agreement": 1.0, "kl": 0.0},
        "settings": {**_quality_settings(args), "agreement_tokens": args.agreement_tokens,
                     "agreement_prompts": len(prompts), "sets": list(args.sets)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2) if args.json else output.eval_table(report))
    return 0


REMOTE_NO_PERPLEXITY = ("not available for a remote server: an OpenAI-compatible server gives no "
                        "log-probabilities of a given text")


def _eval_remote(recipe: Recipe, args: argparse.Namespace) -> int:
    """``workbench eval`` of a server: QA accuracy from its greedy answers; perplexity, agreement and KL need
    token probabilities or a local baseline, which a server does not give: each is None with the reason."""
    start = time.perf_counter()
    model = runtimes.build(recipe, on_stage=output.build_stages("recipe"))
    progress = output.StepPrinter("recipe")
    try:
        sets = {name: quality.load_qa(name)[:args.qa_limit] if args.qa_limit else quality.load_qa(name)
                for name in ("dev", "heldout") if name in args.sets}
        measured = {name: quality.qa_accuracy(model, items, on_step=progress) for name, items in sets.items()}
    except runtimes.RemoteError as exc:
        raise Failed(f"the server failed while answering the QA questions: {exc}") from None
    finally:
        model.close()
    dev, held = measured.get("dev"), measured.get("heldout")
    report = {
        "recipe": recipe.to_dict(), "recipe_key": recipe.key(), "label": recipe.label(),
        "perplexity": None, "perplexity_ci": None, "perplexity_problem": REMOTE_NO_PERPLEXITY,
        "qa_accuracy": dev and dev["accuracy"], "qa_accuracy_ci": dev and dev["ci"],
        "qa_correct": dev and dev["correct"], "qa_n": dev["n"] if dev else 0,
        "heldout_qa_accuracy": held and held["accuracy"], "heldout_qa_accuracy_ci": held and held["ci"],
        "heldout_qa_correct": held and held["correct"], "heldout_qa_n": held["n"] if held else 0,
        "eval_tokens": None,
        "agreement": None, "agreement_ci": None,
        "agreement_problem": "no local baseline: a server's recipe is its own (compare it with a local recipe)",
        "kl": None, "kl_ci": None, "kl_tokens": None, "kl_problem": REMOTE_NO_PERPLEXITY,
        "baseline": None, "model": model.stats.to_dict(),
        "settings": {**_quality_settings(args), "sets": list(args.sets)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    lines = [recipe.label(), f"perplexity: {REMOTE_NO_PERPLEXITY}"]
    for name, figures in (("QA accuracy", dev), ("held-out QA accuracy", held)):
        if figures:
            low, high = figures["ci"] or (None, None)
            interval = "" if low is None else f" [{low:.1%}, {high:.1%}]"
            lines.append(f"{name}: {figures['accuracy']:.1%}{interval} ({figures['correct']}/{figures['n']})")
    lines.append(f"agreement: {report['agreement_problem']}")
    print("\n".join(lines))
    return 0


def _eval_one(model, args: argparse.Namespace, prompts: list[str], progress: output.StepPrinter) -> dict:
    """Quality of one built model, plus its greedy tokens on the agreement prompts."""
    measured = quality_of(model, args.max_eval_tokens, args.qa_limit, progress, tuple(args.sets))
    tokens = quality.greedy_tokens(model, prompts, args.agreement_tokens,
                                   on_step=lambda i, n, m: progress(i, n, {"stage": "agreement", **m}))
    recipe = model.recipe
    return {"recipe": recipe.to_dict(), "recipe_key": recipe.key(), "label": recipe.label(), **measured,
            "model": model.stats.to_dict(), "tokens": tokens}


def _without_tokens(measured: dict) -> dict:
    return {k: v for k, v in measured.items() if k != "tokens"}


# distill ----------------------------------------------------------------------------------------------------


def cmd_distill(args: argparse.Namespace) -> int:
    """``workbench distill``: build or resume a student of --model, then measure it and its teacher.

    Ctrl-C asks the training loop to stop after the current step; it saves a checkpoint that the same
    command resumes. A second Ctrl-C quits at once (back to the last periodic checkpoint).
    """
    if args.variant != "none":
        raise UsageError("--variant: distill builds a new student of --model; leave --variant out "
                         "(give the student's name to --variant of the other commands)")
    recipe = recipe_from_args(args)
    if recipe.runtime == REMOTE:
        raise UsageError("--model: distill trains a student from a teacher's weights, here; a server's weights stay "
                         "on the server (distill a local model, then serve it with workbench serve)")
    recipe = check_buildable(recipe)
    spec = spec_from_args(args)
    goal = {"steps": args.steps} if args.steps else {"minutes": args.minutes or DEFAULT_STUDENT_MINUTES}
    name = student_name(recipe.model, spec)
    wanted = f"{args.steps} steps" if args.steps else f"{goal['minutes']:g} minutes of training"
    output.say(f"student {name} of {recipe.model}: {wanted}")
    try:
        with output.StopOnInterrupt("stopping after this step and saving a checkpoint "
                                    "(Ctrl-C again to quit without saving)") as interrupt:
            result = distillation.distill(recipe.model, spec, **goal, on_step=output.StepPrinter("distill"),
                                          stop=interrupt)
    except KeyboardInterrupt:
        output.say(f"interrupted; {_resume_hint(args)} (from its last checkpoint)")
        return 130
    except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as exc:
        damaged = damaged_corpora(student_key(recipe.model, name))
        if not damaged:
            raise
        files = " and ".join(map(str, damaged))
        raise Failed(f"{files} {'is not a training text' if len(damaged) == 1 else 'are not training texts'} the "
                     f"workbench wrote ({type(exc).__name__} reading it); delete "
                     f"{'it' if len(damaged) == 1 else 'them'} and run the same command again") from None
    stopped = interrupt.requested and not distillation.Goal(**goal).reached(result["steps"], result["train_seconds"])
    report = {**result, "requested_steps": args.steps, "requested_minutes": goal.get("minutes"), "stopped": stopped,
              "spec": asdict(spec), "student": None, "teacher": None, "unhealed": None, "card": None,
              "variant_flag": f"--variant {result['name']}"}
    if stopped:
        output.say(f"stopped at step {result['steps']}; {_resume_hint(args)}")
    if not (args.no_eval or interrupt.requested):
        card = student_card.measure_card(recipe.model, result["name"], qa_limit=args.qa_limit,
                                         max_eval_tokens=args.max_eval_tokens, agreement_tokens=args.agreement_tokens,
                                         rounds=args.speed_rounds, on_step=output.StepPrinter("card"))
        student_recipe = replace(recipe, variant=result["name"])
        for who, which in (("student", "healed"), ("unhealed", "unhealed"), ("teacher", "teacher")):
            report[who] = {"recipe": (student_recipe if who != "teacher" else recipe.baseline()).to_dict(),
                           **card["quality"][which]}
        report["card"] = card
        report["quality_settings"] = _quality_settings(args)
    print(json.dumps(report, indent=2) if args.json else output.distill_text(report))
    return 130 if interrupt.requested else 0


def damaged_corpora(key: str) -> list[Path]:
    """The student's training texts (``corpus.json``, in its work folder and in the student) that are not lists
    of token-id lists: what makes a resumed distillation fail on a file a kill or an edit damaged."""
    damaged = []
    shared = sorted(artifacts_dir().glob(".texts-*/corpus.json"))
    for path in (artifacts_dir() / f".{key}-work" / "corpus.json", artifact_path(key) / "corpus.json", *shared):
        try:
            sequences = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            damaged.append(path)
            continue
        if not is_corpus(sequences):
            damaged.append(path)
    return damaged


def _resume_hint(args: argparse.Namespace) -> str:
    return f"run the same command to resume: {PROG} {shlex.join(args.argv)}"


# metrics-server ---------------------------------------------------------------------------------------------


def cmd_metrics_server(args: argparse.Namespace) -> int:
    """``workbench metrics-server``: a Prometheus exporter fed by ``metrics.sqlite``, until Ctrl-C.

    Requests recorded by any process (the app, ``generate``, ``bench``) show up within ``--interval`` seconds.
    """
    try:
        store = HistoryStore()
    except (OSError, sqlite3.Error) as exc:
        raise Failed(f"cannot open the request history: {exc}") from None
    said_problem(store)
    exporter = PrometheusExporter()
    follower = HistoryFollower(store, exporter, from_start=not args.new_only)
    replayed = follower.poll()
    try:
        server = exporter.serve(args.port, args.host)
    except OSError as exc:
        raise Failed(f"--port: cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                     "is another exporter running? choose another --port", status=2) from None
    host, port = server.server_address[:2]
    output.say(f"serving http://{host}:{port}/metrics ({replayed} requests from {store.path}; "
               f"new ones every {args.interval:g} s); Ctrl-C stops")
    stop = threading.Event()
    try:
        follow(follower, stop, args.interval)
    except KeyboardInterrupt:
        output.say("metrics server stopped")
    finally:
        server.shutdown()
        server.server_close()
    return 0


def follow(follower: HistoryFollower, stop: threading.Event, interval_s: float) -> None:
    """Poll the history until ``stop``. Any failed read (not only the database's) is said once, until a read
    works again, and the next poll tries again: the server never stops following."""
    failing = None
    while not stop.is_set():
        try:
            follower.poll()
        except Exception as exc:
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            if why != failing:
                output.warn(f"reading the request history {follower.store.path} failed ({why}); trying again "
                            f"every {interval_s:g} s")
                failing = why
        else:
            if failing is not None:
                output.say("reading the request history works again")
                failing = None
            said_problem(follower.store)
        stop.wait(interval_s)


COMMANDS = {"generate": cmd_generate, "bench": cmd_bench, "eval": cmd_eval, "distill": cmd_distill,
            "cache": cmd_cache, "metrics-server": cmd_metrics_server}
