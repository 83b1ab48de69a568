import json

import pytest

from workbench import catalog, loading
from workbench.loading import ModelSourceError, resolve_source
from workbench.optimize.pipeline import build
from workbench.recipe import Recipe, RecipeError


def test_embedded_source_is_the_gguf_in_the_wheel():
    src = resolve_source("embedded")
    assert src.kind == "embedded" and src.location.endswith(catalog.EMBEDDED_GGUF)
    assert catalog.embedded_gguf() is not None


def test_source_kinds(tiny_model_dir, tmp_path):
    assert resolve_source(str(tiny_model_dir)).kind == "dir"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct").kind == "hub"
    assert resolve_source("gpt2").kind == "hub"
    with pytest.raises(ModelSourceError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelSourceError, match="no config.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(ModelSourceError, match="no such model directory"):
        resolve_source(str(tmp_path / "nope"))


def test_local_directory_loads_through_the_pipeline(tiny_model_dir):
    om = build(Recipe(model=str(tiny_model_dir), device="cpu", dtype="bf16"))  # the pipeline's own OptimizedModel
    assert om.recipe.device == "cpu" and om.recipe.dtype == "bf16"
    assert next(om.model.parameters()).dtype.is_floating_point
    assert str(next(om.model.parameters()).dtype) == "torch.bfloat16"
    assert om.stats.weight_bytes == om.stats.params * 2
    assert om.stats.backend.startswith("dense bf16")
    assert om.tokenizer.padding_side == "left" and om.tokenizer.pad_token_id is not None


def test_offline_hub_id_says_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as err:
        loading.load("some-org/not-downloaded-model")
    msg = str(err.value)
    assert "not in the local Hugging Face cache" in msg and "download some-org/not-downloaded-model" in msg
    assert "HF_HUB_OFFLINE" in msg and "\n" not in msg


def test_unreachable_hub_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    # Our own reachability check answers, not transformers' minutes of retries.
    with pytest.raises(ModelSourceError, match="cannot be reached"):
        loading.load("some-org/not-downloaded-model")


def test_remote_code_needs_opt_in(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "xyzcustom", "auto_map": {"AutoConfig": "configuration_x.XConfig"}})
    )
    with pytest.raises(ModelSourceError, match="Allow remote code"):
        loading.load(str(tmp_path))


def test_unbuildable_parts_of_a_recipe_name_the_field(tiny_model_dir):
    for recipe, field in [
        (Recipe(model=str(tiny_model_dir), device="cpu", dtype="int8", backend="bnb-nf4"), "backend"),
        (Recipe(model=str(tiny_model_dir), device="cpu", dtype="int8", backend="no-such-lib"), "backend"),
        (Recipe(model=str(tiny_model_dir), device="cpu", dtype="fp16", backend="torch-dynamic"), "backend"),
        (Recipe(model=str(tiny_model_dir), device="cpu", variant="student"), "variant"),
    ]:
        with pytest.raises(RecipeError) as err:
            build(recipe)
        assert err.value.field == field and "available" in str(err.value)
