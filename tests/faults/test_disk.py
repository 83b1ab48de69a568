"""A read-only WORKBENCH_HOME and a full disk (small tmpfs mounts made by the test): what is there is still served,
what cannot be written says so in one line, and nothing half-written is left behind."""

from __future__ import annotations

import os

import pytest

from workbench import loading, store
from workbench.observe.history import HistoryStore
from workbench.observe.records import RequestRecord
from workbench.optimize.distill import distill
from workbench.recipe import StudentSpec


def row(i: int) -> RequestRecord:
    return RequestRecord(f"k{i}", "label", 1_700_000_000.0 + i, 10, 3, 0.1, 0.3, 0.0, token_times=[0.1] * 3)


def leftovers() -> list[str]:
    return sorted(p.name for p in store.artifacts_dir().iterdir() if not p.name.endswith((".lock", ".owner")))


def test_a_read_only_home_serves_what_it_holds_and_says_what_it_cannot_write(mount, monkeypatch, tiny_gguf, teacher,
                                                                            spec, tmp_path):
    disk = mount("64m")
    if disk.error:
        if os.geteuid() == 0:
            pytest.skip(f"cannot mount a tmpfs to make read-only ({disk.error}), and root writes through chmod")
        disk.path.chmod(0o555)  # not root: permissions are enough
    monkeypatch.setenv("WORKBENCH_HOME", str(disk.path))
    _, _, weights = loading.load(str(tiny_gguf))
    kept = HistoryStore()
    kept.add(row(0))
    kept.flush()  # on disk before the remount
    if disk.error is None:
        disk.remount("ro")

    _, _, again = loading.load(str(tiny_gguf))  # a conversion made before is served as it is
    assert again == weights
    history = HistoryStore()
    history.add(row(1))  # never raises
    assert history.problem.startswith(f"The request history {disk.path / 'metrics.sqlite'} cannot be written: ")

    other = tmp_path / "other.gguf"
    other.write_bytes(tiny_gguf.read_bytes())
    unwritable = (f"cannot write to {disk.path / 'artifacts'} (Read-only file system); make it writable, or set "
                  "WORKBENCH_HOME to another folder")
    with pytest.raises(loading.ModelSourceError) as err:
        loading.load(str(other))
    assert str(err.value) == unwritable
    with pytest.raises(store.StoreError) as err:
        distill(teacher, StudentSpec(**spec), 1)
    assert str(err.value) == unwritable


def test_a_full_disk_fails_a_build_with_one_message_leaves_nothing_and_the_next_run_builds(mount, monkeypatch, home,
                                                                                          tiny_gguf, child):
    disk = mount("200k")  # the tiny model's conversion needs about 450 kB
    if disk.error:  # where nothing can be mounted: writes past 200 kB fail (EFBIG) in a child process
        result = child("convert", gguf=str(tiny_gguf), fsize=200_000).result()
        assert result["error"] == (f"cannot write to {store.artifacts_dir()} (File too large); free some disk space, "
                                   "or set WORKBENCH_HOME to another folder")
        assert leftovers() == []
        return
    monkeypatch.setenv("WORKBENCH_HOME", str(disk.path))
    with pytest.raises(loading.ModelSourceError) as err:
        loading.load(str(tiny_gguf))
    assert str(err.value) == (f"cannot write to {disk.path / 'artifacts'} (No space left on device); free some disk "
                              "space, or set WORKBENCH_HOME to another folder")
    assert leftovers() == []

    history = HistoryStore()
    (disk.path / "filler").write_bytes(b"\0" * (os.statvfs(disk.path).f_bavail * os.statvfs(disk.path).f_frsize))
    for i in range(200):
        history.add(row(i))  # never raises
    assert history.problem.startswith(f"The request history {disk.path / 'metrics.sqlite'} cannot be written: ")

    (disk.path / "filler").unlink()
    disk.remount("size=64m")
    history.add(row(1000))  # recorded again once there is room
    assert history.recent(limit=1)[0]["recipe_key"] == "k1000"
    _, _, weights = loading.load(str(tiny_gguf))
    assert store.artifact_ready(os.path.basename(weights)) and leftovers() == [os.path.basename(weights)]
