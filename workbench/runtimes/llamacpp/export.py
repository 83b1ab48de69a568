"""Write a float PyTorch model (after its variant and pruning) as an F32 GGUF file that llama.cpp loads.

Written with the ``gguf`` package: its tensor-name map for the architecture, its value types, and the
tokenizer in the file, so that the GGUF stands on its own (llama.cpp, Ollama). What llama.cpp expects and
transformers does not:
- the Q and K projections permuted to the rotary layout llama.cpp computes in;
- no output tensor when the LM head is tied to the token embeddings (llama.cpp then reuses the embeddings);
- a BPE pre-tokenizer name: copied with the whole tokenizer from a GGUF source, otherwise chosen by checking
  llama.cpp's tokenization of a probe text against the transformers tokenizer (``tokenizer_mismatch``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np
import torch

from ...recipe import RecipeError

ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA}  # transformers model_type -> GGUF architecture
# Pre-tokenizers tried for a BPE tokenizer that does not come from a GGUF file, in this order.
PRE_TOKENIZERS = ("smollm", "gpt2", "llama-bpe", "qwen2", "default")
PROBE_TEXTS = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  two leading spaces,\ttabs\tand\nnew\n\nlines  ",
    "Numbers 3 33 333 3333 33333 3.14159 1,000,000 and dates 2026-12-02.",
    "Ünïcödé, 日本語のテキスト, Ελληνικά, русский, emoji 🚀🦙 and joiners 😶‍🌫️.",
    "I've been told he's there, 'RE you sure? We'Ve a'lL",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "code: def f(x):\n    return x ** 2  # squared\n",
)


def architecture(model: torch.nn.Module):
    """The GGUF architecture of a transformers model; RecipeError when llama.cpp export does not support it."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise RecipeError("runtime", f"the llama.cpp runtime exports Llama-architecture models ({', '.join(ARCHITECTURES)}); "
                                     f"this model is {model_type!r}; run it with --runtime transformers")
    return ARCHITECTURES[model_type]


def write_gguf(model: torch.nn.Module, tokenizer, path: Path, *, name: str, tokenizer_gguf: Path | None = None,
               pre: str | None = None) -> None:
    """Write ``model`` (float, on the CPU) as an all-F32 GGUF file at ``path``.

    Args:
        model: a causal LM of a supported architecture, after its variant and pruning.
        tokenizer: its transformers tokenizer.
        path: where to write (the caller writes to a temp path and renames it into place).
        name: the model's name in the file's metadata.
        tokenizer_gguf: a GGUF file whose tokenizer entries are copied as they are (the model's own source).
        pre: the BPE pre-tokenizer name when the tokenizer is built from ``tokenizer``.
    """
    arch = architecture(model)
    config = model.config
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[arch])
    _hyperparameters(writer, config, name)
    if tokenizer_gguf is not None:
        copy_tokenizer(writer, tokenizer_gguf)
    else:
        add_tokenizer(writer, tokenizer, pre or PRE_TOKENIZERS[0])
    for gguf_name, data in _tensors(model, arch):
        writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _hyperparameters(writer: gguf.GGUFWriter, config, name: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_block_count(config.num_hidden_layers)  # after layer pruning: the layers that are left
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)  # after channel pruning: the channels kept
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
    if theta:
        writer.add_rope_freq_base(float(theta))


def _tensors(model: torch.nn.Module, arch) -> Iterable[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) of every weight, Q and K permuted, a tied LM head left out."""
    config = model.config
    n_head = config.num_attention_heads
    n_kv_head = getattr(config, "num_key_value_heads", None) or n_head
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for hf_name, tensor in state.items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when there is no output tensor
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise RecipeError("runtime", f"cannot map the weight {hf_name} to a llama.cpp tensor name")
        data = tensor.detach().to("cpu", torch.float32)
        if hf_name.endswith("q_proj.weight"):
            data = permute(data, n_head, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute(data, n_head, n_kv_head)
        yield gguf_name, data.contiguous().numpy()


def permute(weights: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """Q/K rows reordered from transformers' rotary layout (halves) to llama.cpp's (interleaved pairs)."""
    heads = n_head_kv if n_head != n_head_kv else n_head
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


# The tokenizer ------------------------------------------------------------------------------------------------


def copy_tokenizer(writer: gguf.GGUFWriter, source: Path) -> None:
    """Every ``tokenizer.*`` entry of a GGUF file, as it is."""
    reader = gguf.GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = field.types[0]
        sub = field.types[1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), main, sub_type=sub)


def add_tokenizer(writer: gguf.GGUFWriter, tokenizer, pre: str) -> None:
    """A GPT-2-style BPE tokenizer (what llama.cpp calls "gpt2"), its special tokens and chat template."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend.get("model", {}).get("type") != "BPE":
        raise RecipeError("runtime", "the llama.cpp export writes BPE tokenizers; this model's is "
                                     f"{backend.get('model', {}).get('type')!r}")
    vocab = tokenizer.get_vocab()
    size = max(max(vocab.values()) + 1, len(tokenizer))
    by_id = {i: token for token, i in vocab.items()}
    special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    added = set(tokenizer.get_added_vocab())
    tokens, types = [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if token in special else
                         gguf.TokenType.USER_DEFINED if token in added else gguf.TokenType.NORMAL)
    merges = backend["model"].get("merges", [])
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            getattr(writer, {"bos": "add_bos_token_id", "eos": "add_eos_token_id", "unk": "add_unk_token_id",
                             "pad": "add_pad_token_id"}[kind])(int(token_id))
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)


def hf_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def write_vocab(tokenizer, path: Path, pre: str) -> None:
    """A GGUF file holding only a tokenizer (and the little llama.cpp needs to read one): to check a split."""
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    writer.add_name("vocabulary")
    writer.add_block_count(1)
    writer.add_context_length(512)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(64)
    writer.add_head_count(1)
    writer.add_vocab_size(len(tokenizer))
    add_tokenizer(writer, tokenizer, pre)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def tokenizer_mismatch(path: Path, tokenizer, texts: Iterable[str] = PROBE_TEXTS) -> str | None:
    """The first text that llama.cpp, reading the GGUF file at ``path``, splits into other token ids than the
    transformers tokenizer does (special tokens parsed as specials on both sides); None when they all agree."""
    from .model import library

    lib = library()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RecipeError("runtime", f"llama.cpp cannot read the tokenizer of {path}")
    try:
        vocab = lib.llama_model_get_vocab(model)
        for text in texts:
            data = text.encode("utf-8")
            room = len(data) + 8
            out = (lib.llama_token * room)()
            n = lib.llama_tokenize(vocab, data, len(data), out, room, False, True)
            if n < 0 or list(out[:n]) != hf_ids(tokenizer, text):
                return text
        return None
    finally:
        lib.llama_model_free(model)
