"""workbench.load: the Poisson schedule, the open-loop driver (cap, duration, grace, stop), goodput and the load
report on synthetic requests; bench.run_bench's request-rate mode on the tiny model."""

from __future__ import annotations

import math
import statistics
import threading
from types import SimpleNamespace

import pytest

from workbench import bench, load
from workbench.load import LoadRun, Slo
from workbench.observe.history import HistoryStore
from workbench.recipe import GenerationSettings, Recipe, RecipeError

# The schedule ------------------------------------------------------------------------------------------------


def test_the_schedule_is_seeded_starts_at_zero_and_ascends():
    first = load.arrival_times(50, 2.0, seed=7)
    assert first == load.arrival_times(50, 2.0, seed=7)
    assert first != load.arrival_times(50, 2.0, seed=8)
    assert first[0] == 0.0 and all(b > a for a, b in zip(first, first[1:]))
    # One draw of gaps, scaled by the rate: the same seed at another rate is the same schedule, faster.
    faster = load.arrival_times(50, 4.0, seed=7)
    assert faster == pytest.approx([t / 2 for t in first])


@pytest.mark.parametrize("rate", [0.5, 2.0, 40.0])
def test_the_mean_gap_is_one_over_the_rate(rate):
    times = load.arrival_times(20_000, rate, seed=1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    # The mean of 20 000 exponential gaps is within 1% of 1/R one time in three: 5% is a wide margin.
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.05)
    # Exponential gaps: their standard deviation equals their mean (a fixed interval would have none).
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.1)


def test_an_infinite_rate_sends_everything_at_once():
    assert load.arrival_times(5, math.inf) == [0.0] * 5


@pytest.mark.parametrize(("call", "field"), [
    (lambda: load.arrival_times(3, 0), "request-rate"),
    (lambda: load.arrival_times(3, -1.0), "request-rate"),
    (lambda: load.arrival_times(3, math.nan), "request-rate"),
    (lambda: load.arrival_times(0, 1.0), "num-requests"),
    (lambda: load.check_duration(0), "duration-s"),
    (lambda: load.check_duration(math.inf), "duration-s"),
    (lambda: Slo(), "ttft-slo-ms"),
    (lambda: Slo(ttft_ms=0), "ttft-slo-ms"),
    (lambda: Slo(tpot_ms=-5), "tpot-slo-ms"),
    (lambda: Slo(ttft_ms=100, tpot_ms=math.nan), "tpot-slo-ms"),
])
def test_bad_values_name_their_flag(call, field):
    with pytest.raises(RecipeError) as caught:
        call()
    assert caught.value.field == field


# The driver, on handles the test ends itself -------------------------------------------------------------------


class Handle:
    """A request in flight: it ends when ``end()`` (or a stop) is called."""

    def __init__(self, k: int):
        self.k, self.done, self.stopped = k, threading.Event(), False
        self.value = result(0.01, 0.001)

    def end(self, error: str | None = None) -> None:
        self.value.error = error
        self.done.set()

    def stop(self) -> None:
        self.stopped = True
        self.done.set()

    def result(self, timeout=None):
        self.done.wait(timeout)
        return self.value


class Server:
    """Takes requests, counts those in flight, and ends the oldest only once ``hold`` are in flight (or no more
    will come), so that a cap that is not respected shows as more than ``hold`` at once."""

    def __init__(self, hold: int, total: int):
        self.hold, self.total = hold, total
        self.handles: list[Handle] = []
        self.lock = threading.Condition()
        self.in_flight = self.most = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def send(self, k: int) -> Handle:
        with self.lock:
            handle = Handle(k)
            self.handles.append(handle)
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            self.lock.notify_all()
        return handle

    def _serve(self) -> None:
        ended = 0
        while ended < self.total:
            with self.lock:
                self.lock.wait_for(lambda: self.in_flight >= self.hold or len(self.handles) == self.total)
                oldest = next(h for h in self.handles if not h.done.is_set())
                self.in_flight -= 1
            oldest.end()
            ended += 1


