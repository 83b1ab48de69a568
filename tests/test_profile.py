"""The profiler of one turn: its parts add up to the measured E2E, the traces open, the per-module table names
the model's modules, and llama.cpp reports its own counters; on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench import profile, runtimes
from workbench.recipe import GenerationSettings, Recipe
from workbench.runtimes import profiling
from workbench.runtimes.base import complete

PROMPT = "What is the capital of France?"
SETTINGS = GenerationSettings(max_new_tokens=32, ignore_eos=True)  # a turn long enough to be worth splitting


@pytest.fixture(scope="module")
def tiny_profile(tiny_model, tmp_path_factory) -> profile.TurnProfile:
    return profile.profile_turn(tiny_model, PROMPT, SETTINGS, lookup=lambda: "miss",
                                folder=tmp_path_factory.mktemp("profile"))


def test_parts_add_up_to_the_measured_e2e_within_ten_percent(tiny_profile):
    p = tiny_profile
    assert p.adds_up(0.10), (p.parts, p.unaccounted_ms, p.e2e_ms)
    assert abs(sum(p.parts.values()) + p.unaccounted_ms - p.e2e_ms) < 0.01
    assert list(p.parts) == ["cache_lookup", "tokenize", "queue", "prefill", "decode", "sampling",
                             "generate_overhead", "detokenize"]
    assert "unaccounted_ms" not in p.parts and all(ms >= 0 for ms in p.parts.values())
    assert p.parts["prefill"] > 0 and p.parts["decode"] > 0 and p.parts["sampling"] > 0
    assert p.new_tokens == 32 and p.decode_steps["n"] == 31  # one prefill, then a forward per further token
    assert p.cache == "miss" and p.runtime == "transformers"


def test_profiling_leaves_the_answer_as_it_was(tiny_model, tiny_profile):
    ids = complete(tiny_model, tiny_model.encode_chat([{"role": "user", "content": PROMPT}]), SETTINGS)
    assert tiny_profile.text == tiny_model.decode(ids)
    assert not tiny_model.module._forward_hooks and not tiny_model.module._forward_pre_hooks


def test_the_traces_open_and_hold_the_turn(tiny_profile):
    chrome = json.loads(Path(tiny_profile.traces["chrome"]).read_text())
    names = {e.get("name") for e in chrome["traceEvents"]}
    assert {profiling.FORWARD, "attention", "mlp", "norms", "lm_head"} <= names
    assert any(n and n.startswith("aten::") for n in names)
    assert tiny_profile.trace == tiny_profile.traces["chrome"]
    board = list(Path(tiny_profile.traces["tensorboard"]).glob("*.pt.trace.json"))
    assert len(board) == 1 and "traceEvents" in json.loads(board[0].read_text())
    phases = json.loads(Path(tiny_profile.traces["phases"]).read_text())["traceEvents"]
    kinds = [e["name"] for e in phases if e.get("cat") == "model"]
    assert kinds.count("prefill") == 1 and kinds.count("decode") == 31 and kinds.count("sampling") == 32


def test_the_module_table_names_each_kind_and_the_python_rest(tiny_profile, tiny_model):
    rows = {m["name"]: m for m in tiny_profile.modules}
    layers = tiny_model.module.config.num_hidden_layers
    assert rows["attention"]["calls"] == rows["mlp"]["calls"] == 32 * layers  # every forward of the turn
    assert rows["lm_head"]["calls"] == 32 and rows["norms"]["calls"] == 32 * (2 * layers + 1)
    assert profiling.OVERHEAD in rows and all(m["ms"] >= 0 for m in rows.values())
    # A partition of the profiled turn: nothing counted twice, little left out.
    assert 0.9 <= sum(m["share"] for m in rows.values()) <= 1.0 + 1e-3
    ops = tiny_profile.ops
    assert ops and all(o["name"] not in rows for o in ops)
    assert [o["self_ms"] for o in ops] == sorted((o["self_ms"] for o in ops), reverse=True)


def test_annotated_modules_are_the_outermost_of_each_kind(tiny_model):
    found = profiling.annotated_modules(tiny_model.module)
    layers = tiny_model.module.config.num_hidden_layers
    kinds = [kind for kind, _, _ in found]
    assert kinds.count("attention") == kinds.count("mlp") == layers
    assert kinds.count("norms") == 2 * layers + 1 and kinds.count("lm_head") == kinds.count("embeddings") == 1
    assert not any(name.endswith("q_proj") for _, name, _ in found)  # the inside of attention is left to ops


def test_a_cached_answer_is_said_and_the_model_still_profiled(tiny_model, tmp_path):
    p = profile.profile_turn(tiny_model, PROMPT, GenerationSettings(max_new_tokens=4), lookup=lambda: "exact",
                             warmup=0, trace=False)
    assert p.cache == "exact" and "cache_lookup" in p.parts and p.new_tokens == 4
    assert any("response cache holds this answer" in n for n in p.notes)
    assert p.trace is None and p.modules == []
    without = profile.profile_turn(tiny_model, PROMPT, GenerationSettings(max_new_tokens=4), warmup=0,
                                   trace=False)
    assert without.cache == "off" and "cache_lookup" not in without.parts


def test_llama_cpp_reports_its_own_counters(tiny_model_dir, tmp_path):
    from workbench.runtimes import llamacpp

    if llamacpp.problem():
        pytest.skip(llamacpp.problem())
    model = runtimes.build(Recipe(model=str(tiny_model_dir), runtime="llama.cpp", device="cpu", dtype="q8_0"))
    try:
        p = profile.profile_turn(model, PROMPT, SETTINGS, folder=tmp_path)
        c = p.counters
        assert c["prompt_eval_tokens"] == p.prompt_tokens and c["eval_tokens"] == p.new_tokens - 1
        assert c["prompt_eval_ms"] > 0 and c["eval_ms"] > 0  # the profiled context keeps llama.cpp's timings
        assert p.adds_up(0.10), (p.parts, p.unaccounted_ms, p.e2e_ms)
        assert p.decode_steps["n"] == p.new_tokens - 1 and p.parts["sampling"] > 0
        assert p.modules == [] and p.trace == p.traces["phases"]
        assert "traceEvents" in json.loads(Path(p.trace).read_text())
        # The bindings are the model's own again, and it still answers as before the profile.
        assert model._lib is llamacpp.model.library()
        ids = complete(model, model.encode_chat([{"role": "user", "content": PROMPT}]), SETTINGS)
        assert model.decode(ids) == p.text
    finally:
        model.close()
