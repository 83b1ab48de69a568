"""Predict a model's size and decode speed from its ``config.json`` alone, before any weight is downloaded.

Decoding is memory-bound at batch 1: each token reads every weight the forward pass uses once, plus the KV cache
so far. So the bound is ``bandwidth / bytes read per token``; a runtime reaches some share of it (its
*efficiency*, measured on this machine by ``workbench.roofline``), and ``bound x efficiency`` is what to expect.
Prefill is compute-bound: its FLOPs over the machine's peak.

Weights are counted tensor by tensor, so each format stores each tensor as its runtime really does: llama.cpp
keeps norms in F32, stores the output matrix (or the tied embeddings) as Q6_K / Q8_0, gives some layers' V and
down projections Q6_K under the _M k-quants, and falls back to a 32-block type where a row does not fill a
256-weight k-quant block; transformers' int8 and int4 quantize the linear layers and leave the embeddings in
fp32. Bytes per block are ggml's (e.g. q4_0: 18 bytes for 32 weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .recipe import EMBEDDED

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "assets" / "model_configs"
EMBEDDED_CONFIG = "smollm2-135m"  # the embedded model's published config
DEFAULT_CONTEXT = 512  # tokens already in the KV cache when a token is decoded (a short chat turn)
DEFAULT_PROMPT = 512  # prompt tokens of the prefill estimate


class PredictError(ValueError):
    """A config that cannot be found or read; the message says which and what to do."""


@dataclass(frozen=True)
class Architecture:
    """What sizes a decoder-only transformer: read from a config.json, nothing else."""

    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int  # grouped-query attention: fewer K/V heads than query heads shrink the KV cache
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool  # the LM head is the embedding matrix: stored once, but read in full by every token
    max_positions: int | None
    qkv_bias: bool = False  # Qwen2 has biases on Q, K and V
    gated_mlp: bool = True  # gate, up and down (Llama family); GPT-2 has up and down only
    gpt2_style: bool = False  # biases everywhere, LayerNorm with bias, learned positions


@dataclass(frozen=True)
class Tensor:
    name: str  # llama.cpp's name (token_embd, blk.N.attn_q, ...), so the format rules read like its own
    rows: int  # output features (or vocabulary entries)
    cols: int  # input features: the row length a quantized block must divide
    layer: int | None = None

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def is_matrix(self) -> bool:
        return self.rows > 1


# Config -> Architecture ----------------------------------------------------------------------------------------


def config_path(source: str | None) -> Path:
    """The config.json a source names: embedded (default), a shipped name, a .json path, a model directory or a
    hub id in the local Hugging Face cache."""
    source = source or EMBEDDED
    if source == EMBEDDED:
        source = EMBEDDED_CONFIG
    shipped = CONFIGS_DIR / f"{source.lower()}.json"
    if "/" not in source and shipped.is_file():
        return shipped
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "config.json").is_file():
            return path / "config.json"
        raise PredictError(f"{source} is a directory without a config.json")
    if source.endswith(".json") or source.startswith(("/", ".", "~")) or source.count("/") != 1:
        raise PredictError(f"no such config: {source} (allowed: embedded, a shipped name such as "
                           f"{', '.join(shipped_names()[:3])}, a config.json, a model directory or a cached hub id)")
    return _hub_config(source)


def _hub_config(repo_id: str) -> Path:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        found = None
    else:
        found = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(found, str):
        raise PredictError(f"{repo_id}'s config.json is not in the local Hugging Face cache; fetch it with "
                           f"`huggingface-cli download {repo_id} config.json`")
    return Path(found)


def shipped_names() -> list[str]:
    """The configs shipped under assets/model_configs, by name."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))


def read_config(source: str | None) -> dict:
    path = config_path(source)
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PredictError(f"cannot read {path}: {exc}") from None
    if not isinstance(config, dict):
        raise PredictError(f"{path} does not hold a JSON object")
    return config


