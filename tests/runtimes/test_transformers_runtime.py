"""The transformers runtime behind the seam: tokens, scoring, generation with per-token callbacks, the registry."""

from __future__ import annotations

import math
import time

import pytest
import torch

from workbench import runtimes
from workbench.recipe import FLOAT_DTYPES, GenerationSettings, Recipe, RecipeError
from workbench.runtimes.base import LoadedModel, answer_complete, complete
from workbench.runtimes.transformers import TransformersModel


class Row:
    """A row as the serving layer keeps one: open until its answer is complete or it is finished early."""

    def __init__(self, prompt_ids, settings, eos):
        self.prompt_ids, self.settings, self.eos = prompt_ids, settings, eos
        self.ids, self.times, self.finished = [], [], False

    @property
    def open(self):
        return not self.finished and not answer_complete(self.ids, self.settings, self.eos)

    active = open


def test_the_registry_builds_a_loaded_model(tiny_model):
    assert "transformers" in runtimes.RUNTIMES
    assert isinstance(tiny_model, LoadedModel) and isinstance(tiny_model, TransformersModel)
    assert tiny_model.recipe.backend == "torch" and tiny_model.stats.backend.startswith("dense fp32")
    assert tiny_model.context_length == 512 and tiny_model.eos_ids == {tiny_model.tokenizer.eos_token_id}


def test_check_resolves_and_refuses_without_loading(tiny_model_dir):
    recipe = runtimes.check(Recipe(model=str(tiny_model_dir), device="auto", dtype="int8"))
    assert recipe.device in ("cpu", "cuda", "mps") and recipe.backend != "auto"
    with pytest.raises(RecipeError) as err:
        runtimes.check(Recipe(model=str(tiny_model_dir), device="cpu", variant="student-none"))
    assert err.value.field == "variant"


def test_backends_name_the_kernel_path_of_every_dtype():
    for dtype in FLOAT_DTYPES:
        (cast,) = runtimes.backends(dtype, "cpu")
        assert cast.name == "torch" and dtype in cast.label
    int8 = runtimes.backends("int8", "cpu")
    assert int8[0].name == "torch-dynamic" and all(b.label and b.why for b in int8)


def test_text_round_trips_through_tokens_and_the_chat_template(tiny_model):
    ids = tiny_model.tokenize("The capital of France is Paris.")
    assert tiny_model.decode(ids) == "The capital of France is Paris."
    chat = tiny_model.encode_chat([{"role": "user", "content": "Hi"}])
    assert tiny_model.tokenizer.decode(chat).endswith("<|im_start|>assistant\n")


def test_nll_is_the_cross_entropy_of_the_targets(tiny_model):
    ids = tiny_model.tokenize("Latency is the time between a request and its answer.")
    with torch.inference_mode():
        logits = tiny_model.module(input_ids=torch.tensor([ids])).logits[0].float()
    expected = torch.nn.functional.cross_entropy(logits[2:-1], torch.tensor(ids[3:]), reduction="sum").item()
    assert tiny_model.nll(ids, 3) == pytest.approx(expected, rel=1e-5)
    assert math.isfinite(tiny_model.nll(ids, 1))


def test_generate_reports_every_token_with_its_moment_and_stops_rows_separately(tiny_model):
    settings = GenerationSettings(max_new_tokens=6, ignore_eos=True)
    prompts = [tiny_model.encode_chat([{"role": "user", "content": p}]) for p in ("Hello!", "Tell me about pruning.")]
    rows = [Row(p, settings, tiny_model.eos_ids) for p in prompts]
    seen = []

    def on_token(i, token_id, t):
        rows[i].ids.append(token_id)
        rows[i].times.append(t)
        seen.append(i)
        if i == 0 and len(rows[0].ids) == 2:
            rows[0].finished = True  # finished early (stopped) after its second token: row 1 carries on

    before = time.perf_counter()
    tiny_model.generate(rows, settings, on_token)
    assert len(rows[1].ids) == 6 and len(rows[0].ids) == 2  # nothing more for a row once it is closed
    for row in rows:
        assert all(before < a < b for a, b in zip(row.times, row.times[1:]))
    alone = complete(tiny_model, prompts[1], settings)
    assert alone == rows[1].ids  # a row's tokens do not depend on its neighbour (greedy)


def test_a_seed_makes_sampling_reproducible(tiny_model):
    prompt = tiny_model.encode_chat([{"role": "user", "content": "Hello!"}])
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=3, ignore_eos=True)
    assert complete(tiny_model, prompt, settings) == complete(tiny_model, prompt, settings)


def test_a_seeded_request_draws_from_its_own_generator_not_the_process_wide_one(tiny_model):
    prompt = tiny_model.encode_chat([{"role": "user", "content": "Hello!"}])
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3, ignore_eos=True)
    torch.manual_seed(99)
    before = torch.get_rng_state()
    first = complete(tiny_model, prompt, settings)
    assert torch.equal(torch.get_rng_state(), before)  # neither reset nor drawn from: other engines' draws stand
    torch.manual_seed(5)
    assert complete(tiny_model, prompt, settings) == first  # whatever the global state
    assert len(first) == 8 and complete(tiny_model, prompt, GenerationSettings(
        max_new_tokens=8, temperature=1.0, top_p=0.9, seed=4, ignore_eos=True)) != first
