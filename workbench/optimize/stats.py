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
    threads: int | None = None  # the threads the kernels run on (None: the library's own choice)
    tensor_types: dict[str, int] | None = None  # a GGUF file's tensors by stored type, e.g. {"Q4_0": 210, ...}

    @property
    def bits_per_weight(self) -> float | None:
        """Bits the stored weights take per parameter (a quantized file's real size, whatever was asked for)."""
        return self.weight_bytes * 8 / self.params if self.params else None

    def to_dict(self) -> dict:
        out = {
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "weight_bytes": self.weight_bytes,
            "build_s": round(self.build_s, 3),
            "backend": self.backend,
            "threads": self.threads,
        }
        if self.tensor_types is not None:
            out["tensor_types"] = dict(self.tensor_types)
            out["bits_per_weight"] = round(self.bits_per_weight, 3)
        return out
