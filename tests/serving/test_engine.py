"""Engine: timing invariants, streaming, concurrency, stop, seeds, history — on a tiny random model."""

import threading

import pytest

from workbench.observe.history import HistoryStore
from workbench.recipe import GenerationSettings
from workbench.serving.engine import Engine

PROMPTS = ["What is the capital of France?", "Latency or throughput?", "Tell me about pruning.", "Hello!"]


@pytest.fixture(scope="module")
def engine(tiny_model):
    eng = Engine(tiny_model)
    yield eng
    eng.close()


def test_timing_invariants(engine):
    res = engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=24, ignore_eos=True))
    assert res.new_tokens == 24 == len(res.token_times) == len(res.token_ids)
    assert all(b > a for a, b in zip(res.token_times, res.token_times[1:]))
    assert res.ttft_s == res.token_times[0] and res.e2e_s == res.token_times[-1]
    assert 0 <= res.queue_s < res.ttft_s
    assert res.tpot_s == pytest.approx((res.e2e_s - res.ttft_s) / 23)
    assert res.decode_tok_s == pytest.approx(23 / (res.e2e_s - res.ttft_s))
    assert res.prompt_tokens == len(engine.encode_chat([{"role": "user", "content": PROMPTS[0]}]))
    assert res.finish_reason == "length" and res.error is None and res.cache == "miss"
    assert res.recipe_key == engine.recipe.key() == engine.model.recipe.key()


def test_streaming_yields_one_event_per_token_in_order(engine):
    handle = engine.submit(PROMPTS[1], GenerationSettings(max_new_tokens=16, ignore_eos=True))
    events = list(handle)
    res = handle.result()
    assert [e.index for e in events] == list(range(res.new_tokens))
    assert [e.token_id for e in events] == res.token_ids
    assert [e.t for e in events] == res.token_times
    # Deltas held back while a UTF-8 sequence is incomplete: what was streamed is always a prefix.
    assert res.text.startswith("".join(e.text for e in events))


def test_stream_matches_generate_on_plain_text(engine):
    # A tokenizer round trip of ordinary text: every delta is complete, so the stream equals the text.
    tok = engine.model.tokenizer
    ids = tok("The capital of France is Paris.")["input_ids"]
    shown = ""
    for i in range(1, len(ids) + 1):
        text = tok.decode(ids[:i], skip_special_tokens=True)
        assert text.startswith(shown)
        shown = text
    assert shown == "The capital of France is Paris."


def test_exactly_max_new_tokens_when_eos_is_ignored(engine):
    for n in (1, 2, 9):
        res = engine.generate(PROMPTS[2], GenerationSettings(max_new_tokens=n, ignore_eos=True))
        assert res.new_tokens == n
    one = engine.generate(PROMPTS[2], GenerationSettings(max_new_tokens=1, ignore_eos=True))
    assert one.tpot_s is None and one.decode_tok_s is None and one.ttft_s == one.e2e_s


def test_concurrent_greedy_requests_match_sequential(engine):
    settings = GenerationSettings(max_new_tokens=20, ignore_eos=True)
    sequential = [engine.generate(p, settings).token_ids for p in PROMPTS]
    results: dict[int, list[int]] = {}

    def worker(i):
        results[i] = engine.generate(PROMPTS[i], settings).token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(len(PROMPTS))] == sequential
    assert len({tuple(s) for s in sequential}) > 1  # the prompts really lead to different answers


def test_queue_time_counts_in_ttft(engine):
    settings = GenerationSettings(max_new_tokens=30, ignore_eos=True)
    first = engine.submit(PROMPTS[0], settings)
    second = engine.submit(PROMPTS[1], settings)
    a, b = first.result(), second.result()
    assert b.queue_s > 0 and b.ttft_s > b.queue_s
    # The second request waited for the whole first one.
    assert b.queue_s >= a.e2e_s - (second.submitted - first.submitted) - 1e-3


def test_stop_keeps_partial_answer_and_metrics(engine):
    handle = engine.submit(PROMPTS[3], GenerationSettings(max_new_tokens=400, ignore_eos=True))
    for event in handle:
        if event.index == 4:
            handle.stop()
    res = handle.result()
    assert res.finish_reason == "stopped"
    assert 5 <= res.new_tokens < 400
    assert len(res.token_times) == res.new_tokens and res.ttft_s == res.token_times[0]
    # The worker carries on with the next request.
    assert engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=3, ignore_eos=True)).new_tokens == 3


def test_seed_makes_sampling_reproducible(engine):
    s = lambda seed: GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=seed, ignore_eos=True)  # noqa: E731
    a = engine.generate(PROMPTS[0], s(7)).token_ids
    assert engine.generate(PROMPTS[0], s(7)).token_ids == a
    assert engine.generate(PROMPTS[0], s(8)).token_ids != a


def test_multi_turn_chat_uses_the_template(engine):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Again"},
    ]
    ids = engine.encode_chat(messages)
    text = engine.model.tokenizer.decode(ids)
    assert text.count("<|im_start|>") == 5 and text.endswith("<|im_start|>assistant\n")
    assert "Be brief." in text and "Again" in text


def test_a_failing_request_reports_an_error_and_the_worker_survives(engine):
    model = engine.model.module
    original = model.generate

    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    model.generate = broken
    try:
        res = engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=4))
    finally:
        del model.generate
    assert model.generate.__func__ is original.__func__
    assert res.finish_reason == "error" and "kernel exploded" in res.error and res.new_tokens == 0
    assert engine.generate(PROMPTS[0], GenerationSettings(max_new_tokens=2, ignore_eos=True)).new_tokens == 2


def test_every_request_is_recorded_in_history(tiny_model, tmp_path):
    store = HistoryStore(tmp_path / "metrics.sqlite")
    eng = Engine(tiny_model, store)
    try:
        res = eng.generate(PROMPTS[0], GenerationSettings(max_new_tokens=5, ignore_eos=True), origin="test")
    finally:
        eng.close()
    rows = store.recent()
    assert len(rows) == 1
    row = rows[0]
    assert row["recipe_key"] == tiny_model.recipe.key() and row["origin"] == "test"
    assert row["new_tokens"] == 5 and row["token_times"] == pytest.approx(res.token_times, abs=1e-6)
    assert row["ttft_s"] == pytest.approx(res.ttft_s) and row["tpot_s"] == pytest.approx(res.tpot_s)
    assert row["cache"] == "miss" and row["finish_reason"] == "length"
    # A new store on the same file (a restart) still sees it.
    assert HistoryStore(tmp_path / "metrics.sqlite").count() == 1


def test_closed_engine_refuses_requests_and_stops_its_thread(tiny_model):
    eng = Engine(tiny_model)
    eng.close()
    assert not eng._worker.is_alive()
    with pytest.raises(RuntimeError):
        eng.submit("hi")
