import json
from pathlib import Path

import pytest
import torch

from workbench import catalog, loading, store
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


# Damaged files -------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_gguf(tmp_path):
    """The tiny model as an F32 GGUF file: a source that is converted to safetensors once, like the embedded one."""
    from tiny import make_model, make_tokenizer

    from workbench.runtimes.llamacpp import export

    tokenizer = make_tokenizer()
    path = tmp_path / "tiny.gguf"
    export.write_gguf(make_model(tokenizer), tokenizer, path, name="tiny", pre="gpt2")
    return path


def test_a_truncated_gguf_file_is_one_message_naming_it(tiny_gguf):
    data = tiny_gguf.read_bytes()
    for cut in (100, len(data) // 2):  # inside the header (struct.error in transformers), inside the tensors
        tiny_gguf.write_bytes(data[:cut])
        with pytest.raises(ModelSourceError) as err:
            loading.load(str(tiny_gguf))
        message = str(err.value)
        assert message.startswith(f"{tiny_gguf} is not a complete GGUF file: ") and "\n" not in message
        assert message.endswith("copy or download it again")
    tiny_gguf.write_text("not a model")
    with pytest.raises(ModelSourceError, match="does not start with the GGUF magic bytes"):
        loading.load(str(tiny_gguf))


def test_a_damaged_conversion_is_set_aside_and_made_again(tiny_gguf):
    first, _, weights = loading.load(str(tiny_gguf))
    expected = [t.clone() for t in first.state_dict().values()]  # its weights are mapped from the file cut below
    del first
    weights = Path(weights)
    safetensors = weights / "model.safetensors"
    safetensors.write_bytes(safetensors.read_bytes()[: safetensors.stat().st_size // 2])
    stages = []
    again, tokenizer, same = loading.load(str(tiny_gguf), on_stage=lambda stage, _: stages.append(stage))
    assert same == str(weights) and store.artifact_ready(weights.name)
    assert any(s.startswith(f"{weights} was damaged (") and s.endswith("converting tiny.gguf again") for s in stages)
    assert [p.name[: len(weights.name) + 9] for p in weights.parent.glob(f"{weights.name}.damaged-*")] == [
        f"{weights.name}.damaged-"]
    for a, b in zip(expected, again.state_dict().values()):
        assert torch.equal(a, b)
    (weights / "tokenizer.json").write_text('{"version": ')  # cut short: the tokenizer alone is read too
    tokenizer, eos = loading.load_tokenizer(str(tiny_gguf))
    assert tokenizer("Hello")["input_ids"] and json.loads((weights / "tokenizer.json").read_text())


def test_a_damaged_model_directory_says_which_file_and_what_to_do(tmp_path):
    from tiny import save_tiny

    model_dir = save_tiny(tmp_path / "model")
    (model_dir / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    with pytest.raises(ModelSourceError) as err:
        loading.load(str(model_dir))
    assert str(err.value).startswith(f"cannot load {model_dir}: a weights file is damaged (")
    assert str(err.value).endswith("copy or download it again") and (model_dir / "model.safetensors").exists()


# The build lock: a slow step of one build holds up no other ---------------------------------------------------


def _blocked(monkeypatch, name: str):
    """Make ``loading.<name>`` wait for ``release`` (after setting ``started``) before doing its work."""
    import threading

    started, release = threading.Event(), threading.Event()
    real = getattr(loading, name)

    def waiting(*args, **kwargs):
        started.set()
        assert release.wait(300), "never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, name, waiting)
    return started, release


def _in_thread(fn):
    import threading

    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported by the test, not lost in the thread
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_gguf_file_the_fast_path_cannot_map_is_converted_by_from_pretrained_s_own_path(tiny_gguf, monkeypatch):
    def unmapped(gguf, skeleton):
        raise ValueError("GGUF model with architecture x is not supported yet")

    monkeypatch.setattr(loading, "_dequantize", unmapped)
    model, tokenizer, weights = loading.load(str(tiny_gguf))
    assert store.artifact_ready(Path(weights).name) and tokenizer("Hello")["input_ids"]
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


def test_another_build_completes_while_a_gguf_file_is_being_dequantized(tiny_gguf, tiny_model_dir, monkeypatch):
    started, release = _blocked(monkeypatch, "_dequantize")
    slow, converted = _in_thread(lambda: loading.load(str(tiny_gguf)))
    try:
        assert started.wait(300) and slow.is_alive()
        other, built = _in_thread(lambda: build(Recipe(model=str(tiny_model_dir), device="cpu")))
        other.join(300)
        assert not other.is_alive() and "error" not in built, built  # not waiting for the conversion
        assert built["value"].stats.params > 0 and slow.is_alive()
    finally:
        release.set()
        slow.join(300)
    assert "error" not in converted, converted
    model, _, weights = converted["value"]
    assert store.artifact_ready(Path(weights).name)
    assert {k: v.dtype for k, v in model.state_dict().items()} == {
        k: torch.float32 for k in model.state_dict()}  # de-quantized: plain float weights


def test_another_build_completes_while_a_hub_model_downloads(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda: True)
    downloads = []

    def download(repo_id, trust_remote_code):  # what snapshot_download returns: the model's local folder
        downloads.append(repo_id)
        return str(tiny_model_dir)

    monkeypatch.setattr(loading, "_download", download)
    started, release = _blocked(monkeypatch, "_download")
    stages = []
    slow, downloaded = _in_thread(lambda: loading.load("some-org/tiny", on_stage=lambda s, _: stages.append(s)))
    try:
        assert started.wait(300) and slow.is_alive()
        other, loaded = _in_thread(lambda: loading.load(str(tiny_model_dir)))
        other.join(300)
        assert not other.is_alive() and "error" not in loaded, loaded
        assert slow.is_alive()
    finally:
        release.set()
        slow.join(300)
    assert "error" not in downloaded, downloaded
    assert downloaded["value"][2] == "some-org/tiny" and downloads == ["some-org/tiny"]
    assert "Downloading some-org/tiny from the Hugging Face hub" in stages


def test_a_hub_download_takes_what_a_causal_lm_needs_and_fails_in_one_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append(allow_patterns)
        return str(tmp_path)  # no safetensors in it: the PyTorch weights are asked for next

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert loading._download("some-org/x", trust_remote_code=False) == str(tmp_path)
    assert len(calls) == 2 and "*.safetensors" in calls[0] and "*.py" not in calls[0]
    assert not any(p.endswith((".bin", ".onnx", ".h5", ".gguf")) for p in calls[0])
    assert "pytorch_model*.bin" in calls[1]
    (tmp_path / "model.safetensors").write_bytes(b"")
    calls.clear()
    loading._download("some-org/x", trust_remote_code=True)
    assert len(calls) == 1 and "*.py" in calls[0]

    def missing(repo_id, allow_patterns):
        raise RepositoryNotFoundError(
            "404 Client Error. Repository Not Found for url: https://huggingface.co/api/models/some-org/x\n"
            "Please make sure you specified the correct `repo_id`.",
            response=SimpleNamespace(headers={}, request=None, status_code=404))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", missing)
    with pytest.raises(ModelSourceError) as err:
        loading._download("some-org/x", trust_remote_code=False)
    assert str(err.value) == ("cannot download some-org/x from the Hugging Face hub: 404 Client Error. Repository "
                              "Not Found for url: https://huggingface.co/api/models/some-org/x")
