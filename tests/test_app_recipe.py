"""The recipe controls, the What changed page and the Build a student page, driven with AppTest.

Fast tests use the tiny local model directory; the one marked slow loads the real embedded model.
"""

from __future__ import annotations

import functools
import json
import time

import pytest
from test_app import QUESTION, assistant_replies, new_app, reply_caption, sidebar_text, tiny_app
from test_app import navigation_pages  # noqa: F401  (autouse fixture: keeps AppTest on st.navigation)

from workbench import devices
from workbench.optimize import distill
from workbench.optimize.distill import StudentSpec, list_students, student_name
from workbench.recipe import PruneSpec
from workbench.ui import changes, charts, jobs, state, widgets

POLL_S = 0.5
JOB_TIMEOUT_S = 240  # a measurement or a small student on the tiny model takes seconds; this bounds a stuck one
SMALL = dict(lr=1e-3, batch_size=2, seq_len=48, corpus_new_tokens=16, samples_per_prompt=1)  # a fast student


def run_until(at, done, timeout_s: float = JOB_TIMEOUT_S):
    """Rerun the app until ``done(at)`` holds: what a browser's polling fragment does every second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at.run()
        assert not at.exception
        if done(at):
            return at
        time.sleep(POLL_S)
    pytest.fail("the background job did not finish in time")


def build_table(at) -> dict[str, dict]:
    """The What changed page's build table, by row name."""
    return {row[""]: row for row in at.dataframe[0].value.to_dict("records")}


def click(at, label: str):
    return next(b for b in at.button if b.label.startswith(label)).click()


# Resolving the sidebar's choices ---------------------------------------------------------------------------


def test_resolve_choice_makes_auto_concrete(tiny_model_dir):
    recipe, problem = widgets.resolve_choice(str(tiny_model_dir), "auto", "int8")
    assert problem is None
    assert (recipe.device, recipe.backend) == ("cpu", "torch-dynamic")


