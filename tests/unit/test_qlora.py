"""QLoRA: NF4 storage against the naive reference, parity with LoRA on the dequantised weights, gradients to the
input that survive eval-mode forwards, merging without re-quantising, and the dtype traps."""

from __future__ import annotations

import warnings

import pytest
import torch

import lorafam as lf
from lorafam.core.base_layer import base_weight, set_base_weight
from lorafam.core.inject import adapted_layers, count_params, named_adapter_params
from lorafam.core.precision import cast_frozen
from lorafam.quant.nf4 import NF4Linear, quantize_base
from tests.conftest import perturb_adapters
from tests.reference import nf4_ref


def _w(out=128, inp=128, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.02


def test_code_book_is_the_papers_nf4():
    q = NF4Linear(_w())
    torch.testing.assert_close(q.code, torch.tensor(nf4_ref.NF4_PAPER), atol=5e-5, rtol=0)
    assert (q.code < 0).sum() == 7 and (q.code == 0).sum() == 1 and (q.code > 0).sum() == 8


@pytest.mark.parametrize("shape", [(128, 128), (256, 192)])
def test_dequantised_weight_equals_naive_reference(shape):
    w = _w(*shape)
    ours = NF4Linear(w).dequantize_weight()
    expected = nf4_ref.quantize_dequantize(w)
    torch.testing.assert_close(ours, expected, atol=1e-7, rtol=1e-6)
    # the block-wise error bound: half the widest code gap times the block absmax (plus scale rounding)
    absmax = w.reshape(-1, 64).abs().amax(1, keepdim=True)
    assert ((ours - w).reshape(-1, 64).abs() <= 0.17 * absmax * 1.02).all()


def test_storage_is_about_4_bits_per_weight_and_padding_is_dropped():
    w = _w(1536, 576)
    q = NF4Linear(w)
    assert q.storage_bytes() / (w.numel() * 4) < 0.13  # 4.125 bits / 32
    odd = _w(192, 576)  # 110,592 weights: not a multiple of 64·256, padded internally
    qo = NF4Linear(odd)
    assert qo.dequantize_weight().shape == (192, 576)
    assert qo.storage_bytes() / (odd.numel() * 4) < 0.15
    assert (qo.dequantize_weight() - odd).abs().max() < 0.2 * odd.abs().max()


def _pair(make, cfg_cls=lf.LoraConfig, **kw):
    """(quantised-base model, the same adapter on a float model holding the dequantised weights)."""
    q = lf.attach(make(), cfg_cls(rank=4, alpha=8, targets="all-linear", quantize="nf4", **kw))
    perturb_adapters(q)
    f = lf.attach(make(), cfg_cls(rank=4, alpha=8, targets="all-linear", **kw))
    for (_, ql), (_, fl) in zip(adapted_layers(q), adapted_layers(f)):
        set_base_weight(fl.base_layer, base_weight(ql.base_layer))
    fl_params = dict((n, p) for n, p, _, _ in named_adapter_params(f))
    with torch.no_grad():
        for n, p, _, _ in named_adapter_params(q):
            fl_params[n].copy_(p)
    return q, f


@pytest.mark.parametrize("make", [lf.tiny_llama, lf.tiny_gpt2])
@pytest.mark.parametrize("cfg_cls", [lf.LoraConfig, lf.DoraConfig])
def test_parity_with_float_lora_on_dequantised_weights(make, cfg_cls):
    q, f = _pair(make, cfg_cls)
    x = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    for m in (q, f):  # eval: GPT-2's own dropout off; gradients still flow
        m.eval()
        m(x, labels=x).loss.backward()
    torch.testing.assert_close(q(x).logits, f(x).logits, atol=1e-5, rtol=1e-5)
    grads_f = {n: p.grad for n, p, _, _ in named_adapter_params(f)}
    for n, p, _, _ in named_adapter_params(q):
        torch.testing.assert_close(p.grad, grads_f[n], atol=1e-5, rtol=1e-4)


def test_input_gradients_survive_eval_and_generate():
    """DESIGN.md's bitsandbytes CPU fault: after an eval forward, input gradients silently stopped. Train →
    evaluate/generate → train, checking ∂L/∂x = ∂L/∂y · W' at a quantised layer on every training step."""
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, targets="all-linear", quantize="nf4"))
    layer = model.model.layers[1].self_attn.q_proj.base_layer
    assert isinstance(layer, NF4Linear)
    w = layer.dequantize_weight()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    layer.register_full_backward_hook(lambda mod, gin, gout: seen.append((gin[0], gout[0])))
    opt = lf.make_optimizer(model, lr=1e-2)
    x = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))

    def train_step():
        model.train()
        seen.clear()
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        gin, gout = seen[-1]
        assert gin is not None and gin.abs().sum() > 0
        torch.testing.assert_close(gin, gout @ w, atol=1e-6, rtol=1e-5)

    train_step()
    model.eval()
    with torch.no_grad():
        model(x)
    model.generate(x[:, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    train_step()
    train_step()
    torch.testing.assert_close(layer.dequantize_weight(), w, atol=0, rtol=0)  # the base never changes


def test_merge_and_unload_returns_a_float_model_and_says_so():
    q, f = _pair(lf.tiny_llama)
    x = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = q(x).logits
    with pytest.warns(UserWarning, match="dequantised"):
        plain = lf.merge_and_unload(q)
    assert not any(isinstance(m, NF4Linear) for m in plain.modules())
    assert all(p.dtype == torch.float32 for p in plain.parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, expected, atol=1e-4, rtol=1e-4)


def test_in_place_merge_keeps_codes_and_unmerge_restores_them_exactly():
    q, _ = _pair(lf.tiny_llama, lf.DoraConfig)
    layer = next(layer for _, layer in adapted_layers(q))
    codes = layer.base_layer.qdata.clone()
    before = base_weight(layer.base_layer).clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lf.merge(q)
    assert torch.equal(layer.base_layer.qdata, codes)
    assert (base_weight(layer.base_layer) - before).abs().max() > 1e-4
    lf.unmerge(q)
    torch.testing.assert_close(base_weight(layer.base_layer), before, atol=0, rtol=0)


def test_dtype_casts_never_dequantise_the_base():
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, targets="all-linear", quantize="nf4"))
    layer = model.model.layers[0].mlp.up_proj.base_layer
    w = layer.dequantize_weight()
    cast_frozen(model)
    model.to(torch.bfloat16)
    assert isinstance(layer, NF4Linear) and layer.qdata.dtype == torch.uint8
    torch.testing.assert_close(layer.dequantize_weight(), w, atol=0, rtol=0)


def test_bf16_compute_dtype_runs_and_stays_close():
    q, f = _pair(lf.tiny_llama, compute_dtype="bfloat16")
    assert q.model.layers[0].self_attn.q_proj.base_layer.compute_dtype == torch.bfloat16
    x = torch.randint(3, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = q(x).logits
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, f(x).logits, atol=5e-2, rtol=5e-2)


def test_param_count_uses_logical_weights_and_save_load_requantises(tmp_path):
    plain = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, targets="all-linear"))
    quant = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, targets="all-linear", quantize="nf4"))
    assert count_params(plain) == count_params(quant)
    perturb_adapters(quant)
    x = torch.randint(3, 256, (1, 8), generator=torch.Generator().manual_seed(0))
    lf.save_adapter(quant, tmp_path / "q")
    loaded = lf.load_adapter(lf.tiny_llama(), tmp_path / "q")
    assert any(isinstance(m, NF4Linear) for m in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, quant(x).logits, atol=0, rtol=0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="'quantize'"):
        lf.LoraConfig(quantize="nf8")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Embedding"):
        quantize_base(torch.nn.Embedding(4, 4))
    with pytest.raises(ValueError, match="compute_dtype"):
        NF4Linear(_w(), compute_dtype="int8")
