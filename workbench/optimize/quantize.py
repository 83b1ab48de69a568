"""Quantization through maintained libraries, one registered backend per (dtype, library).

Each backend imports its library inside its handler, so a missing extra breaks only that option, with a
message that names what would work instead.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..devices import TORCH_DTYPES
from ..recipe import FLOAT_DTYPES, RecipeError, working_precision

EXCLUDE = ("lm_head", "*embed*")  # fnmatch patterns of Linear names kept in float


@dataclass(frozen=True)
class QuantBackend:
    name: str  # the recipe's backend field
    dtype: str  # the recipe dtype it implements
    label: str  # the kernel path, as shown to the user
    devices: tuple[str, ...]
    apply: Callable[[nn.Module, str], None]  # (model, device) -> None, in place
    on_device: bool = False  # quantize after placing on the device (packing is device-specific)
    inference_mode: bool = True  # False where the tensor type cannot live in torch.inference_mode
    why: str = ""  # one line on when this path is fast or slow


BACKENDS: dict[str, QuantBackend] = {}

# Fastest measured path per (dtype, device); see README "What each technique buys".
DEFAULTS = {
    ("int8", "cpu"): "torch-dynamic",
    ("int8", "cuda"): "torchao-int8-weight-only",
    ("int4", "cpu"): "torchao-int4-weight-only",
    ("int4", "cuda"): "torchao-int4-weight-only",
    ("nf4", "cpu"): "bnb-nf4",
    ("nf4", "cuda"): "bnb-nf4",
    ("fp4", "cpu"): "bnb-fp4",
    ("fp4", "cuda"): "bnb-fp4",
}


def register(backend: QuantBackend) -> QuantBackend:
    BACKENDS[backend.name] = backend
    return backend


def backends_for(dtype: str, device: str) -> list[QuantBackend]:
    """The backends that can run ``dtype`` on ``device``, the default first."""
    found = [b for b in BACKENDS.values() if b.dtype == dtype and device in b.devices]
    default = DEFAULTS.get((dtype, device))
    return sorted(found, key=lambda b: b.name != default)


def resolve_backend(dtype: str, backend: str, device: str) -> str:
    """"auto" -> the default backend for (dtype, device); an explicit one must fit both."""
    if dtype in FLOAT_DTYPES:
        if backend not in ("auto", "torch"):
            raise RecipeError("backend", f"{dtype} is a plain cast; available backend: torch (got {backend!r})")
        return "torch"
    options = backends_for(dtype, device)
    if not options:
        raise RecipeError("dtype", f"no backend runs {dtype} on {device}; {_what_works(device)}")
    if backend == "auto":
        return options[0].name
    if backend not in BACKENDS:
        raise RecipeError("backend", f"unknown backend {backend!r}; available for {dtype} on {device}: {_names(options)}")
    if backend not in {b.name for b in options}:
        raise RecipeError("backend", f"{backend} does not run {dtype} on {device}; available: {_names(options)}")
    return backend


def quantize_(model: nn.Module, backend: str, device: str) -> None:
    """Quantize every Linear except the LM head and embeddings, in place, with the named backend.

    Args:
        model: float model.
        backend: a resolved backend name (see ``resolve_backend``).
        device: the device the model runs on.
    """
    handler = BACKENDS[backend]
    try:
        with torch.no_grad():
            handler.apply(model, device)
    except ImportError as exc:
        raise RecipeError("backend", f"{backend} needs a library that is not installed ({exc}); {_what_works(device)}") from exc


def target_linears(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) for every Linear to quantize."""
    out = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, nn.Linear) and not any(fnmatch.fnmatch(full, p) or fnmatch.fnmatch(name, p) for p in EXCLUDE):
                out.append((parent, name, child))
    return out


def _names(options) -> str:
    return ", ".join(b.name for b in options)


def _what_works(device: str) -> str:
    pairs = sorted({f"{b.dtype} ({b.name})" for b in BACKENDS.values() if device in b.devices})
    return f"what runs on {device}: fp32, fp16, bf16, " + ", ".join(pairs)


def _filter(model: nn.Module):
    """torchao filter: the same Linears as target_linears."""
    targets = {id(lin) for _, _, lin in target_linears(model)}
    return lambda module, fqn: id(module) in targets


# --- PyTorch ---------------------------------------------------------------------------------------------


def _torch_dynamic(model: nn.Module, device: str) -> None:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    for parent, name, lin in target_linears(model):
        # Weights int8 per output channel, activations quantized per batch on the fly (fbgemm / oneDNN kernels).
        # Per-tensor weight scales (quantize_dynamic's default) cost SmolLM2-135M far more: QA 0.34 vs 0.58.
        setattr(parent, name, quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig})[0])


register(QuantBackend(
    "torch-dynamic", "int8", "PyTorch dynamic int8 (fbgemm/oneDNN int8 GEMM)", ("cpu",), _torch_dynamic,
    why="real int8 matrix kernels on x86 CPUs: the weights are read as int8 and multiplied as int8",
))

