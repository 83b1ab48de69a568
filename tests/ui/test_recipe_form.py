"""The recipe form in the sidebar: its choices resolved against this machine, and every control rebuilding the model."""

from __future__ import annotations

from apps import build_table, sidebar_text, tiny_app

from workbench import devices
from workbench.ui import recipe_form, state


# Resolving the sidebar's choices ---------------------------------------------------------------------------


def test_resolve_choice_makes_auto_concrete(tiny_model_dir):
    recipe, problem = recipe_form.resolve_choice(str(tiny_model_dir), "auto", "int8")
    assert problem is None
    assert (recipe.device, recipe.backend) == ("cpu", "torch-dynamic")


def test_a_backend_forced_on_a_device_it_does_not_run_on_is_a_message(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(devices, "cuda_available", lambda: True)  # so that "cuda" itself is accepted
    recipe, problem = recipe_form.resolve_choice(str(tiny_model_dir), "cuda", "int8", backend="torch-dynamic")
    assert recipe is None
    assert "torch-dynamic does not run int8 on cuda" in problem and "available:" in problem


def test_a_variant_that_does_not_exist_is_a_message(tiny_model_dir):
    recipe, problem = recipe_form.resolve_choice(str(tiny_model_dir), "cpu", "fp32", variant="student-00000000")
    assert recipe is None and "no variant 'student-00000000'" in problem


def test_a_bad_pruning_ratio_is_a_message(tiny_model_dir):
    recipe, problem = recipe_form.resolve_choice(str(tiny_model_dir), "cpu", "fp32",
                                             prune={"method": "layers", "ratio": 0.95})
    assert recipe is None and "pruning ratio must be between 0 and 0.9" in problem


# The sidebar: every control rebuilds ----------------------------------------------------------------------


def test_sidebar_offers_every_recipe_control(tiny_model_dir):
    at = tiny_app(tiny_model_dir).run()
    assert not at.exception
    labels = [s.label for s in at.sidebar.selectbox]
    assert labels == ["Model", "Runtime", "Device", "dtype", "Pruning", "Distilled variant"]
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

    at.switch_page("pages/what_changed.py").run()
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
    at.switch_page("pages/what_changed.py").run()
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
