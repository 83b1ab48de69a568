"""kill -9 of a real process at each write another run depends on, then the next run: it is clean, nothing damaged
is served, and no work that had completed is lost."""

from __future__ import annotations

import json
import sqlite3

import pytest

from workbench import loading, store
from workbench.optimize.distill import distill
from workbench.optimize.variants import find_student, student_key, student_name
from workbench.recipe import Recipe, StudentSpec


def temp_folders() -> list[str]:
    return sorted(p.name for p in store.artifacts_dir().iterdir() if ".tmp-" in p.name or ".trash-" in p.name)


def test_a_conversion_killed_before_its_marker_is_made_again_and_its_temp_folder_goes(home, tiny_gguf, child):
    key = loading.source_key(str(tiny_gguf))
    killed = child("convert", gguf=str(tiny_gguf), at="finish_dir:.tmp-")
    killed.wait_reached()
    (temp,) = temp_folders()
    assert (store.artifacts_dir() / temp / "model.safetensors").is_file()  # the weights are written, not the marker
    killed.kill()
    assert not store.artifact_ready(key)
    stages = []
    _, _, weights = loading.load(str(tiny_gguf), on_stage=lambda stage, _: stages.append(stage))
    assert store.artifact_ready(key) and temp_folders() == [] and any(s.startswith("Converting") for s in stages)


def test_a_gguf_export_killed_mid_write_is_never_served_and_the_conversion_is_kept(home, tiny_gguf, child):
    from workbench.runtimes import llamacpp

    killed = child("gguf_file", model=str(tiny_gguf), at="write_gguf")
    killed.wait_reached()
    conversion = loading.source_key(str(tiny_gguf))
    converted = store.artifact_id(conversion)
    assert store.artifact_ready(conversion) and len(temp_folders()) == 1  # the half-written .gguf is in a temp folder
    killed.kill()
    recipe = Recipe(model=str(tiny_gguf), runtime="llama.cpp", device="cpu", dtype="fp32", threads=1)
    path, _, found = llamacpp.gguf_file(recipe)
    assert found.params > 0 and path.parent.name == llamacpp.weights_recipe(recipe).key()
    assert store.artifact_id(conversion) == converted and temp_folders() == []  # the finished conversion was reused


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic exchange", "two renames"])
def test_distill_killed_while_swapping_in_a_checkpoint_resumes_from_the_last_complete_one(home, teacher, spec, child,
                                                                                         exchange):
    at = "swap_in:checkpoint" if exchange else "renamed:checkpoint.old"
    killed = child("distill", teacher=teacher, spec=spec, steps=6, checkpoint_every=2, at=at, exchange=exchange)
    killed.wait_reached()  # at the checkpoint of step 4; the one of step 2 is complete
    killed.kill()
    work = store.artifacts_dir() / f".{student_key(teacher, student_name(teacher, StudentSpec(**spec)))}-work"
    kept = work / ("checkpoint" if exchange else "checkpoint.old")
    assert json.loads((kept / "progress.json").read_text())["steps"] == 2
    steps = []
    out = distill(teacher, StudentSpec(**spec), 6, checkpoint_every=2, on_step=lambda i, n, m: steps.append(i))
    assert out["steps"] == 6 and [i for i in steps if i] == [3, 4, 5, 6]
    losses = json.loads((find_student(teacher, out["name"]) / "progress.json").read_text())["losses"]
    # Published: the checkpoint goes (the student is the resume point); the texts and targets stay for resuming.
    assert len(losses) == 6 and not (work / "checkpoint").exists() and not (work / "checkpoint.old").exists()
    assert temp_folders() == []


def test_distill_killed_while_writing_its_corpus_writes_it_again(home, teacher, spec, child):
    killed = child("distill", teacher=teacher, spec=spec, steps=2, checkpoint_every=2, at="replace:corpus.json")
    killed.wait_reached()
    killed.kill()
    work = store.artifacts_dir() / f".{student_key(teacher, student_name(teacher, StudentSpec(**spec)))}-work"
    written = [work / "corpus.json", *store.artifacts_dir().glob(".texts-*/corpus.json")]
    assert not any(p.exists() for p in written)  # the text is in a temp file, never half a corpus.json
    out = distill(teacher, StudentSpec(**spec), 2)
    corpus = json.loads((find_student(teacher, out["name"]) / "corpus.json").read_text())
    assert out["steps"] == 2 and len(corpus) > 100


@pytest.mark.parametrize("exchange", [True, False], ids=["atomic exchange", "two renames"])
def test_a_publish_killed_midway_leaves_a_whole_student_visible_and_loses_no_training(home, teacher, spec, child,
                                                                                     exchange):
    student = StudentSpec(**spec)
    first = distill(teacher, student, 2)
    key = student_key(teacher, first["name"])
    at = f"swap_in:{key}" if exchange else f"renamed:{key}.old"
    killed = child("distill", teacher=teacher, spec=spec, steps=4, checkpoint_every=2, at=at, exchange=exchange)
    killed.wait_reached()  # trained to step 4, checkpointed, about to replace the 2-step student
    if exchange:
        assert json.loads((find_student(teacher, first["name"]) / "progress.json").read_text())["steps"] == 2
    killed.kill()
    shown = find_student(teacher, first["name"])  # after two renames cut short, the reader puts the old one back
    assert shown is not None and json.loads((shown / "progress.json").read_text())["steps"] == 2
    steps = []
    out = distill(teacher, student, 4, on_step=lambda i, n, m: steps.append(i))
    assert out["steps"] == 4 and [i for i in steps if i] == []  # steps 3 and 4 were checkpointed: not trained again
    assert sorted(p.name for p in store.artifacts_dir().glob(f"{key}*")) == [key]


def test_a_history_killed_while_writing_keeps_every_row_it_finished(tmp_path, child):
    from workbench.observe.history import HistoryStore

    path = tmp_path / "metrics.sqlite"
    killed = child("history", path=str(path))
    finished = killed.wait_lines(300)
    killed.kill()
    history = HistoryStore(path)
    keys = {r["recipe_key"] for r in history.after(0, limit=1_000_000)}
    assert history.problem is None and {f"k{i}" for i in range(finished + 1)} <= keys
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    history.add(_row())  # and it goes on
    assert history.count() >= finished + 2


def _row():
    from workbench.observe.records import RequestRecord

    return RequestRecord("after", "label", 1_700_100_000.0, 10, 3, 0.1, 0.3, 0.0, token_times=[0.1] * 3)


def test_a_response_cache_killed_while_storing_serves_every_answer_it_finished(tmp_path, child):
    from answers import GREEDY, RECIPE, ask

    from workbench.response_cache.disk import ResponseCache

    directory = tmp_path / "responses"
    killed = child("cache", directory=str(directory))
    finished = killed.wait_lines(100)
    killed.kill()
    responses = ResponseCache(directory)
    try:
        for i in range(finished + 1):
            hit = responses.lookup(RECIPE.key(), ask(f"Question number {i}?"), GREEDY)
            assert hit is not None and hit.entry["text"] == f"Answer {i}.", (i, responses.problem)
        assert responses.problem is None
    finally:
        responses.close()
