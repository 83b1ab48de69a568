"""The teacher's training text: the prompt files (size, order, no duplicates, disjoint from every evaluation set),
and the corpus written from them on a tiny teacher (prompt count, progress, seeds, caching, the held-out text),
under transformers and under llama.cpp."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import pytest

from workbench import loading, quality
from workbench.conversation import encode_chat
from workbench.optimize import corpus
from workbench.optimize.corpus import HELDOUT, PROMPTS, WRITING, heldout_corpus, read_prompts, teacher_corpus
from workbench.recipe import RecipeError, StudentSpec

# Long enough for the tiny tokenizer's chat prompts (about a token a character) to leave room for the answer.
SPEC = StudentSpec(layers_ratio=0.5, seq_len=200, corpus_new_tokens=8, samples_per_prompt=1, prompts=20, seed=3)
_STOP = set("the a an there is are of in on do does what which how many you we to at its for by and was who".split())


@pytest.fixture(scope="module")
def teacher(tiny_model_dir):
    """The tiny teacher as distillation loads it: (model, tokenizer, its recipe model field)."""
    model, tokenizer, _ = loading.load(str(tiny_model_dir))
    return model.eval(), tokenizer, str(tiny_model_dir)


def _write(teacher, spec, work, **kwargs):
    """The training text of ``spec`` in the work folder ``work`` (made when missing, as distillation does)."""
    model, tokenizer, name = teacher
    work.mkdir(parents=True, exist_ok=True)
    return teacher_corpus(model, tokenizer, spec, work, model=name, **kwargs)


def _normal(text: str) -> str:
    return " ".join(text.lower().replace("color", "colour").strip(" ?.!").split())


def _content_words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower().replace("color", "colour"))) - _STOP


def _close(words: set[str], other: set[str]) -> bool:
    """The rewording rule of tests/test_quality.py: the same content words, or nearly (Jaccard >= 0.8)."""
    return len(words & other) >= 0.8 * len(words | other)


# The prompt files ----------------------------------------------------------------------------------------------


def test_the_prompt_file_keeps_its_first_128_prompts_and_grows():
    lines = PROMPTS.read_text(encoding="utf-8").splitlines()
    first = "".join(line + "\n" for line in lines[:128]).encode()
    # The prompts students were trained on before the file grew, byte for byte: prompts=128 is the same text.
    assert hashlib.sha256(first).hexdigest() == "34dd480957eec2948e0a57439c5623d47f15130903a726375d37bc6926c2eca9"
    assert all(line.strip() == line and line for line in lines)
    assert len(read_prompts(PROMPTS)) >= 768 and len(read_prompts(HELDOUT)) == 24


def test_no_prompt_is_written_twice_and_held_out_ones_are_not_training_ones():
    training, heldout = read_prompts(PROMPTS), read_prompts(HELDOUT)
    everything = [_normal(p) for p in training + heldout]
    assert len(set(everything)) == len(everything), [p for p in everything if everything.count(p) > 1][:3]
    keys = [_content_words(p) for p in training]
    for prompt in heldout:
        mine = _content_words(prompt)
        assert not [p for p, key in zip(training, keys) if _close(mine, key)], prompt


def test_training_and_held_out_prompts_are_disjoint_from_every_evaluation_set():
    questions = [item["question"] for part in quality.QA_FILES for item in quality.load_qa(part)]
    evaluation = questions + quality.load_prompts()
    exact = {_normal(q) for q in evaluation}
    keys = [(q, _content_words(q)) for q in evaluation]
    texts = _normal(quality.load_eval_text() + " " + quality.load_kl_text())
    for prompt in read_prompts(PROMPTS) + read_prompts(HELDOUT):
        assert _normal(prompt) not in exact, prompt
        mine = _content_words(prompt)
        assert not [q for q, key in keys if _close(mine, key)], prompt
        assert _normal(prompt) not in texts, prompt


# Writing the corpus --------------------------------------------------------------------------------------------


def test_the_first_prompts_are_answered_in_order_with_progress(teacher, tmp_path):
    tokenizer = teacher[1]
    seen = []
    sequences = _write(teacher, SPEC, tmp_path, on_step=lambda i, n, m: seen.append((i, n, m)))
    prompts = read_prompts(PROMPTS)[: SPEC.prompts]
    assert len(sequences) == SPEC.prompts
    for sequence, prompt in zip(sequences, prompts):
        chat = encode_chat(tokenizer, [{"role": "user", "content": prompt}])
        assert sequence[: len(chat)] == chat and len(chat) < len(sequence) <= min(SPEC.seq_len, len(chat) + 8)
    assert [(i, n) for i, n, _ in seen] == [(16, 20), (20, 20)]  # after each batch of 16
    assert all(m == {"stage": WRITING} for _, _, m in seen)
    assert json.loads((tmp_path / "corpus.json").read_text()) == sequences


def test_two_samples_per_prompt_are_two_passes_with_different_answers(teacher, tmp_path):
    spec = replace(SPEC, prompts=5, samples_per_prompt=2)
    sequences = _write(teacher, spec, tmp_path)
    assert len(sequences) == 10
    assert sum(first != second for first, second in zip(sequences[:5], sequences[5:])) >= 4


def test_asking_for_more_prompts_than_the_file_holds_names_the_count(teacher, tmp_path):
    held = len(read_prompts(PROMPTS))
    with pytest.raises(RecipeError) as err:
        _write(teacher, replace(SPEC, prompts=held + 1), tmp_path)
    assert err.value.field == "prompts" and f"it has {held}" in str(err.value)
    assert not (tmp_path / "corpus.json").exists()


def test_the_same_seed_writes_the_same_text_and_another_seed_other_text(teacher, tmp_path):
    first = _write(teacher, SPEC, tmp_path / "a")
    assert _write(teacher, SPEC, tmp_path / "b") == first
    assert _write(teacher, replace(SPEC, seed=4), tmp_path / "c") != first


def test_a_cached_corpus_is_read_back_without_generating(teacher, tmp_path, monkeypatch):
    model = teacher[0]
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    first = _write(teacher, SPEC, tmp_path)
    assert len(calls) == 2  # 20 prompts: two batches
    assert _write(teacher, SPEC, tmp_path) == first and len(calls) == 2
    (tmp_path / "corpus.json").write_text('{"not": "a corpus"}')  # damaged: written again
    assert _write(teacher, SPEC, tmp_path) == first and len(calls) == 4


def test_the_held_out_text_answers_the_held_out_prompts_from_another_seed_stream(teacher, tmp_path, monkeypatch):
    model, tokenizer, name = teacher
    training = _write(teacher, SPEC, tmp_path)
    heldout = heldout_corpus(model, tokenizer, SPEC, tmp_path, model=name)
    prompts = read_prompts(HELDOUT)
    assert len(heldout) == len(prompts)
    for sequence, prompt in zip(heldout, prompts):
        chat = encode_chat(tokenizer, [{"role": "user", "content": prompt}])
        assert sequence[: len(chat)] == chat
    assert not {tuple(s) for s in heldout} & {tuple(s) for s in training}
    assert json.loads((tmp_path / "heldout.json").read_text()) == heldout
    assert corpus.stream_seed(SPEC.seed, "heldout") != corpus.stream_seed(SPEC.seed, "training") == SPEC.seed
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("the held-out text is cached"))
    assert heldout_corpus(model, tokenizer, SPEC, tmp_path, model=name) == heldout


def test_an_answer_ends_at_its_first_end_token():
    # generate pads a row that finishes first; with the end token as the pad token (the embedded model) as well.
    assert corpus._until_end([5, 6, 2, 2, 2], [2]) == [5, 6, 2]
    assert corpus._until_end([5, 6, 7], [2]) == [5, 6, 7]
    assert corpus._until_end([5, 9, 6, 2, 0], [2, 9]) == [5, 9]


# Under llama.cpp -----------------------------------------------------------------------------------------------


def test_without_llama_cpp_the_llama_runtime_says_how_to_install_it(teacher, tmp_path, monkeypatch):
    from workbench.runtimes import llamacpp

    monkeypatch.setattr(llamacpp, "problem", lambda: f"llama-cpp-python is not installed; install it with "
                                                     f"{llamacpp.INSTALL}")
    with pytest.raises(RecipeError) as err:
        _write(teacher, replace(SPEC, corpus_runtime="llama.cpp"), tmp_path)
    assert err.value.field == "corpus-runtime" and "make llama" in str(err.value)


def _llama_or_skip():
    llamacpp = pytest.importorskip("workbench.runtimes.llamacpp")
    if llamacpp.problem():
        pytest.skip(llamacpp.problem())
    return llamacpp


def test_llama_cpp_writes_seeded_answers_in_the_teachers_vocabulary(teacher, tmp_path):
    _llama_or_skip()
    import gguf

    model, tokenizer, name = teacher
    spec = replace(SPEC, corpus_runtime="llama.cpp")
    seen = []
    sequences = _write(teacher, spec, tmp_path / "a", on_step=lambda i, n, m: seen.append((i, n, m["stage"])))
    assert seen == [(16, 20, WRITING), (20, 20, WRITING)]
    for sequence, prompt in zip(sequences, read_prompts(PROMPTS)):
        chat = encode_chat(tokenizer, [{"role": "user", "content": prompt}])
        assert sequence[: len(chat)] == chat and len(chat) < len(sequence) <= len(chat) + 8
    assert _write(teacher, spec, tmp_path / "b") == sequences  # one seed, one machine: one text
    assert _write(teacher, replace(spec, seed=4), tmp_path / "c") != sequences
    assert sequences != _write(teacher, SPEC, tmp_path / "d")  # not the transformers text
    # The F32 file of the teacher's own weights, whose vocabulary is the teacher tokenizer's, token for token.
    from workbench.recipe import Recipe
    from workbench.runtimes import llamacpp

    path, _, found = llamacpp.gguf_file(llamacpp.check(Recipe(model=name, runtime="llama.cpp", dtype="fp32")))
    assert set(found.tensor_types) == {"F32"}
    tokens = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"].contents()
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    heldout = heldout_corpus(model, tokenizer, spec, tmp_path / "a", model=name)
    assert len(heldout) == len(read_prompts(HELDOUT)) and not {tuple(s) for s in heldout} & {tuple(s) for s in sequences}


def test_under_llama_cpp_a_prompt_that_fills_the_sequence_gets_no_answer(teacher, tmp_path):
    _llama_or_skip()
    tokenizer = teacher[1]
    chats = [encode_chat(tokenizer, [{"role": "user", "content": p}]) for p in read_prompts(PROMPTS)[:20]]
    seq_len = sorted(map(len, chats))[10] + 2  # some prompts fill it, some leave room for an answer
    sequences = _write(teacher, replace(SPEC, corpus_runtime="llama.cpp", seq_len=seq_len), tmp_path)
    for sequence, chat in zip(sequences, chats):
        assert sequence[: len(chat)] == chat[:seq_len] and len(sequence) <= min(seq_len, len(chat) + 8)
    assert any(len(chat) >= seq_len for chat in chats) and any(len(s) > len(c) for s, c in zip(sequences, chats))
