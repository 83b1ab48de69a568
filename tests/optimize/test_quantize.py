"""Quantization backends on a tiny random model: numerics by SQNR, real size, dispatch and errors."""

import copy

import pytest
import torch

from tiny import make_model, make_tokenizer

from workbench import runtimes
from workbench.optimize.pipeline import build
from workbench.optimize.quantize import BACKENDS, backends_for, quantize_, resolve_backend, weight_bytes
from workbench.recipe import GenerationSettings, Recipe, RecipeError
from workbench.serving.engine import Engine

# Minimum SQNR (dB) of the logits against the float model. A wrong kernel or scale lands near 0 dB.
SQNR_MIN = {"int8": 25.0, "int4": 10.0, "nf4": 10.0, "fp4": 10.0}
# Largest weight bytes as a share of fp32 (embeddings stay float; int4 in torchao is stored unpacked on CPU).
BYTES_MAX = {"int8": 0.40, "int4": 0.40, "nf4": 0.30, "fp4": 0.30}


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(20 * torch.log10(ref.norm() / (ref - out).norm()))


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return make_model(tok, hidden=128, init_range=0.02)


@pytest.fixture(scope="module")
def ids(tok):
    return tok("What is the capital of France? It is Paris.", return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_numerics_and_size(name, base, ids):
    backend = BACKENDS[name]
    model = copy.deepcopy(base)
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    quantize_(model, name, "cpu")
    with torch.no_grad():
        out = model(input_ids=ids).logits.float()
    assert sqnr(ref, out) >= SQNR_MIN[backend.dtype]
    assert weight_bytes(model) <= BYTES_MAX[backend.dtype] * weight_bytes(base)
    assert type(model.lm_head) is torch.nn.Linear and model.lm_head.weight.dtype == torch.float32
    changed = model.model.layers[0].mlp.up_proj
    assert type(changed) is not torch.nn.Linear or type(changed.weight) is not torch.nn.Parameter or (
        type(changed.weight.data) is not torch.Tensor
    )


def test_a_different_model_fails_the_sqnr_bar(tok, base, ids):
    # The thresholds mean something: an unrelated model is far below them.
    other = make_model(tok, hidden=128, init_range=0.02, seed=1)
    with torch.no_grad():
        assert sqnr(base(input_ids=ids).logits, other(input_ids=ids).logits) < 10


def test_defaults_and_choices():
    assert resolve_backend("int8", "auto", "cpu") == "torch-dynamic"
    assert resolve_backend("nf4", "auto", "cpu") == "bnb-nf4"
    assert resolve_backend("fp32", "auto", "cpu") == "torch"
    assert backends_for("int8", "cpu")[0].name == "torch-dynamic"
    assert {b.name for b in backends_for("int8", "cpu")} >= {"torchao-int8-weight-only", "bnb-int8"}
    assert "torch-dynamic" not in {b.name for b in backends_for("int8", "cuda")}  # fbgemm is CPU-only


@pytest.mark.parametrize(
    "dtype, backend, device",
    [("int8", "bnb-nf4", "cpu"), ("int8", "nope", "cpu"), ("bf16", "torch-dynamic", "cpu"), ("int8", "torch-dynamic", "cuda")],
)
def test_impossible_combinations_say_what_works(dtype, backend, device):
    with pytest.raises(RecipeError) as err:
        resolve_backend(dtype, backend, device)
    assert err.value.field == "backend" and "available" in str(err.value)


def test_quantized_recipe_builds_and_generates(tiny_model_dir):
    om = runtimes.build(Recipe(model=str(tiny_model_dir), device="cpu", dtype="int8"))
    assert om.recipe.backend == "torch-dynamic"
    assert om.stats.backend.startswith("PyTorch dynamic int8")
    dense = build(Recipe(model=str(tiny_model_dir), device="cpu"))
    assert om.stats.params == dense.stats.params and om.stats.weight_bytes < dense.stats.weight_bytes
    assert om.recipe.key() != dense.recipe.key()
    eng = Engine(om)
    try:
        res = eng.generate("Hello", GenerationSettings(max_new_tokens=5, ignore_eos=True))
    finally:
        eng.close()
    assert res.new_tokens == 5 and res.error is None


def test_quanto_int4_generates_through_the_engine(tiny_model_dir):
    eng = Engine(runtimes.build(Recipe(model=str(tiny_model_dir), device="cpu", dtype="int4", backend="quanto-int4")))
    try:
        res = eng.generate("Hello", GenerationSettings(max_new_tokens=4, ignore_eos=True))
    finally:
        eng.close()
    assert res.error is None and res.new_tokens == 4
