"""The real embedded model end to end: GGUF -> safetensors artifact -> build -> engine -> history."""

import json

import pytest

from workbench import loading, runtimes, store
from workbench.observe.history import HistoryStore
from workbench.recipe import GenerationSettings, Recipe
from workbench.serving.engine import Engine

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


def test_greedy_answer_names_paris(embedded_model):
    eng = Engine(embedded_model, HistoryStore())
    try:
        handle = eng.submit(QUESTION, GenerationSettings(max_new_tokens=32))
        streamed = "".join(event.text for event in handle)
        res = handle.result()
    finally:
        eng.close()
    assert "Paris" in res.text
    assert streamed == res.text  # ordinary text: the stream is the answer, token by token
    assert res.finish_reason == "eos" and res.new_tokens == len(res.token_times) < 32
    assert HistoryStore().recent(recipe_key=embedded_model.recipe.key())[-1]["new_tokens"] == res.new_tokens


def test_conversion_is_cached_as_safetensors_and_reused(embedded_model):
    key = loading.source_key("embedded")
    artifact = store.artifact_path(key)
    assert store.artifact_ready(key)
    files = {p.name for p in artifact.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files and "recipe.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in files)  # no pickle
    meta = json.loads((artifact / "recipe.json").read_text())
    assert Recipe.from_dict(meta["recipe"]).key() == key
    mtime = (artifact / "model.safetensors").stat().st_mtime_ns

    stages = []
    model, tokenizer, weights_dir = loading.load("embedded", on_stage=lambda stage, frac: stages.append(stage))
    assert weights_dir == str(artifact)
    assert not any("Converting" in s for s in stages)  # second load reads the artifact
    assert (artifact / "model.safetensors").stat().st_mtime_ns == mtime
    assert sum(p.numel() for p in model.parameters()) == embedded_model.stats.params


def test_embedded_model_facts(embedded_model):
    stats = embedded_model.stats
    assert 130e6 < stats.params < 140e6  # SmolLM2-135M
    assert stats.weight_bytes == stats.params * 4
    assert stats.backend == "dense fp32 (PyTorch CPU)"


def test_bf16_build_generates(embedded_model):
    om = runtimes.build(Recipe(device="cpu", dtype="bf16"))
    assert om.recipe.key() != embedded_model.recipe.key()
    assert om.stats.weight_bytes == embedded_model.stats.weight_bytes // 2
    eng = Engine(om)
    try:
        res = eng.generate(QUESTION, GenerationSettings(max_new_tokens=16))
    finally:
        eng.close()
    assert res.new_tokens > 0 and res.error is None
    assert om.notes  # says that bf16 on CPU may not be faster
