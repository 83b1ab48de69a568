"""The artifact store: WORKBENCH_HOME's layout, durable writes, the marker, swaps, build locks, damaged artifacts and
what killed builds leave behind. (Real processes killed with SIGKILL: tests/faults.)"""

from __future__ import annotations

import json
import threading

import pytest

from workbench import store


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def visible(folder) -> list[str]:
    """Entries other than the lock and owner files (which stay, empty, for the next builder)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".lock", ".owner")))


def test_home_and_artifacts_live_under_workbench_home(home):
    assert store.home() == home and home.is_dir()
    assert store.artifact_path("abc") == home / "artifacts" / "abc"


def test_an_artifact_is_ready_only_once_renamed_into_place_with_its_marker_written_last(home):
    seen = {}

    def write(tmp):
        (tmp / "weights.safetensors").write_bytes(b"w")
        seen["marker while writing"] = (tmp / store.MARKER).exists()
        seen["ready while writing"] = store.artifact_ready("k1")

    path = store.write_artifact("k1", write, {"recipe": {}})
    assert seen == {"marker while writing": False, "ready while writing": False}
    assert store.artifact_ready("k1") and (path / "weights.safetensors").read_bytes() == b"w"
    assert json.loads((path / "recipe.json").read_text()) == {"recipe": {}}
    assert store.artifacts() == [path]


def test_a_failed_write_leaves_no_artifact_and_no_temp_directory(home):
    def fail(tmp):
        (tmp / "half").write_bytes(b"x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.write_artifact("k2", fail, {})
    assert not store.artifact_ready("k2") and visible(store.artifacts_dir()) == []


def test_a_second_writer_keeps_the_first_artifact_unless_it_replaces_it(home):
    store.write_artifact("k3", lambda tmp: (tmp / "v").write_text("first"), {})
    store.write_artifact("k3", lambda tmp: (tmp / "v").write_text("second"), {})
    assert (store.artifact_path("k3") / "v").read_text() == "first"
    store.write_artifact("k3", lambda tmp: (tmp / "v").write_text("third"), {"n": 3}, replace=True)
    assert (store.artifact_path("k3") / "v").read_text() == "third"
    assert visible(store.artifacts_dir()) == ["k3"]


def test_a_folder_without_its_marker_is_not_an_artifact_and_is_replaced(home):
    half = store.artifact_path("k4")
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half of it")  # a kill in an older version's delete
    assert not store.artifact_ready("k4") and store.artifacts() == []
    store.write_artifact("k4", lambda tmp: (tmp / "model.safetensors").write_bytes(b"whole"), {})
    assert (half / "model.safetensors").read_bytes() == b"whole" and store.artifact_ready("k4")


def test_write_file_replaces_whole_files_and_a_failed_write_keeps_the_old_one(home, monkeypatch):
    path = store.home() / "corpus.json"
    store.write_file(path, "old")
    store.write_file(path, b"new")
    assert path.read_text() == "new"

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.os, "replace", no_rename)
    with pytest.raises(OSError):
        store.write_file(path, "newer")
    assert path.read_text() == "new" and sorted(p.name for p in home.iterdir()) == ["corpus.json"]


@pytest.mark.parametrize("exchange", [True, False], ids=["one atomic exchange", "two renames"])
def test_swap_in_replaces_a_folder_and_leaves_nothing_else(home, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(store, "_exchange", lambda a, b: False)
    final, new = store.home() / "checkpoint", home / "checkpoint.new"
    for folder, text in ((final, "old"), (new, "new")):
        folder.mkdir()
        (folder / "progress.json").write_text(text)
    store.swap_in(new, final)
    assert (final / "progress.json").read_text() == "new"
    assert sorted(p.name for p in home.iterdir()) == ["checkpoint"]


def test_recover_puts_back_the_only_complete_copy_after_a_kill_between_two_renames(home):
    final, old = store.home() / "k", home / "k.old"
    old.mkdir()
    (old / "recipe.json").write_text("{}")
    store.recover(final, "recipe.json")  # killed after final -> k.old, before the new one was renamed in
    assert (final / "recipe.json").is_file() and not old.exists()
    old.mkdir()
    (old / "recipe.json").write_text("{}")
    store.recover(final, "recipe.json")  # killed after both renames: the old copy is simply dropped
    assert (final / "recipe.json").is_file() and not old.exists()


def test_readers_see_a_student_left_as_old_by_a_killed_publish(home):
    old = store.artifacts_dir() / "k5.old"
    old.mkdir()
    (old / "recipe.json").write_text("{}")
    store.recover_artifact("k5")
    assert store.artifact_ready("k5") and not old.exists()


def test_a_second_builder_is_told_who_builds_it_or_waits_and_uses_the_result(home):
    holding, release = threading.Event(), threading.Event()

    def first():
        with store.building("k6", "the conversion of tiny.gguf"):
            holding.set()
            release.wait(30)
            store.write_artifact("k6", lambda tmp: (tmp / "v").write_text("first"), {})

    builder = threading.Thread(target=first)
    builder.start()
    assert holding.wait(30)
    with pytest.raises(store.BuildBusy) as busy:
        with store.building("k6", "the conversion of tiny.gguf", wait_s=0):
            pass
    assert str(busy.value) == ("the conversion of tiny.gguf is being built by another thread of this process; "
                               "wait for it to finish, or try again")
    told = []

    def on_wait(message):
        told.append(message)
        release.set()

    with store.building("k6", "the conversion of tiny.gguf", on_wait=on_wait):  # waits for the first builder
        store.write_artifact("k6", lambda tmp: (tmp / "v").write_text("second"), {})  # finds the first's ready
    builder.join()
    assert told == ["Waiting: the conversion of tiny.gguf is being built by another thread of this process"]
    assert (store.artifact_path("k6") / "v").read_text() == "first"


def test_clean_leftovers_removes_what_killed_builds_left_but_not_a_live_build_nor_resume_state(home):
    root = store.artifacts_dir()
    dead_tmp, legacy_tmp, trash = root / ".aaaa.tmp-x1", root / ".bbbb-abcd_123", root / ".cccc.trash-0123abcd"
    live_tmp, work = root / ".dddd.tmp-x2", root / ".eeee-work"
    for folder in (dead_tmp, legacy_tmp, trash, work):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"a full model copy")
    holding, release = threading.Event(), threading.Event()

    def live():
        with store.building("dddd", "dddd"):  # taking the lock cleaned the others' leftovers already
            live_tmp.mkdir()
            holding.set()
            release.wait(30)

    builder = threading.Thread(target=live)
    builder.start()
    assert holding.wait(30)
    try:
        assert visible(root) == [".dddd.tmp-x2", ".eeee-work"]
        dead_tmp.mkdir()  # another build killed meanwhile
        store.clean_leftovers()
    finally:
        release.set()
        builder.join()
    assert visible(root) == [".dddd.tmp-x2", ".eeee-work"]


def test_a_damaged_artifact_is_set_aside_once_and_a_replacement_is_left_alone(home):
    store.write_artifact("k7", lambda tmp: (tmp / "v").write_text("broken"), {})
    seen = store.artifact_id("k7")
    aside = store.set_aside_artifact("k7", seen)
    assert aside.name.startswith("k7.damaged-") and not store.artifact_ready("k7")
    assert store.artifacts() == []  # a damaged copy is never listed
    store.write_artifact("k7", lambda tmp: (tmp / "v").write_text("good"), {})
    assert store.set_aside_artifact("k7", seen) is None  # another process already replaced what this one saw
    assert (store.artifact_path("k7") / "v").read_text() == "good"
    again = store.set_aside_artifact("k7", store.artifact_id("k7"))
    assert [p.name for p in store.artifacts_dir().glob("k7.damaged-*")] == [again.name]  # one copy kept


def test_a_read_only_artifacts_folder_is_one_clear_error(home, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(store.tempfile, "mkdtemp", refuse)
    with pytest.raises(store.StoreError) as err:
        store.write_artifact("k8", lambda tmp: None, {})
    assert str(err.value) == (f"cannot write to {store.artifacts_dir()} (Read-only file system); make it writable, "
                              "or set WORKBENCH_HOME to another folder")
