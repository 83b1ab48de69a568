"""Response-cache keys: any change of recipe, weights, turn or setting is another question."""

from dataclasses import replace

import pytest
from answers import GREEDY, QUESTION, RECIPE, answer, ask

from workbench.recipe import PruneSpec, Recipe
from workbench.response_cache.keys import CachePolicy, exact_key, model_key


RECIPE_CHANGES = [
    dict(model="HuggingFaceTB/SmolLM2-135M-Instruct"), dict(device="cuda"), dict(dtype="bf16"),
    dict(dtype="int8", backend="torch-dynamic"), dict(prune=PruneSpec("magnitude", 0.5)),
    dict(prune=PruneSpec("magnitude", 0.3)), dict(prune=PruneSpec("magnitude", 0.5, "wanda")),
    dict(variant="student-x"), dict(batch_size=4),
]
SETTING_CHANGES = [dict(max_new_tokens=17), dict(temperature=0.7), dict(top_p=0.9), dict(seed=3),
                   dict(ignore_eos=True)]


@pytest.mark.parametrize("change", RECIPE_CHANGES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_any_recipe_change_changes_the_key_and_misses(responses, change):
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer())
    other = replace(RECIPE, **change)
    assert other.key() != RECIPE.key()
    assert exact_key(other.key(), QUESTION, GREEDY) != exact_key(RECIPE.key(), QUESTION, GREEDY)
    assert responses.lookup(other.key(), QUESTION, GREEDY) is None
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY).kind == "exact"


@pytest.mark.parametrize("change", SETTING_CHANGES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_any_generation_setting_change_changes_the_key_and_misses(responses, change):
    policy = CachePolicy(cache_sampled=True)  # so that temperature and top-p changes are looked up at all
    responses.store(RECIPE.key(), QUESTION, GREEDY, answer(), policy)
    other = replace(GREEDY, **change)
    assert exact_key(RECIPE.key(), QUESTION, other) != exact_key(RECIPE.key(), QUESTION, GREEDY)
    assert responses.lookup(RECIPE.key(), QUESTION, other, policy) is None
    assert responses.lookup(RECIPE.key(), QUESTION, GREEDY, policy) is not None


def test_an_earlier_turn_or_the_system_prompt_changes_the_key(responses):
    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    responses.store(RECIPE.key(), ask("And Spain?", earlier=earlier), GREEDY, answer("Madrid."))
    assert responses.lookup(RECIPE.key(), ask("And Spain?", earlier=earlier), GREEDY).entry["text"] == "Madrid."
    changed = [earlier[0], {"role": "assistant", "content": "Hello there!"}]
    assert responses.lookup(RECIPE.key(), ask("And Spain?", earlier=changed), GREEDY) is None
    assert responses.lookup(RECIPE.key(), ask("And Spain?"), GREEDY) is None
    assert responses.lookup(RECIPE.key(), ask("And Spain?", "Be brief.", earlier), GREEDY) is None


def test_model_key_changes_when_the_weights_change_under_the_same_name(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"weights v1")
    recipe = Recipe(model=str(model_dir), device="cpu")
    first = model_key(recipe)
    assert first.startswith(recipe.key()) and model_key(recipe) == first  # stable while nothing changes
    (model_dir / "model.safetensors").write_bytes(b"weights v2, trained further")
    assert model_key(recipe) != first
    assert model_key(Recipe(model="org/hub-model", device="cpu")) == Recipe(model="org/hub-model",
                                                                                  device="cpu").key()
