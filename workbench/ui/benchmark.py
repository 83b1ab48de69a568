"""The Benchmark page's pieces: sweep settings, the sweep job and its progress, the trade-off chart and table.

Load comes as closed-loop users (the default) or, with a request rate, as Poisson arrivals (``workbench.load``):
then each rate is one entry, with its percentiles, and goodput against the TTFT / TPOT objectives given.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime

import streamlit as st

from .. import bench, load
from ..load import DEFAULT_NUM_REQUESTS, MAX_NUM_REQUESTS, Slo
from ..observe.history import HistoryStore
from ..recipe import REMOTE, GenerationSettings, Recipe, RecipeError
from . import charts, draw, jobs, leases, shared, state

REFRESH_S = 1.0  # how often a running sweep's progress is redrawn
BATCH_CHOICES = (1, 2, 4, 8, 16, 32)
WARMUP = 1  # warm-up requests per user, excluded from every figure
SCHEDULER_HELP = {
    "static": "static — the worker collects up to a batch of waiting requests, runs them together to the end, "
              "then takes the next batch",
    "continuous": "continuous — transformers' continuous batching (paged KV cache): a request joins the running "
                  "batch at the next decode step and leaves it as soon as it is done, instead of waiting for the "
                  "whole batch. It serves greedy requests; sampled ones run one at a time beside it, because it "
                  "applies one sampling setting to every request",
}


@dataclass(frozen=True)
class SweepSpec:
    batch_sizes: tuple[int, ...]
    concurrency: int  # simulated users, the same for every batch size; with request rates, the most in flight
    max_new_tokens: int  # every answer is exactly this long
    runs: int  # measured requests per user (closed loop only)
    schedulers: tuple[str, ...]
    request_rates: tuple[float, ...] = ()  # Poisson arrivals per second, one entry each; () = closed loop
    num_requests: int | None = None  # requests per rate (with request rates only)
    slo: Slo | None = None  # goodput's objectives

    @property
    def poisson(self) -> bool:
        return bool(self.request_rates)

    @property
    def requests(self) -> int:
        """Requests in the whole sweep, warm-up included (in the Poisson mode, one warm-up per rate)."""
        per_entry = ((WARMUP + self.num_requests) * len(self.request_rates) if self.poisson else
                     (self.runs + WARMUP) * self.concurrency)
        return per_entry * len(self.batch_sizes) * len(self.schedulers)


def sweep_key(recipe: Recipe) -> str:
    return f"bench:{replace(recipe, batch_size=1).key()}"  # the sweep sets the batch size itself


def sweep_settings(model) -> SweepSpec | None:
    """The sweep's controls; None (with a message) while no batch size or scheduler is chosen, or a load setting
    is wrong."""
    poisson = bool(str(st.session_state.get(state.BENCH_RATES) or "").strip())  # its input is drawn below
    cols = st.columns([3, 2, 2, 2])
    sizes = cols[0].multiselect("Batch sizes", BATCH_CHOICES, default=[1, 4, 16], key=state.BENCH_BATCH_SIZES,
                                help="Each is measured under the same load, one after another.")
    users = cols[1].slider("Simulated users", 1, 32, 16, key=state.BENCH_CONCURRENCY,
                           help="Each user sends a request, waits for the whole answer, then sends the next. With "
                                "a request rate: the most requests in flight at once (one arriving while that many "
                                "are running waits, and its wait is not part of its TTFT).")
    tokens = cols[2].number_input("Tokens per answer", 4, 256, 32, step=4, key=state.BENCH_TOKENS,
                                  help="Every answer is exactly this long (EOS ignored), so all do the same work.")
    runs = cols[3].number_input("Requests per user", 1, 10, 2, key=state.BENCH_RUNS, disabled=poisson,
                                help=f"Measured requests per user, after {WARMUP} warm-up request each (closed "
                                     "loop; with a request rate, Requests per rate counts them).")
    load_spec = load_settings(poisson)
    problem = model.scheduler_problem("continuous")
    options = ["static"] if problem else ["static", "continuous"]
    schedulers = st.multiselect(
        "Schedulers", options, default=["static"], key=state.BENCH_SCHEDULERS, format_func=lambda s: s,
        help="\n\n".join(SCHEDULER_HELP[s] for s in options)
             + (f"\n\nContinuous batching is not offered for this model: {problem}." if problem else ""))
    if problem:
        st.caption(f"Continuous batching is not available for this model: {problem}.")
    if not sizes or not schedulers:
        st.info("Choose at least one batch size and one scheduler.")
        return None
    if load_spec is None:
        return None
    rates, num_requests, slo = load_spec
    return SweepSpec(tuple(sorted(sizes)), int(users), int(tokens), int(runs), tuple(schedulers), rates,
                     num_requests, slo)


def load_settings(poisson: bool) -> tuple[tuple[float, ...], int | None, Slo | None] | None:
    """The request rates (empty: closed loop), requests per rate and goodput's objectives; None after showing
    what is wrong (one line naming the input)."""
    cols = st.columns([3, 2, 2, 2])
    text = cols[0].text_input("Request rate (req/s)", key=state.BENCH_RATES, placeholder="empty = closed loop",
                              help="Requests per second arriving at random (Poisson arrivals, as vLLM's serving "
                                   "benchmark sends them), one entry per rate, e.g. 0.5, 2, inf (all at once). "
                                   "Empty: closed-loop users.")
    count = cols[1].number_input("Requests per rate", 1, MAX_NUM_REQUESTS, DEFAULT_NUM_REQUESTS,
                                 key=state.BENCH_NUM_REQUESTS, disabled=not poisson,
                                 help=f"Measured requests at each rate (after {WARMUP} warm-up request).")
    ttft = cols[2].number_input("TTFT objective (ms)", min_value=0.0, value=None, step=50.0, key=state.BENCH_TTFT_SLO,
                                placeholder="none", help="Goodput: a request meets its objective with a time to "
                                                         "first token of at most this.")
    tpot = cols[3].number_input("TPOT objective (ms)", min_value=0.0, value=None, step=5.0, key=state.BENCH_TPOT_SLO,
                                placeholder="none", help="Goodput: … and a mean time per output token after the "
                                                         "first of at most this.")
    try:
        rates = parse_rates(text)
        slo = None if ttft is None and tpot is None else Slo(ttft_ms=ttft, tpot_ms=tpot)
        num_requests = int(count) if rates else None
        for rate in rates:
            bench.check_load(rate, num_requests, None, slo)
    except RecipeError as exc:
        st.error(f"{LOAD_INPUTS.get(exc.field, exc.field)}: {exc}", icon=":material/block:")
        return None
    return rates, num_requests, slo


LOAD_INPUTS = {"request-rate": "Request rate (req/s)", "num-requests": "Requests per rate",
               "ttft-slo-ms": "TTFT objective (ms)", "tpot-slo-ms": "TPOT objective (ms)"}


def parse_rates(text: str) -> tuple[float, ...]:
    """'0.5, 2, inf' -> (0.5, 2.0, inf); '' -> () (closed loop); RecipeError (``request-rate``) for a bad one."""
    rates = []
    for part in (p.strip() for p in text.replace(";", ",").split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise RecipeError("request-rate", f"not a number of requests per second: {part!r} (give e.g. 0.5, 2 "
                                              "or inf)") from None
        rates.append(load.check_request_rate(value))
    return tuple(dict.fromkeys(rates))


def sweep_job(recipe: Recipe) -> jobs.Job | None:
    return shared.job_registry().get(sweep_key(recipe))


def sweep_controls(model, spec: SweepSpec | None, job: jobs.Job | None) -> jobs.Job | None:
    """The Run button (disabled while a sweep runs); returns the running or last job of this recipe."""
    running = job is not None and job.running
    button_col, note_col = st.columns([1, 3], vertical_alignment="center")
    if button_col.button("Run benchmark", icon=":material/speed:", type="primary", disabled=running or spec is None,
                         width="stretch"):
        job = start_sweep(shared.job_registry(), model, spec)
        st.rerun()  # redraw with the button disabled and the progress bar
    if spec is not None:
        note_col.caption(f"{spec.requests} requests of {spec.max_new_tokens} tokens in all ({WARMUP} warm-up per "
                         f"{'rate' if spec.poisson else 'user'} excluded from the figures). Anything else running "
                         "here slows every figure alike. "
                         "While it runs, the sweep has this model to itself: chat messages sent to it meanwhile "
                         "are told it is busy, and a chat reply being written is finished first.")
    others = [j for j in shared.job_registry().running() if j.key != sweep_key(model.recipe)]
    if others:
        st.warning(f"{others[0].title} is running on this machine: figures measured now share the CPU with it.",
                   icon=":material/warning:")
    return job


def start_sweep(registry: jobs.JobRegistry, model, spec: SweepSpec) -> jobs.Job:
    """Run the sweep on a background job; its result is the saved report (with ``name``)."""

    def work(job: jobs.Job) -> dict:
        settings = GenerationSettings(max_new_tokens=spec.max_new_tokens, ignore_eos=True)

        def waiting(text: str) -> None:
            job.on_step(0, spec.requests, {"phase": "waiting", "text": text})

        # The sweep's engines run on the model alone: no chat engine generates meanwhile (leases).
        with leases.lease(model, job.title, "Benchmark", stop=lambda: job.stopping, on_wait=waiting) as own:
            try:
                entries = bench.sweep([own.recipe], spec.batch_sizes, settings, spec.runs, WARMUP, job.on_step,
                                      concurrency=spec.concurrency, schedulers=spec.schedulers, model=own,
                                      history=HistoryStore(), stop=lambda: job.stopping,
                                      request_rates=spec.request_rates or (None,), num_requests=spec.num_requests,
                                      slo=spec.slo)
            except bench.BenchStopped:
                raise jobs.JobStopped() from None
        report = {"settings": {"max_new_tokens": spec.max_new_tokens, "ignore_eos": True}, "runs": spec.runs,
                  "warmup": WARMUP, "batch_sizes": list(spec.batch_sizes), "concurrency": spec.concurrency,
                  "schedulers": list(spec.schedulers), "label": replace(model.recipe, batch_size=1).label(),
                  "mode": "poisson" if spec.poisson else "closed", "request_rates": list(spec.request_rates) or None,
                  "num_requests": spec.num_requests, "slo": None if spec.slo is None else asdict(spec.slo),
                  "results": entries}
        name = bench.save_sweep(report)
        return {"name": name, "saved_at": time.time(), **report}

    return registry.start(sweep_key(model.recipe), work, title=f"Benchmarking {model.recipe.label()}")


@st.fragment(run_every=REFRESH_S)
def sweep_progress(job: jobs.Job) -> None:
    """The running sweep's progress bar and Stop button; the whole page reruns once it ends."""
    if job.done:
        st.rerun()
    m = job.metrics
    text = f"Request {job.step}/{job.total or '…'} — {job.elapsed_s:.0f} s"
    if m.get("phase") == "waiting":
        text += f" · {m['text']}"
    elif m:
        text += (f" · last: {m.get('phase')}, ran in a batch of {m.get('batch_size', 1)}, "
                 f"E2E {m.get('e2e_ms') or 0:.0f} ms")
    st.progress(job.fraction, text=text)
    st.button("Stop", icon=":material/stop_circle:", on_click=job.stop, disabled=job.stopping)


