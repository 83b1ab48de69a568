"""A measurement leases a slot's shared model: the chat reply in flight finishes untouched, chat requests meanwhile
are told the model is busy, the attention implementation never changes under the chat, and the chat serves again
afterwards. Also: a build that fails on the disk is one line."""

from __future__ import annotations

import threading
import time

import pytest
from scripted import Scripted

from workbench import runtimes
from workbench.recipe import GenerationSettings, Recipe
from workbench.serving.engine import Engine
from workbench.store import StoreError
from workbench.ui import benchmark, changes, jobs, leases, shared

PROMPT = "What is the capital of France?"
CHAT = GenerationSettings(max_new_tokens=200, ignore_eos=True)  # long enough to be in flight when a sweep starts
SHORT = GenerationSettings(max_new_tokens=8, ignore_eos=True)
WAIT_S = 120


@pytest.fixture
def slot(tiny_model_dir, history):
    slot = shared.ModelSlot(Recipe(model=str(tiny_model_dir), device="cpu"), history=history)
    assert slot.wait(WAIT_S) and slot.ready, slot.error
    yield slot
    slot.release()


@pytest.fixture
def slowed(slot):
    """Every forward pass of the slot's model a little slower, so that a chat reply is still streaming while a
    measurement starts; the module's attention implementation is sampled the whole time."""
    module = slot.model.module
    handle = module.register_forward_pre_hook(lambda *args: time.sleep(0.003))
    yield module
    handle.remove()


class AttentionWatch:
    """Samples a module's attention implementation while ``watching`` is set (a chat reply in flight)."""

    def __init__(self, module):
        self.module, self.seen, self.watching = module, set(), threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.watching.is_set():
                self.seen.add(self.module.config._attn_implementation)
            time.sleep(0.0005)

    def close(self) -> set:
        self._stop.set()
        self._thread.join(5)
        return self.seen


def first_token(request) -> None:
    next(iter(request))  # streaming has begun: the reply is in flight


def until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_continuous_sweep_never_runs_under_a_chat_reply_and_the_chat_is_told_the_model_is_busy(slot, slowed):
    slowed.set_attn_implementation("eager")  # continuous batching switches eager to paged|eager while it runs
    expected = slot.engine.generate(PROMPT, CHAT).token_ids
    watch = AttentionWatch(slowed)
    chat = slot.engine.submit(PROMPT, CHAT)
    watch.watching.set()
    first_token(chat)
    spec = benchmark.SweepSpec(batch_sizes=(1, 2), concurrency=2, max_new_tokens=8, runs=1,
                               schedulers=("continuous",))
    job = benchmark.start_sweep(jobs.JobRegistry(), slot.model, spec)
    until(lambda: slot.busy is not None or job.done)
    assert slot.busy == job.title  # the sweep holds the model; the reply in flight goes on
    refused = slot.engine.submit(PROMPT, SHORT)  # queued behind the reply, reached while the sweep runs
    answer = chat.result(WAIT_S)
    watch.watching.clear()
    assert answer.error is None and answer.token_ids == expected
    busy = refused.result(WAIT_S)
    assert busy.finish_reason == "error" and "is busy: " + job.title in busy.error and "Benchmark page" in busy.error
    assert job.wait(WAIT_S) and job.error is None and not job.stopped, job.error
    assert [e["requests"] for e in job.result["results"]] == [2, 2]
    assert slot.busy is None
    assert watch.close() == {"eager"}  # never switched while the chat engine was serving
    assert slowed.config._attn_implementation == "eager"  # and given back once the sweep ended
    after = slot.engine.generate(PROMPT, CHAT)
    assert after.error is None and after.token_ids == expected