def architecture(source: str | dict | None = None) -> Architecture:
    """The architecture a config describes (``source`` as in ``config_path``, or the config itself).

    Raises PredictError naming a field the config lacks.
    """
    config = read_config(source) if not isinstance(source, dict) else source
    name = config.get("_name_or_path") or (source if isinstance(source, str) else None) or EMBEDDED
    config = {**config, **config.get("text_config", {})}  # a multimodal model's language half
    model_type = str(config.get("model_type", "llama"))
    gpt2 = model_type == "gpt2"

    def field(*names, default=None):
        for key in names:
            if config.get(key) is not None:
                return int(config[key])
        if default is None:
            raise PredictError(f"the config has no {names[0]}; it does not look like a decoder-only transformer")
        return default

    hidden = field("hidden_size", "n_embd", "d_model")
    heads = field("num_attention_heads", "n_head", "num_heads")
    return Architecture(
        name=str(config.get("workbench_name") or name),
        model_type=model_type,
        hidden=hidden,
        layers=field("num_hidden_layers", "n_layer", "num_layers"),
        heads=heads,
        kv_heads=field("num_key_value_heads", "multi_query_group_num", default=heads),
        head_dim=field("head_dim", default=hidden // heads),
        intermediate=field("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden),
        vocab=field("vocab_size"),
        tied=bool(config.get("tie_word_embeddings", gpt2)),  # transformers' Llama family defaults to untied
        max_positions=config.get("max_position_embeddings") or config.get("n_positions"),
        qkv_bias=bool(config.get("attention_bias", model_type == "qwen2")),
        gated_mlp=not gpt2,
        gpt2_style=gpt2,
    )


# Tensors and parameters ---------------------------------------------------------------------------------------


def tensors(arch: Architecture) -> list[Tensor]:
    """Every weight tensor, tied ones once (vectors have ``rows == 1``)."""
    h, q, kv = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    out = [Tensor("token_embd", arch.vocab, h)]
    if arch.gpt2_style:
        out.append(Tensor("position_embd", arch.max_positions or 1024, h))
    for i in range(arch.layers):
        out += _layer(arch, i, h, q, kv)
    out.append(Tensor("output_norm", 1, h))
    if arch.gpt2_style:
        out.append(Tensor("output_norm.bias", 1, h))
    if not arch.tied:
        out.append(Tensor("output", arch.vocab, h))
    return out


def _layer(arch: Architecture, i: int, h: int, q: int, kv: int) -> list[Tensor]:
    b = f"blk.{i}."
    found = [Tensor(b + "attn_norm", 1, h, i), Tensor(b + "attn_q", q, h, i), Tensor(b + "attn_k", kv, h, i),
             Tensor(b + "attn_v", kv, h, i), Tensor(b + "attn_output", h, q, i), Tensor(b + "ffn_norm", 1, h, i),
             Tensor(b + "ffn_up", arch.intermediate, h, i), Tensor(b + "ffn_down", h, arch.intermediate, i)]
    if arch.gated_mlp:
        found.append(Tensor(b + "ffn_gate", arch.intermediate, h, i))
    if arch.qkv_bias or arch.gpt2_style:
        found += [Tensor(b + "attn_q.bias", 1, q, i), Tensor(b + "attn_k.bias", 1, kv, i),
                  Tensor(b + "attn_v.bias", 1, kv, i)]
    if arch.gpt2_style:
        found += [Tensor(b + n, 1, d, i) for n, d in (("attn_output.bias", h), ("ffn_up.bias", arch.intermediate),
                                                      ("ffn_down.bias", h), ("attn_norm.bias", h),
                                                      ("ffn_norm.bias", h))]
    return found


def params(arch: Architecture) -> int:
    """Parameters, tied embeddings counted once (as ``model.parameters()`` counts them)."""
    return sum(t.numel for t in tensors(arch))


# Formats: bytes per tensor --------------------------------------------------------------------------------------

# ggml's block types: (weights per block, bytes per block), from ggml-common.h's block structs.
GGML_TYPES = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
}
# llama.cpp's stand-ins for a k-quant whose row does not fill a 256-weight block (llama-quant.cpp).
K_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# llama.cpp formats -> the base ggml type of their matrices.
LLAMA_CPP_FORMATS = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q6_k": "Q6_K",
                     "q5_k_m": "Q5_K", "q5_0": "Q5_0", "q4_k_m": "Q4_K", "q4_1": "Q4_1", "q4_0": "Q4_0"}
# transformers formats -> bytes per weight of the linear layers (embeddings and norms stay in the compute dtype).
TRANSFORMERS_FORMATS = {
    "fp32": 4.0, "fp16": 2.0, "bf16": 2.0,
    "int8": 1.0,  # PyTorch dynamic int8: one byte a weight, one scale per tensor
    "int4": 0.5 + 4 / 128,  # torchao int4 weight-only: two weights a byte, a bf16 scale and zero per 128
}
COMPUTE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 4, "int4": 4}  # the activations' and KV cache's dtype
RUNTIME_FORMATS = {"transformers": tuple(TRANSFORMERS_FORMATS), "llama.cpp": tuple(LLAMA_CPP_FORMATS)}
LLAMA_CPP_KV_BYTES = 2  # llama.cpp's KV cache is F16 by default