def test_the_cap_bounds_requests_in_flight_and_their_wait_is_kept_apart():
    n, cap = 12, 3
    server = Server(hold=cap, total=n)
    ended = []
    sent, wall, most, ended_by = load.drive(server.send, load.arrival_times(n, math.inf), cap=cap,
                                            on_end=lambda item: ended.append(item.index))
    assert ended_by == "count" and len(sent) == n and sorted(ended) == list(range(n))
    assert server.most == cap and most == cap  # the server held every request: only the cap kept it at 3
    assert all(item.scheduled_s == 0.0 for item in sent)
    assert all(item.wait_s > 0 for item in sent[cap:])  # each waited for a free slot after its arrival
    run = load.run_of("poisson", sent, wall, most, ended_by, scheduled=n, request_rate=math.inf, concurrency=cap,
                      duration_s=None)
    assert len(run.finished) == n and run.failed == [] and run.cut == 0 and run.max_in_flight == cap


def test_without_a_cap_every_request_goes_at_its_arrival():
    n = 8
    server = Server(hold=n, total=n)  # ends nothing until all 8 are in flight
    sent, _, most, _ = load.drive(server.send, load.arrival_times(n, math.inf))
    assert most == n and server.most == n and [item.index for item in sent] == list(range(n))


def test_the_duration_stops_sending_and_the_grace_cuts_what_is_left():
    arrivals = load.arrival_times(1000, 20.0, seed=3)
    handles = []

    def send(k):
        handles.append(Handle(k))  # never ends by itself
        return handles[-1]

    duration = 0.3
    sent, wall, _, ended_by = load.drive(send, arrivals, duration_s=duration, grace_s=0.1)
    due = [t for t in arrivals if t <= duration]
    assert ended_by == "duration" and 1 <= len(sent) <= len(due) < 1000
    assert all(item.scheduled_s <= duration for item in sent)
    assert all(item.cut and item.handle.stopped for item in sent)
    assert wall >= duration
    run = load.run_of("poisson", sent, wall, 0, ended_by, scheduled=1000, request_rate=20.0, concurrency=None,
                      duration_s=duration)
    assert run.cut == len(sent) and run.finished == [] and run.failed == []
    report = run.report()
    assert report["requests"]["cut"] == report["requests"]["sent"] and report["ended_by"] == "duration"


def test_requests_that_end_within_the_grace_are_not_cut():
    arrivals = [0.0, 0.05, 5.0]  # the last one is due after the duration: never sent
    handles = []

    def send(k):
        handles.append(Handle(k))
        threading.Timer(0.05, handles[-1].end, kwargs={"error": "boom" if k == 1 else None}).start()
        return handles[-1]

    sent, wall, _, ended_by = load.drive(send, arrivals, duration_s=0.2, grace_s=30.0)
    assert ended_by == "duration" and [item.index for item in sent] == [0, 1]
    run = load.run_of("poisson", sent, wall, 2, ended_by, scheduled=3, request_rate=1.0, concurrency=None,
                      duration_s=0.2)
    assert run.cut == 0 and len(run.finished) == 1 and [r.error for r in run.failed] == ["boom"]
    assert run.report()["errors"] == ["boom"]


def test_stop_ends_sending_and_cuts_requests_in_flight():
    handles = []

    def send(k):
        handles.append(Handle(k))
        return handles[-1]

    sent, _, _, ended_by = load.drive(send, load.arrival_times(50, 100.0, seed=0), stop=lambda: len(handles) >= 2)
    assert ended_by == "stop" and len(sent) == 2 and all(h.stopped for h in handles)


def test_a_failing_send_stops_the_round_and_is_raised():
    handles = []

    def send(k):
        if k == 2:
            raise ValueError("the prompt does not fit")
        handles.append(Handle(k))
        return handles[-1]

    with pytest.raises(ValueError, match="does not fit"):
        load.drive(send, load.arrival_times(5, math.inf))
    assert len(handles) == 2 and all(h.stopped for h in handles)


# Goodput and the report, on synthetic results ------------------------------------------------------------------


def result(ttft_s, tpot_s, tokens=11, error=None):
    e2e = ttft_s + tpot_s * (tokens - 1)
    times = [ttft_s + tpot_s * i for i in range(tokens)]
    return SimpleNamespace(ttft_s=ttft_s, e2e_s=e2e, new_tokens=tokens, token_times=times,
                           tpot_s=tpot_s if tokens > 1 else None, error=error)