# --- torchao ---------------------------------------------------------------------------------------------


def _torchao(config_factory):
    def apply(model: nn.Module, device: str) -> None:
        from torchao.quantization import quantize_ as ao_quantize_

        ao_quantize_(model, config_factory(), filter_fn=_filter(model))

    return apply


def _ao_int8_weight_only():
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


def _ao_int8_dynamic():
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    return Int8DynamicActivationInt8WeightConfig()


def _ao_int4_weight_only():
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))


register(QuantBackend(
    "torchao-int8-weight-only", "int8", "torchao int8 weight-only", ("cpu", "cuda"), _torchao(_ao_int8_weight_only),
    on_device=True, why="halves weight bytes vs fp16; without torch.compile the dequantize step costs time",
))
register(QuantBackend(
    "torchao-int8-dynamic", "int8", "torchao int8 dynamic activation + int8 weight", ("cpu", "cuda"),
    _torchao(_ao_int8_dynamic), on_device=True, why="int8 GEMMs; shines at larger batches, overhead-bound at batch 1",
))
register(QuantBackend(
    "torchao-int4-weight-only", "int4", "torchao int4 weight-only (group 32)", ("cpu", "cuda"),
    _torchao(_ao_int4_weight_only), on_device=True,
    why="an eighth of fp32's weight bytes, but without a fused int4 kernel each matmul unpacks first",
))

# --- bitsandbytes -----------------------------------------------------------------------------------------


def _bnb(kind: str):
    def apply(model: nn.Module, device: str) -> None:
        import bitsandbytes as bnb

        compute = TORCH_DTYPES[working_precision(device)]
        for parent, name, lin in target_linears(model):
            weight = lin.weight.data.to("cpu", compute)
            if kind == "int8":
                new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                          has_fp16_weights=False, threshold=6.0)
                new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                        compute_dtype=compute, quant_type=kind)
                new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=kind)
            if lin.bias is not None:
                new.bias = nn.Parameter(lin.bias.data.to(compute), requires_grad=False)
            setattr(parent, name, new.to(device))  # bitsandbytes quantizes as the weight moves to the device

    return apply


register(QuantBackend(
    "bnb-int8", "int8", "bitsandbytes LLM.int8 (outliers in fp16)", ("cpu", "cuda"), _bnb("int8"), on_device=True,
    why="built for memory, not speed: splits outlier columns off into a second matmul",
))
register(QuantBackend(
    "bnb-nf4", "nf4", "bitsandbytes NF4 (4-bit NormalFloat)", ("cpu", "cuda"), _bnb("nf4"), on_device=True,
    why="4-bit weights, dequantized to the compute dtype for every matmul",
))
register(QuantBackend(
    "bnb-fp4", "fp4", "bitsandbytes FP4", ("cpu", "cuda"), _bnb("fp4"), on_device=True,
    why="4-bit float weights, dequantized to the compute dtype for every matmul",
))

# --- optimum-quanto ---------------------------------------------------------------------------------------


def _quanto(bits: int):
    def apply(model: nn.Module, device: str) -> None:
        from optimum.quanto import freeze, qint4, qint8, quantize

        quantize(model, weights=qint8 if bits == 8 else qint4, exclude=list(EXCLUDE))
        freeze(model)

    return apply


register(QuantBackend(
    "quanto-int8", "int8", "optimum-quanto int8 weights", ("cpu", "cuda"), _quanto(8), on_device=True,
    inference_mode=False,
    why="portable reference kernels; memory savings more than speed",
))
register(QuantBackend(
    "quanto-int4", "int4", "optimum-quanto int4 weights", ("cpu", "cuda"), _quanto(4), on_device=True,
    inference_mode=False,
    why="portable reference kernels; memory savings more than speed",
))


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's state as stored: packed and quantized tensors counted at their real size."""
    seen: set[int] = set()
    total = 0
    for value in model.state_dict().values():
        total += _tensor_bytes(value, seen)
    return total


def _tensor_bytes(value, seen: set[int]) -> int:
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v, seen) for v in value)
    if not isinstance(value, torch.Tensor):
        return 0
    if hasattr(value, "__tensor_flatten__"):  # tensor subclasses (torchao): count their inner tensors
        names, _ = value.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(value, n), seen) for n in names)
    if value.is_quantized:
        key = id(value)
        if key in seen:
            return 0
        seen.add(key)
        return value.numel() * value.element_size() + (value.q_per_channel_scales().numel() * 12 if value.qscheme() in (torch.per_channel_affine,) else 12)
    try:
        ptr = value.untyped_storage().data_ptr()
    except Exception:
        ptr = id(value)
    key = hash((ptr, value.storage_offset(), value.numel()))
    if key in seen:  # tied weights (lm_head = embeddings) are stored once
        return 0
    seen.add(key)
    return value.numel() * value.element_size()
