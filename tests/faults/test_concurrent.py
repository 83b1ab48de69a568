"""Two processes building the same artifact or the same student at once: one builds, the other waits and uses its
result (an artifact) or is told which process is building it (a student)."""

from __future__ import annotations

import pytest

from workbench import loading, store
from workbench.loading import ModelSourceError
from workbench.optimize.distill import distill
from workbench.optimize.variants import student_name
from workbench.recipe import StudentSpec


def test_two_processes_converting_one_file_convert_it_once(home, tiny_gguf, child, monkeypatch):
    first = child("convert", gguf=str(tiny_gguf), at="finish_dir:.tmp-", go=True)
    first.wait_reached()  # it holds the conversion's lock, its weights written
    busy = f"the conversion of tiny.gguf is being built by another process (pid {first.pid})"
    monkeypatch.setattr(store, "BUILD_WAIT_S", 0.5)
    with pytest.raises(ModelSourceError) as err:
        loading.load(str(tiny_gguf))
    assert str(err.value) == f"{busy} (waited 0.5 s); wait for it to finish, or try again"

    monkeypatch.setattr(store, "BUILD_WAIT_S", 120)
    stages = []

    def on_stage(stage: str, _) -> None:
        stages.append(stage)
        if stage.startswith("Waiting"):
            first.go()  # let the first process finish while this one waits for it

    _, _, weights = loading.load(str(tiny_gguf), on_stage=on_stage)
    assert weights == first.result()["weights"]
    assert stages[0] == f"Waiting: {busy}" and not any(s.startswith("Converting") for s in stages)
    assert sorted(p.name for p in store.artifacts_dir().iterdir() if not p.name.endswith((".lock", ".owner"))) == [
        loading.source_key(str(tiny_gguf))]


def test_a_second_process_building_the_same_student_is_told_who_builds_it(home, teacher, spec, child):
    first = child("distill", teacher=teacher, spec=spec, steps=2, checkpoint_every=2, at="replace:corpus.json",
                  go=True)
    first.wait_reached()
    name = student_name(teacher, StudentSpec(**spec))
    with pytest.raises(store.BuildBusy) as err:
        distill(teacher, StudentSpec(**spec), 2)
    assert str(err.value) == (f"student {name} of {teacher} is being built by another process (pid {first.pid}); "
                              "wait for it to finish, or try again")
    first.go()
    built = first.result()
    steps = []
    again = distill(teacher, StudentSpec(**spec), 2, on_step=lambda i, n, m: steps.append(i))
    assert again == built and steps == []  # the first one's student, not trained again
