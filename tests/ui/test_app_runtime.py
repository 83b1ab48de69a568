"""The sidebar's runtime: switching to llama.cpp rebuilds the model as a GGUF file, lists llama.cpp's formats and
threads, and the chat runs on it; the What changed page names both runtimes."""

from __future__ import annotations

import pytest
from apps import assistant_replies, build_table, reply_caption, sidebar_text, tiny_app

from workbench.devices import physical_cores
from workbench.recipe import LLAMA_CPP_DTYPES, TRANSFORMERS_DTYPES
from workbench.runtimes import llamacpp
from workbench.ui import state
from workbench.ui.recipe_form import DTYPE_LABELS

needs_llama = pytest.mark.skipif(llamacpp.problem() is not None, reason=llamacpp.problem() or "")


def labels(dtypes) -> list[str]:
    return [DTYPE_LABELS[d] for d in dtypes]


@needs_llama
def test_switching_runtime_rebuilds_and_the_chat_runs_on_llama_cpp(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 6, state.CACHE_ENABLED: False}).run()
    assert not at.exception and at.selectbox(key=state.DTYPE).options == labels(TRANSFORMERS_DTYPES)
    assert "runtime transformers" in sidebar_text(at)
    at.selectbox(key=state.RUNTIME).set_value("llama.cpp").run()
    assert not at.exception
    assert at.selectbox(key=state.DTYPE).options == labels(LLAMA_CPP_DTYPES)
    assert at.number_input(key=state.THREADS).value == 0  # 0 = one per physical core
    at.selectbox(key=state.DTYPE).set_value("q8_0").run()
    assert not at.exception
    shown = sidebar_text(at)
    assert "q8_0 · llama.cpp" in shown and f"{physical_cores()} thread" in shown and "bits per weight" in shown
    assert "backend: llama.cpp q8_0 (Q8_0" in shown
    at.chat_input[0].set_value("hello there").run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    assert "TTFT" in reply_caption(reply) and "llama.cpp" in reply_caption(reply)


@needs_llama
def test_a_format_the_runtime_cannot_run_is_a_message(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.RUNTIME: "llama.cpp", state.DTYPE: "shipped"}).run()
    assert not at.exception
    assert any("shipped runs a .gguf source" in e.value for e in at.error)


@needs_llama
def test_what_changed_names_both_runtimes(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.RUNTIME: "llama.cpp", state.DTYPE: "q8_0", state.THREADS: 1}).run()
    at.switch_page("pages/what_changed.py").run()
    assert not at.exception
    table = build_table(at)
    assert table["Runtime"]["Baseline"].startswith("transformers")
    assert table["Runtime"]["This recipe"] == "llama.cpp · 1 thread" and table["Runtime"]["Change"] == "changed"
    assert float(table["Bits per weight"]["This recipe"]) < float(table["Bits per weight"]["Baseline"])


def test_without_llama_cpp_the_selector_says_why_and_transformers_works(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(llamacpp, "_checked", True)
    monkeypatch.setattr(llamacpp, "_problem", "llama-cpp-python is not installed; install it with make llama")
    at = tiny_app(tiny_model_dir, **{state.MAX_NEW_TOKENS: 3}).run()
    assert not at.exception
    assert "llama.cpp (not available here)" in at.selectbox(key=state.RUNTIME).options
    at.selectbox(key=state.RUNTIME).set_value("llama.cpp").run()
    assert not at.exception
    assert any("llama-cpp-python is not installed" in e.value for e in at.error)
    at.selectbox(key=state.RUNTIME).set_value("transformers").run()
    at.chat_input[0].set_value("hello").run()
    assert not at.exception and len(assistant_replies(at)) == 1
