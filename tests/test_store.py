"""The artifact store: WORKBENCH_HOME's layout, and artifacts written to a temp directory then renamed."""

from __future__ import annotations

import json

import pytest

from workbench import store


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_home_and_artifacts_live_under_workbench_home(home):
    assert store.home() == home and home.is_dir()
    assert store.artifact_path("abc") == home / "artifacts" / "abc"


def test_an_artifact_is_ready_only_once_renamed_into_place_with_its_recipe(home):
    path = store.write_artifact("k1", lambda tmp: (tmp / "weights.safetensors").write_bytes(b"w"), {"recipe": {}})
    assert store.artifact_ready("k1") and (path / "weights.safetensors").read_bytes() == b"w"
    assert json.loads((path / "recipe.json").read_text()) == {"recipe": {}}


def test_a_failed_write_leaves_no_artifact_and_no_temp_directory(home):
    def fail(tmp):
        (tmp / "half").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.write_artifact("k2", fail, {})
    assert not store.artifact_ready("k2") and list(store.artifacts_dir().iterdir()) == []


def test_a_second_writer_keeps_the_first_artifact(home):
    store.write_artifact("k3", lambda tmp: (tmp / "v").write_text("first"), {})
    store.write_artifact("k3", lambda tmp: (tmp / "v").write_text("second"), {})
    assert (store.artifact_path("k3") / "v").read_text() == "first"
    assert [p.name for p in store.artifacts_dir().iterdir()] == ["k3"]
