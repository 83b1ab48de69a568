"""Distillation on a tiny teacher: the loss, a student that builds, checkpoints, resumes and loads as a variant."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from workbench import runtimes, store
from workbench.optimize.distill import PROMPTS, distill, kd_loss
from workbench.optimize.variants import find_student, list_students, student_key, student_name, variant_source
from workbench.recipe import GenerationSettings, Recipe, RecipeError, StudentSpec
from workbench.serving.engine import Engine

SPEC = StudentSpec(layers_ratio=0.5, lr=1e-3, batch_size=2, seq_len=48, corpus_new_tokens=16, samples_per_prompt=1)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from tiny import make_model, make_tokenizer

    path = tmp_path_factory.mktemp("teacher")
    tok = make_tokenizer()
    make_model(tok, layers=4, init_range=0.02).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5)
    assert kd_loss(t, t, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(2, 5, 11, requires_grad=True)
    loss = kd_loss(s, t, mask, 2.0)
    loss.backward()
    assert loss.item() > 0 and s.grad.abs().sum() > 0
    # Masked positions do not count.
    mask[:, 3:] = 0
    s2 = s.detach().clone()
    s2[:, 3:] = t[:, 3:] + 100
    assert kd_loss(s2, t, mask, 2.0).item() == pytest.approx(kd_loss(s2[:, :3], t[:, :3], mask[:, :3], 2.0).item())


def test_student_builds_resumes_and_loads_as_a_variant(teacher_dir):
    model = str(teacher_dir)
    seen = []
    first = distill(model, SPEC, steps=4, checkpoint_every=2, on_step=lambda i, n, m: seen.append((i, n, m)))
    name = student_name(model, SPEC)
    assert first["name"] == name and first["steps"] == 4
    assert [i for i, _, m in seen if m["stage"] == "distilling"] == [1, 2, 3, 4]
    assert all("loss" in m and "eta_s" in m for _, _, m in seen if m["stage"] == "distilling")
    path = find_student(model, name)
    assert path is not None and (path / "model.safetensors").is_file()
    assert not list(path.glob("*.bin")) and not list(path.glob("*.pt"))
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 2  # half of the teacher's 4 layers
    assert first["params"] < first["teacher_params"]

    # Asking for the same steps again trains nothing; asking for more resumes from step 4.
    assert distill(model, SPEC, steps=4)["steps"] == 4
    resumed = []
    second = distill(model, SPEC, steps=6, on_step=lambda i, n, m: resumed.append(i))
    assert second["steps"] == 6 and [i for i in resumed if i] == [5, 6]
    losses = json.loads((find_student(model, name) / "progress.json").read_text())["losses"]
    assert len(losses) == 6

    assert [s["name"] for s in list_students(model)] == [name]
    student = runtimes.build(Recipe(model=model, device="cpu", variant=name))
    assert student.stats.params == second["params"]
    eng = Engine(student)
    try:
        assert eng.generate("Hi", GenerationSettings(max_new_tokens=3, ignore_eos=True)).new_tokens == 3
    finally:
        eng.close()


def test_stop_checkpoints_and_a_later_run_resumes(teacher_dir):
    model = str(teacher_dir)
    spec = StudentSpec(layers_ratio=0.25, lr=1e-3, batch_size=2, seq_len=48, corpus_new_tokens=16, samples_per_prompt=1)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 2

    out = distill(model, spec, steps=10, checkpoint_every=100, stop=stop)
    assert out["steps"] < 10
    again = distill(model, spec, steps=out["steps"] + 2)
    assert again["steps"] == out["steps"] + 2


def test_unknown_variant_lists_what_exists(teacher_dir):
    with pytest.raises(RecipeError) as err:
        variant_source(str(teacher_dir), "student-doesnotexist")
    assert err.value.field == "variant" and "available" in str(err.value)


def test_public_pair_resolves_to_the_student_hub_id():
    assert variant_source("gpt2", "distilgpt2") == "distilgpt2"
    assert variant_source("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_student_spec_validation():
    with pytest.raises(RecipeError):
        StudentSpec(layers_ratio=0, channels_ratio=0)
    with pytest.raises(RecipeError):
        StudentSpec(layers_ratio=0.95)


def test_artifacts_are_written_atomically(teacher_dir):
    assert not [p for p in store.artifacts_dir().iterdir() if p.name.endswith(".tmp")]


def test_the_training_prompts_hold_none_of_the_evaluation_questions():
    """The student is scored on assets/eval; it must never be trained on those questions."""
    from workbench import quality

    def norm(text: str) -> str:
        return " ".join(text.lower().replace("color", "colour").strip(" ?.!").split())

    training = {norm(line) for line in PROMPTS.read_text().splitlines() if line.strip()}
    questions = {norm(item["question"]) for item in quality.load_qa()}
    prompts = {norm(p) for p in quality.load_prompts()}
    assert len(training) >= 100
    assert not training & questions
    assert not training & prompts


# Damage and leftovers --------------------------------------------------------------------------------------


def _spec(seed: int) -> StudentSpec:
    return StudentSpec(layers_ratio=0.5, lr=1e-3, batch_size=2, seq_len=48, corpus_new_tokens=8, samples_per_prompt=1,
                       seed=seed)


def test_a_damaged_student_is_set_aside_with_a_message_and_built_again(teacher_dir):
    from workbench.loading import ModelSourceError

    model, spec = str(teacher_dir), _spec(11)
    built = distill(model, spec, steps=2)
    path = find_student(model, built["name"])
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelSourceError) as err:
        runtimes.build(Recipe(model=model, device="cpu", variant=built["name"]))
    (aside,) = path.parent.glob(f"{path.name}.damaged-*")
    assert str(err.value).startswith(f"the student in {path} is damaged (")
    assert str(err.value).endswith(f"; it was moved to {aside.name}: build it again (`workbench distill` or the "
                                   "Student page)")
    assert find_student(model, built["name"]) is None and built["name"] not in [s["name"] for s in list_students(model)]
    assert distill(model, spec, steps=2)["steps"] == 2 and find_student(model, built["name"]) == path


def test_only_complete_students_are_listed_not_temp_superseded_or_damaged_folders(teacher_dir):
    import shutil

    model = str(teacher_dir)
    built = distill(model, _spec(12), steps=1)
    path = Path(built["path"])
    for name in (f"{path.name}.old", f"{path.name}.damaged-20260101-000000", f".{path.name}.tmp-abc"):
        shutil.copytree(path, path.with_name(name))
    assert [s["name"] for s in list_students(model)].count(built["name"]) == 1


def test_a_corpus_cut_short_by_an_older_version_is_written_again(teacher_dir):
    model, spec = str(teacher_dir), _spec(13)
    key = student_key(model, student_name(model, spec))
    work = store.artifacts_dir() / f".{key}-work"
    work.mkdir()
    (work / "corpus.json").write_text("[[1, 2, 3], [4, ")  # an older version's in-place write, killed
    out = distill(model, spec, steps=3, checkpoint_every=1, stop=lambda: False)
    assert out["steps"] == 3 and not (work / "checkpoint").exists()  # published: the new resume point
    assert json.loads((work / "corpus.json").read_text()) == json.loads((Path(out["path"]) / "corpus.json").read_text())
    corpus = json.loads((Path(out["path"]) / "corpus.json").read_text())
    assert len(corpus) > 2 and all(isinstance(seq, list) for seq in corpus)



def test_one_seed_gives_one_student_and_the_process_rng_is_left_alone(teacher_dir):
    import shutil

    from safetensors.torch import load_file

    model, spec = str(teacher_dir), _spec(14)
    key = student_key(model, student_name(model, spec))

    def build() -> tuple[list, list, dict]:
        out = distill(model, spec, steps=3, checkpoint_every=1)
        path = Path(out["path"])
        result = (json.loads((path / "corpus.json").read_text()),
                  json.loads((path / "progress.json").read_text())["losses"], load_file(path / "model.safetensors"))
        shutil.rmtree(path)  # the next run builds it again from nothing
        shutil.rmtree(store.artifacts_dir() / f".{key}-work", ignore_errors=True)
        for texts in store.artifacts_dir().glob(".texts-*"):  # and the teacher writes the texts again
            shutil.rmtree(texts)
        return result

    torch.manual_seed(1234)
    before = torch.get_rng_state()
    corpus, losses, weights = build()
    assert torch.equal(torch.get_rng_state(), before)  # no draw from it, no reset of it
    again_corpus, again_losses, again_weights = build()
    assert again_corpus == corpus and again_losses == losses
    assert weights.keys() == again_weights.keys() and all(torch.equal(weights[k], again_weights[k]) for k in weights)
    # Sampled, not greedy: another seed writes another training text.
    other = json.loads((Path(distill(model, _spec(15), steps=1)["path"]) / "corpus.json").read_text())
    assert other != corpus


# Budgets in minutes, held-out checkpoints, resuming the loss curve -------------------------------------------


def test_a_minutes_budget_stops_training_checkpoints_and_a_longer_one_resumes_the_curve(teacher_dir):
    model, spec = str(teacher_dir), _spec(21)
    seen = []
    first = distill(model, spec, minutes=0.05, checkpoint_every=1000, on_step=lambda i, n, m: seen.append((i, n, m)))
    training = [(i, n, m) for i, n, m in seen if m["stage"] == "distilling"]
    assert training and all(m["unit"] == "s" and n == 3 for _, n, m in training)  # seconds of a 3-second budget
    assert first["train_seconds"] >= 3 and first["steps"] == training[-1][2]["step"]
    assert training[-1][2]["eta_s"] == 0.0
    # Held-out perplexity: the unhealed student (step 0), then as it trains; the teacher's for reference.
    evals = first["evals"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == first["steps"] and len(evals) >= 2
    assert all(e["heldout_ppl"] > 1 for e in evals) and first["teacher_heldout_ppl"] > 1
    path = Path(first["path"])
    progress = json.loads((path / "progress.json").read_text())
    assert len(progress["losses"]) == first["steps"] == len(progress["parts"]["kl"])

    # The same budget again trains nothing; a longer one resumes: the curve goes on from where it stopped.
    assert distill(model, spec, minutes=0.05)["steps"] == first["steps"]
    second = distill(model, spec, minutes=0.1, checkpoint_every=1000)
    again = json.loads((Path(second["path"]) / "progress.json").read_text())
    assert second["steps"] > first["steps"] and second["train_seconds"] >= 6
    assert again["losses"][: first["steps"]] == progress["losses"]
    assert again["evals"][: len(evals)] == evals and again["evals"][-1]["step"] == second["steps"]


def test_stop_under_a_budget_checkpoints_and_the_next_run_continues_the_curve(teacher_dir):
    model, spec = str(teacher_dir), _spec(22)
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] >= 3

    stopped = distill(model, spec, minutes=5, checkpoint_every=1000, stop=stop)
    assert stopped["steps"] == 3 and stopped["train_seconds"] < 300
    losses = json.loads((Path(stopped["path"]) / "progress.json").read_text())["losses"]
    resumed = distill(model, spec, steps=5)
    after = json.loads((Path(resumed["path"]) / "progress.json").read_text())["losses"]
    assert resumed["steps"] == 5 and after[:3] == losses and len(after) == 5


def test_cached_targets_make_training_steps_student_only(teacher_dir, monkeypatch):
    """With every signal cached, the teacher runs for its targets and held-out reference, never in a step."""
    import workbench.optimize.distill as distillation

    model, spec = str(teacher_dir), StudentSpec(layers_ratio=0.5, lr=1e-3, batch_size=2, seq_len=48,
                                                 corpus_new_tokens=8, seed=23, layers_weight=1.0)
    calls = []
    real = distillation.teacher_targets

    def counted(teacher, *args, **kwargs):
        handle = teacher.register_forward_hook(lambda *a: calls.append("targets"))
        try:
            return real(teacher, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(distillation, "teacher_targets", counted)
    trained = []
    real_step = distillation.train_step

    def step(student, optimizer, batch, spec, mapped, **sources):
        trained.append(sources["teacher"])
        return real_step(student, optimizer, batch, spec, mapped, **sources)

    monkeypatch.setattr(distillation, "train_step", step)
    out = distill(model, spec, steps=3)
    assert calls and trained == [None, None, None]  # the teacher was freed before the first step
    parts = json.loads((Path(out["path"]) / "progress.json").read_text())["parts"]
    assert set(parts) == {"kl", "layers"} and all(len(v) == 3 for v in parts.values())
    # Resumed for more steps: the targets are read back from the work folder, not computed again.
    calls.clear()
    distill(model, spec, steps=5)
    assert calls == []


def test_a_goal_is_steps_or_minutes():
    from workbench.optimize.distill import Goal

    with pytest.raises(RecipeError):
        Goal(steps=3, minutes=1)
    with pytest.raises(RecipeError) as err:
        Goal(minutes=0)
    assert err.value.field == "minutes"
    assert Goal(minutes=2).reached(1, 120) and not Goal(minutes=2).reached(10**6, 119)


def test_students_asking_for_the_same_texts_share_them_and_keep_their_own_copy(teacher_dir, monkeypatch):
    import workbench.optimize.corpus as corpus

    model = str(teacher_dir)
    writes = []
    real = corpus._write
    monkeypatch.setattr(corpus, "_write", lambda *a, **k: writes.append(a[5]) or real(*a, **k))
    a = distill(model, _spec(31), steps=1)
    written = len(writes)
    b = distill(model, dataclasses.replace(_spec(31), layers_ratio=0.25), steps=1)
    assert a["name"] != b["name"] and written >= 1 and len(writes) == written  # the second student wrote nothing
    texts = [json.loads((Path(out["path"]) / "corpus.json").read_text()) for out in (a, b)]
    assert texts[0] == texts[1]
    other = distill(model, _spec(32), steps=1)  # another seed: other texts
    assert len(writes) > written and json.loads((Path(other["path"]) / "corpus.json").read_text()) != texts[0]
