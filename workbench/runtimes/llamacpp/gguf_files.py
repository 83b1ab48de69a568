"""GGUF files: quantizing one with llama.cpp's own quantizer, and reading what a file really stores.

The requested format is only a name: llama.cpp falls back to another type for tensors whose rows do not fit the
format's blocks (k-quants need rows of 256; SmolLM2's hidden size is 576), keeps norms in F32, and picks its own
type for the embeddings. ``contents`` reads the tensor types and bytes actually stored.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf

# The recipe's llama.cpp dtypes -> llama.cpp's file types (enum llama_ftype in llama.h).
FILE_TYPES = {
    "fp32": 0, "fp16": 1, "bf16": 32, "q8_0": 7, "q6_k": 18, "q5_k_m": 17, "q5_0": 8, "q4_k_m": 15, "q4_1": 3,
    "q4_0": 2,
}
GGUF_MAGIC = b"GGUF"


class GGUFError(RuntimeError):
    """A GGUF file that cannot be read (missing, truncated, not a GGUF file); the message names the file."""


@dataclass(frozen=True)
class Contents:
    """What a GGUF file stores."""

    params: int  # elements of every tensor (a tied embedding counted once: it is stored once)
    weight_bytes: int  # bytes of the tensor data
    tensor_types: dict[str, int]  # tensors per stored type, most common first
    architecture: str
    block_count: int

    @property
    def bits_per_weight(self) -> float:
        return self.weight_bytes * 8 / self.params if self.params else 0.0


def contents(path: Path) -> Contents:
    """The tensor types, element count and bytes a GGUF file really stores; GGUFError for a damaged file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise GGUFError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
        reader = gguf.GGUFReader(str(path))
        tensors = list(reader.tensors)
        arch = reader.fields["general.architecture"].contents()
        blocks = int(reader.fields[f"{arch}.block_count"].contents())
    except GGUFError:
        raise
    except (OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        raise GGUFError(f"{path} is not a complete GGUF file: {type(exc).__name__}: {exc}") from None
    types = Counter(t.tensor_type.name for t in tensors)
    return Contents(params=sum(int(t.n_elements) for t in tensors), weight_bytes=sum(int(t.n_bytes) for t in tensors),
                    tensor_types=dict(types.most_common()), architecture=arch, block_count=blocks)


def quantize(source: Path, target: Path, dtype: str, threads: int) -> None:
    """Quantize an F32 GGUF file to ``dtype`` with llama.cpp's ``llama_model_quantize``.

    Args:
        source: the F32 file.
        target: where to write (the caller writes to a temp path and renames it into place).
        dtype: one of FILE_TYPES.
        threads: threads the quantizer may use.
    """
    from .model import library  # the bindings, with llama.cpp's log lines silenced

    lib = library()
    params = lib.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[dtype]
    params.nthread = threads
    status = lib.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if status != 0:
        raise GGUFError(f"llama.cpp could not quantize {source.name} to {dtype} (status {status})")


def describe(types: dict[str, int]) -> str:
    """'Q4_0 × 182, F32 × 61, Q8_0 × 1': a file's tensor types, most common first."""
    return ", ".join(f"{name} × {count}" for name, count in types.items())
