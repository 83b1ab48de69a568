"""The Benchmark page's pieces: sweep settings, the sweep job and its progress, the trade-off chart and table."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime

import streamlit as st

from .. import bench
from ..observe.history import HistoryStore
from ..recipe import GenerationSettings, Recipe
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
    concurrency: int  # simulated users, the same for every batch size
    max_new_tokens: int  # every answer is exactly this long
    runs: int  # measured requests per user
    schedulers: tuple[str, ...]

    @property
    def requests(self) -> int:
        """Requests in the whole sweep, warm-up included."""
        return (self.runs + WARMUP) * self.concurrency * len(self.batch_sizes) * len(self.schedulers)


def sweep_key(recipe: Recipe) -> str:
    return f"bench:{replace(recipe, batch_size=1).key()}"  # the sweep sets the batch size itself


def sweep_settings(model) -> SweepSpec | None:
    """The sweep's controls; None (with a message) while no batch size or scheduler is chosen."""
    cols = st.columns([3, 2, 2, 2])
    sizes = cols[0].multiselect("Batch sizes", BATCH_CHOICES, default=[1, 4, 16], key=state.BENCH_BATCH_SIZES,
                                help="Each is measured under the same load, one after another.")
    users = cols[1].slider("Simulated users", 1, 32, 16, key=state.BENCH_CONCURRENCY,
                           help="Each user sends a request, waits for the whole answer, then sends the next.")
    tokens = cols[2].number_input("Tokens per answer", 4, 256, 32, step=4, key=state.BENCH_TOKENS,
                                  help="Every answer is exactly this long (EOS ignored), so all do the same work.")
    runs = cols[3].number_input("Requests per user", 1, 10, 2, key=state.BENCH_RUNS,
                                help=f"Measured requests per user, after {WARMUP} warm-up request each.")
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
    return SweepSpec(tuple(sorted(sizes)), int(users), int(tokens), int(runs), tuple(schedulers))


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
                         "user excluded from the figures). Anything else running here slows every figure alike. "
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
                                      history=HistoryStore(), stop=lambda: job.stopping)
            except bench.BenchStopped:
                raise jobs.JobStopped() from None
        report = {"settings": {"max_new_tokens": spec.max_new_tokens, "ignore_eos": True}, "runs": spec.runs,
                  "warmup": WARMUP, "batch_sizes": list(spec.batch_sizes), "concurrency": spec.concurrency,
                  "schedulers": list(spec.schedulers), "label": replace(model.recipe, batch_size=1).label(),
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
    st.caption(
        f"{report.get('label', '')} — measured at {when}: {report['concurrency']} simulated users, "
        f"{report['runs']} measured request{'s' if report['runs'] != 1 else ''} each of exactly "
        f"{report['settings']['max_new_tokens']} tokens, at each batch size. Latency counts from each request's own "
        "start, so waiting in the queue is part of it; TPOT is the time between two tokens of one answer."
    )
    for line in bench.tradeoff(report["results"]):
        st.markdown(f"- {line}")
    draw.chart(st.empty(), charts.batching_figure(report["results"]), f"batching-{report.get('name', '')}")
    st.dataframe(result_rows(report["results"]), hide_index=True, width="stretch")


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
    return f"{when} · {label} · batch {sizes} · {sweep.get('concurrency', 1)} users"
