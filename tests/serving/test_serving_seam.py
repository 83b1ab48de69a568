"""The serving layer and the quality measures through the runtime seam alone: a scripted runtime with no model.

If serving or quality reached past ``LoadedModel`` into a transformers model, these tests would fail: the
scripted runtime has nothing else.
"""

from __future__ import annotations

import math
import threading
import time

import pytest
from scripted import EOS, Scripted

from workbench import quality
from workbench.recipe import GenerationSettings, Recipe
from workbench.runtimes.base import complete
from workbench.serving.engine import Engine

@pytest.fixture
def scripted():
    return Scripted()


def test_timing_and_text_come_from_the_runtime_alone(scripted):
    engine = Engine(scripted)
    try:
        result = engine.generate("abc", GenerationSettings(max_new_tokens=6, ignore_eos=True))
    finally:
        engine.close()
    prompt = scripted.encode_chat([{"role": "user", "content": "abc"}])
    expected = [(prompt[-1] + step) % 50 or 1 for step in range(1, 7)]
    assert result.token_ids == expected and result.text == scripted.decode(expected)
    assert result.new_tokens == 6 == len(result.token_times) and result.prompt_tokens == len(prompt)
    assert all(b > a for a, b in zip(result.token_times, result.token_times[1:]))
    assert result.ttft_s == result.token_times[0] and result.e2e_s == result.token_times[-1]
    assert 0 <= result.queue_s < result.ttft_s and result.finish_reason == "length"
    assert result.recipe_key == scripted.recipe.key()


def test_eos_ends_an_answer_and_is_its_finish_reason(scripted):
    engine = Engine(scripted)
    try:
        result = engine.generate("!", GenerationSettings(max_new_tokens=6))
    finally:
        engine.close()
    assert result.token_ids == [EOS] and result.finish_reason == "eos" and result.text == ""


def test_a_batch_is_one_generate_call_and_its_key_carries_the_batch_size():
    model = Scripted(gate=threading.Event())
    engine = Engine(model, batch_size=3, batch_window_s=0.5)
    try:
        handles = [engine.submit(p, GenerationSettings(max_new_tokens=4, ignore_eos=True)) for p in ("ab", "cd", "ef")]
        model.gate.set()
        results = [h.result(timeout=30) for h in handles]
    finally:
        engine.close()
    assert model.calls == [3] and [r.batch_size for r in results] == [3, 3, 3]
    assert {r.recipe_key for r in results} == {Recipe(model="scripted", device="cpu", batch_size=3).key()}


def test_stop_ends_one_request_after_its_next_token_and_the_batch_runs_on():
    model = Scripted(step_s=0.02)
    engine = Engine(model, batch_size=2, batch_window_s=0.5)
    try:
        settings = GenerationSettings(max_new_tokens=40, ignore_eos=True)
        first, second = engine.submit("ab", settings), engine.submit("cd", settings)
        for event in first:
            if event.index == 2:
                first.stop()
        stopped, kept = first.result(timeout=30), second.result(timeout=30)
    finally:
        engine.close()
    assert stopped.finish_reason == "stopped" and 3 <= stopped.new_tokens < 40
    assert kept.finish_reason == "length" and kept.new_tokens == 40


def test_a_runtime_failure_is_each_request_s_error_and_the_worker_survives(scripted):
    engine = Engine(scripted)
    try:
        scripted.fail = True
        failed = engine.generate("ab", GenerationSettings(max_new_tokens=3))
        scripted.fail = False
        ok = engine.generate("ab", GenerationSettings(max_new_tokens=3, ignore_eos=True))
    finally:
        engine.close()
    assert failed.finish_reason == "error" and "scripted failure" in failed.error
    assert ok.new_tokens == 3 and ok.error is None


def test_continuous_scheduling_on_a_runtime_without_it_fails_each_request_with_the_reason(scripted):
    assert scripted.scheduler_problem("continuous") and scripted.scheduler_problem("static") is None
    engine = Engine(scripted, batch_size=2, scheduler="continuous")
    try:
        greedy = engine.generate("ab", GenerationSettings(max_new_tokens=3))
        sampled = engine.generate("ab", GenerationSettings(max_new_tokens=3, temperature=0.7, ignore_eos=True))
    finally:
        engine.close()
    assert greedy.finish_reason == "error" and "no continuous batching" in greedy.error
    assert sampled.error is None and sampled.new_tokens == 3  # sampled requests take the static path


def test_finished_requests_go_to_the_recorder_with_the_engine_s_recipe(scripted):
    seen = []

    class Recorder:
        def record(self, recipe, result, origin, started_at):
            seen.append((recipe, result.new_tokens, origin, started_at))

    engine = Engine(scripted, Recorder(), batch_size=2)
    try:
        engine.generate("ab", GenerationSettings(max_new_tokens=3, ignore_eos=True), origin="test")
        engine.submit("ab", GenerationSettings(max_new_tokens=2, ignore_eos=True), record=False).result(timeout=30)
    finally:
        engine.close()
    ((recipe, tokens, origin, started_at),) = seen  # the unrecorded request is not there
    assert recipe.batch_size == 2 and tokens == 3 and origin == "test" and abs(started_at - time.time()) < 60


def test_quality_measures_run_through_the_seam(scripted):
    assert quality.perplexity(scripted, "some evaluation text", window=8, stride=4) == pytest.approx(math.e)
    ids = complete(scripted, [5, 6], GenerationSettings(max_new_tokens=4))
    assert ids == [(6 + step) % 50 or 1 for step in range(1, 5)]
    assert quality.greedy_tokens(scripted, ["!"], max_new_tokens=5) == [[EOS]]  # ends at EOS
