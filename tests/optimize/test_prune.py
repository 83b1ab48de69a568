"""Pruning on tiny random models: exact sparsity, patterns, shrinking shapes, save and reload."""

import pytest
import torch

from tiny import make_model, make_tokenizer
from workbench.optimize.pipeline import build
from workbench.optimize.prune import (KEPT_LAYERS, calibration_inputs, decoder_layers, drop_layers_, prunable_linears,
                                      prune_)
from workbench.recipe import LAYER_CHOICES, PruneSpec, Recipe, RecipeError


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


def make_identity(layer) -> None:
    """Zero the projections a layer adds to the residual stream with: its output is then its input."""
    layer.self_attn.o_proj.weight.data.zero_()
    layer.mlp.down_proj.weight.data.zero_()


def removed_layers(model, n_before: int) -> list[int]:
    kept = getattr(model.config, KEPT_LAYERS)
    return [i for i in range(n_before) if i not in kept]


@pytest.mark.parametrize("choice", LAYER_CHOICES)
def test_drop_layers_removes_n_records_kept_layers_and_reloads(tok, calib, tmp_path, choice):
    from transformers import AutoModelForCausalLM

    model = make_model(tok, layers=6, hidden=64, init_range=0.02)
    originals = list(decoder_layers(model))
    notes = drop_layers_(model, 2, calib, choice)
    kept = getattr(model.config, KEPT_LAYERS)
    assert len(decoder_layers(model)) == 4 == model.config.num_hidden_layers == len(kept)
    assert all(layer is originals[i] for layer, i in zip(decoder_layers(model), kept))  # the same modules, in order
    assert choice in notes[0] and str(removed_layers(model, 6)) in notes[0]
    ids = tok("Hi there", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 6
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert getattr(again.config, KEPT_LAYERS) == kept
    assert torch.equal(again.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False), out)


@pytest.mark.parametrize("n_drop", [2, 3])
def test_angular_removes_a_contiguous_block(tok, calib, n_drop):
    model = make_model(tok, layers=6, hidden=64, init_range=0.02)
    drop_layers_(model, n_drop, calib, "angular")
    removed = removed_layers(model, 6)
    assert removed == list(range(removed[0], removed[0] + n_drop))


def test_angular_removes_the_block_that_changes_least(tok, calib):
    model = make_model(tok, layers=6, hidden=64, init_range=0.02)
    make_identity(decoder_layers(model)[3])
    make_identity(decoder_layers(model)[4])
    drop_layers_(model, 2, calib, "angular")
    assert removed_layers(model, 6) == [3, 4]


@pytest.mark.parametrize("choice", LAYER_CHOICES)
def test_every_choice_removes_an_identity_layer_first(tok, calib, choice):
    model = make_model(tok, layers=6, hidden=64, init_range=0.02)
    make_identity(decoder_layers(model)[2])
    drop_layers_(model, 1, calib, choice)
    assert removed_layers(model, 6) == [2]


def test_loss_removes_the_layers_whose_absence_costs_least(tok, calib):
    # Layers scaled towards the identity move the predictions less when skipped: the least scaled go first.
    model = make_model(tok, layers=6, hidden=64, init_range=0.02)
    for i, scale in {1: 0.3, 4: 0.05}.items():
        layer = decoder_layers(model)[i]
        layer.self_attn.o_proj.weight.data.mul_(scale)
        layer.mlp.down_proj.weight.data.mul_(scale)
    drop_layers_(model, 1, calib, "loss")
    assert removed_layers(model, 6) == [4]
    drop_layers_(model, 1, calib, "loss")  # pruned twice: the config keeps the original indices
    assert removed_layers(model, 6) == [1, 4]


def test_loss_measures_each_layer_as_if_it_were_removed(tok, calib):
    # The KL of each skip (its forward started from the layer's own input) equals the KL of a copy without it.
    import copy

    from workbench.optimize.prune import _skip_kl

    model = make_model(tok, layers=4, hidden=64, init_range=0.02)
    measured = _skip_kl(model, decoder_layers(model), calib[:2])
    expected = []
    with torch.no_grad():
        for i in range(4):
            without = copy.deepcopy(model)
            without.model.layers = torch.nn.ModuleList(l for j, l in enumerate(without.model.layers) if j != i)
            without.config.num_hidden_layers = 3
            kl, tokens = 0.0, 0
            for ids in calib[:2]:
                p_log = torch.log_softmax(model(input_ids=ids, use_cache=False).logits, -1)
                q_log = torch.log_softmax(without(input_ids=ids, use_cache=False).logits, -1)
                kl += float(torch.nn.functional.kl_div(q_log, p_log, log_target=True, reduction="sum"))
                tokens += ids.numel()
            expected.append(kl / tokens)
    assert torch.allclose(measured, torch.tensor(expected), rtol=1e-4, atol=1e-7)
    reference = make_model(tok, layers=4, hidden=64, init_range=0.02)
    assert torch.equal(logits(model, tok), logits(reference, tok))  # every layer is itself again
    assert all("forward" not in vars(layer) for layer in decoder_layers(model))


def test_calibration_batches_stack_chunks_of_one_length_up_to_the_budget():
    from workbench.optimize.prune import _batches

    chunks = [torch.full((1, 4), i) for i in range(5)]
    chunks += [torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 20, dtype=torch.long)]
    batches = list(_batches(chunks, max_tokens=8))
    assert [tuple(b.shape) for b in batches] == [(2, 4), (2, 4), (1, 4), (1, 3), (1, 20)]
    assert torch.equal(torch.cat([b.flatten() for b in batches[:3]]), torch.cat([c.flatten() for c in chunks[:5]]))


def test_layers_method_is_drop_layers_by_similarity(tok, calib):
    a, b = make_model(tok, layers=6, init_range=0.02), make_model(tok, layers=6, init_range=0.02)
    notes = prune_(a, PruneSpec("layers", 0.5), calib)
    drop_layers_(b, 3, calib, "similarity")
    assert getattr(a.config, KEPT_LAYERS) == getattr(b.config, KEPT_LAYERS)
    assert "similarity" in notes[0]


def test_drop_layers_refuses_an_unknown_choice_and_a_bad_count(model, calib):
    with pytest.raises(RecipeError) as err:
        drop_layers_(model, 1, calib, "random")
    assert err.value.field == "layer-choice" and all(c in str(err.value) for c in LAYER_CHOICES)
    with pytest.raises(ValueError):
        drop_layers_(model, 4, calib)  # the model has 4 layers: at least one must stay
    assert drop_layers_(model, 0, calib, "loss") == [] and len(decoder_layers(model)) == 4


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
