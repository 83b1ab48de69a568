"""The engine never leaves a request waiting: a close racing submit, a worker that fails, a continuous batcher
that fails and the next one that serves; requests longer than the context or than a batch row's reserve."""

from __future__ import annotations

import threading
import time

import pytest
from scripted import Scripted

from workbench.conversation import BadMessage
from workbench.recipe import GenerationSettings
from workbench.serving.engine import ContextOverflow, Engine

GREEDY = GenerationSettings(max_new_tokens=3, ignore_eos=True)
WAIT_S = 30  # far more than any request here takes: a request still waiting then is a hang


class Batcher:
    """A continuous batcher on its own thread that serves rows one token a step; ``fail_after`` steps, it fails."""

    def __init__(self, model: ContinuousScripted, listener, fail_after: int | None):
        self.model, self.listener, self.fail_after = model, listener, fail_after
        self.failed: str | None = None
        self.tokens_per_request = model.tokens_per_request
        self.rows: list = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def add(self, row) -> None:
        if self.failed:
            raise RuntimeError(self.failed)
        with self.lock:
            self.rows.append(row)
        self.listener.admitted(row, time.perf_counter())

    def _run(self) -> None:
        steps = 0
        while not self._stop.is_set():
            time.sleep(0.002)
            with self.lock:
                rows = [r for r in self.rows if r.open]
            if not rows:
                continue
            steps += 1
            if self.fail_after is not None and steps > self.fail_after:
                self.failed = "continuous batching failed: scripted fault"
                for row in rows:
                    self.listener.finished(row, self.failed)
                return
            for row in rows:
                self.listener.token(row, (row.prompt_ids[-1] + len(row.ids) + 1) % 50 or 1, time.perf_counter())

    def close(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        with self.lock:
            rows = [r for r in self.rows if r.open]
        for row in rows:
            self.listener.finished(row, "closed")


class ContinuousScripted(Scripted):
    """Scripted, with continuous batching; each batcher it starts fails after the steps ``failures`` pops."""

    def __init__(self, failures: list[int | None] | None = None, tokens_per_request: int = 1024):
        super().__init__()
        self.failures = list(failures or [])
        self.tokens_per_request = tokens_per_request
        self.batchers: list[Batcher] = []

    def scheduler_problem(self, scheduler):
        return None

    def continuous(self, max_requests, listener):
        batcher = Batcher(self, listener, self.failures.pop(0) if self.failures else None)
        self.batchers.append(batcher)
        return batcher


class Windowed(Scripted):
    """Scripted, with a context window; every turn of a conversation counts in its prompt."""

    def __init__(self, context: int):
        super().__init__()
        self.context = context

    def encode_chat(self, messages):
        return [1 + ord(c) % 40 for m in messages for c in m["content"]]

    @property
    def context_length(self):
        return self.context


def test_every_submitted_request_ends_when_close_races_submit():
    for _ in range(20):
        engine = Engine(Scripted(step_s=0.0005), batch_size=2)
        accepted, start = [], threading.Barrier(5)

        def client():
            start.wait()
            for _ in range(30):
                try:
                    accepted.append(engine.submit("ab", GREEDY))
                except RuntimeError:
                    return  # closed: refused, never left waiting

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        start.wait()
        engine.close()
        for t in threads:
            t.join()
        assert all(r.done.wait(WAIT_S) for r in accepted)
        assert {r.result().finish_reason for r in accepted} <= {"length", "error"}


def test_when_the_worker_fails_every_queued_request_ends_with_the_error():
    gate = threading.Event()
    engine = Engine(Scripted(gate=gate))
    running = engine.submit("ab", GREEDY)
    while running.started is None:  # the worker holds it in its (gated) generate call
        time.sleep(0.001)
    queued = [engine.submit("cd", GREEDY) for _ in range(3)]

    def broken(first):
        raise RuntimeError("scheduler bug")

    engine._collect = broken
    gate.set()
    assert running.result(WAIT_S).error is None
    for request in queued:
        result = request.result(WAIT_S)
        assert result.finish_reason == "error" and "scheduler bug" in result.error
    with pytest.raises(RuntimeError, match="closed"):
        engine.submit("ab", GREEDY)


def test_a_failed_continuous_batcher_ends_its_requests_and_a_fresh_one_serves_the_next():
    model = ContinuousScripted(failures=[1])
    engine = Engine(model, batch_size=4, scheduler="continuous")
    try:
        failed = engine.generate("ab", GenerationSettings(max_new_tokens=5, ignore_eos=True))
        assert failed.finish_reason == "error" and "scripted fault" in failed.error
        served = engine.generate("ab", GenerationSettings(max_new_tokens=5, ignore_eos=True))
    finally:
        engine.close()
    assert served.error is None and served.new_tokens == 5
    assert len(model.batchers) == 2 and model.batchers[0].failed and not model.batchers[1].failed


def test_a_request_longer_than_a_batch_row_s_reserve_is_served_on_its_own():
    model = ContinuousScripted(tokens_per_request=8)
    engine = Engine(model, batch_size=4, scheduler="continuous")
    try:
        short = engine.generate("ab", GenerationSettings(max_new_tokens=4, ignore_eos=True))
        long = engine.generate("ab", GenerationSettings(max_new_tokens=20, ignore_eos=True))
    finally:
        engine.close()
    assert short.new_tokens == 4 and long.new_tokens == 20 and long.error is None
    assert model.calls == [1]  # only the long one ran through the static path
    assert len(model.batchers[0].rows) == 1


def test_a_request_over_the_context_is_refused_at_submit_and_the_engine_serves_on():
    engine = Engine(Windowed(context=16))
    try:
        with pytest.raises(ContextOverflow) as refused:
            engine.submit("x" * 40, GREEDY)
        assert "40 tokens" in str(refused.value) and "context of 16" in str(refused.value)
        with pytest.raises(ContextOverflow, match="lower max new tokens below 16"):
            engine.submit("ab", GenerationSettings(max_new_tokens=16))
        assert engine.generate("x" * 13, GREEDY).new_tokens == 3  # 13 + 3 = 16 fits exactly
    finally:
        engine.close()


def test_fit_drops_the_oldest_turns_keeps_the_system_message_and_says_how_many():
    engine = Engine(Windowed(context=40))
    try:
        turns = [{"role": "system", "content": "s" * 4}]
        for i in range(6):
            turns += [{"role": "user", "content": f"{i}" * 5}, {"role": "assistant", "content": f"{i}" * 5}]
        turns.append({"role": "user", "content": "last"})
        settings = GenerationSettings(max_new_tokens=20)
        kept, dropped = engine.fit(turns, settings)
        assert kept[0] == turns[0] and kept[-1] == turns[-1] and kept[1]["role"] == "user"
        assert dropped == len(turns) - len(kept) > 0
        assert len(engine.encode_chat(kept)) + 20 <= 40
        assert engine.fit(turns[:1] + turns[-1:], settings) == (turns[:1] + turns[-1:], 0)  # fits already
    finally:
        engine.close()


@pytest.mark.parametrize("messages, why", [("hi \udcff there", "not valid UTF-8"),
                                           ([{"role": "user", "content": None}], "has no text")])
def test_a_message_that_is_not_text_is_refused_at_submit(messages, why):
    engine = Engine(Scripted())
    try:
        with pytest.raises(BadMessage, match=why):
            engine.submit(messages, GREEDY)
        assert engine.generate("ab", GREEDY).new_tokens == 3
    finally:
        engine.close()