def test_a_backend_forced_on_a_device_it_does_not_run_on_is_a_message(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(devices, "cuda_available", lambda: True)  # so that "cuda" itself is accepted
    recipe, problem = widgets.resolve_choice(str(tiny_model_dir), "cuda", "int8", backend="torch-dynamic")
    assert recipe is None
    assert "torch-dynamic does not run int8 on cuda" in problem and "available:" in problem


def test_a_variant_that_does_not_exist_is_a_message(tiny_model_dir):
    recipe, problem = widgets.resolve_choice(str(tiny_model_dir), "cpu", "fp32", variant="student-00000000")
    assert recipe is None and "no variant 'student-00000000'" in problem


def test_a_bad_pruning_ratio_is_a_message(tiny_model_dir):
    recipe, problem = widgets.resolve_choice(str(tiny_model_dir), "cpu", "fp32",
                                             prune={"method": "layers", "ratio": 0.95})
    assert recipe is None and "pruning ratio must be between 0 and 0.9" in problem


# Comparison figures, from plain data ----------------------------------------------------------------------


def result(recipe: dict, baseline: dict) -> dict:
    return {"recipe_key": "k", "label": "m · cpu · int8", "baseline_label": "m · cpu · fp32", "device": "cpu",
            "measured_at": 0.0, "quick": True, "runs": 3, "max_new_tokens": 64, "eval_tokens": 512, "qa_n": 10,
            "prompts_n": 10, "recipe": recipe, "baseline": baseline}


SLOWER = result(
    {"decode_tok_s": 41.0, "ttft_ms": 60.0, "tpot_ms": 24.4, "bandwidth_gb_s": 5.5, "weight_bytes": 135_000_000,
     "perplexity": 12.0, "qa_accuracy": 0.3, "agreement": 0.8},
    {"decode_tok_s": 50.0, "ttft_ms": 50.0, "tpot_ms": 20.0, "bandwidth_gb_s": 27.0, "weight_bytes": 540_000_000,
     "perplexity": 10.0, "qa_accuracy": 0.4, "agreement": 1.0},
)


def test_a_slower_recipe_is_called_slower_in_plain_words():
    level, sentence = changes.verdict(SLOWER)
    assert level == "slower" and "0.82× — slower than baseline on this CPU" in sentence
    rows = {r[""]: r for r in changes.measured_rows(SLOWER, changes.device_word("cpu"))}
    assert rows["Decode speed (tok/s, median and range)"]["Change"] == "0.82× — slower than baseline on this CPU"
    assert rows["Weight bytes"]["Change"] == "4.00× smaller"
    assert rows["Perplexity (lower is better)"]["Change"] == "+20.0% — worse"
    assert rows["QA accuracy"]["Change"] == "-10 points — worse"


def test_ratios_are_recipe_over_baseline_coloured_by_better_or_worse():
    by_name = {r["name"]: r for r in changes.ratios(SLOWER)}
    assert set(by_name) == {"Decode speed", "Time to first token", "Weight bytes", "Perplexity", "QA accuracy"}
    assert by_name["Decode speed"]["ratio"] == pytest.approx(0.82) and by_name["Decode speed"]["better"] is False
    assert by_name["Weight bytes"]["ratio"] == pytest.approx(0.25) and by_name["Weight bytes"]["better"] is True
    assert by_name["Perplexity"]["better"] is False and by_name["Time to first token"]["better"] is False
    zero_qa = result({**SLOWER["recipe"], "qa_accuracy": 0.0}, {**SLOWER["baseline"], "qa_accuracy": 0.0})
    assert "QA accuracy" not in {r["name"] for r in changes.ratios(zero_qa)}  # no ratio to a zero
    fig = charts.ratio_figure(changes.ratios(SLOWER))
    assert {t.name for t in fig.data} == {"better than baseline", "worse than baseline"}


def test_the_range_of_runs_shows_and_a_busy_machine_is_flagged():
    spread = result({**SLOWER["recipe"], "decode_tok_s_range": (39.0, 43.5)}, SLOWER["baseline"])
    rows = {r[""]: r for r in changes.measured_rows(spread)}
    assert rows["Decode speed (tok/s, median and range)"]["This recipe"] == "41.0 (39.0–43.5)"
    assert rows["Decode speed (tok/s, median and range)"]["Baseline"] == "50.0"
    assert changes.busy_note({**SLOWER, "load_before": 0.3, "cpus": 2}) is None
    assert "load 3.9 on 2 cores" in changes.busy_note({**SLOWER, "load_before": 3.9, "cpus": 2})


def test_about_the_same_speed_says_so():
    same = result({**SLOWER["recipe"], "decode_tok_s": 49.0}, SLOWER["baseline"])
    level, sentence = changes.verdict(same)
    assert level == "same" and "about the same" in sentence


# The job registry ------------------------------------------------------------------------------------------


def test_a_job_reports_progress_then_its_result_and_one_per_key():
    registry = jobs.JobRegistry()

    def work(job):
        for i in range(1, 4):
            job.on_step(i, 3, {"phase": "count", "value": i})
            time.sleep(0.05)
        return "done"

    job = registry.start("count", work)
    assert registry.start("count", work) is job  # one running job per key
    assert job.wait(10) and job.result == "done" and job.error is None and not job.stopped
    assert (job.step, job.total, job.fraction) == (3, 3, 1.0)
    assert [m["value"] for _, m in job.history] == [1, 2, 3] and job.phases["count"][0] == 3
    assert registry.start("count", work) is not job  # a finished job is replaced by a new run


def test_a_failing_job_keeps_one_line_and_stop_ends_work_without_a_hook():
    registry = jobs.JobRegistry()
    failed = registry.start("fail", lambda job: 1 / 0, title="Dividing")
    assert failed.wait(10) and failed.error == "Dividing failed: ZeroDivisionError: division by zero"

    def endless(job):
        while True:
            job.check_stop()
            job.on_step(1, 1, {})
            time.sleep(0.01)

    stopped = registry.start("endless", endless)
    stopped.stop()
    assert stopped.wait(10) and stopped.stopped and stopped.error is None


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


# The sidebar: every control rebuilds ----------------------------------------------------------------------


def test_sidebar_offers_every_recipe_control(tiny_model_dir):
    at = tiny_app(tiny_model_dir).run()
    assert not at.exception
    labels = [s.label for s in at.sidebar.selectbox]
    assert labels == ["Model", "Device", "dtype", "Pruning", "Distilled variant"]
    assert at.selectbox(key=state.DTYPE).options[:3] == ["fp32", "fp16", "bf16"]
    assert len(at.selectbox(key=state.DTYPE).options) == 7
    assert at.selectbox(key=state.PRUNE_METHOD).value == "none" and not at.sidebar.slider  # no ratio for none
    assert at.selectbox(key=state.VARIANT).value == "none"
    assert "Runs on dense fp32 matmuls" in sidebar_text(at)


def test_magnitude_pruning_shows_fewer_non_zero_parameters(tiny_model_dir):
    at = tiny_app(tiny_model_dir).run()
    at.selectbox(key=state.PRUNE_METHOD).set_value("magnitude").run()
    assert not at.exception
    assert at.slider(key=state.PRUNE_RATIO).value == 50
    assert [r.label for r in at.sidebar.radio] == ["Importance of a weight"]
    shown = sidebar_text(at)
    assert "magnitude 0.5" in shown and "non-zero parameters" in shown

    at.switch_page("pages/recipe.py").run()
    assert not at.exception
    table = build_table(at)
    assert table["Parameters"]["This recipe"] == table["Parameters"]["Baseline"]
    assert table["Non-zero parameters"]["Change"].endswith("of this model's weights are zero)")
    assert table["Non-zero parameters"]["This recipe"] != table["Non-zero parameters"]["Baseline"]

    at.radio(key=state.PRUNE_CRITERION).set_value("wanda").run()  # the better criterion rebuilds too
    assert not at.exception and "magnitude wanda 0.5" in sidebar_text(at)


def test_two_four_pruning_fixes_the_ratio_at_half(tiny_model_dir):
    at = tiny_app(tiny_model_dir).run()
    at.selectbox(key=state.PRUNE_METHOD).set_value("2:4").run()
    assert not at.exception
    (fixed,) = at.sidebar.slider
    assert fixed.value == 50 and fixed.disabled
    assert "2:4 0.5" in sidebar_text(at)
    assert any("2:4 sparse kernels need CUDA" in i.value for i in at.sidebar.info)  # the build says why no gain


def test_layer_pruning_shrinks_the_parameters(tiny_model_dir):
    at = tiny_app(tiny_model_dir).run()
    at.selectbox(key=state.PRUNE_METHOD).set_value("layers").run()
    assert not at.exception and not at.sidebar.radio  # structured pruning has its own importance measure
    at.switch_page("pages/recipe.py").run()
    assert not at.exception
    params = build_table(at)["Parameters"]
    share = int(params["Change"].split("%")[0])
    assert share < 100 and params["This recipe"] != params["Baseline"]
    assert any("removed 1 of 2 decoder layers" in m.value for m in at.markdown)


def test_int8_shows_its_backend_and_offers_the_others(tiny_model_dir):
    at = tiny_app(tiny_model_dir).run()
    at.selectbox(key=state.DTYPE).set_value("int8").run()
    assert not at.exception
    backend = at.selectbox(key=state.BACKEND)
    assert backend.value == "torch-dynamic" and len(backend.options) > 1
    assert backend.options[0].startswith("PyTorch dynamic int8") and backend.options[0].endswith("(default)")
    assert "backend: PyTorch dynamic int8" in sidebar_text(at)

    backend.set_value("torchao-int8-weight-only").run()
    assert not at.exception
    assert "backend: torchao int8 weight-only" in sidebar_text(at)

    at.selectbox(key=state.DTYPE).set_value("fp32").run()  # a float dtype has no backend to choose
    assert not at.exception and not [s for s in at.sidebar.selectbox if s.label == "Backend"]


def test_a_dtype_no_backend_runs_on_the_device_is_a_message(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(devices, "mps_available", lambda: True)  # a device with no quantization backend
    at = tiny_app(tiny_model_dir, **{state.DEVICE: "mps", state.DTYPE: "int4"}).run()
    assert not at.exception
    assert any("no backend runs int4 on mps" in e.value for e in at.sidebar.error)
    assert any("cannot run here" in w.value for w in at.warning)  # the page says why there is no chat
    assert not at.chat_input


# The What changed page ------------------------------------------------------------------------------------


def test_what_changed_renders_and_measures_side_by_side(tiny_model_dir):
    at = tiny_app(tiny_model_dir, **{state.DTYPE: "int8"})
    at.switch_page("pages/recipe.py").run()
    assert not at.exception
    assert at.title[0].value == "What changed"
    table = build_table(at)
    assert table["Kernel path"]["This recipe"].startswith("PyTorch dynamic int8")
    assert table["Kernel path"]["Baseline"] == "dense fp32 (PyTorch CPU)"
    assert table["Weight bytes"]["Change"].endswith("smaller")
    assert any("Why a smaller model can still be slower" in e.label for e in at.expander)

    at.checkbox(key=state.QUICK_MEASURE).check()
    click(at, "Measure speed and quality").run()
    assert not at.exception
    run_until(at, lambda a: len(a.dataframe) == 2)
    measured = {r[""]: r for r in at.dataframe[1].value.to_dict("records")}
    for row in ("Decode speed (tok/s, median and range)", "Time to first token (ms, median)", "Weight bytes",
                "Perplexity (lower is better)", "QA accuracy"):
        assert measured[row]["Baseline"] != "–" and measured[row]["This recipe"] != "–"
    assert any("Measured on this machine at" in c.value and "QA on 10 questions" in c.value for c in at.caption)
    verdicts = [m.value for m in [*at.warning, *at.success, *at.info] if "Decode speed" in m.value]
    assert verdicts and ("than baseline on this CPU" in verdicts[0] or "about the same" in verdicts[0])
    ratio_chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {bar["y"][0] for bar in ratio_chart["data"]} <= {"Decode speed", "Time to first token", "Weight bytes",
                                                           "Perplexity", "QA accuracy"}

    at.run()  # the results persist across reruns, kept under the recipe's key
    assert len(at.dataframe) == 2 and len(at.session_state[state.MEASUREMENTS]) == 1


# The Build a student page ---------------------------------------------------------------------------------


def test_build_a_student_page_trains_one_and_the_sidebar_offers_it(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(distill, "StudentSpec", functools.partial(StudentSpec, **SMALL))  # a fast student
    at = tiny_app(tiny_model_dir)
    at.switch_page("pages/distill.py").run()
    assert not at.exception and at.title[0].value == "Build a student"
    at.number_input(key=state.STUDENT_STEPS).set_value(3)
    at.slider(key=state.STUDENT_LAYERS).set_value(50)
    click(at, "Start").run()
    assert not at.exception
    run_until(at, lambda a: bool(a.success))
    name = student_name(str(tiny_model_dir), distill.StudentSpec(layers_ratio=0.5))
    assert name in at.success[0].value and "of the teacher's" in at.success[0].value
    assert any(name in option for option in at.selectbox(key=state.VARIANT).options)
    assert name in at.dataframe[0].value["Student"].tolist()

    click(at, "Chat with").run()  # selects the student and opens the chat on it
    assert not at.exception and at.selectbox(key=state.VARIANT).value == name
    assert at.title[0].value == "Chat" and f"variant {name}" in sidebar_text(at)


# The real embedded model ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_int8_recipe_from_the_sidebar_answers_a_chat_message():
    at = new_app(**{state.CACHE_ENABLED: False}).run()  # the model answers, not the cache
    at.selectbox(key=state.DTYPE).set_value("int8").run()
    assert not at.exception
    assert "· cpu · int8 · torch-dynamic" in sidebar_text(at) and "backend: PyTorch dynamic int8" in sidebar_text(at)
    at.chat_input[0].set_value(QUESTION).run()
    assert not at.exception
    (reply,) = assistant_replies(at)
    assert reply.markdown[0].value.strip()
    assert "int8" in reply_caption(reply) and "TTFT" in reply_caption(reply)
