"""What grows without bound is bounded: saved sweeps are pruned to the newest ones, and what an interrupted save
left behind goes."""

from __future__ import annotations

import os
import time

from workbench import bench


def test_only_the_newest_sweeps_are_kept_and_stale_temp_files_go(home, monkeypatch):
    folder = bench.sweeps_dir()
    for i in range(5):
        (folder / f"sweep-20000101-00000{i}-1-0000.json").write_text("{}")
    stale, fresh = folder / ".sweep-old.json.abc.tmp", folder / ".sweep-new.json.def.tmp"
    for path in (stale, fresh):
        path.write_text("{")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    monkeypatch.setenv("WORKBENCH_SWEEPS_KEEP", "3")
    name = bench.save_sweep({"results": []})
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == sorted([fresh.name, name, "sweep-20000101-000004-1-0000.json", "sweep-20000101-000003-1-0000.json"])
    assert [s["name"] for s in bench.load_sweeps()] == [name, "sweep-20000101-000004-1-0000.json",
                                                       "sweep-20000101-000003-1-0000.json"]
    monkeypatch.setenv("WORKBENCH_SWEEPS_KEEP", "0")  # 0 keeps them all
    assert bench.prune_sweeps() == []
