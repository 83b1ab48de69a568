"""The distillation signals: exact (zero) for a student equal to its teacher, mapped to the right layers, and the
teacher's cached targets reused rather than computed again."""

import copy
import json

import pytest
import torch

from workbench.optimize.losses import (attention_loss, kd_loss, layer_map, layer_outputs, layers_loss, teacher_top_k,
                                       top_k_kl, use_eager_attention)
from workbench.optimize.prune import KEPT_LAYERS, decoder_layers, drop_layers_
from workbench.optimize.targets import HIDDEN, META, TOP_K, teacher_targets
from workbench.recipe import StudentSpec


@pytest.fixture(scope="module")
def teacher():
    from tiny import make_model, make_tokenizer

    tok = make_tokenizer()
    model = make_model(tok, layers=4, init_range=0.2).eval()
    model.tok = tok
    return model


def _batch(tok, seed=0, rows=3, width=12):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, tok.vocab_size, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, 8:] = 0  # one shorter row: its padding must not count
    return ids, mask


def test_top_k_kl_is_zero_for_the_teacher_a_lower_bound_of_the_full_kl_and_equal_to_it_at_full_k():
    torch.manual_seed(0)
    t = torch.randn(2, 5, 40) * 3
    s = torch.randn(2, 5, 40) * 3
    mask = torch.ones(2, 5)
    values, indices, norm = teacher_top_k(t, 8, 2.0)
    assert top_k_kl(t, values, indices, norm, mask, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    sparse = top_k_kl(s, values, indices, norm, mask, 2.0).item()
    full = kd_loss(s, t, mask, 2.0).item()
    assert 0 < sparse <= full + 1e-5
    every = teacher_top_k(t, 40, 2.0)
    assert top_k_kl(s, *every, mask, 2.0).item() == pytest.approx(full, rel=1e-4)
    # The gradient reaches the student's logits.
    s.requires_grad_(True)
    top_k_kl(s, values, indices, norm, mask, 2.0).backward()
    assert s.grad.abs().sum() > 0


def test_layer_and_attention_losses_are_zero_for_equal_inputs_and_skip_padding():
    torch.manual_seed(1)
    h = [torch.randn(2, 6, 16) for _ in range(3)]
    mask = torch.ones(2, 6)
    assert layers_loss(h, [x.clone() for x in h], mask).item() == pytest.approx(0.0, abs=1e-7)
    other = [x + 0.5 for x in h]
    assert layers_loss(other, h, mask).item() > 0
    mask[:, 4:] = 0
    padded = [x.clone() for x in h]
    for x in padded:
        x[:, 4:] += 100  # only padding differs
    assert layers_loss(padded, h, mask).item() == pytest.approx(0.0, abs=1e-7)
    a = [torch.randn(2, 2, 6, 6).softmax(-1) for _ in range(2)]
    assert attention_loss(a, [x.clone() for x in a], mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_loss([torch.full_like(x, 1 / 6) for x in a], a, mask).item() > 0


def test_the_layer_map_is_the_teacher_layers_the_student_kept(teacher, tmp_path):
    from transformers import AutoModelForCausalLM

    from workbench.optimize.prune import calibration_inputs

    assert layer_map(teacher) == [0, 1, 2, 3]
    student = copy.deepcopy(teacher)
    drop_layers_(student, 2, calibration_inputs(teacher.tok), "similarity")
    mapped = layer_map(student)
    assert len(mapped) == 2 and mapped == sorted(mapped) and getattr(student.config, KEPT_LAYERS) == mapped
    for i, t in enumerate(mapped):  # student layer i is a copy of teacher layer mapped[i]
        s_layer, t_layer = decoder_layers(student)[i], decoder_layers(teacher)[t]
        assert all(torch.equal(a, b) for a, b in zip(s_layer.state_dict().values(), t_layer.state_dict().values()))
    student.save_pretrained(tmp_path)
    assert layer_map(AutoModelForCausalLM.from_pretrained(tmp_path)) == mapped  # kept with the config


def test_a_student_equal_to_its_teacher_has_zero_loss_in_every_term(teacher, tmp_path):
    from workbench.optimize.distill import distill_loss

    student = copy.deepcopy(teacher)
    eager_teacher = copy.deepcopy(teacher)
    for m in (student, eager_teacher):
        use_eager_attention(m)
    ids, mask = _batch(teacher.tok)
    corpus = [ids[i][mask[i].bool()].tolist() for i in range(len(ids))]
    spec = StudentSpec(kl_weight=1.0, layers_weight=1.0, attention_weight=1.0, teacher_top_k=16)
    targets = teacher_targets(eager_teacher, corpus, k=16, temperature=spec.temperature, layers=[0, 1, 2, 3],
                              pad_token_id=0, work=tmp_path)
    loss, parts = distill_loss(student, (ids, mask), spec, [0, 1, 2, 3], targets=targets, rows=[0, 1, 2],
                               teacher=eager_teacher)
    assert set(parts) == {"kl", "layers", "attention"}
    assert all(v == pytest.approx(0.0, abs=2e-3) for v in parts.values()), parts  # bfloat16 hidden states
    # Teacher every step (no cached targets): exact.
    loss, parts = distill_loss(student, (ids, mask), StudentSpec(layers_weight=1.0, teacher_top_k=0), [0, 1, 2, 3],
                               teacher=eager_teacher)
    assert set(parts) == {"kl", "layers"} and all(v == pytest.approx(0.0, abs=1e-6) for v in parts.values())
    # A student that differs has a loss in each term.
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss, parts = distill_loss(student, (ids, mask), spec, [0, 1, 2, 3], targets=targets, rows=[0, 1, 2],
                               teacher=eager_teacher)
    assert all(v > 1e-3 for v in parts.values()), parts
    loss.backward()
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)


def test_layer_outputs_are_the_residual_stream_before_the_final_norm(teacher):
    ids, mask = _batch(teacher.tok)
    with torch.no_grad(), layer_outputs(teacher, [1, 3]) as outs:
        hidden = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.allclose(outs[0], hidden[2], atol=1e-5)  # hidden_states[0] is the embeddings
    assert torch.allclose(teacher.model.norm(outs[1]), hidden[4], atol=1e-5)  # the last one is normed by HF


def test_cached_targets_are_reused_not_computed_again(teacher, tmp_path):
    ids, mask = _batch(teacher.tok, seed=3, rows=5)
    corpus = [ids[i][mask[i].bool()].tolist() for i in range(len(ids))]
    forwards = []
    handle = teacher.register_forward_hook(lambda *a: forwards.append(1))
    try:
        first = teacher_targets(teacher, corpus, k=8, temperature=2.0, layers=[1, 2], pad_token_id=0, work=tmp_path)
        n = len(forwards)
        assert n >= 1 and (tmp_path / TOP_K).is_file() and (tmp_path / HIDDEN).is_file()
        again = teacher_targets(teacher, corpus, k=8, temperature=2.0, layers=[1, 2], pad_token_id=0, work=tmp_path)
        assert len(forwards) == n  # read back, no teacher forward
        assert torch.equal(first.values, again.values) and torch.equal(first.indices, again.indices)
        a, b = first.batch([0, 4], 12), again.batch([0, 4], 12)
        assert all(torch.equal(x, y) for x, y in zip(a[3], b[3]))
        # Another k (or corpus, temperature, layers) is another description: computed again.
        teacher_targets(teacher, corpus, k=4, temperature=2.0, layers=[], pad_token_id=0, work=tmp_path)
        assert len(forwards) > n and json.loads((tmp_path / META).read_text())["top_k"] == 4
        assert not (tmp_path / HIDDEN).exists()
        # A damaged file is computed again, not trusted.
        m = len(forwards)
        (tmp_path / TOP_K).write_bytes(b"not safetensors")
        teacher_targets(teacher, corpus, k=4, temperature=2.0, layers=[], pad_token_id=0, work=tmp_path)
        assert len(forwards) > m
    finally:
        handle.remove()
