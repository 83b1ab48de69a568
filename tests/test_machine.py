"""This machine's roofline: bandwidth and peak are real measurements, cached per machine fingerprint."""

from __future__ import annotations

import json

import pytest

from workbench import machine

SMALL = dict(size_bytes=64 << 20, matmul_n=256)  # quick: the tests check behaviour, not the figures


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    return tmp_path


def test_bandwidth_and_peak_are_positive_measurements():
    assert machine.read_bandwidth_gb_s(16 << 20, threads=2, runs=2) > 0
    assert machine.matmul_gflops(128, runs=1) > 0


def test_the_roofline_is_measured_once_then_read_from_the_cache(home):
    fp = machine.fingerprint()
    first = machine.roofline(print_=fp, **SMALL)
    assert first["cached"] is False and first["bandwidth_gb_s"] > 0 and first["peak_gflops"] > 0
    assert machine.cache_path(fp).is_file() and machine.cache_path(fp).parent == home / "machine"
    second = machine.roofline(print_=fp, **SMALL)
    assert second["cached"] is True
    assert second["bandwidth_gb_s"] == first["bandwidth_gb_s"] and second["measured_at"] == first["measured_at"]
    assert machine.cached_roofline(fp)["bandwidth_gb_s"] == first["bandwidth_gb_s"]


def test_another_fingerprint_measures_again_and_keeps_its_own_figures(home):
    fp = machine.fingerprint()
    machine.roofline(print_=fp, **SMALL)
    other = {**fp, "cpu": "Another CPU", "libraries": {**fp["libraries"], "torch": "0.0"}}
    assert machine.fingerprint_key(other) != machine.fingerprint_key(fp)
    assert machine.cached_roofline(other) is None
    theirs = machine.roofline(print_=other, **SMALL)
    assert theirs["cached"] is False and theirs["fingerprint"]["cpu"] == "Another CPU"
    assert machine.roofline(print_=fp, **SMALL)["cached"] is True  # the first machine's figures are untouched


def test_remeasure_replaces_the_cache_and_a_damaged_or_foreign_file_is_measured_again(home):
    fp = machine.fingerprint()
    first = machine.roofline(print_=fp, **SMALL)
    again = machine.roofline(remeasure=True, print_=fp, **SMALL)
    assert again["cached"] is False and again["measured_at"] > first["measured_at"]
    assert machine.roofline(print_=fp, **SMALL)["measured_at"] == again["measured_at"]
    path = machine.cache_path(fp)
    path.write_text("{not json")
    assert machine.roofline(print_=fp, **SMALL)["cached"] is False
    path.write_text(json.dumps({"fingerprint": {**fp, "cpu": "x"}, "bandwidth_gb_s": 1.0}))  # a file for another
    assert machine.roofline(print_=fp, **SMALL)["cached"] is False


def test_fingerprint_names_the_cpu_cores_and_libraries():
    fp = machine.fingerprint()
    assert fp["cpu"] and fp["physical_cores"] >= 1 and "numpy" in fp["libraries"]
    assert machine.fingerprint_key(fp) == machine.fingerprint_key(json.loads(json.dumps(fp)))
