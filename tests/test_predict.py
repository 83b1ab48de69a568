"""The predictor: sizes from a config alone equal the real model's; KV bytes equal a real cache's; formats store
each tensor as their runtime does; every shipped config is the published model's size."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from workbench import predict


def torch_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # a tied weight is one Parameter: counted once


def test_the_embedded_config_gives_the_real_models_params_and_fp32_bytes(embedded_model):
    arch = predict.architecture(None)
    real = embedded_model.optimized.model
    assert arch.tied and real.config.tie_word_embeddings
    assert predict.params(arch) == torch_params(real) == embedded_model.stats.params
    assert predict.weight_bytes(arch, "transformers", "fp32") == embedded_model.stats.weight_bytes
    assert predict.weight_bytes(arch, "transformers", "fp16") == embedded_model.stats.weight_bytes // 2
    for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                  "intermediate_size", "vocab_size"):
        assert json.loads(predict.config_path(None).read_text())[field] == getattr(real.config, field)


def test_a_model_directory_gives_the_tiny_models_params_and_bytes(tiny_model_dir, tiny_model):
    arch = predict.architecture(str(tiny_model_dir))
    assert predict.params(arch) == torch_params(tiny_model.optimized.model) == tiny_model.stats.params
    assert predict.weight_bytes(arch, "transformers", "fp32") == tiny_model.stats.weight_bytes


def _cache_bytes(cache) -> int:
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)
    return sum(k.nbytes + v.nbytes for k, v in zip(cache.key_cache, cache.value_cache))


@pytest.mark.parametrize("tokens", [1, 7, 40])
def test_kv_bytes_per_token_match_a_real_dynamic_cache(tiny_model_dir, tiny_model, tokens):
    from transformers import DynamicCache

    model = tiny_model.optimized.model
    cache = DynamicCache(config=model.config)
    ids = torch.arange(tokens).remainder(model.config.vocab_size).unsqueeze(0)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        model(input_ids=ids, use_cache=True, **{name: cache})
    arch = predict.architecture(str(tiny_model_dir))
    assert arch.kv_heads < arch.heads  # grouped-query attention: the cache holds the K/V heads only
    assert _cache_bytes(cache) == predict.kv_bytes_per_token(arch, 4) * tokens


@pytest.mark.parametrize("name", predict.shipped_names())
def test_every_shipped_config_loads_and_is_the_published_size(name):
    config = json.loads(predict.config_path(name).read_text())
    arch = predict.architecture(name)
    published = config["workbench_published_params"]
    assert abs(predict.params(arch) / published - 1) <= 0.10, (predict.params(arch), published)
    assert arch.max_positions and arch.kv_heads <= arch.heads and arch.heads * arch.head_dim >= arch.hidden // 2


def test_known_exact_parameter_counts():
    # Published exact counts (the models' safetensors metadata): Qwen2.5-0.5B has biases on Q, K and V.
    assert predict.params(predict.architecture("qwen2.5-0.5b")) == 494_032_768
    assert predict.params(predict.architecture("llama-3.2-1b")) == 1_235_814_400
    assert predict.params(predict.architecture("tinyllama-1.1b")) == 1_100_048_384


def test_ggml_bytes_per_block_and_llama_cpps_type_rules():
    arch = predict.architecture("smollm2-135m")  # hidden 576: not a multiple of a 256-weight k-quant block
    q = predict.Tensor("blk.0.attn_q", 576, 576, 0)
    assert predict.tensor_bytes(arch, q, "llama.cpp", "q4_0") == 576 * 576 / 32 * 18
    assert predict.ggml_type(arch, q, "q8_0") == "Q8_0"
    assert predict.ggml_type(arch, q, "q4_k_m") == "Q5_0"  # Q4_K's stand-in for a short row
    down = predict.Tensor("blk.0.ffn_down", 576, 1536, 0)  # rows of 1536 = 6 blocks of 256
    assert predict.ggml_type(arch, down, "q4_k_m") == "Q6_K"  # layer 0: one of the layers given more bits
    assert predict.ggml_type(arch, predict.Tensor("blk.4.ffn_down", 576, 1536, 4), "q4_k_m") == "Q4_K"
    embd = predict.Tensor("token_embd", arch.vocab, 576)
    assert predict.ggml_type(arch, embd, "q4_0") == "Q8_0"  # tied: the output matrix, Q6_K's stand-in
    assert predict.ggml_type(arch, predict.Tensor("blk.0.attn_norm", 1, 576, 0), "q4_0") == "F32"
    untied = predict.architecture("tinyllama-1.1b")
    assert predict.ggml_type(untied, predict.Tensor("token_embd", 32000, 2048), "q4_0") == "Q4_0"
    assert predict.ggml_type(untied, predict.Tensor("output", 32000, 2048), "q4_0") == "Q6_K"


def test_bytes_read_per_token_skip_an_untied_embedding_but_not_a_tied_one():
    tied, untied = predict.architecture("qwen2.5-0.5b"), predict.architecture("tinyllama-1.1b")
    assert predict.bytes_read_per_token(tied, "transformers", "fp32") == pytest.approx(
        predict.weight_bytes(tied, "transformers", "fp32") + tied.hidden * 4)
    embed = untied.vocab * untied.hidden * 4
    assert predict.bytes_read_per_token(untied, "transformers", "fp32") == pytest.approx(
        predict.weight_bytes(untied, "transformers", "fp32") - embed + untied.hidden * 4)
    fmts = ["fp32", "q8_0", "q4_k_m", "q4_0"]
    sizes = [predict.weight_bytes(tied, "llama.cpp", f) for f in fmts]
    assert sizes == sorted(sizes, reverse=True)


def test_decode_bound_is_bandwidth_over_bytes_and_context_adds_the_kv_cache():
    arch = predict.architecture("smollm2-135m")
    read = predict.bytes_read_per_token(arch, "transformers", "fp32")
    assert predict.decode_bound(arch, "transformers", "fp32", 10.0, context=0) == pytest.approx(10e9 / read)
    long = predict.decode_bound(arch, "transformers", "fp32", 10.0, context=4096)
    assert long == pytest.approx(10e9 / (read + 4096 * predict.kv_bytes_per_token(arch, 4)))
    rows = predict.predict_here(arch, 10.0, 50.0, {"transformers": {"efficiency": 0.5, "dtype": "fp32"}})
    fp32 = next(r for r in rows if r["runtime"] == "transformers" and r["dtype"] == "fp32")
    assert fp32["expected_tok_s"] == pytest.approx(fp32["bound_tok_s"] * 0.5)
    assert all(r["expected_tok_s"] is None for r in rows if r["runtime"] == "llama.cpp")  # not measured: no guess
    assert all(r["estimate"] for r in predict.predict_accelerators(arch))


def test_configs_that_cannot_be_found_say_what_to_do(tmp_path):
    with pytest.raises(predict.PredictError, match="without a config.json"):
        predict.architecture(str(tmp_path))
    with pytest.raises(predict.PredictError, match="huggingface-cli download"):
        predict.architecture("nobody/not-a-cached-model")
    with pytest.raises(predict.PredictError, match="no such config"):
        predict.architecture(str(tmp_path / "missing.json"))
    no_layers = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}
    (tmp_path / "config.json").write_text(json.dumps(no_layers))
    with pytest.raises(predict.PredictError, match="num_hidden_layers"):
        predict.architecture(str(tmp_path))