def test_what_changed_measures_after_the_chat_reply_in_flight_and_refuses_chat_meanwhile(slot, slowed):
    expected = slot.engine.generate(PROMPT, CHAT).token_ids
    chat = slot.engine.submit(PROMPT, CHAT)
    first_token(chat)
    model = slot.model
    job = jobs.JobRegistry().start("measure", lambda j: changes.measure_pair(j, model, model, quick=True),
                                   title="Measuring tiny")
    until(lambda: slot.busy is not None or job.done)
    assert slot.busy == "Measuring tiny"
    waited = [m.get("text") for _, m in job.history]
    assert "Waiting for 1 chat reply on this model to finish" in waited
    refused = slot.engine.submit(PROMPT, SHORT)
    answer = chat.result(WAIT_S)
    assert answer.error is None and answer.token_ids == expected
    assert "is busy: Measuring tiny" in refused.result(WAIT_S).error
    assert job.wait(WAIT_S) and job.error is None, job.error
    assert job.result["recipe"]["decode_tok_s"] > 0 and job.result["recipe"]["perplexity"] > 0
    assert slot.busy is None
    assert slot.engine.generate(PROMPT, CHAT).token_ids == expected


# The lease on its own, with a scripted model ---------------------------------------------------------------


class Closing(Scripted):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.closed = threading.Event()

    def close(self):
        self.closed.set()


def test_stop_ends_a_lease_waiting_for_a_chat_reply_and_the_reply_is_unharmed():
    gate = threading.Event()
    model = leases.SharedModel(Scripted(gate=gate))
    engine = Engine(model)

    def measure(job):
        with leases.lease(model, "Benchmarking", stop=lambda: job.stopping,
                          on_wait=lambda text: job.on_step(0, 0, {"text": text})):
            return "measured"  # not reached: the chat reply holds the model until Stop

    try:
        chat = engine.submit("hello", SHORT)
        until(lambda: model.inner.calls)  # the reply is being generated (held at the gate)
        job = jobs.JobRegistry().start("bench", measure, title="Benchmarking")
        until(lambda: job.metrics.get("text"))
        assert job.metrics["text"] == "Waiting for 1 chat reply on this model to finish"
        assert model.busy == "Benchmarking"
        job.stop()
        assert job.wait(10) and job.stopped and job.result is None and model.busy is None
        gate.set()
        assert chat.result(10).error is None and chat.result().new_tokens == SHORT.max_new_tokens
        assert engine.generate("again", SHORT).error is None
    finally:
        gate.set()
        engine.close()


def test_close_waits_for_the_lease_and_an_unloaded_model_refuses_a_new_one():
    inner = Closing()
    model = leases.SharedModel(inner)
    closer = threading.Thread(target=model.close)
    with leases.lease(model, "Measuring") as own:
        assert own is inner
        closer.start()
        time.sleep(0.3)
        assert not inner.closed.is_set()  # the measurement still uses it
        with pytest.raises(leases.ModelBusy, match="is busy: Measuring"):
            model.nll([1, 2, 3], 1)
    closer.join(5)
    assert inner.closed.is_set()
    with pytest.raises(jobs.JobRefused, match="was unloaded"):
        with leases.lease(model, "Measuring"):
            pass


def test_leasing_two_models_holds_each_once_and_a_model_of_ones_own_is_not_leased():
    a, b = leases.SharedModel(Scripted()), leases.SharedModel(Scripted())
    own = Scripted()
    with leases.lease_all([b, a, b, own], "Measuring") as held:
        assert held == [b.inner, a.inner, b.inner, own]
        assert a.busy == b.busy == "Measuring"
    assert a.busy is None and b.busy is None


def test_a_second_lease_waits_for_the_first():
    model = leases.SharedModel(Scripted())
    order, waits = [], []

    def second():
        with leases.lease(model, "Measuring", on_wait=waits.append):
            order.append(("second", model.busy))

    with leases.lease(model, "Benchmarking"):
        thread = threading.Thread(target=second)
        thread.start()
        until(lambda: waits)
        assert waits == ["Waiting for Benchmarking to end: it has this model to itself"]
        order.append(("first", model.busy))
    thread.join(5)
    assert order == [("first", "Benchmarking"), ("second", "Measuring")] and model.busy is None


# A build that fails on the disk ----------------------------------------------------------------------------


def test_a_build_that_fails_on_the_disk_is_one_line(monkeypatch, history):
    message = "cannot write /ro/artifacts: the folder is read-only; set WORKBENCH_HOME to a writable folder"

    def build(*args, **kwargs):
        raise StoreError(message)

    monkeypatch.setattr(runtimes, "build", build)
    slot = shared.ModelSlot(Recipe(model="embedded", device="cpu"), history=history)
    assert slot.wait(10) and slot.failed and slot.error == message
