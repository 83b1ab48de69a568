"""Devices: which are present, resolving "auto", clocks that wait for the device, memory readings."""

from __future__ import annotations

import os

import torch

from .recipe import RecipeError

# The one place where dtype strings become torch dtypes.
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """Devices present on this machine, "auto" first."""
    found = ["auto", "cpu"]
    if cuda_available():
        found.append("cuda")
    if mps_available():
        found.append("mps")
    return found


def resolve_device(device: str) -> str:
    """"auto" -> the fastest device present; an explicit device must exist."""
    if device == "auto":
        return "cuda" if cuda_available() else "mps" if mps_available() else "cpu"
    if device not in available_devices():
        present = ", ".join(available_devices())
        raise RecipeError("device", f"device {device!r} is not available on this machine; available: {present}")
    return device


def sync(device: str) -> None:
    """Wait until queued kernels finish, so that a clock read afterwards is honest."""
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def physical_cores() -> int:
    """Cores, not hyper-threads: llama.cpp decodes fastest with one thread per physical core."""
    import psutil

    return psutil.cpu_count(logical=False) or max(1, (os.cpu_count() or 2) // 2)


def process_rss_mb() -> float:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux/macOS)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def device_memory_mb(device: str) -> float | None:
    if device == "cuda":
        return torch.cuda.memory_allocated() / 2**20
    return None
