"""This machine's roofline: memory read bandwidth and peak fp32 matmul throughput, measured once and cached.

Decoding one token reads every weight once, so ``bandwidth / bytes read per token`` bounds decode tok/s; a
prompt's prefill is bound by ``FLOPs / peak``. Both figures are measured with numpy (no model library), with the
thread count the runtimes use (one per physical core), as the best of a few short runs: the best run is the one
least disturbed by other work on the machine. They are cached under ``WORKBENCH_HOME/machine/`` keyed by a
fingerprint of the machine (CPU model, cores, library versions): another machine, or an upgraded library,
measures again instead of reading figures that are not its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from importlib import metadata
from pathlib import Path

import numpy as np

from . import store

BANDWIDTH_BYTES = 1 << 30  # far larger than any last-level cache (this CPU family reports up to 260 MiB of L3)
BANDWIDTH_RUNS = 5
MATMUL_N = 2048  # fp32 n x n: 2 n^3 FLOPs, 17 GFLOP, a fraction of a second on a laptop core
MATMUL_RUNS = 3
LIBRARIES = ("numpy", "torch", "transformers", "llama_cpp_python")
log = logging.getLogger(__name__)
_LOCK = threading.Lock()  # one measurement at a time in this process: two would halve each other's bandwidth


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux: "model name", or "Hardware" on some ARM boards; else
    what platform says)."""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def physical_cores() -> int:
    """Cores, not hyper-threads: the thread count llama.cpp and PyTorch use by default here."""
    import psutil

    return psutil.cpu_count(logical=False) or max(1, (os.cpu_count() or 2) // 2)


def fingerprint() -> dict:
    """What makes a measurement this machine's: CPU model, cores, memory and the libraries that run models."""
    import psutil

    return {"cpu": cpu_model(), "physical_cores": physical_cores(), "logical_cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 1e9), "machine": platform.machine(),
            "python": platform.python_version(), "libraries": library_versions(LIBRARIES)}


def library_versions(names) -> dict[str, str | None]:
    """Installed version of each distribution named (None where it is not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def fingerprint_key(print_: dict) -> str:
    """Short sha256 of the fingerprint's canonical JSON: the cache file's name."""
    return hashlib.sha256(json.dumps(print_, sort_keys=True).encode()).hexdigest()[:16]


def machine_dir() -> Path:
    return store.home() / "machine"


def cache_path(print_: dict, kind: str = "roofline") -> Path:
    return machine_dir() / f"{kind}-{fingerprint_key(print_)}.json"


# Measurements -----------------------------------------------------------------------------------------------


def read_bandwidth_gb_s(size_bytes: int = BANDWIDTH_BYTES, threads: int | None = None,
                        runs: int = BANDWIDTH_RUNS) -> float:
    """Memory read bandwidth in GB/s (1e9 bytes): ``threads`` threads each reduce their own slice of one buffer.

    ``max``, not ``sum``: numpy's float sum is pairwise and runs at compute speed (about 4 GB/s a core here), a
    max is a plain vector loop that waits on memory. numpy's reductions release the GIL, so the threads read
    memory at once, as a runtime's threads do.
    """
    threads = threads or physical_cores()
    buffer = np.ones(max(size_bytes // 4, threads * 1024), dtype=np.float32)  # written once: pages are real
    slices = np.array_split(buffer, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(np.max, slices))  # warm-up: page tables, thread start
        for _ in range(runs):
            start = time.perf_counter()
            list(pool.map(np.max, slices))
            best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best / 1e9


def matmul_gflops(n: int = MATMUL_N, runs: int = MATMUL_RUNS) -> float:
    """Peak fp32 matmul throughput in GFLOP/s (``2 n^3`` per product), numpy's BLAS with its own threads."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def measure(size_bytes: int = BANDWIDTH_BYTES, matmul_n: int = MATMUL_N) -> dict:
    """Measure bandwidth and peak now (a few seconds), not cached."""
    with _LOCK:
        threads = physical_cores()
        started = time.perf_counter()
        bandwidth = read_bandwidth_gb_s(size_bytes, threads)
        peak = matmul_gflops(matmul_n)
    return {"bandwidth_gb_s": bandwidth, "peak_gflops": peak, "threads": threads, "buffer_bytes": size_bytes,
            "matmul_n": matmul_n, "measured_at": time.time(), "measure_s": time.perf_counter() - started}


def roofline(remeasure: bool = False, print_: dict | None = None, **sizes) -> dict:
    """This machine's bandwidth and peak: from the cache when this fingerprint has them, else measured and cached.

    Args:
        remeasure: measure again even if cached (the new figures replace the old).
        print_: the machine fingerprint (default: this machine's).
        **sizes: ``size_bytes`` and ``matmul_n`` for ``measure`` (tests measure a smaller buffer).

    Returns:
        ``bandwidth_gb_s``, ``peak_gflops``, ``threads``, ``measured_at``, ``fingerprint``, ``fingerprint_key``
        and ``cached`` (True when read from the cache).
    """
    print_ = fingerprint() if print_ is None else print_
    path = cache_path(print_)
    if not remeasure:
        found = read_cached(path, print_)
        if found is not None:
            return {**found, "cached": True}
    figures = {**measure(**sizes), "fingerprint": print_, "fingerprint_key": fingerprint_key(print_)}
    try:
        save(path, figures)
    except store.StoreError as exc:  # a read-only home: the figures still serve this call
        log.warning("machine figures not cached: %s", exc)
        return {**figures, "cached": False, "cache_problem": str(exc)}
    return {**figures, "cached": False}


def cached_roofline(print_: dict | None = None) -> dict | None:
    """The cached figures of this machine, or None when it has not been measured (nothing is measured here)."""
    print_ = fingerprint() if print_ is None else print_
    found = read_cached(cache_path(print_), print_)
    return None if found is None else {**found, "cached": True}


def read_cached(path: Path, print_: dict) -> dict | None:
    """A cache file's figures if it holds this fingerprint's; a missing, damaged or foreign file is None."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and found.get("fingerprint") == print_ else None


def save(path: Path, figures: dict) -> None:
    """Write figures atomically; a home that cannot be written keeps them for this call only (StoreError)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        store.write_file(path, json.dumps(figures, indent=1, sort_keys=True))
    except OSError as exc:
        raise store.StoreError(store.unwritable(path.parent, exc)) from None
