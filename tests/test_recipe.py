import hashlib
import json

import pytest

from workbench.devices import resolve_device
from workbench.recipe import (MAX_BATCH_SIZE, MAX_NEW_TOKENS, MAX_PRUNE_RATIO, GenerationSettings, PruneSpec, Recipe,
                             RecipeError, StudentSpec, check_batch_size, working_precision)


def test_defaults_are_the_embedded_fp32_baseline():
    r = Recipe(device="cpu")
    assert r.model == "embedded" and r.dtype == "fp32" and r.prune == PruneSpec() and r.variant == "none"
    assert r.is_baseline()


def test_key_is_stable_and_short():
    a, b = Recipe(device="cpu", dtype="bf16"), Recipe(device="cpu", dtype="bf16")
    assert a.key() == b.key()
    assert len(a.key()) == 16 and int(a.key(), 16) >= 0
    # The key is a pure function of the canonical JSON, fields added later (runtime, threads) left out at their
    # defaults: pinned so that a refactor can't silently orphan every artifact, cache entry and history row.
    data = {k: v for k, v in a.to_dict().items() if k not in ("runtime", "threads")}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    assert a.key() == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert Recipe(device="cpu").key() == "46eb50246dc55c7c"  # the embedded fp32 baseline, as it always was


def test_a_runtime_is_part_of_the_key_and_llama_cpp_names_its_formats():
    base = Recipe(device="cpu")
    ll = Recipe(device="cpu", runtime="llama.cpp", dtype="int4", threads=2)
    assert ll.dtype == "q4_0" and ll.backend == "llama.cpp" and ll.key() != base.key()
    assert Recipe(device="cpu", runtime="llama.cpp", dtype="q4_0", threads=2) == ll  # int4 is q4_0: one key
    assert Recipe(device="cpu", runtime="llama.cpp", dtype="q4_0", threads=4).key() != ll.key()
    assert "llama.cpp" in ll.label() and "2 threads" in ll.label()
    assert ll.baseline() == Recipe(device="cpu") and ll.baseline().runtime == "transformers"
    assert Recipe.from_dict({k: v for k, v in base.to_dict().items() if k != "runtime"}) == base  # older files
    with pytest.raises(RecipeError) as err:
        Recipe(runtime="vllm")
    assert err.value.field == "runtime"
    with pytest.raises(RecipeError) as err:
        Recipe(threads=-1)
    assert err.value.field == "threads"


@pytest.mark.parametrize(
    "change",
    [
        {"model": "HuggingFaceTB/SmolLM2-360M-Instruct"},
        {"device": "cuda"},
        {"dtype": "fp16"},
        {"dtype": "bf16"},
        {"prune": PruneSpec("magnitude", 0.5)},
        {"prune": PruneSpec("magnitude", 0.3)},
        {"prune": PruneSpec("layers", 0.5)},
        {"variant": "student-1"},
        {"batch_size": 4},
    ],
)
def test_every_field_changes_the_key(change):
    base = Recipe(device="cpu")
    assert Recipe(**{**base.__dict__, **change}).key() != base.key()


def test_no_pruning_has_one_key_and_2_4_is_half():
    assert PruneSpec("none", 0.0) == PruneSpec("none", 0.7)
    assert PruneSpec("2:4", 0.1).ratio == 0.5


def test_round_trip_through_dict():
    r = Recipe(model="x/y", device="cpu", dtype="bf16", prune=PruneSpec("channels", 0.25), batch_size=8)
    again = Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again == r and again.key() == r.key()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"dtype": "int9"}, "dtype"),
        ({"device": "tpu"}, "device"),
        ({"model": "  "}, "model"),
        ({"batch_size": 0}, "batch-size"),
        ({"batch_size": 2.5}, "batch-size"),
    ],
)
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(RecipeError) as err:
        Recipe(**kwargs)
    assert err.value.field == field


@pytest.mark.parametrize("method, ratio, field", [("snip", 0.5, "prune-method"), ("magnitude", MAX_PRUNE_RATIO + 0.01, "prune-ratio"), ("magnitude", -0.1, "prune-ratio")])
def test_bad_prune_spec(method, ratio, field):
    with pytest.raises(RecipeError) as err:
        PruneSpec(method, ratio)
    assert err.value.field == field


def test_baseline_drops_optimizations_and_keeps_model_and_device():
    r = Recipe(model="m", device="cpu", dtype="bf16", prune=PruneSpec("layers", 0.5), variant="v")
    b = r.baseline()
    assert (b.model, b.device, b.dtype, b.prune.method, b.variant) == ("m", "cpu", "fp32", "none", "none")
    assert Recipe(device="cuda", dtype="int8").baseline().dtype == "fp16"


def test_auto_device_resolves_to_a_present_device():
    assert resolve_device("auto") in ("cpu", "cuda", "mps")
    assert resolve_device("cpu") == "cpu"


def test_absent_device_is_a_recipe_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RecipeError) as err:
        resolve_device("cuda")
    assert err.value.field == "device" and "available" in str(err.value)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_new_tokens": 0}, "max-new-tokens"), ({"max_new_tokens": True}, "max-new-tokens"),
    ({"max_new_tokens": MAX_NEW_TOKENS + 1}, "max-new-tokens"), ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0.0}, "top-p"), ({"seed": -1}, "seed"),
])
def test_bad_generation_settings_name_the_flag(kwargs, field):
    with pytest.raises(RecipeError) as err:
        GenerationSettings(**kwargs)
    assert err.value.field == field


def test_greedy_is_temperature_zero():
    assert GenerationSettings().greedy and not GenerationSettings(temperature=0.7).greedy


def test_one_place_decides_batch_sizes_and_the_working_precision():
    assert check_batch_size(MAX_BATCH_SIZE) == MAX_BATCH_SIZE
    for bad in (0, MAX_BATCH_SIZE + 1, 2.0, True):
        with pytest.raises(RecipeError) as err:
            check_batch_size(bad, flag="batch-sizes")
        assert err.value.field == "batch-sizes"
    with pytest.raises(RecipeError):
        Recipe(device="cpu", batch_size=MAX_BATCH_SIZE + 1)
    assert working_precision("cuda") == "fp16" and working_precision("cpu") == working_precision("mps") == "fp32"
    assert Recipe(device="mps", dtype="int8").baseline().dtype == working_precision("mps")


def test_a_student_must_be_smaller_than_its_teacher():
    assert StudentSpec().layers_ratio > 0
    with pytest.raises(RecipeError):
        StudentSpec(layers_ratio=0.0, channels_ratio=0.0)
    with pytest.raises(RecipeError):
        StudentSpec(layers_ratio=0.95)