RESULTS = [
    result(0.10, 0.010),  # meets both
    result(0.30, 0.010),  # TTFT too long
    result(0.10, 0.050),  # TPOT too long
    result(0.15, 0.0, tokens=1),  # one token: no TPOT, meets a TPOT objective
    result(0.19, 0.019),  # just inside both
]


def test_goodput_counts_requests_meeting_every_objective():
    both = load.goodput(RESULTS, Slo(ttft_ms=200, tpot_ms=20), duration_s=2.0)
    assert both == {"ttft_slo_ms": 200, "tpot_slo_ms": 20, "requests_ok": 3, "share": 3 / 5, "req_s": 1.5}
    assert load.goodput(RESULTS, Slo(ttft_ms=200), 2.0)["requests_ok"] == 4
    assert load.goodput(RESULTS, Slo(tpot_ms=20), 2.0)["requests_ok"] == 4
    assert load.goodput(RESULTS, Slo(ttft_ms=1), 2.0)["requests_ok"] == 0
    assert load.goodput(RESULTS, None, 2.0) is None
    assert load.goodput([], Slo(ttft_ms=1), 2.0)["share"] is None


def test_the_report_adds_up():
    failed = [result(0.1, 0.01, error="the server refused the request (429)")]
    run = LoadRun(mode="poisson", request_rate=2.0, concurrency=4, scheduled=8, send_times=[0.0, 0.5, 1.0, 2.0, 3.0,
                  4.0, 4.5], finished=RESULTS, failed=failed, cut=1, wall_s=5.0, send_waits=[0.0] * 7, max_in_flight=3)
    report = run.report(Slo(ttft_ms=200, tpot_ms=20))
    assert report["requests"] == {"scheduled": 8, "sent": 7, "finished": 5, "failed": 1, "cut": 1}
    assert report["achieved_rate"] == pytest.approx(6 / 4.5)  # (sent - 1) / (last send - first send)
    assert report["request_throughput"] == pytest.approx(5 / 5.0)
    assert report["throughput_tok_s"] == pytest.approx((11 * 4 + 1) / 5.0)
    assert report["goodput"]["requests_ok"] == 3 and report["goodput"]["share"] == pytest.approx(3 / 5)
    assert report["goodput"]["req_s"] == pytest.approx(3 / 5.0)
    for key in ("ttft_ms", "tpot_ms", "e2e_ms", "itl_ms", "send_wait_ms"):
        assert {"n", "mean", "p50", "p90", "p95", "p99"} == set(report[key])
    assert report["ttft_ms"]["n"] == 5 and report["tpot_ms"]["n"] == 4 and report["itl_ms"]["n"] == 40
    assert report["ttft_ms"]["p50"] == pytest.approx(150.0)
    assert report["errors"] == ["the server refused the request (429)"]


def test_achieved_rate_needs_two_sends_apart():
    assert load.achieved_rate([]) is None and load.achieved_rate([1.0]) is None
    assert load.achieved_rate([0.0, 0.0, 0.0]) is None
    assert load.achieved_rate([0.0, 1.0, 2.0]) == 1.0


# bench.run_bench in the request-rate mode, on the tiny model -----------------------------------------------------


@pytest.fixture(scope="module")
def recipe(tiny_model_dir):
    return Recipe(model=str(tiny_model_dir), device="cpu")


