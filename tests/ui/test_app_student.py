"""Building a student in the background and on the Build a student page."""

from __future__ import annotations

import functools

from apps import JOB_TIMEOUT_S, click, run_until, sidebar_text, tiny_app

from workbench.optimize.variants import list_students, student_name
from workbench.recipe import StudentSpec
from workbench.ui import jobs, state
from workbench.ui import student as student_page

SMALL = dict(lr=1e-3, batch_size=2, seq_len=48, corpus_new_tokens=16, samples_per_prompt=1)  # a fast student


def test_distill_job_builds_stops_and_resumes_a_student(tiny_model_dir):
    model, spec = str(tiny_model_dir), StudentSpec(layers_ratio=0.5, seed=1, **SMALL)  # not the page test's
    registry = jobs.JobRegistry()
    job = jobs.start_distill(registry, model, spec, steps=4)
    job.stop()  # while the teacher loads: the run ends after its first step, checkpointed and published
    assert job.wait(JOB_TIMEOUT_S) and job.error is None, job.error
    assert job.stopped and job.result["steps"] == 1
    name = student_name(model, spec)
    assert job.result["name"] == name and name in [s["name"] for s in list_students(model)]

    resumed = jobs.start_distill(registry, model, spec, steps=4)
    assert resumed is not job and resumed.wait(JOB_TIMEOUT_S) and resumed.error is None, resumed.error
    assert not resumed.stopped and resumed.result["steps"] == 4
    steps = [i for i, m in resumed.history if m.get("stage") == "distilling"]
    assert steps == [2, 3, 4]  # picked up after the stopped run's step 1
    assert all("loss" in m and "eta_s" in m for _, m in resumed.history if m.get("stage") == "distilling")
    assert resumed.result["params"] < resumed.result["teacher_params"]


# The Build a student page ---------------------------------------------------------------------------------


def test_build_a_student_page_trains_one_shows_its_card_and_the_sidebar_offers_it(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(student_page, "StudentSpec", functools.partial(StudentSpec, **SMALL))  # a fast student
    monkeypatch.setattr(student_page, "CARD_OPTIONS", dict(qa_limit=2, max_eval_tokens=64, rounds=1, speed_tokens=8,
                                                           agreement_tokens=4))
    at = tiny_app(tiny_model_dir)
    at.switch_page("pages/build_a_student.py").run()
    assert not at.exception and at.title[0].value == "Build a student"
    at.number_input(key=state.STUDENT_MINUTES).set_value(0.1)
    at.slider(key=state.STUDENT_LAYERS).set_value(50)
    click(at, "Start").run()
    assert not at.exception
    run_until(at, lambda a: bool(a.success))
    name = student_name(str(tiny_model_dir), student_page.StudentSpec(layers_ratio=0.5))
    assert name in at.success[0].value and "of the teacher's" in at.success[0].value and "of training" in \
        at.success[0].value
    assert any(name in option for option in at.selectbox(key=state.VARIANT).options)
    tables = [df.value for df in at.dataframe]
    quality, speed, students = tables[0], tables[1], tables[-1]
    assert quality["Model"].tolist() == ["Teacher", "Student before healing", "Student, healed"]
    assert quality["Agreement with the teacher"].tolist()[0] == "1.00"
    assert speed["Runtime"].tolist() == ["transformers fp32", "llama.cpp q4_0"]
    assert name in students["Student"].tolist() and "→" in students["Held-out perplexity"].tolist()[0]
    assert any(m.value.startswith("Card of") for m in at.subheader)

    click(at, "Chat with").run()  # selects the student and opens the chat on it
    assert not at.exception and at.selectbox(key=state.VARIANT).value == name
    assert at.title[0].value == "Chat" and f"variant {name}" in sidebar_text(at)


def test_a_student_built_before_this_session_shows_its_card_when_chosen(monkeypatch, tiny_model_dir):
    from workbench.ui import shared

    model, spec = str(tiny_model_dir), StudentSpec(layers_ratio=0.25, seed=3, **SMALL)
    built = jobs.start_distill(jobs.JobRegistry(), model, spec, steps=2,  # as by the CLI or an earlier app server
                               card=dict(qa_limit=2, max_eval_tokens=64, rounds=1, speed_tokens=8, agreement_tokens=4))
    assert built.wait(JOB_TIMEOUT_S) and built.error is None, built.error
    monkeypatch.setattr(shared, "job_registry", functools.cache(jobs.JobRegistry))  # this app server ran no job

    at = tiny_app(tiny_model_dir)
    at.switch_page("pages/build_a_student.py").run()
    assert not at.exception and not at.success  # no job of this server: no result above the table
    assert not any(m.value.startswith("Card of") for m in at.subheader)  # nothing shown until one is chosen
    name = student_name(model, spec)
    assert name in at.selectbox(key=state.STUDENT_CARD).options
    at.selectbox(key=state.STUDENT_CARD).select(name).run()
    assert not at.exception
    assert [m.value for m in at.subheader if m.value.startswith("Card of")] == [f"Card of {name}"]
    quality = at.dataframe[1].value  # after the students table
    assert quality["Model"].tolist() == ["Teacher", "Student before healing", "Student, healed"]
    assert at.dataframe[2].value["Runtime"].tolist() == ["transformers fp32", "llama.cpp q4_0"]