def sweep_outcome(job: jobs.Job | None) -> dict | None:
    """A finished job's report, or its error / stop shown as a message."""
    if job is None or job.running:
        return None
    if job.error:
        st.error(job.error)
    elif job.stopped:
        st.info("Benchmark stopped; nothing was kept.")
    return job.result if isinstance(job.result, dict) else None


def sweep_result(report: dict) -> None:
    """What a sweep measured: the trade-off in words, the chart, and the table."""
    when = datetime.fromtimestamp(report.get("saved_at", time.time())).strftime("%Y-%m-%d %H:%M:%S")
    entries = report["results"]
    if report.get("mode") == "poisson":
        cap = report.get("concurrency")
        st.caption(
            f"{report.get('label', '')} — measured at {when}: Poisson arrivals at "
            f"{', '.join(charts.rate_label(r) for r in report.get('request_rates') or [])}, "
            f"{report.get('num_requests')} requests of exactly {report['settings']['max_new_tokens']} tokens per "
            f"rate{f', at most {cap} in flight' if cap else ''}, at each batch size. TTFT and E2E count from each "
            "request's send; a wait for a free slot is not part of them."
        )
    else:
        st.caption(
            f"{report.get('label', '')} — measured at {when}: {report['concurrency']} simulated users, "
            f"{report['runs']} measured request{'s' if report['runs'] != 1 else ''} each of exactly "
            f"{report['settings']['max_new_tokens']} tokens, at each batch size. Latency counts from each request's "
            "own start, so waiting in the queue is part of it; TPOT is the time between two tokens of one answer."
        )
    for line in bench.tradeoff(entries):
        st.markdown(f"- {line}")
    if report.get("mode") == "poisson" or report.get("slo"):
        load_result(entries, report.get("name", ""))
    if report.get("mode") != "poisson":
        draw.chart(st.empty(), charts.batching_figure(entries), f"batching-{report.get('name', '')}")
    st.dataframe(result_rows(entries), hide_index=True, width="stretch")