def test_run_bench_under_poisson_arrivals(recipe, tiny_model, tmp_path):
    steps = []
    history = HistoryStore(tmp_path / "metrics.sqlite")
    entry = bench.run_bench(recipe, GenerationSettings(max_new_tokens=5, seed=4), runs=3, warmup=1,
                            on_step=lambda i, total, m: steps.append((i, total, m["phase"])), model=tiny_model,
                            history=history, concurrency=2, request_rate=math.inf, num_requests=6,
                            slo=Slo(ttft_ms=60_000, tpot_ms=60_000))
    lo = entry["load"]
    assert lo["mode"] == "poisson" and lo["request_rate"] == math.inf and lo["concurrency"] == 2
    assert lo["requests"] == {"scheduled": 6, "sent": 6, "finished": 6, "failed": 0, "cut": 0}
    assert 1 <= lo["max_in_flight"] <= 2 and lo["ended_by"] == "count"
    assert lo["goodput"]["requests_ok"] == 6 and lo["goodput"]["share"] == 1.0  # a minute each: every one meets it
    assert entry["runs"] == 6 and entry["ttft_ms"]["n"] == 6 and entry["new_tokens"] == 30  # exactly 5 each
    assert lo["ttft_ms"]["p50"] == pytest.approx(entry["ttft_ms"]["p50"])
    assert lo["throughput_tok_s"] == pytest.approx(30 / lo["duration_s"])
    # Progress: the warm-up (one request), then every measured one, each counted against the same total.
    assert [(i, total) for i, total, _ in steps] == [(i, 7) for i in range(1, 8)]
    assert [phase for *_, phase in steps] == ["warmup"] + ["measure"] * 6
    assert len(history.recent()) == 6  # the measured requests, not the warm-up


def test_the_closed_mode_reports_its_load_too(recipe, tiny_model):
    entry = bench.run_bench(recipe, GenerationSettings(max_new_tokens=4), runs=2, warmup=0, model=tiny_model,
                            concurrency=2, slo=Slo(ttft_ms=60_000))
    lo = entry["load"]
    assert lo["mode"] == "closed" and lo["request_rate"] is None and lo["concurrency"] == 2
    assert lo["requests"] == {"scheduled": 4, "sent": 4, "finished": 4, "failed": 0, "cut": 0}
    assert lo["goodput"]["requests_ok"] == 4 and lo["goodput"]["tpot_slo_ms"] is None
    assert entry["ttft_ms"]["p95"] is not None


def test_the_closed_mode_stops_sending_at_the_duration(recipe, tiny_model):
    # 2 users x 500 runs would take many seconds; after 1 s no user sends another.
    entry = bench.run_bench(recipe, GenerationSettings(max_new_tokens=2), runs=500, warmup=0, model=tiny_model,
                            concurrency=2, duration_s=1.0)
    lo = entry["load"]
    assert lo["ended_by"] == "duration" and lo["duration_limit_s"] == 1.0
    assert 2 <= lo["requests"]["sent"] == lo["requests"]["finished"] < lo["requests"]["scheduled"] == 1000


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"request_rate": 0}, "request-rate"),
    ({"request_rate": -2.0}, "request-rate"),
    ({"request_rate": 1.0, "num_requests": 0}, "num-requests"),
    ({"num_requests": 5}, "num-requests"),  # the closed mode counts --runs
    ({"duration_s": 0}, "duration-s"),
    ({"request_rate": 1.0, "duration_s": -1.0}, "duration-s"),
    ({"request_rate": 1.0, "concurrency": 0}, "concurrency"),
])
def test_bad_load_settings_are_refused_before_building(kwargs, field):
    missing = Recipe(model="/no/such/model", device="cpu")  # building it would fail: the check comes first
    with pytest.raises(RecipeError) as caught:
        bench.run_bench(missing, GenerationSettings(max_new_tokens=2), **kwargs)
    assert caught.value.field == field


def test_sweep_gives_one_entry_per_rate_in_order(recipe, tiny_model):
    steps = []
    entries = bench.sweep([recipe], [1], GenerationSettings(max_new_tokens=3), runs=1, warmup=0, model=tiny_model,
                          request_rates=[50.0, math.inf], num_requests=3,
                          on_step=lambda i, total, m: steps.append((i, total)))
    assert [e["load"]["request_rate"] for e in entries] == [50.0, math.inf]
    assert steps == [(i, 6) for i in range(1, 7)]


def test_the_tradeoff_compares_batch_sizes_at_one_rate():
    def entry(batch, rate, tok_s):
        return {"batch_size": batch, "throughput_tok_s": tok_s, "e2e_ms": {"p50": 100.0}, "tpot_ms": {"p50": 1.0},
                "load": {"request_rate": rate}}

    lines = bench.tradeoff([entry(1, 2.0, 10.0), entry(1, 8.0, 20.0), entry(4, 2.0, 30.0)])
    assert len(lines) == 1 and lines[0].startswith("static at 2 req/s, batch 4: 3.0× the tokens per second of batch 1")