def ggml_type(arch: Architecture, tensor: Tensor, fmt: str) -> str:
    """The ggml type llama.cpp's quantizer gives ``tensor`` when asked for ``fmt``."""
    base = LLAMA_CPP_FORMATS[fmt]
    if not tensor.is_matrix:
        return "F32"  # norms and biases
    if base in ("F32", "F16", "BF16"):
        return base
    wanted = base
    is_output = tensor.name == "output" or (arch.tied and tensor.name == "token_embd")
    if is_output:
        wanted = "Q8_0" if tensor.cols % 256 else ("Q6_K" if base != "Q8_0" else "Q8_0")
    elif fmt in ("q4_k_m", "q5_k_m") and tensor.name.rsplit(".", 1)[-1] in ("attn_v", "ffn_down"):
        if _more_bits(tensor.layer or 0, arch.layers):
            wanted = "Q6_K"
    block = GGML_TYPES[wanted][0]
    if tensor.cols % block:
        wanted = K_FALLBACK.get(wanted, "F16")
        if tensor.cols % GGML_TYPES[wanted][0]:
            wanted = "F16"
    return wanted


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def ggml_type_counts(arch: Architecture, fmt: str) -> dict[str, int]:
    """Tensors by the ggml type llama.cpp stores them in for ``fmt`` (as a GGUF file's ``tensor_types``)."""
    counts: dict[str, int] = {}
    for t in tensors(arch):
        kind = ggml_type(arch, t, fmt)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def tensor_bytes(arch: Architecture, tensor: Tensor, runtime: str, fmt: str) -> float:
    if runtime == "llama.cpp":
        per_block, size = GGML_TYPES[ggml_type(arch, tensor, fmt)]
        return tensor.numel / per_block * size
    compute = COMPUTE_BYTES[fmt]
    if not tensor.is_matrix or tensor.name in ("token_embd", "position_embd"):
        return tensor.numel * compute
    return tensor.numel * TRANSFORMERS_FORMATS[fmt]


def _check_format(runtime: str, fmt: str) -> None:
    if fmt not in RUNTIME_FORMATS.get(runtime, ()):
        raise PredictError(f"{runtime} has no format {fmt!r}; allowed: {', '.join(RUNTIME_FORMATS.get(runtime, ()))}")


def weight_bytes(arch: Architecture, runtime: str, fmt: str) -> int:
    """Bytes the weights take as stored (a tied LM head that a quantizer copies is counted twice, as stored)."""
    _check_format(runtime, fmt)
    total = sum(tensor_bytes(arch, t, runtime, fmt) for t in tensors(arch))
    if runtime == "transformers" and arch.tied and fmt in ("int8", "int4"):
        total += arch.vocab * arch.hidden * TRANSFORMERS_FORMATS[fmt]  # the quantized LM head is its own copy
    return round(total)


def bytes_read_per_token(arch: Architecture, runtime: str, fmt: str) -> int:
    """Weight bytes one decode step reads: everything but the embedding tables, of which one row is read; the LM
    head in full (for a tied model that is the embedding matrix, or its quantized copy)."""
    _check_format(runtime, fmt)
    total = 0.0
    for t in tensors(arch):
        size = tensor_bytes(arch, t, runtime, fmt)
        if t.name in ("token_embd", "position_embd"):
            row = size / t.rows
            total += row
            if t.name == "token_embd" and arch.tied:
                head = (t.numel * TRANSFORMERS_FORMATS[fmt] if runtime == "transformers" else size)
                total += head
        else:
            total += size
    return round(total)


def kv_bytes_per_token(arch: Architecture, element_bytes: int = 4) -> int:
    """K and V of every layer for one token: 2 x layers x kv_heads x head_dim elements."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * element_bytes


def kv_element_bytes(runtime: str, fmt: str) -> int:
    return LLAMA_CPP_KV_BYTES if runtime == "llama.cpp" else COMPUTE_BYTES[fmt]


def matmul_params(arch: Architecture) -> int:
    """Weights multiplied per token (every matrix but the embedding lookups; the LM head once)."""
    found = sum(t.numel for t in tensors(arch) if t.is_matrix and t.name not in ("token_embd", "position_embd"))
    return found + (arch.vocab * arch.hidden if arch.tied else 0)


def flops_per_token(arch: Architecture, context: int = DEFAULT_CONTEXT) -> int:
    """FLOPs of decoding one token at ``context``: 2 per weight, plus attention's QK and AV over the context."""
    return 2 * matmul_params(arch) + 4 * arch.layers * arch.heads * arch.head_dim * context