def load_result(entries: list[dict], name: str) -> None:
    """Goodput and the percentiles of each entry's load; TTFT p50 / p99 per rate where several rates ran."""
    for entry in entries:
        for error in (entry.get("load") or {}).get("errors") or []:
            st.warning(f"{charts.rate_label(entry['load'].get('request_rate'))}: a request failed: {error}",
                       icon=":material/error:")
    rates = {(e.get("load") or {}).get("request_rate") for e in entries} - {None}
    if len(rates) > 1:
        draw.chart(st.empty(), charts.rate_figure(entries), f"rates-{name}")
    st.dataframe(load_rows(entries), hide_index=True, width="stretch")
    slo = next((e["load"]["goodput"] for e in entries if (e.get("load") or {}).get("goodput")), None)
    if slo:
        wanted = [f"TTFT ≤ {slo['ttft_slo_ms']:g} ms" if slo["ttft_slo_ms"] is not None else "",
                  f"TPOT ≤ {slo['tpot_slo_ms']:g} ms" if slo["tpot_slo_ms"] is not None else ""]
        st.caption(f"Goodput: the finished requests that meet {' and '.join(w for w in wanted if w)}, per second of "
                   "the round and as a share of those finished.")


def load_rows(entries: list[dict]) -> list[dict]:
    """One table row per entry's load: rate asked and achieved, requests, percentiles, throughput, goodput."""
    def num(value, digits=0):
        return None if value is None or (isinstance(value, float) and math.isinf(value)) else round(value, digits)

    rows = []
    for e in entries:
        lo = e.get("load") or {}
        requests, good = lo.get("requests") or {}, lo.get("goodput") or {}
        rows.append({
            "rate": charts.rate_label(lo.get("request_rate")),
            "achieved req/s": num(lo.get("achieved_rate"), 2),
            "batch size": e["batch_size"],
            "scheduler": e.get("scheduler", "static"),
            "sent": requests.get("sent"),
            "finished": requests.get("finished"),
            "failed": requests.get("failed"),
            "cut": requests.get("cut"),
            **{f"TTFT {p} ms": num((lo.get("ttft_ms") or {}).get(p)) for p in load.PERCENTILES},
            **{f"TPOT {p} ms": num((lo.get("tpot_ms") or {}).get(p), 1) for p in ("p50", "p99")},
            "E2E p99 ms": num((lo.get("e2e_ms") or {}).get("p99")),
            "tok/s": num(lo.get("throughput_tok_s"), 1),
            "req/s": num(lo.get("request_throughput"), 2),
            "goodput req/s": num(good.get("req_s"), 2) if good else None,
            "goodput share": None if not good or good.get("share") is None else f"{good['share']:.0%}",
        })
    return rows


