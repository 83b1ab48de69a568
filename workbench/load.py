"""Open-loop load: Poisson arrivals, a cap on requests in flight, a time bound, and goodput.

The request-rate mode of ``workbench bench`` (``bench.run_bench(..., request_rate=R)``), as vLLM's serving
benchmark (``--request-rate``, ``--max-concurrency``, ``--goodput``) and AIPerf define it:

- **Arrivals**: request k arrives at the sum of k exponential gaps of mean 1/R (the first at 0), drawn from a
  ``random.Random(seed)``, so that a run repeats; R = inf sends every request at once.
- **Sent**: the moment a request is handed over (to the engine: for a server, the moment its HTTP request
  starts). TTFT and E2E are timed from it, as vLLM times them. With a cap of N requests in flight, a request
  that arrives while N are in flight waits for one of them to end: that wait, from its scheduled arrival to its
  send, is client-side queueing, reported on its own as ``send_wait_ms`` and never part of TTFT. Queueing
  inside the engine or the server after the send is part of TTFT, as a user sees it.
- **Bounds**: at most ``num_requests`` requests (default ``DEFAULT_NUM_REQUESTS``) and, with ``duration_s``, none
  sent later than that many seconds after the start; requests still in flight then get ``grace_s`` more to
  finish, after which they are stopped and counted as ``cut`` (never in the latency figures).
- **Goodput**: the finished requests whose TTFT and TPOT both meet the objectives given (``Slo``; an objective
  not given is met by every request, and so is TPOT of a one-token answer, as in vLLM); ``share`` = ok /
  finished, ``req_s`` = ok / the round's duration.
- **achieved_rate** = (sent - 1) / (last send - first send): the rate of the gaps between sends, which a cap
  or a slow sender lowers below the rate asked; None with fewer than two sends or all at one moment.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .latency import itl, summarize, tpot
from .recipe import RecipeError

DEFAULT_NUM_REQUESTS = 20  # requests per rate when --num-requests is not given
MAX_NUM_REQUESTS = 100_000
DEFAULT_GRACE_S = 30.0  # after --duration-s, how long requests in flight may still take before they are cut
STOP_WAIT_S = 10.0  # after a cut, how long a stopped request may take to end (one more token, a closed stream)
POLL_S = 0.05  # how often a wait for an arrival or a free slot checks stop()
PERCENTILES = ("p50", "p90", "p95", "p99")


@dataclass(frozen=True)
class Slo:
    """Service-level objectives of one request, for goodput (vLLM's ``--goodput ttft:X tpot:Y``).

    Args:
        ttft_ms: the longest time to first token a request may take, in ms (None: no objective).
        tpot_ms: the longest mean time per output token after the first, in ms (None: no objective).
    """

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def __post_init__(self):
        for name, value in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms)):
            if value is not None and not _positive(value):
                raise RecipeError(f"{name}-slo-ms", f"the {name.upper()} objective must be a number of "
                                                    f"milliseconds above 0, got {value!r}")
        if self.ttft_ms is None and self.tpot_ms is None:
            raise RecipeError("ttft-slo-ms", "give a TTFT objective (--ttft-slo-ms), a TPOT one (--tpot-slo-ms) "
                                             "or both")

    def met(self, ttft_s: float | None, tpot_s: float | None) -> bool:
        """Whether a finished request meets every objective given (a TPOT of None, one token, meets any)."""
        if self.ttft_ms is not None and (ttft_s is None or ttft_s * 1000 > self.ttft_ms):
            return False
        return self.tpot_ms is None or tpot_s is None or tpot_s * 1000 <= self.tpot_ms


def _positive(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0
            and not math.isinf(value))


def check_request_rate(rate) -> float:
    """Raise RecipeError (``--request-rate``) unless ``rate`` is requests per second above 0 (inf: all at once)."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:  # NaN fails too
        raise RecipeError("request-rate", f"the request rate must be requests per second above 0, or inf (all at "
                                          f"once), got {rate!r}")
    return float(rate)


def check_num_requests(n) -> int:
    """Raise RecipeError (``--num-requests``) unless ``n`` is an integer from 1 to MAX_NUM_REQUESTS."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NUM_REQUESTS:
        raise RecipeError("num-requests", f"the number of requests must be an integer from 1 to "
                                          f"{MAX_NUM_REQUESTS}, got {n!r}")
    return n


def check_duration(seconds) -> float:
    """Raise RecipeError (``--duration-s``) unless ``seconds`` is a finite number above 0."""
    if not _positive(seconds):
        raise RecipeError("duration-s", f"the duration must be a number of seconds above 0, got {seconds!r}")
    return float(seconds)


def arrival_times(n: int, rate: float, seed: int = 0) -> list[float]:
    """Seconds after the start at which each of ``n`` requests arrives: a Poisson process of ``rate`` per second.

    The first arrives at 0, each next one an exponential gap of mean 1 / ``rate`` later (vLLM's schedule);
    ``rate`` = inf puts every arrival at 0. The same seed gives the same schedule.
    """
    check_num_requests(n)
    rate = check_request_rate(rate)
    if math.isinf(rate):
        return [0.0] * n
    draw = random.Random(seed)
    times, t = [], 0.0
    for k in range(n):
        if k:
            t += draw.expovariate(rate)
        times.append(t)
    return times


class Handle(Protocol):
    """What ``send`` returns: a request in flight (the engine's ``Request``)."""

    def result(self, timeout: float | None = None): ...

    def stop(self) -> None: ...


@dataclass
class Sent:
    """One request that was sent: when it was due, when it went, and how it ended."""

    index: int
    scheduled_s: float  # its arrival, seconds after the start
    sent_s: float  # when it was handed over, seconds after the start
    handle: Handle
    ended_s: float | None = None  # when its result came back
    result: object = None  # the handle's result (a GenerationResult); None if it never ended
    cut: bool = False  # still in flight after the grace: stopped, its figures not counted

    @property
    def wait_s(self) -> float:
        """Client-side queueing: from the scheduled arrival to the send (a cap's wait, a late sender)."""
        return max(0.0, self.sent_s - self.scheduled_s)


@dataclass
class LoadRun:
    """One measured round of load: what was scheduled, sent, and how each request ended.

    ``finished`` and ``failed`` hold the results of the requests that ended (cut ones in neither); ``wall_s``
    runs from the start to the last request's end (or the cut).
    """

    mode: str  # "closed" (users, each sending after its previous answer) or "poisson" (open-loop arrivals)
    request_rate: float | None  # asked (poisson), None (closed)
    concurrency: int | None  # users (closed), or the cap on requests in flight (poisson; None = no cap)
    scheduled: int  # requests the round would send without a time bound
    send_times: list[float]  # seconds after the start, one per request sent
    finished: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    cut: int = 0
    wall_s: float = 0.0
    send_waits: list[float] = field(default_factory=list)
    max_in_flight: int = 0
    duration_s: float | None = None  # the time bound asked (None: none)
    ended_by: str = "count"  # "count" (every scheduled request sent), "duration" or "stop"

    @property
    def sent(self) -> int:
        return len(self.send_times)

    def report(self, slo: Slo | None = None) -> dict:
        """The round's ``load`` object (module docstring): counts, rates, percentiles, goodput."""
        done, wall = self.finished, self.wall_s
        new_tokens = sum(r.new_tokens for r in done)
        per_s = (lambda count: count / wall if wall > 0 else None)
        return {
            "mode": self.mode,
            "request_rate": self.request_rate,
            "achieved_rate": achieved_rate(self.send_times),
            "concurrency": self.concurrency,
            "requests": {"scheduled": self.scheduled, "sent": self.sent, "finished": len(done),
                         "failed": len(self.failed), "cut": self.cut},
            "ended_by": self.ended_by,
            "duration_limit_s": self.duration_s,
            "duration_s": wall,
            "max_in_flight": self.max_in_flight,
            "request_throughput": per_s(len(done)),
            "throughput_tok_s": per_s(new_tokens),
            "ttft_ms": percentiles_ms(r.ttft_s for r in done),
            "tpot_ms": percentiles_ms(r.tpot_s for r in done),
            "e2e_ms": percentiles_ms(r.e2e_s for r in done),
            "itl_ms": percentiles_ms(gap for r in done for gap in itl(r.token_times)),
            "send_wait_ms": percentiles_ms(self.send_waits),
            "goodput": goodput(done, slo, wall),
            "errors": list(dict.fromkeys(str(r.error) for r in self.failed))[:3],
        }


def achieved_rate(send_times: Sequence[float]) -> float | None:
    """(sent - 1) / (last send - first send); None with fewer than two sends or no time between them."""
    if len(send_times) < 2:
        return None
    span = max(send_times) - min(send_times)
    return (len(send_times) - 1) / span if span > 0 else None


def goodput(finished: Iterable, slo: Slo | None, duration_s: float) -> dict | None:
    """``{ttft_slo_ms, tpot_slo_ms, requests_ok, share, req_s}`` of finished results (``ttft_s``, ``new_tokens``,
    ``e2e_s``), or None without objectives. ``share`` = ok / finished (None when none finished)."""
    if slo is None:
        return None
    finished = list(finished)
    ok = sum(slo.met(r.ttft_s, tpot(r.new_tokens, r.ttft_s, r.e2e_s)) for r in finished)
    return {"ttft_slo_ms": slo.ttft_ms, "tpot_slo_ms": slo.tpot_ms, "requests_ok": ok,
            "share": ok / len(finished) if finished else None,
            "req_s": ok / duration_s if duration_s > 0 else None}


def summary_ms(seconds: Iterable[float | None]) -> dict:
    """``latency.summarize`` of values in seconds, as milliseconds (n stays a count)."""
    summary = summarize(list(seconds))
    return {k: v if k == "n" or v is None else v * 1000 for k, v in summary.items()}


def percentiles_ms(seconds: Iterable[float | None]) -> dict:
    """n, mean and p50 / p90 / p95 / p99 in ms."""
    summary = summary_ms(seconds)
    return {k: summary[k] for k in ("n", "mean", *PERCENTILES)}


def drive(
    send: Callable[[int], Handle],
    arrivals: Sequence[float],
    *,
    cap: int | None = None,
    duration_s: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    stop: Callable[[], bool] | None = None,
    on_end: Callable[[Sent], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[Sent], float, int, str]:
    """Send request k at ``arrivals[k]`` seconds after the start (open loop), at most ``cap`` in flight.

    Args:
        send: hands request k over and returns its handle at once (``engine.submit``); an exception it raises
            stops the round (requests in flight are stopped) and is raised here.
        arrivals: seconds after the start, ascending (``arrival_times``).
        cap: most requests in flight; one that arrives while ``cap`` are in flight waits for a free slot.
        duration_s: no request is sent later than this; those in flight get ``grace_s`` more, then are cut.
        stop: polled while waiting; once True nothing more is sent and those in flight are cut.
        on_end: called with each request that ended (from the thread that waited for it, one at a time).
        clock: seconds (``time.perf_counter``).

    Returns:
        (the requests sent in order, the wall time from the start to the last end, the most in flight at
        once, what ended the sending: "count", "duration" or "stop").
    """
    slots = threading.BoundedSemaphore(cap) if cap else None
    lock, report_lock = threading.Lock(), threading.Lock()
    ended = threading.Condition(lock)
    sent: list[Sent] = []
    flight = {"now": 0, "max": 0}
    waiters: list[threading.Thread] = []
    begin = clock()
    since = lambda: clock() - begin  # noqa: E731
    stopped = (lambda: False) if stop is None else stop

    def wait_for(item: Sent) -> None:
        try:
            item.result = item.handle.result()
        finally:
            with ended:
                item.ended_s = since()
                flight["now"] -= 1
                ended.notify_all()
            if slots is not None:
                slots.release()
        if on_end is not None and not item.cut:
            with report_lock:
                on_end(item)

    ended_by = "count"
    try:
        for k, at in enumerate(arrivals):
            if duration_s is not None and at > duration_s:
                ended_by = "duration"
                break
            if not _pause_until(at, since, stopped) or not _take(slots, since, stopped, duration_s):
                ended_by = "stop" if stopped() else "duration"
                break
            try:
                handle = send(k)
            except BaseException:
                if slots is not None:
                    slots.release()
                raise
            item = Sent(k, at, since(), handle)
            with lock:
                sent.append(item)
                flight["now"] += 1
                flight["max"] = max(flight["max"], flight["now"])
            waiter = threading.Thread(target=wait_for, args=(item,), name=f"load-request-{k}", daemon=True)
            waiters.append(waiter)
            waiter.start()
        if ended_by == "count" and stopped():
            ended_by = "stop"
    except BaseException:
        _cut(sent, lock)
        raise
    deadline = None if duration_s is None else duration_s + grace_s
    if ended_by == "stop":
        deadline = since()
    with ended:
        while flight["now"] and (deadline is None or since() < deadline):
            if stopped():
                break
            ended.wait(POLL_S if deadline is None else min(POLL_S, max(0.0, deadline - since())))
    ends = [s.ended_s for s in sent if s.ended_s is not None]
    wall = max(ends, default=0.0)
    if flight["now"]:
        wall = since()  # the cut ends the round
        _cut(sent, lock)
        give_up = clock() + STOP_WAIT_S
        for waiter in waiters:
            waiter.join(max(0.0, give_up - clock()))
    return sent, wall, flight["max"], ended_by


def _pause_until(at: float, since: Callable[[], float], stopped: Callable[[], bool]) -> bool:
    """Sleep until ``at`` seconds after the start; False if ``stopped()`` first."""
    while True:
        if stopped():
            return False
        left = at - since()
        if left <= 0:
            return True
        time.sleep(min(left, POLL_S))


def _take(slots, since, stopped, duration_s: float | None) -> bool:
    """A free slot under the cap (at once without one); False if stopped or past the duration while waiting."""
    if slots is None:
        return not (duration_s is not None and since() > duration_s)
    while not slots.acquire(timeout=POLL_S):
        if stopped() or (duration_s is not None and since() > duration_s):
            return False
    if stopped() or (duration_s is not None and since() > duration_s):
        slots.release()
        return False
    return True


def _cut(sent: list[Sent], lock: threading.Lock) -> None:
    """Stop every request still in flight; they count as cut."""
    with lock:
        for item in sent:
            if item.ended_s is None:
                item.cut = True
                item.handle.stop()


def run_of(mode: str, sent: list[Sent], wall_s: float, max_in_flight: int, ended_by: str, *, scheduled: int,
           request_rate: float | None, concurrency: int | None, duration_s: float | None) -> LoadRun:
    """A ``LoadRun`` of what ``drive`` returned: each request finished, failed (its result has an ``error``) or
    cut."""
    ended = [s for s in sent if not s.cut and s.result is not None]
    return LoadRun(
        mode=mode, request_rate=request_rate, concurrency=concurrency, scheduled=scheduled,
        send_times=[s.sent_s for s in sent],
        finished=[s.result for s in ended if not getattr(s.result, "error", None)],
        failed=[s.result for s in ended if getattr(s.result, "error", None)],
        cut=sum(s.cut or s.result is None for s in sent), wall_s=wall_s, send_waits=[s.wait_s for s in sent],
        max_in_flight=max_in_flight, duration_s=duration_s, ended_by=ended_by,
    )