def prefill_flops(arch: Architecture, prompt: int = DEFAULT_PROMPT) -> int:
    """FLOPs of a ``prompt``-token prefill (causal attention: half the P x P scores)."""
    return 2 * matmul_params(arch) * prompt + 2 * arch.layers * arch.heads * arch.head_dim * prompt * prompt


# Predictions ----------------------------------------------------------------------------------------------------


def decode_bound(arch: Architecture, runtime: str, fmt: str, bandwidth_gb_s: float,
                 context: int = DEFAULT_CONTEXT) -> float:
    """Decode tok/s if every byte a token reads came at ``bandwidth_gb_s``: weights plus the KV cache so far."""
    read = bytes_read_per_token(arch, runtime, fmt) + kv_bytes_per_token(arch, kv_element_bytes(runtime, fmt)) * context
    return bandwidth_gb_s * 1e9 / read


def prefill_bound_ms(arch: Architecture, runtime: str, fmt: str, peak_gflops: float, bandwidth_gb_s: float,
                     prompt: int = DEFAULT_PROMPT) -> float:
    """Least time a prefill can take: its FLOPs at peak, or reading the weights once, whichever is longer."""
    compute = prefill_flops(arch, prompt) / (peak_gflops * 1e9)
    memory = bytes_read_per_token(arch, runtime, fmt) / (bandwidth_gb_s * 1e9)
    return max(compute, memory) * 1000


def summary(arch: Architecture) -> dict:
    """Sizes that do not depend on a machine: params, weight bytes per format, KV bytes per token, FLOPs."""
    return {
        "model": arch.name,
        "params": params(arch),
        "weight_bytes": {runtime: {fmt: weight_bytes(arch, runtime, fmt) for fmt in formats}
                         for runtime, formats in RUNTIME_FORMATS.items()},
        "bytes_read_per_token": {runtime: {fmt: bytes_read_per_token(arch, runtime, fmt) for fmt in formats}
                                 for runtime, formats in RUNTIME_FORMATS.items()},
        "kv_bytes_per_token": {"fp32": kv_bytes_per_token(arch, 4), "fp16": kv_bytes_per_token(arch, 2)},
        "flops_per_token": flops_per_token(arch),
        "architecture": {k: v for k, v in arch.__dict__.items() if k != "name"},
    }


# An efficiency measured on one format carries over to another only within a kernel family. PyTorch's float
# matmuls are not its int8 / int4 kernels: dynamic int8 quantizes every activation at every token, and at batch 1
# that work, not memory, sets its pace (measured on an AMD EPYC: fp32 at 27% of its bound, int8 at 6%). llama.cpp
# runs every format through ggml's own kernels; one efficiency serves them all.
KERNEL_FAMILIES = {"transformers": {"fp32": "float", "fp16": "float", "bf16": "float", "int8": "int8", "int4": "int4"}}


def efficiency_carries(runtime: str, measured: str, fmt: str) -> bool:
    """Whether the efficiency ``runtime`` reached on format ``measured`` predicts format ``fmt``."""
    family = KERNEL_FAMILIES.get(runtime)
    return family is None or family.get(measured) == family.get(fmt)


def predict_here(arch: Architecture, bandwidth_gb_s: float, peak_gflops: float, efficiency: dict | None = None,
                 context: int = DEFAULT_CONTEXT, prompt: int = DEFAULT_PROMPT) -> list[dict]:
    """Per runtime and format on this machine: the decode bound, ``bound x efficiency`` where the runtime's
    efficiency was measured here on a format of the same kernel family (``efficiency_carries``), and the prefill
    bound.

    Args:
        efficiency: runtime -> ``{"efficiency": share of the bound reached, "dtype": the format measured}``.
    """
    rows = []
    for runtime, formats in RUNTIME_FORMATS.items():
        measured = (efficiency or {}).get(runtime)
        for fmt in formats:
            bound = decode_bound(arch, runtime, fmt, bandwidth_gb_s, context)
            carries = bool(measured) and efficiency_carries(runtime, measured.get("dtype"), fmt)
            share = measured.get("efficiency") if carries else None
            rows.append({"runtime": runtime, "dtype": fmt, "bound_tok_s": bound,
                         "expected_tok_s": bound * share if share else None, "efficiency": share,
                         "efficiency_from": measured.get("dtype") if carries else None,
                         "prefill_bound_ms": prefill_bound_ms(arch, runtime, fmt, peak_gflops, bandwidth_gb_s, prompt)})
    return rows