def intro(recipe: Recipe) -> str:
    """What the page measures, for a model run here or for a server."""
    if recipe.runtime == REMOTE:
        return ("Several people use one server at once. Here each simulated user (or each Poisson arrival) is one "
                "streamed request to the server; the batch size is how many of them this client sends together, "
                "and the server batches what reaches it in its own way. Latency is the client's: the network "
                "and the server's queue are part of it.")
    return ("Several people use one model at once. Running their requests together in a **batch** reads the weights "
            "once per step for all of them, so the machine produces more tokens per second in all, but each step "
            "does more work, so each person waits longer. This page measures both sides of that trade-off on this "
            "machine.")


def result_rows(entries: list[dict]) -> list[dict]:
    """One table row per scheduler and batch size."""
    def num(value, digits=0):
        return None if value is None else round(value, digits)

    return [{
        "scheduler": e.get("scheduler", "static"),
        "batch size": e["batch_size"],
        "ran in batches of (mean)": num((e.get("batches") or {}).get("mean"), 1),
        "throughput tok/s": num(e["throughput_tok_s"], 1),
        "TTFT p50 ms": num(e["ttft_ms"]["p50"]),
        "TTFT p99 ms": num(e["ttft_ms"]["p99"]),
        "E2E p50 ms": num(e["e2e_ms"]["p50"]),
        "E2E p99 ms": num(e["e2e_ms"]["p99"]),
        "TPOT p50 ms": num(e["tpot_ms"]["p50"], 1),
        "queue p50 ms": num((e.get("queue_ms") or {}).get("p50")),
        "requests": e["ttft_ms"]["n"],
        "peak RSS MB": num(e["peak_rss_mb"]),
    } for e in entries]


def earlier_sweeps(exclude: str | None = None) -> None:
    """Pick one of the sweeps saved on this machine (from this page or `workbench bench`) and show it."""
    sweeps = [s for s in bench.load_sweeps() if s["name"] != exclude and s.get("results")]
    if not sweeps:
        st.caption("No earlier sweeps on this machine yet.")
        return
    labels = {s["name"]: _sweep_label(s) for s in sweeps}
    name = st.selectbox("Saved sweep", list(labels), format_func=labels.get, key=state.BENCH_SHOWN)
    sweep_result(next(s for s in sweeps if s["name"] == name))


def _sweep_label(sweep: dict) -> str:
    when = datetime.fromtimestamp(sweep.get("saved_at", 0)).strftime("%Y-%m-%d %H:%M")
    label = sweep.get("label") or sweep["results"][0].get("label", "")
    sizes = ", ".join(map(str, sweep.get("batch_sizes", [])))
    if sweep.get("mode") == "poisson":
        rates = ", ".join(charts.rate_label(r) for r in sweep.get("request_rates") or [])
        return f"{when} · {label} · batch {sizes} · Poisson {rates}"
    return f"{when} · {label} · batch {sizes} · {sweep.get('concurrency', 1)} users"
