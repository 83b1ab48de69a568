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


def frontier_row(runtime, dtype, tok_s, *, prune="none", context=40.0):
    recipe = Recipe(runtime=runtime, device="cpu", dtype=dtype,
                    prune={"method": prune, "ratio": 0.25 if prune != "none" else 0.0}).to_dict()
    return {"recipe": recipe, "label": f"{runtime} {dtype} {prune}", "decode_tok_s": tok_s, "context_tokens": context}


def test_the_predictor_is_set_against_what_the_frontier_measured(roof):
    arch = predict.architecture(None)
    bound = {f: predict.decode_bound(arch, r, f, roof["bandwidth_gb_s"], 40) for r, f in
             [("transformers", "fp32"), ("llama.cpp", "q4_0"), ("llama.cpp", "q8_0")]}
    cached = {"runtimes": {"transformers": {"efficiency": 0.2, "dtype": "fp32"},
                           "llama.cpp": {"efficiency": 0.3, "dtype": "q4_0"}}}
    rows = [frontier_row("transformers", "fp32", 0.25 * bound["fp32"]),
            frontier_row("llama.cpp", "q4_0", 0.45 * bound["q4_0"]),
            frontier_row("llama.cpp", "q8_0", 0.5 * bound["q8_0"]),
            frontier_row("transformers", "fp32", 99.0, prune="layers")]  # pruned: not the predicted architecture
    found = {r["dtype"]: r for r in roofline.against_frontier(rows, roof, cached)}
    assert set(found) == {"fp32", "q4_0", "q8_0"}
    assert found["fp32"]["predicted_tok_s"] == pytest.approx(0.2 * bound["fp32"])
    assert found["fp32"]["relative_error"] == pytest.approx(0.2 / 0.25 - 1)
    assert found["fp32"]["within_25pct"] is True and found["q4_0"]["within_25pct"] is False  # -20%, -33%
    assert found["q4_0"]["relative_error"] == pytest.approx(0.3 / 0.45 - 1)
    # q8_0 is predicted with llama.cpp's efficiency (measured on q4_0): cached 0.3, this sweep's own q4_0 row 0.45.
    assert found["q8_0"]["efficiency_from"] == "q4_0" and not found["q8_0"]["basis"]
    assert found["q8_0"]["predicted_tok_s"] == pytest.approx(0.3 * bound["q8_0"])
    assert found["q8_0"]["same_run_tok_s"] == pytest.approx(0.45 * bound["q8_0"])
    assert found["q8_0"]["same_run_error"] == pytest.approx(0.45 / 0.5 - 1)
    assert found["q4_0"]["basis"] and found["q4_0"]["same_run_tok_s"] == pytest.approx(found["q4_0"]["measured_tok_s"])
    # Without a cached efficiency only the same-run prediction is made.
    alone = {r["dtype"]: r for r in roofline.against_frontier(rows, roof, None)}
    assert alone["q8_0"]["predicted_tok_s"] is None and alone["q8_0"]["same_run_tok_s"] is not None


def test_an_efficiency_does_not_carry_from_float_kernels_to_int8_kernels(roof):
    cached = {"runtimes": {"transformers": {"efficiency": 0.25, "dtype": "fp32"}}}
    rows = [frontier_row("transformers", "fp32", 10.0), frontier_row("transformers", "int8", 10.0),
            frontier_row("transformers", "bf16", 10.0)]
    found = {r["dtype"]: r for r in roofline.against_frontier(rows, roof, cached)}
    assert found["int8"]["predicted_tok_s"] is None and found["int8"]["same_run_tok_s"] is None
    assert "int8 kernels" in found["int8"]["not_predicted"]
    assert found["bf16"]["predicted_tok_s"] is not None and found["bf16"]["not_predicted"] is None
    here = {r["dtype"]: r for r in predict.predict_here(predict.architecture(None), 20.0, 100.0,
                                                         roofline.efficiencies(cached)) if r["runtime"] == "transformers"}
    assert here["int8"]["expected_tok_s"] is None and here["fp16"]["expected_tok_s"] is not None
