"""The llama.cpp runtime: GGUF export (tokenizer, weights, pruned shapes), llama.cpp's quantizer, serving through
the engine, scoring, and the refusals; on the tiny model, and on the real embedded model (slow)."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import pytest

from workbench import quality, runtimes, store
from workbench.observe.history import HistoryStore
from workbench.recipe import GenerationSettings, PruneSpec, Recipe, RecipeError
from workbench.runtimes.base import complete

llamacpp = pytest.importorskip("workbench.runtimes.llamacpp")
if llamacpp.problem():
    pytest.skip(llamacpp.problem(), allow_module_level=True)

from workbench.runtimes.llamacpp import export, gguf_files  # noqa: E402
from workbench.serving.engine import ContextOverflow, Engine  # noqa: E402

TEXTS = [
    "Plain English, with punctuation: yes; no? Maybe!",
    "Ünïcödé and emoji 🚀🦙 — dashes, “quotes” and 日本語.",
    "  leading spaces\tand tabs\nand new lines\n\n",
    "Numbers 3 33 333 3333 and 3.14159.",
]


def llama(model_dir, **fields) -> Recipe:
    return Recipe(model=str(model_dir), runtime="llama.cpp", device="cpu", **fields)


@pytest.fixture(scope="module")
def tiny_fp32(tiny_model_dir):
    return runtimes.build(llama(tiny_model_dir, dtype="fp32"))


@pytest.fixture(scope="module")
def tiny_q8(tiny_model_dir):
    return runtimes.build(llama(tiny_model_dir, dtype="q8_0"))


# Checking a recipe -------------------------------------------------------------------------------------------


def test_check_resolves_threads_and_refuses_what_llama_cpp_cannot_run(tiny_model_dir):
    resolved = runtimes.check(llama(tiny_model_dir, dtype="int4"))
    assert resolved.dtype == "q4_0" and resolved.threads >= 1 and resolved.backend == "llama.cpp"
    refusals = [
        (llama(tiny_model_dir, dtype="nf4"), "dtype", "bitsandbytes"),
        (llama(tiny_model_dir, dtype="shipped"), "dtype", "not a .gguf file"),
        (Recipe(runtime="llama.cpp", device="cpu", dtype="shipped", prune=PruneSpec("layers", 0.3)), "dtype",
         "no pruning"),
        (llama(tiny_model_dir, dtype="q4_0", backend="bnb-nf4"), "backend", "its own kernels"),
        (llama(tiny_model_dir, dtype="q4_0", variant="student-nothere"), "variant", "available"),
    ]
    for recipe, field, words in refusals:
        with pytest.raises(RecipeError) as err:
            runtimes.check(recipe)
        assert err.value.field == field and words in str(err.value), (recipe, str(err.value))
    with pytest.raises(RecipeError) as err:
        runtimes.check(Recipe(model=str(tiny_model_dir), device="cpu", dtype="q4_0"))
    assert err.value.field == "dtype" and "--runtime llama.cpp" in str(err.value)


# Export ------------------------------------------------------------------------------------------------------


def test_the_exported_tokenizer_splits_text_as_transformers_does(tiny_fp32):
    assert export.tokenizer_mismatch(tiny_fp32.path, tiny_fp32.tokenizer, [*TEXTS, *export.PROBE_TEXTS]) is None
    chat = tiny_fp32.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🚀"}], tokenize=False,
        add_generation_prompt=True)
    assert export.tokenizer_mismatch(tiny_fp32.path, tiny_fp32.tokenizer, [chat]) is None


def test_f32_export_scores_text_as_transformers_does(tiny_fp32, tiny_model):
    ids = tiny_model.tokenize(quality.load_eval_text())[:160]
    assert tiny_fp32.nll(ids, 1) == pytest.approx(tiny_model.nll(ids, 1), rel=1e-3)
    assert tiny_fp32.nll(ids, 40) == pytest.approx(tiny_model.nll(ids, 40), rel=1e-3)  # targets after context
    ppl = quality.perplexity(tiny_fp32, window=64, stride=32, max_tokens=160)
    reference = quality.perplexity(tiny_model, window=64, stride=32, max_tokens=160)
    assert math.log(ppl) == pytest.approx(math.log(reference), rel=1e-3)  # the mean NLL per token


def test_quantized_files_hold_the_types_they_report(tiny_fp32, tiny_q8, tiny_model_dir):
    for model in (tiny_fp32, tiny_q8):
        found = gguf_files.contents(model.path)
        assert model.stats.tensor_types == found.tensor_types and model.stats.weight_bytes == found.weight_bytes
    assert set(tiny_fp32.stats.tensor_types) == {"F32"}
    assert "Q8_0" in tiny_q8.stats.tensor_types and "F32" in tiny_q8.stats.tensor_types  # norms stay F32
    assert tiny_q8.stats.weight_bytes < tiny_fp32.stats.weight_bytes / 3
    assert 8 < tiny_q8.stats.bits_per_weight < 10 and tiny_fp32.stats.bits_per_weight == pytest.approx(32)
    q4 = runtimes.build(llama(tiny_model_dir, dtype="q4_0"))
    assert "Q4_0" in q4.stats.tensor_types and q4.stats.bits_per_weight < tiny_q8.stats.bits_per_weight


def test_pruned_exports_have_their_new_shapes_and_generate(tiny_model_dir):
    shallow = runtimes.build(llama(tiny_model_dir, dtype="q8_0", prune=PruneSpec("layers", 0.5)))
    narrow = runtimes.build(llama(tiny_model_dir, dtype="q8_0", prune=PruneSpec("channels", 0.4)))
    assert gguf_files.contents(shallow.path).block_count == 1
    import gguf

    width = int(gguf.GGUFReader(str(narrow.path)).fields["llama.feed_forward_length"].contents())
    assert width % llamacpp.CHANNEL_MULTIPLE == 0 and width < 128  # 128 * 0.6 = 76.8 -> 64, whole blocks
    for model in (shallow, narrow):
        prompt = model.encode_chat([{"role": "user", "content": "Hello!"}])
        assert len(complete(model, prompt, GenerationSettings(max_new_tokens=6, ignore_eos=True))) == 6
    assert any("rounded to a multiple of 32" in note for note in narrow.notes)


def test_a_student_built_here_exports_like_any_model(tiny_model_dir):
    from workbench.optimize.distill import distill
    from workbench.recipe import StudentSpec

    spec = StudentSpec(layers_ratio=0.5, lr=1e-3, batch_size=2, seq_len=32, corpus_new_tokens=8, seed=5)
    name = distill(str(tiny_model_dir), spec, steps=2)["name"]
    student = runtimes.build(llama(tiny_model_dir, dtype="q8_0", variant=name))
    assert gguf_files.contents(student.path).block_count == 1 and "variant" in student.recipe.label()
    assert export.tokenizer_mismatch(student.path, student.tokenizer) is None  # the teacher's tokenizer
    prompt = student.encode_chat([{"role": "user", "content": "Hello!"}])
    assert len(complete(student, prompt, GenerationSettings(max_new_tokens=5, ignore_eos=True))) == 5
    student.close()


def test_batch_size_and_threads_share_one_file(tiny_model_dir, tiny_q8):
    other = runtimes.build(llama(tiny_model_dir, dtype="q8_0", batch_size=4, threads=1))
    assert other.path == tiny_q8.path and other.recipe.key() != tiny_q8.recipe.key()
    other.close()


def test_a_damaged_file_is_made_again_never_served(tiny_model_dir):
    recipe = llama(tiny_model_dir, dtype="q4_1")
    first = runtimes.build(recipe)
    path = first.path
    first.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # a kill in the middle of a write (or a disk error)
    with pytest.raises(gguf_files.GGUFError):
        gguf_files.contents(path)
    stages = []
    again = runtimes.build(recipe, on_stage=lambda stage, _: stages.append(stage))
    assert again.path == path and path.stat().st_size == len(data)
    assert store.artifact_ready(path.parent.name)
    (aside,) = path.parent.parent.glob(f"{path.parent.name}.damaged-*")  # kept to look at, never served
    assert any(s.startswith(f"{path} is not a complete GGUF file") and s.endswith(f"moved it to {aside.name}, making "
                                                                                  "it again") for s in stages)
    again.close()


def test_a_truncated_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00")
    with pytest.raises(gguf_files.GGUFError, match="broken.gguf"):
        gguf_files.contents(bad)
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(gguf_files.GGUFError, match="not a GGUF file"):
        gguf_files.contents(tmp_path / "text.gguf")


def test_a_truncated_source_served_as_shipped_is_one_message_naming_it(tiny_fp32, tmp_path):
    from workbench.loading import ModelSourceError

    cut = tmp_path / "cut.gguf"
    data = tiny_fp32.path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError) as err:
        runtimes.build(llama(cut, dtype="shipped"))
    assert str(err.value).startswith(f"{cut} is not a complete GGUF file: ") and "\n" not in str(err.value)


# Serving ------------------------------------------------------------------------------------------------------


def test_engine_timing_stop_and_history_on_llama_cpp(tiny_q8, tmp_path):
    history = HistoryStore(tmp_path / "metrics.sqlite")
    engine = Engine(tiny_q8, history)
    try:
        res = engine.generate("Tell me about pruning.", GenerationSettings(max_new_tokens=12, ignore_eos=True),
                              origin="test")
        handle = engine.submit("Hello!", GenerationSettings(max_new_tokens=200, ignore_eos=True))
        for event in handle:
            if event.index == 3:
                handle.stop()
        stopped = handle.result(timeout=60)
    finally:
        engine.close()
    assert res.new_tokens == 12 == len(res.token_times) and res.finish_reason == "length"
    assert all(b > a for a, b in zip(res.token_times, res.token_times[1:]))
    assert res.ttft_s == res.token_times[0] and 0 <= res.queue_s < res.ttft_s
    assert stopped.finish_reason == "stopped" and 4 <= stopped.new_tokens < 200
    rows = history.recent()
    assert [r["origin"] for r in rows] == ["test", "chat"] and rows[0]["recipe_key"] == tiny_q8.recipe.key()
    assert "llama.cpp" in rows[0]["recipe_label"]


def test_a_batch_is_one_multi_sequence_decode_with_the_solo_answers(tiny_q8):
    settings = GenerationSettings(max_new_tokens=16, ignore_eos=True)
    prompts = ["What is the capital of France?", "Hello!", "Tell me about pruning.", "Latency or throughput?"]
    solo = [complete(tiny_q8, tiny_q8.encode_chat([{"role": "user", "content": p}]), settings) for p in prompts]
    engine = Engine(tiny_q8, batch_size=4, batch_window_s=0.5)
    try:
        handles = [engine.submit(p, settings) for p in prompts]
        together = [h.result(timeout=60) for h in handles]
    finally:
        engine.close()
    assert engine.batches == [4] and all(r.batch_size == 4 for r in together)
    same = sum(sum(a == b for a, b in zip(s, r.token_ids)) for s, r in zip(solo, together))
    assert same / sum(map(len, solo)) >= 0.9  # batched matmuls sum in another order: near-ties may flip


def test_seeded_sampling_is_reproducible_and_greedy_ignores_the_seed(tiny_q8):
    prompt = tiny_q8.encode_chat([{"role": "user", "content": "Hello!"}])
    sampled = GenerationSettings(max_new_tokens=10, temperature=1.0, seed=7, ignore_eos=True)
    assert complete(tiny_q8, prompt, sampled) == complete(tiny_q8, prompt, sampled)
    assert complete(tiny_q8, prompt, replace(sampled, seed=8)) != complete(tiny_q8, prompt, sampled)
    greedy = GenerationSettings(max_new_tokens=10, ignore_eos=True)
    assert complete(tiny_q8, prompt, greedy) == complete(tiny_q8, prompt, replace(greedy, seed=3))


def test_a_request_longer_than_its_context_is_refused_not_a_crash(tiny_q8):
    engine = Engine(tiny_q8)
    try:
        with pytest.raises(ContextOverflow, match="context of"):
            engine.submit("x " * 300, GenerationSettings(max_new_tokens=8192))
        ok = engine.generate("Hello!", GenerationSettings(max_new_tokens=3, ignore_eos=True))
    finally:
        engine.close()
    assert ok.new_tokens == 3
    with pytest.raises(Exception, match="context"):  # the runtime refuses too, outside any engine
        complete(tiny_q8, tiny_q8.tokenize("x " * 300), GenerationSettings(max_new_tokens=8192))


def test_a_closed_model_refuses_work(tiny_model_dir):
    model = runtimes.build(llama(tiny_model_dir, dtype="q8_0", threads=1))
    model.close()
    with pytest.raises(RuntimeError, match="closed"):
        complete(model, [1, 2, 3], GenerationSettings(max_new_tokens=2))


# The real embedded model ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_f32_export_agrees_with_transformers_and_its_tokenizer_is_the_shipped_one(embedded_model):
    exported = runtimes.build(Recipe(runtime="llama.cpp", device="cpu", dtype="fp32"))
    assert export.tokenizer_mismatch(exported.path, exported.tokenizer, [*TEXTS, *export.PROBE_TEXTS]) is None
    settings = GenerationSettings(max_new_tokens=32, ignore_eos=True)
    prompts = quality.load_prompts()[:5]
    same = total = 0
    for prompt in prompts:
        ids = embedded_model.encode_chat([{"role": "user", "content": prompt}])
        a, b = complete(embedded_model, ids, settings), complete(exported, ids, settings)
        same += sum(x == y for x, y in zip(a, b))
        total += len(a)
    print(f"\nexported F32 GGUF vs transformers fp32: {same}/{total} greedy tokens agree")
    assert same / total >= 0.9
    exported.close()


@pytest.mark.slow
def test_embedded_shipped_and_q4_0_answer_paris_and_score_like_transformers(embedded_model):
    ids = quality.text_ids(embedded_model, quality.load_eval_text(), max_tokens=512)
    reference = math.exp(embedded_model.nll(ids, 1) / (len(ids) - 1))
    for dtype in ("shipped", "q4_0"):
        model = runtimes.build(Recipe(runtime="llama.cpp", device="cpu", dtype=dtype))
        start = time.perf_counter()
        answer = model.decode(complete(model, model.encode_chat([{"role": "user", "content": "What is the "
                              "capital of France? Answer in one sentence."}]), GenerationSettings(max_new_tokens=24)))
        ppl = math.exp(model.nll(ids, 1) / (len(ids) - 1))
        print(f"\n{dtype}: {answer!r} in {time.perf_counter() - start:.2f} s; perplexity {ppl:.2f} (transformers "
              f"fp32 {reference:.2f}); {gguf_files.describe(model.stats.tensor_types)}")
        assert "Paris" in answer
        assert ppl < reference * 1.25  # 4-bit weights cost a little, never the model
        model.close()
