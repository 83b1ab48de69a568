"""The Recipe: one immutable description of an optimized model, used as the cache key everywhere."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("fp32", "fp16", "bf16", "int8", "int4", "nf4", "fp4")
FLOAT_DTYPES = ("fp32", "fp16", "bf16")
PRUNE_METHODS = ("none", "magnitude", "2:4", "channels", "layers")
PRUNE_CRITERIA = ("magnitude", "wanda")  # how unstructured and 2:4 pruning rank weights
MAX_PRUNE_RATIO = 0.9
EMBEDDED = "embedded"


class RecipeError(ValueError):
    """A recipe field holds a value the workbench does not accept.

    ``field`` names the offending field (the CLI turns it into ``--field``) so the
    message can say exactly which input was wrong and what is allowed.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PruneSpec:
    method: str = "none"  # one of PRUNE_METHODS
    ratio: float = 0.0  # share of weights / channels / layers removed; ignored for "none"
    criterion: str = "magnitude"  # |W| or Wanda's |W|*||X||; only for "magnitude" and "2:4"

    def __post_init__(self):
        if self.method not in PRUNE_METHODS:
            raise RecipeError("prune-method", f"unknown pruning method {self.method!r}; allowed: {', '.join(PRUNE_METHODS)}")
        if self.criterion not in PRUNE_CRITERIA:
            raise RecipeError("prune-criterion", f"unknown criterion {self.criterion!r}; allowed: {', '.join(PRUNE_CRITERIA)}")
        if self.method not in ("magnitude", "2:4"):
            object.__setattr__(self, "criterion", "magnitude")  # the others have their own importance measure
        if not isinstance(self.ratio, (int, float)) or not 0.0 <= float(self.ratio) <= MAX_PRUNE_RATIO:
            raise RecipeError("prune-ratio", f"pruning ratio must be between 0 and {MAX_PRUNE_RATIO}, got {self.ratio!r}")
        object.__setattr__(self, "ratio", round(float(self.ratio), 4))
        if self.method == "none":
            object.__setattr__(self, "ratio", 0.0)  # so that every "no pruning" recipe has one key
        elif self.method == "2:4":
            object.__setattr__(self, "ratio", 0.5)  # 2 of every 4 weights, by definition


@dataclass(frozen=True)
class Recipe:
    """What to build: a model source plus the optimizations applied to it, in pipeline order.

    ``device`` should be resolved (see ``devices.resolve_device``) before the key is
    used, so that "auto" on two machines never shares artifacts or metrics rows.
    """

    model: str = EMBEDDED  # "embedded", a hub id, a local directory or a .gguf file
    device: str = "auto"
    dtype: str = "fp32"  # float cast or quantized weight format
    backend: str = "auto"  # the quantization library that runs dtype; resolved by optimize.resolve()
    prune: PruneSpec = field(default_factory=PruneSpec)
    variant: str = "none"  # distilled variant: "none", a catalog name or a student built here
    batch_size: int = 1  # how many concurrent requests the worker may run together

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise RecipeError("model", "model must be 'embedded', a hub id, a local directory or a .gguf file")
        object.__setattr__(self, "model", self.model.strip())
        if self.device not in DEVICES:
            raise RecipeError("device", f"unknown device {self.device!r}; allowed: {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise RecipeError("dtype", f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if not isinstance(self.backend, str) or not self.backend:
            raise RecipeError("backend", "backend must be 'auto' or a backend name")
        if self.dtype in FLOAT_DTYPES and self.backend == "auto":
            object.__setattr__(self, "backend", "torch")  # a float cast has one backend: one key for it
        if isinstance(self.prune, dict):
            object.__setattr__(self, "prune", PruneSpec(**self.prune))
        if not isinstance(self.variant, str) or not self.variant.strip():
            raise RecipeError("variant", "variant must be 'none' or a variant name")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 256:
            raise RecipeError("batch-size", f"batch size must be an integer from 1 to 256, got {self.batch_size!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        data = dict(data)
        data["prune"] = PruneSpec(**data.get("prune", {}))
        return cls(**data)

    def key(self) -> str:
        """Short sha256 of the canonical JSON: the name of this recipe's artifacts, cache entries and metrics rows."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def baseline(self) -> "Recipe":
        """Same model and device, no pruning, no variant, fp32 (fp16 on CUDA)."""
        dtype = "fp16" if self.device == "cuda" else "fp32"
        return replace(self, dtype=dtype, backend="torch", prune=PruneSpec(), variant="none")

    def is_baseline(self) -> bool:
        return self == self.baseline()

    def label(self) -> str:
        """Short human-readable description, e.g. 'embedded · cpu · bf16'."""
        parts = [model_label(self.model), self.device, self.dtype]
        if self.backend not in ("auto", "torch"):
            parts.append(self.backend)
        if self.prune.method != "none":
            wanda = " wanda" if self.prune.criterion == "wanda" else ""
            parts.append(f"{self.prune.method}{wanda} {self.prune.ratio:g}")
        if self.variant != "none":
            parts.append(f"variant {self.variant}")
        if self.batch_size != 1:
            parts.append(f"batch {self.batch_size}")
        return " · ".join(parts)


def model_label(model: str) -> str:
    if model == EMBEDDED:
        return "SmolLM2-135M-Instruct (embedded)"
    return model.rstrip("/").rsplit("/", 1)[-1] if model.startswith(("/", ".", "~")) else model