# Published figures, not measured here: estimates. fp16 peak is dense tensor-core throughput (no sparsity).
ACCELERATORS = (
    # NVIDIA H100 SXM5 datasheet (nvidia.com/en-us/data-center/h100): 3.35 TB/s HBM3, 989 TFLOPS FP16 dense.
    {"name": "NVIDIA H100 SXM", "bandwidth_gb_s": 3350.0, "peak_fp16_tflops": 989.0},
    # NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): 4.8 TB/s HBM3e, 989 TFLOPS FP16 dense.
    {"name": "NVIDIA H200", "bandwidth_gb_s": 4800.0, "peak_fp16_tflops": 989.0},
    # NVIDIA A100 datasheet (80GB SXM; nvidia.com/en-us/data-center/a100): 2,039 GB/s, 312 TFLOPS FP16 dense.
    {"name": "NVIDIA A100 80GB SXM", "bandwidth_gb_s": 2039.0, "peak_fp16_tflops": 312.0},
    # NVIDIA L4 datasheet (nvidia.com/en-us/data-center/l4): 300 GB/s GDDR6, 121 TFLOPS FP16 dense (242 sparse).
    {"name": "NVIDIA L4", "bandwidth_gb_s": 300.0, "peak_fp16_tflops": 121.0},
    # NVIDIA T4 datasheet (nvidia.com/en-us/data-center/tesla-t4): 320 GB/s GDDR6, 65 TFLOPS FP16 mixed precision.
    {"name": "NVIDIA T4", "bandwidth_gb_s": 320.0, "peak_fp16_tflops": 65.0},
    # NVIDIA Ada Lovelace architecture whitepaper, RTX 4090: 1,008 GB/s GDDR6X, 165 TFLOPS FP16 (FP16 accumulate).
    {"name": "NVIDIA RTX 4090", "bandwidth_gb_s": 1008.0, "peak_fp16_tflops": 165.0},
    # Apple M2 Max press release (apple.com/newsroom, Jan 2023): 400 GB/s unified memory; 13.6 TFLOPS GPU (FP32,
    # Apple's figure; the M2 GPU runs FP16 at the same rate).
    {"name": "Apple M2 Max", "bandwidth_gb_s": 400.0, "peak_fp16_tflops": 13.6},
)
ACCELERATOR_FORMATS = ("fp16", "q8_0", "q4_0")  # what such a device usually serves: half precision, 8 and 4 bits
_ACCELERATOR_RUNTIME = {"fp16": "transformers", "q8_0": "llama.cpp", "q4_0": "llama.cpp"}


def predict_accelerators(arch: Architecture, context: int = DEFAULT_CONTEXT,
                         prompt: int = DEFAULT_PROMPT) -> list[dict]:
    """The decode bound (an upper limit: no efficiency is measured there) and the prefill bound on each listed
    accelerator, from its published figures."""
    rows = []
    for device in ACCELERATORS:
        for fmt in ACCELERATOR_FORMATS:
            runtime = _ACCELERATOR_RUNTIME[fmt]
            kv = kv_bytes_per_token(arch, 2) * context  # fp16 KV cache on every accelerator
            read = bytes_read_per_token(arch, runtime, fmt) + kv
            rows.append({"accelerator": device["name"], "dtype": fmt, "estimate": True,
                         "bandwidth_gb_s": device["bandwidth_gb_s"], "peak_fp16_tflops": device["peak_fp16_tflops"],
                         "bound_tok_s": device["bandwidth_gb_s"] * 1e9 / read,
                         "prefill_bound_ms": max(prefill_flops(arch, prompt) / (device["peak_fp16_tflops"] * 1e12),
                                                 read / (device["bandwidth_gb_s"] * 1e9)) * 1000})
    return rows


def predict(source: str | None, bandwidth_gb_s: float, peak_gflops: float, efficiency: dict | None = None,
            context: int = DEFAULT_CONTEXT, prompt: int = DEFAULT_PROMPT) -> dict:
    """Everything the predictor says about one config: sizes, this machine and the accelerators.

    Args:
        source: as in ``config_path`` (None: the embedded model).
        bandwidth_gb_s, peak_gflops: this machine's roofline (``workbench.machine.roofline``).
        efficiency: per runtime, the share of the bound measured here (``workbench.roofline``), or None.
        context: tokens in the KV cache at the decoded token; prompt: prefill length.
    """
    arch = architecture(source)
    return {**summary(arch), "config": str(config_path(source)) if not isinstance(source, dict) else None,
            "context_tokens": context, "prompt_tokens": prompt, "bandwidth_gb_s": bandwidth_gb_s,
            "peak_gflops": peak_gflops, "here": predict_here(arch, bandwidth_gb_s, peak_gflops, efficiency, context,
                                                             prompt),
            "accelerators": predict_accelerators(arch, context, prompt)}
