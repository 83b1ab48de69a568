"""What a build reports about the model it made."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelStats:
    params: int
    nonzero_params: int
    weight_bytes: int  # as stored: packed and quantized tensors at their real size, tied weights once
    build_s: float
    backend: str  # the kernel path that actually runs, e.g. "dense fp32 (PyTorch CPU)"

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "weight_bytes": self.weight_bytes,
            "build_s": round(self.build_s, 3),
            "backend": self.backend,
        }
