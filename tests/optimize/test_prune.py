"""Pruning on tiny random models: exact sparsity, patterns, shrinking shapes, save and reload."""

import pytest
import torch

from tiny import make_model, make_tokenizer
from workbench.optimize.pipeline import build
from workbench.optimize.prune import calibration_inputs, decoder_layers, prunable_linears, prune_
from workbench.recipe import PruneSpec, Recipe, RecipeError


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture
def model(tok):
    return make_model(tok, layers=4, hidden=64, init_range=0.02)


@pytest.fixture(scope="module")
def calib(tok):
    return calibration_inputs(tok, n=4, length=32)


def logits(model, tok):
    ids = tok("What is the capital of France?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["magnitude", "channels", "layers"])  # 2:4 has a fixed ratio of 0.5
def test_ratio_zero_changes_nothing(model, tok, calib, method):
    before = logits(model, tok)
    prune_(model, PruneSpec(method, 0.0), calib)
    assert torch.equal(logits(model, tok), before)


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_magnitude_sparsity_equals_the_ratio(model, calib, ratio):
    linears = prunable_linears(model)
    embed = model.model.embed_tokens.weight.clone()
    prune_(model, PruneSpec("magnitude", ratio), calib)
    for lin in linears.values():
        assert int((lin.weight == 0).sum()) == round(ratio * lin.weight.numel())
    assert torch.equal(model.model.embed_tokens.weight, embed)  # embeddings / LM head untouched


def test_magnitude_removes_the_smallest_weights(model, calib):
    lin = next(iter(prunable_linears(model).values()))
    original = lin.weight.clone()
    prune_(model, PruneSpec("magnitude", 0.5), calib)
    kept = original[lin.weight != 0].abs()
    dropped = original[lin.weight == 0].abs()
    assert kept.min() >= dropped.max()


def test_wanda_zeroes_the_ratio_in_every_row(model, calib):
    prune_(model, PruneSpec("magnitude", 0.5, criterion="wanda"), calib)
    for lin in prunable_linears(model).values():
        zeros_per_row = (lin.weight == 0).sum(dim=1)
        assert torch.all(zeros_per_row == round(0.5 * lin.weight.shape[1]))


def test_wanda_and_magnitude_choose_differently(tok, calib):
    a, b = make_model(tok, init_range=0.02), make_model(tok, init_range=0.02)
    prune_(a, PruneSpec("magnitude", 0.5), calib)
    prune_(b, PruneSpec("magnitude", 0.5, criterion="wanda"), calib)
    la, lb = prunable_linears(a), prunable_linears(b)
    assert any(not torch.equal(la[n].weight == 0, lb[n].weight == 0) for n in la)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_two_four_pattern_holds_in_every_group(model, calib, criterion):
    prune_(model, PruneSpec("2:4", criterion=criterion), calib)
    for lin in prunable_linears(model).values():
        groups = (lin.weight == 0).view(lin.weight.shape[0], -1, 4).sum(-1)
        assert torch.all(groups == 2)


def test_channels_shrink_the_mlp_and_save_reload(model, tok, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    width = model.config.intermediate_size
    prune_(model, PruneSpec("channels", 0.5), calib)
    keep = round(0.5 * width)
    assert model.config.intermediate_size == keep
    for layer in decoder_layers(model):
        assert layer.mlp.gate_proj.weight.shape == (keep, model.config.hidden_size)
        assert layer.mlp.down_proj.weight.shape == (model.config.hidden_size, keep)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.allclose(logits(again, tok), logits(model, tok), atol=1e-5)
    out = again.generate(tok("Hi", return_tensors="pt")["input_ids"], max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assert out.shape[1] > 5


def test_channels_keep_the_most_important(model, calib):
    # A channel whose down_proj column is zero contributes nothing: it must be among the removed.
    mlp = decoder_layers(model)[0].mlp
    mlp.down_proj.weight.data[:, 3] = 0
    marker = mlp.gate_proj.weight.data[3].clone()
    prune_(model, PruneSpec("channels", 0.25), calib)
    assert not any(torch.equal(row, marker) for row in decoder_layers(model)[0].mlp.gate_proj.weight.data)


def test_layers_removes_the_ratio_and_saves_reloads(model, tok, calib, tmp_path):
    from transformers import AutoModelForCausalLM

    notes = prune_(model, PruneSpec("layers", 0.5), calib)
    assert len(decoder_layers(model)) == 2 == model.config.num_hidden_layers
    assert [layer.self_attn.layer_idx for layer in decoder_layers(model)] == [0, 1]
    assert "removed 2 of 4" in notes[0]
    ids = tok("Hi there", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)  # KV cache sized to 2 layers
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(again.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False), out)


def test_layers_drops_the_layer_that_changes_least(model, calib):
    # Zero a layer's output projections: it becomes the identity and must be removed first.
    layer = decoder_layers(model)[2]
    layer.self_attn.o_proj.weight.data.zero_()
    layer.mlp.down_proj.weight.data.zero_()
    identity = layer
    prune_(model, PruneSpec("layers", 0.25), calib)
    assert all(kept is not identity for kept in decoder_layers(model))


def test_structured_pruning_refuses_models_without_decoder_layers(tok, calib):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tok)))
    with pytest.raises(RecipeError) as err:
        prune_(gpt2, PruneSpec("layers", 0.5), calib)
    assert "available for it" in str(err.value)


def test_pipeline_reports_nonzero_params(tiny_model_dir):
    dense = build(Recipe(model=str(tiny_model_dir), device="cpu"))
    sparse = build(Recipe(model=str(tiny_model_dir), device="cpu", prune=PruneSpec("magnitude", 0.5)))
    assert sparse.stats.params == dense.stats.params
    assert sparse.stats.nonzero_params < dense.stats.nonzero_params
    assert sparse.stats.weight_bytes == dense.stats.weight_bytes  # zeros still take their bytes
    assert any("no speed-up" in n for n in sparse.notes)
    shrunk = build(Recipe(model=str(tiny_model_dir), device="cpu", prune=PruneSpec("layers", 0.5)))
    assert shrunk.stats.params < dense.stats.params and shrunk.stats.weight_bytes < dense.stats.weight_bytes
    assert any("2:4" in n for n in build(Recipe(model=str(tiny_model_dir), device="cpu", prune=PruneSpec("2:4"))).notes)
