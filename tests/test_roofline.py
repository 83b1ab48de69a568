"""Runtimes against the memory bound: efficiency measured through the benchmark code on the tiny model, cached with
the machine fingerprint; llama.cpp's file stores each tensor in the type the predictor says."""

from __future__ import annotations

import pytest

from workbench import machine, predict, roofline, runtimes
from workbench.recipe import Recipe, RecipeError


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def roof(home):
    return machine.roofline(size_bytes=64 << 20, matmul_n=256)


def llama_cpp_here() -> bool:
    try:
        runtimes.check(Recipe(runtime="llama.cpp", device="cpu", dtype="q4_0"))
    except RecipeError:
        return False
    return True


def test_efficiency_is_achieved_over_bound_and_is_cached_per_machine(tiny_model_dir, roof):
    steps = []
    report = roofline.measure_efficiency(str(tiny_model_dir), (("transformers", "fp32"),), roof=roof, runs=1,
                                         max_new_tokens=4, save=True, on_step=lambda i, t, m: steps.append((i, t)))
    m = report["runtimes"]["transformers"]
    assert m["achieved_tok_s"] > 0 and m["bound_tok_s"] > 0
    assert m["efficiency"] == pytest.approx(m["achieved_tok_s"] / m["bound_tok_s"])
    assert m["bytes_read_per_token"] == predict.bytes_read_per_token(predict.architecture(str(tiny_model_dir)),
                                                                    "transformers", "fp32")
    assert m["limit"].endswith(".") and "GB/s" in m["limit"]
    assert steps[-1][0] == steps[-1][1] == 2  # one warm-up and one measured request
    assert roofline.cached_efficiency()["runtimes"]["transformers"]["achieved_tok_s"] == m["achieved_tok_s"]
    assert roofline.efficiencies(roofline.cached_efficiency()) == {
        "transformers": {"efficiency": m["efficiency"], "dtype": "fp32"}}
    other = {**machine.fingerprint(), "cpu": "Another CPU"}
    assert roofline.cached_efficiency(other) is None


def test_a_runtime_that_cannot_run_is_kept_with_its_reason(tiny_model_dir, roof, monkeypatch):
    def refuse(recipe):
        raise RecipeError("runtime", "llama.cpp is not installed here")

    monkeypatch.setattr(roofline.runtimes, "check", refuse)
    report = roofline.measure_efficiency(str(tiny_model_dir), (("llama.cpp", "q4_0"),), roof=roof, save=False)
    assert report["runtimes"]["llama.cpp"]["problem"] == "llama.cpp is not installed here"


def test_the_limit_sentence_names_what_limits_a_recipe():
    roof = {"bandwidth_gb_s": 20.0, "peak_gflops": 100.0}
    near = {"efficiency": 0.9, "achieved_gb_s": 18.0, "dtype": "q4_0", "gflops_achieved": 1.0}
    assert roofline.limit(near, roof).startswith("Memory traffic")
    assert roofline.limit({**near, "efficiency": 0.2}, roof).startswith("Dequantization")
    assert roofline.limit({**near, "efficiency": 0.2, "dtype": "fp32"}, roof).startswith("Per-token overhead")
    assert roofline.limit({**near, "gflops_achieved": 80.0}, roof).startswith("Compute")
    assert roofline.busy({"load_before": 9.0, "cores": 2}) and roofline.busy({"load_before": 1.0, "cores": 2}) is None


@pytest.mark.skipif(not llama_cpp_here(), reason="llama.cpp is not installed")
def test_llama_cpps_file_stores_the_types_and_bytes_the_predictor_counts(tiny_model_dir):
    arch = predict.architecture(str(tiny_model_dir))
    for fmt in ("q4_0", "q8_0", "q4_k_m"):
        model = runtimes.build(Recipe(model=str(tiny_model_dir), runtime="llama.cpp", device="cpu", dtype=fmt))
        try:
            assert model.stats.tensor_types == predict.ggml_type_counts(arch, fmt), fmt
            assert model.stats.weight_bytes == predict.weight_bytes(arch, "llama.cpp", fmt), fmt
        finally:
            model.close()
