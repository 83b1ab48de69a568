"""The recipe frontier: a grid of recipes measured for speed and quality, stored, and their Pareto frontier.

Which recipe to ship is the fastest one that keeps quality. A sweep measures every recipe of a grid (runtimes ×
dtypes × pruning × variants) for decode tok/s, TTFT, weight bytes and peak RSS, then perplexity, QA accuracy and
agreement with the baseline. Recipes run interleaved in rounds (round 1: every recipe, round 2: every recipe, ...)
so that a machine whose speed drifts slows every recipe alike; quality is measured once, in the first round.

Importing this module loads no model library (the command line's parser reads its defaults): the runtimes,
benchmarks and quality measures are imported where a sweep runs.

Every finished round of a recipe is stored as one JSON file per recipe under ``WORKBENCH_HOME/frontier/<machine>/``,
where ``<machine>`` is a fingerprint of this machine (CPU model, cores, library versions): a re-run measures only
what is missing or stale (measured with other settings), and results of another machine (or of other library
versions) are kept apart and reported as such, never mixed into this machine's frontier.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import store
from .machine import cpu_model, library_versions, physical_cores
from .progress import OnStep
from .recipe import GenerationSettings, PruneSpec, Recipe, RecipeError

SCHEMA = 1  # of the stored records; a record of another schema is stale
DEFAULT_GRID = Path(__file__).resolve().parents[1] / "assets" / "frontier_grid.json"
GRID_ENV = "WORKBENCH_FRONTIER_GRID"  # a grid file that replaces DEFAULT_GRID as the default (page and CLI)
LIBRARIES = ("torch", "transformers", "llama_cpp_python", "torchao", "bitsandbytes")
AXES = ("runtime", "dtype", "backend", "prune", "variant")  # what a grid block may list
QUALITY_AXES = {"qa": "QA accuracy", "agreement": "agreement with the baseline"}  # the frontier's y axis, in points
DEFAULT_WITHIN = 5.0  # quality points a recipe may lose and still count as "keeping quality"


class GridError(ValueError):
    """A grid file or grid rows that cannot be read as recipes; the message says where and why."""


@dataclass(frozen=True)
class SweepSettings:
    """How each recipe is measured. Every field but ``rounds`` is part of a stored result's identity: a result
    measured with other values is stale and measured again; more rounds only add to what is stored."""

    rounds: int = 2  # interleaved rounds over all recipes; decode tok/s is the median of the rounds
    runs: int = 3  # measured requests per round
    warmup: int = 1  # requests before them, excluded
    max_new_tokens: int = 32  # every request generates exactly this many tokens
    max_eval_tokens: int | None = 1024  # perplexity on the first N tokens of the evaluation text (None = all)
    qa_limit: int | None = None  # QA accuracy on the first N questions (None = all)
    agreement_tokens: int = 32  # greedy tokens per agreement prompt compared with the baseline's
    agreement_prompts: int | None = None  # agreement on the first N prompts of assets/eval/prompts.txt (None = all)

    def __post_init__(self):
        for name in ("rounds", "runs", "max_new_tokens", "agreement_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecipeError(name.replace("_", "-"), f"{name.replace('_', ' ')} must be an integer of 1 or "
                                                          f"more, got {value!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise RecipeError("warmup", f"warm-up runs must be an integer of 0 or more, got {self.warmup!r}")
        for name in ("max_eval_tokens", "qa_limit", "agreement_prompts"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 2 - (
                    name != "max_eval_tokens")):
                raise RecipeError(name.replace("_", "-"), f"{name.replace('_', ' ')} must be a positive integer "
                                                          f"or none, got {value!r}")

    def identity(self) -> dict:
        """The fields a stored result must share to be reused (all but ``rounds``), plus the schema. Fields that
        joined later are left out while they hold their default, so that earlier results stay reusable."""
        fields_ = {k: v for k, v in asdict(self).items() if k != "rounds" and LATER_DEFAULTS.get(k, object()) != v}
        return {**fields_, "schema": SCHEMA}


LATER_DEFAULTS = {"agreement_prompts": None}


# Grid ------------------------------------------------------------------------------------------------------


def load_grid(path: str | Path | None = None, *, model: str | None = None, device: str | None = None) -> list[Recipe]:
    """The recipes of a grid file (default: ``$WORKBENCH_FRONTIER_GRID``, else assets/frontier_grid.json), in file
    order, repeats dropped.

    Args:
        path: a JSON file ``{"model", "device", "blocks": [{"runtime": [...], "dtype": [...], "backend": [...],
            "prune": [{"method", "ratio", "criterion"}], "variant": [...]}]}``; each block is the cross product of
            its lists (a missing axis takes the Recipe default; a single value may stand for a one-item list).
        model, device: override the file's model and device for every recipe.
    """
    path = Path(path) if path is not None else Path(os.environ.get(GRID_ENV) or DEFAULT_GRID)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GridError(f"grid file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(f"cannot read grid file {path}: {exc}") from None
    except ValueError as exc:
        raise GridError(f"{path} is not valid JSON: {exc}") from None
    return expand(data, model=model, device=device, where=path.name)


def expand(data: dict, *, model: str | None = None, device: str | None = None, where: str = "grid") -> list[Recipe]:
    """The recipes of a grid given as data (see ``load_grid``)."""
    if not isinstance(data, dict) or not isinstance(data.get("blocks"), list) or not data["blocks"]:
        raise GridError(f"{where}: a grid is an object with a non-empty list 'blocks'")
    model = model or data.get("model") or Recipe().model
    device = device or data.get("device") or Recipe().device
    recipes: dict[str, Recipe] = {}
    for number, block in enumerate(data["blocks"], start=1):
        if not isinstance(block, dict) or set(block) - set(AXES):
            extra = sorted(set(block) - set(AXES)) if isinstance(block, dict) else []
            raise GridError(f"{where}: block {number} must be an object with keys among {', '.join(AXES)}"
                            + (f" (not {', '.join(extra)})" if extra else ""))
        axes = [_axis(block, name) for name in AXES]
        for runtime, dtype, backend, prune, variant in itertools.product(*axes):
            try:
                spec = PruneSpec(**prune) if isinstance(prune, dict) else PruneSpec(str(prune))
                recipe = Recipe(model=model, device=device, runtime=runtime, dtype=dtype, backend=backend,
                                prune=spec, variant=variant)
            except (RecipeError, TypeError) as exc:
                raise GridError(f"{where}: block {number}: {exc}") from None
            recipes.setdefault(recipe.key(), recipe)
    return list(recipes.values())


def _axis(block: dict, name: str) -> list:
    default = {"prune": {"method": "none"}}.get(name) or next(f.default for f in fields(Recipe) if f.name == name)
    values = block.get(name, [default])
    values = values if isinstance(values, list) else [values]
    return values or [default]


def grid_rows(recipes: Iterable[Recipe]) -> list[dict]:
    """Flat rows of a grid, one per recipe (what the page's table edits)."""
    return [{"runtime": r.runtime, "dtype": r.dtype, "backend": r.backend, "prune": r.prune.method,
             "ratio": r.prune.ratio, "variant": r.variant} for r in recipes]


def recipes_from_rows(rows: Iterable[dict], model: str, device: str) -> list[Recipe]:
    """Recipes from flat rows (``grid_rows``); empty rows are skipped, a bad row raises GridError naming it."""
    out: dict[str, Recipe] = {}
    for number, row in enumerate(rows, start=1):
        if not row or not row.get("runtime") or not row.get("dtype"):
            continue
        try:
            ratio = row.get("ratio")
            spec = PruneSpec(row.get("prune") or "none", float(ratio) if ratio not in (None, "") else 0.0)
            recipe = Recipe(model=model, device=device, runtime=row["runtime"], dtype=row["dtype"],
                            backend=row.get("backend") or "auto", prune=spec, variant=row.get("variant") or "none")
        except (RecipeError, TypeError, ValueError) as exc:
            raise GridError(f"row {number}: {exc}") from None
        out.setdefault(recipe.key(), recipe)
    return list(out.values())


def check_grid(recipes: Iterable[Recipe]) -> tuple[list[Recipe], list[dict]]:
    """(runnable recipes resolved, the baseline first; skipped ``{"recipe", "label", "reason"}``), loading nothing.

    The baseline of the first recipe is added when the grid lacks it: every speed-up is measured against it.
    """
    from . import runtimes  # deferred: it loads torch

    recipes = list(recipes)
    if not recipes:
        raise GridError("the grid holds no recipe")
    runnable: dict[str, Recipe] = {}
    skipped = []
    for recipe in [recipes[0].baseline(), *recipes]:
        try:
            resolved = runtimes.check(recipe)
        except RecipeError as exc:
            skipped.append({"recipe": recipe.to_dict(), "label": recipe.label(), "reason": f"--{exc.field}: {exc}"})
            continue
        runnable.setdefault(resolved.key(), resolved)
    if not runnable or not next(iter(runnable.values())).is_baseline():
        raise GridError(f"the baseline cannot run here: {skipped[0]['reason']}")
    return list(runnable.values()), skipped


# Machine fingerprint --------------------------------------------------------------------------------------


def fingerprint() -> dict:
    """What makes figures of this machine comparable: CPU model, cores and the versions of the model libraries."""
    return {"cpu": cpu_model(), "arch": platform.machine(), "logical_cores": os.cpu_count(),
            "physical_cores": physical_cores(), "libraries": library_versions(LIBRARIES)}


def fingerprint_id(print_: dict) -> str:
    canonical = json.dumps(print_, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def describe_machine(print_: dict) -> str:
    libs = ", ".join(f"{k} {v}" for k, v in print_.get("libraries", {}).items() if v)
    return (f"{print_.get('cpu')}, {print_.get('physical_cores')} cores ({print_.get('logical_cores')} logical)"
            + (f"; {libs}" if libs else ""))


# Store ----------------------------------------------------------------------------------------------------


def frontier_dir() -> Path:
    return store.home() / "frontier"


def record_path(machine_id: str, key: str) -> Path:
    return frontier_dir() / machine_id / f"{key}.json"


def load_record(machine_id: str, key: str) -> dict | None:
    """A stored record, or None when there is none or it cannot be read (it is then measured again)."""
    try:
        record = json.loads(record_path(machine_id, key).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("recipe_key") == key else None


def save_record(record: dict) -> None:
    path = record_path(record["machine_id"], record["recipe_key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    store.write_file(path, json.dumps(record, indent=1))


def stored_machines() -> list[str]:
    try:
        return sorted(p.name for p in frontier_dir().iterdir() if p.is_dir())
    except OSError:
        return []


def machine_records(machine_id: str) -> list[dict]:
    """Every readable record stored under one machine's folder."""
    out = []
    for path in sorted((frontier_dir() / machine_id).glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("recipe_key") and record.get("rounds") is not None:
            out.append(record)
    return out


def usable(record: dict | None, settings: SweepSettings) -> dict | None:
    """The record if it was measured with these settings (so its rounds count), else None (stale or missing)."""
    if record is None or record.get("settings") != settings.identity():
        return None
    return record


# Measuring ------------------------------------------------------------------------------------------------

Measure = Callable[..., dict]  # measure(recipe, settings, *, with_quality, baseline_tokens, is_baseline, stop, progress)


def measure_recipe(recipe: Recipe, settings: SweepSettings, *, with_quality: bool,
                   baseline_tokens: list[list[int]] | None, is_baseline: bool = False,
                   stop: Callable[[], bool] | None = None, progress: Callable[[dict], None] | None = None) -> dict:
    """Build one recipe, time it (``bench.run_bench``), then (``with_quality``) measure its quality; free it.

    Returns ``{"speed": {...}, "model": stats, "quality": {...} or None}``. Raises ``bench.BenchStopped`` once
    ``stop()`` is True (between requests and between quality steps). ``progress`` gets
    ``{"stage", "done", "of"}`` as the quality measures go (they take minutes where the timing takes seconds).
    """
    from . import bench, runtimes  # deferred: they load torch

    model = runtimes.build(recipe)
    try:
        generation = GenerationSettings(max_new_tokens=settings.max_new_tokens, ignore_eos=True)
        entry = bench.run_bench(recipe, generation, settings.runs, settings.warmup, model=model, stop=stop)
        measured = quality_of(model, settings, baseline_tokens, is_baseline, stop, progress) if with_quality else None
        return {"speed": speed_of(entry), "model": entry["model"], "quality": measured}
    finally:
        model.close()
        del model
        gc.collect()  # one recipe's weights at a time


def speed_of(entry: dict) -> dict:
    """One round's speed figures from a ``bench.run_bench`` entry."""
    return {"decode_tok_s": entry["decode_tok_s"]["median"], "ttft_ms": entry["ttft_ms"]["p50"],
            "tpot_ms": entry["tpot_ms"]["p50"], "e2e_ms": entry["e2e_ms"]["p50"],
            "peak_rss_mb": entry["peak_rss_mb"], "measured_at": time.time(),
            "prompt_tokens": statistics.mean(r["prompt_tokens"] for r in entry["per_run"]) if entry.get("per_run")
            else None}


def quality_of(model, settings: SweepSettings, baseline_tokens: list[list[int]] | None, is_baseline: bool = False,
               stop: Callable[[], bool] | None = None, progress: Callable[[dict], None] | None = None) -> dict:
    """Perplexity, QA accuracy (and whatever else ``quality.evaluate`` reports: intervals, ...), then agreement
    with the baseline's greedy tokens (None without them); the baseline keeps its tokens (``greedy_tokens``)."""
    from . import bench, quality  # deferred: they load torch

    def check(stage: str | None = None):
        def step(i, total, metrics):
            if stop is not None and stop():
                raise bench.BenchStopped("sweep stopped")
            if progress is not None:
                progress({"stage": stage or metrics.get("stage", "quality"), "done": i, "of": total})
        return step

    items = quality.load_qa()[: settings.qa_limit] if settings.qa_limit else None
    report = quality.evaluate(model, None, max_tokens=settings.max_eval_tokens, qa=items, on_step=check())
    out = {k: v for k, v in report.items() if _small(v) and k not in ("agreement", "baseline")}
    prompts = quality.load_prompts()[: settings.agreement_prompts or None]
    tokens = quality.greedy_tokens(model, prompts, settings.agreement_tokens, on_step=check("agreement"))
    if is_baseline:
        out.update(agreement=1.0, agreement_ci=[1.0, 1.0], greedy_tokens=tokens)
    else:
        out["agreement"] = None if baseline_tokens is None else quality.agreement(tokens, baseline_tokens)
        interval = getattr(quality, "agreement_interval", None)  # 95% interval, where quality provides one
        if interval is not None and baseline_tokens is not None:
            ci = interval(tokens, baseline_tokens)
            out["agreement_ci"] = list(ci) if ci else None
    return out


def _small(value) -> bool:
    """Scalars and short lists (intervals) are kept; per-question answers are not."""
    if isinstance(value, (list, tuple)):
        return len(value) <= 4 and all(isinstance(v, (int, float)) or v is None for v in value)
    return value is None or isinstance(value, (int, float, str, bool)) or (
        isinstance(value, dict) and all(_small(v) for v in value.values()) and len(value) <= 8)


# The sweep -------------------------------------------------------------------------------------------------


def run_sweep(recipes: Iterable[Recipe], settings: SweepSettings = SweepSettings(), *,
              on_step: OnStep | None = None, stop: Callable[[], bool] | None = None, measure: Measure | None = None,
              fresh: bool = False, within: float = DEFAULT_WITHIN, axis: str = "qa") -> dict:
    """Measure what is missing of a grid on this machine, interleaved in rounds, storing each round; then report.

    Args:
        recipes: the grid (``load_grid``); those that cannot run here are skipped with the reason.
        settings: how each recipe is measured.
        on_step: progress ``(items done, items to do, metrics)``, an item being one round of one recipe; metrics
            hold ``phase`` ("measuring" before an item, "measured" after it), ``label``, ``round`` and ``eta_s``,
            and while a recipe's quality is measured ``quality``: ``{"stage", "done", "of"}``.
        stop: polled before each item (and inside it); once True the sweep ends, keeping what finished.
        measure: ``measure_recipe`` by default (a test passes its own).
        fresh: measure everything again, ignoring stored results.
        within, axis: passed to ``report``.

    Returns:
        ``report(...)`` plus ``measured`` (items measured now), ``stopped`` and ``failed``.
    """
    from .bench import BenchStopped  # deferred: it loads torch

    measure = measure or measure_recipe
    runnable, skipped = check_grid(recipes)
    machine = fingerprint()
    machine_id = fingerprint_id(machine)
    records = {}
    for recipe in runnable:
        old = None if fresh else usable(load_record(machine_id, recipe.key()), settings)
        records[recipe.key()] = old or new_record(recipe, machine, machine_id, settings)
    todo = plan(runnable, records, settings.rounds)
    eta = _Eta()
    failed, stopped, done = [], False, 0
    baseline_key = runnable[0].key()
    for i, (r, recipe) in enumerate(todo):
        if stop is not None and stop():
            stopped = True
            break
        record = records[recipe.key()]
        if recipe.key() in {f["key"] for f in failed}:
            continue
        with_quality = record["quality"] is None
        tokens = None if recipe.key() == baseline_key else (records[baseline_key]["quality"] or {}).get(
            "greedy_tokens")
        now = {"phase": "measuring", "label": recipe.label(), "round": r + 1,
               "eta_s": eta.remaining(todo[i:], records)}
        _report(on_step, i, len(todo), now)
        began = time.perf_counter()
        try:
            result = measure(recipe, settings, with_quality=with_quality, baseline_tokens=tokens,
                             is_baseline=recipe.key() == baseline_key, stop=stop,
                             progress=lambda q, i=i, now=now: _report(on_step, i, len(todo), {**now, "quality": q}))
        except BenchStopped:
            stopped = True
            break
        except Exception as exc:  # one recipe failing never ends the sweep; it is reported and not stored
            failed.append({"key": recipe.key(), "label": recipe.label(), "reason": f"{type(exc).__name__}: {exc}"})
            continue
        eta.add(with_quality, time.perf_counter() - began)
        record["rounds"].append(result["speed"])
        record["model"] = result.get("model") or record.get("model")
        if with_quality and result.get("quality") is not None:
            record["quality"] = result["quality"]
        record["saved_at"] = time.time()
        save_record(record)
        done += 1
        _report(on_step, i + 1, len(todo), {"phase": "measured", "label": recipe.label(), "round": r + 1,
                                            "decode_tok_s": result["speed"]["decode_tok_s"],
                                            "eta_s": eta.remaining(todo[i + 1:], records)})
    out = report(runnable, settings, within=within, axis=axis, skipped=skipped)
    out.update(measured=done, stopped=stopped, failed=failed)
    return out


def plan(runnable: list[Recipe], records: dict[str, dict], rounds: int) -> list[tuple[int, Recipe]]:
    """The (round, recipe) items still to measure, interleaved: every recipe's round 1, then round 2, ...

    A recipe whose rounds are all stored but whose quality is not gets one more round first (quality is measured
    in a recipe's first item of a run).
    """
    done = {key: len(record["rounds"]) for key, record in records.items()}
    extra = [(done[r.key()], r) for r in runnable if done[r.key()] >= rounds and records[r.key()]["quality"] is None]
    return extra + [(n, recipe) for n in range(rounds) for recipe in runnable if done[recipe.key()] <= n]


def new_record(recipe: Recipe, machine: dict, machine_id: str, settings: SweepSettings) -> dict:
    return {"schema": SCHEMA, "recipe": recipe.to_dict(), "recipe_key": recipe.key(), "label": recipe.label(),
            "machine": machine, "machine_id": machine_id, "settings": settings.identity(), "rounds": [],
            "quality": None, "model": None}


def _report(on_step: OnStep | None, i: int, total: int, metrics: dict) -> None:
    if on_step is not None:
        on_step(i, total, metrics)


class _Eta:
    """Seconds left: items with quality and items without it are timed apart (quality takes far longer)."""

    def __init__(self):
        self.times: dict[bool, list[float]] = {True: [], False: []}

    def add(self, with_quality: bool, seconds: float) -> None:
        self.times[with_quality].append(seconds)

    def remaining(self, items, records) -> float | None:
        means = {k: statistics.fmean(v) for k, v in self.times.items() if v}
        if not means:
            return None
        total = 0.0
        for _, recipe in items:
            kind = records[recipe.key()]["quality"] is None
            total += means.get(kind, next(iter(means.values())))
        return total


# Report ----------------------------------------------------------------------------------------------------


def report(recipes: Iterable[Recipe] | None = None, settings: SweepSettings = SweepSettings(), *,
           within: float = DEFAULT_WITHIN, axis: str = "qa", skipped: list[dict] | None = None) -> dict:
    """What is stored for a grid on this machine, as rows with speed-ups, the frontier and one sentence.

    Args:
        recipes: the grid's runnable recipes, the baseline first (``check_grid``); None = every recipe stored for
            this machine with these settings.
        settings: only results measured with these settings count.
        within: quality points a recipe may lose against the baseline for the sentence.
        axis: the quality axis, a key of ``QUALITY_AXES``.
        skipped: the grid's recipes that cannot run here, passed through.

    Returns:
        ``{"machine", "machine_id", "settings", "axis", "baseline", "recipes": [rows], "frontier": [rows],
        "within": {"points", "sentence", "recipe_key"}, "skipped", "missing", "other_machines"}``.
    """
    if axis not in QUALITY_AXES:
        raise RecipeError("quality", f"unknown quality axis {axis!r}; allowed: {', '.join(QUALITY_AXES)}")
    machine = fingerprint()
    machine_id = fingerprint_id(machine)
    if recipes is None:
        found = [r for r in machine_records(machine_id) if usable(r, settings)]
        keys = None
    else:
        recipes = list(recipes)
        keys = [r.key() for r in recipes]
        found = [rec for key in keys if (rec := usable(load_record(machine_id, key), settings)) is not None]
    rows = table(found)
    measured = {row["key"] for row in rows if row["rounds"]}
    missing = [] if keys is None else [r.label() for r in recipes if r.key() not in measured]
    frontier = pareto(rows, axis)
    sentence, best = fastest_within(rows, within, axis)
    return {"machine": machine, "machine_id": machine_id, "settings": asdict(settings), "axis": axis,
            "baseline": next((row["key"] for row in rows if row["baseline"]), None), "recipes": rows,
            "frontier": frontier, "within": {"points": within, "sentence": sentence, "recipe_key": best},
            "skipped": skipped or [], "missing": missing, "other_machines": other_machines(machine_id, axis)}


def table(records: list[dict]) -> list[dict]:
    """One row per record: speed over its rounds, speed-up over the baseline among them, quality in points."""
    rows = [_row(rec) for rec in records if rec.get("rounds")]
    base = next((row for row in rows if row["baseline"]), None)
    for row in rows:
        row["speedup"] = (row["decode_tok_s"] / base["decode_tok_s"]
                          if base and base["decode_tok_s"] and row["decode_tok_s"] else None)
        q, q0 = row["quality"], (base or {}).get("quality") or {}
        for name in QUALITY_AXES:
            row[f"{name}_points"] = _points(q, name)
            if row[f"{name}_points"] is not None and _points(q0, name) is not None:
                row[f"{name}_delta"] = row[f"{name}_points"] - _points(q0, name)
            else:
                row[f"{name}_delta"] = None
    rows.sort(key=lambda row: (not row["baseline"], -(row["speedup"] or 0)))
    return rows


def _row(record: dict) -> dict:
    recipe = Recipe.from_dict(record["recipe"])
    rounds = record["rounds"]
    decode = [r["decode_tok_s"] for r in rounds if r.get("decode_tok_s")]
    quality_figures = {k: v for k, v in (record.get("quality") or {}).items() if k != "greedy_tokens"}
    model = record.get("model") or {}
    return {"recipe": record["recipe"], "key": record["recipe_key"], "label": recipe.label(),
            "baseline": recipe.is_baseline(), "rounds": len(rounds),
            "decode_tok_s": statistics.median(decode) if decode else None, "decode_tok_s_rounds": decode,
            "ttft_ms": _median(r.get("ttft_ms") for r in rounds), "tpot_ms": _median(r.get("tpot_ms") for r in rounds),
            "peak_rss_mb": max((r.get("peak_rss_mb") or 0 for r in rounds), default=None),
            "weight_bytes": model.get("weight_bytes"), "backend": model.get("backend"),
            "context_tokens": _context(record, rounds),
            "quality": quality_figures, "perplexity": quality_figures.get("perplexity"),
            "qa_accuracy": quality_figures.get("qa_accuracy"), "agreement": quality_figures.get("agreement"),
            "measured_at": max((r.get("measured_at") or 0 for r in rounds), default=None)}


def _context(record: dict, rounds: list[dict]) -> float | None:
    """Mean KV-cache length over a timed request's decoded tokens: its prompt and half the tokens it generates."""
    prompt = _median(r.get("prompt_tokens") for r in rounds)
    new = (record.get("settings") or {}).get("max_new_tokens")
    return prompt + new / 2 if prompt is not None and new else None


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _points(q: dict | None, axis: str) -> float | None:
    value = (q or {}).get("qa_accuracy" if axis == "qa" else "agreement")
    return None if value is None else 100.0 * value


def interval_points(q: dict | None, axis: str) -> tuple[float, float] | None:
    """The quality figure's interval in points, when ``quality`` reports one (e.g. ``qa_accuracy_ci``)."""
    ci = (q or {}).get(("qa_accuracy" if axis == "qa" else "agreement") + "_ci")
    if isinstance(ci, dict):
        ci = (ci.get("low"), ci.get("high"))
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(v, (int, float)) for v in ci):
        return 100.0 * ci[0], 100.0 * ci[1]
    return None


def pareto(rows: list[dict], axis: str = "qa") -> list[dict]:
    """The rows no other row beats on both speed-up and quality (higher is better on both), by speed-up.

    A row is dominated when another is at least as fast and at least as good, and strictly better on one.
    Rows lacking either figure are left out.
    """
    points = [(row["speedup"], row[f"{axis}_points"], row) for row in rows
              if row.get("speedup") is not None and row.get(f"{axis}_points") is not None]
    keep = []
    for s, q, row in points:
        dominated = any(s2 >= s and q2 >= q and (s2 > s or q2 > q) for s2, q2, _ in points)
        if not dominated:
            keep.append(row)
    keep.sort(key=lambda row: row["speedup"])
    return [{"key": r["key"], "label": r["label"], "speedup": r["speedup"], "quality_points": r[f"{axis}_points"]}
            for r in keep]


def fastest_within(rows: list[dict], points: float, axis: str = "qa") -> tuple[str, str | None]:
    """("Fastest recipe within N points ..." sentence, its key): the fastest recipe whose quality is at most
    ``points`` below the baseline's on ``axis``."""
    name = QUALITY_AXES[axis]
    base = next((row for row in rows if row["baseline"]), None)
    if base is None or base.get(f"{axis}_points") is None:
        return "The baseline has no measured quality yet: nothing to compare with.", None
    floor = base[f"{axis}_points"] - points
    ok = [row for row in rows if row.get("speedup") is not None and row.get(f"{axis}_points") is not None
          and row[f"{axis}_points"] >= floor - 1e-9]
    best = max(ok, key=lambda row: row["speedup"])
    ref = f"{name} {base[f'{axis}_points']:.0f}%"
    if best["baseline"]:
        return (f"No recipe within {points:g} points of the baseline's {ref} is faster than the baseline "
                f"({base['label']})."), best["key"]
    delta = best[f"{axis}_points"] - base[f"{axis}_points"]
    ci = interval_points(best["quality"], axis)
    spread = f", interval {ci[0]:.0f}–{ci[1]:.0f}%" if ci else ""
    return (f"Fastest recipe within {points:g} points of the baseline's {ref}: {best['label']} — "
            f"{best['speedup']:.2f}× the baseline's decode speed, {name} {best[f'{axis}_points']:.0f}% "
            f"({delta:+.0f} points{spread})."), best["key"]


def other_machines(machine_id: str, axis: str = "qa") -> list[dict]:
    """Results stored by other machines (or other library versions), each machine on its own, never mixed."""
    out = []
    for other in stored_machines():
        if other == machine_id:
            continue
        records = machine_records(other)
        if not records:
            continue
        rows = table(records)
        out.append({"machine_id": other, "machine": records[0].get("machine", {}),
                    "described": describe_machine(records[0].get("machine", {})), "recipes": rows,
                    "frontier": pareto(rows, axis)})
    return out
