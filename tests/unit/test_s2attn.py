"""S²-Attn: the pure functions against the naive reference, causality, and the transformers integration."""

from __future__ import annotations

import pytest
import torch

import lorafam as lf
from lorafam.attention import s2attn
from lorafam.attention.s2attn import S2AttnSettings, layout, s2_attention, shift, unshift
from tests.reference import s2attn_ref as ref


def _qkv(b=2, h=4, hkv=2, n=32, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, h, n, d, generator=g),
        torch.randn(b, hkv, n, d, generator=g),
        torch.randn(b, hkv, n, d, generator=g),
    )


@pytest.mark.parametrize("n", [32, 30, 7, 1024])
@pytest.mark.parametrize("s", [0, 1, 4])
@pytest.mark.parametrize("wrap", [False, True])
def test_shift_unshift_are_inverses(n, s, wrap):
    group = max(s + 1, -(-n // 4))
    if wrap and n % group:
        with pytest.raises(ValueError, match="divisible by the group size"):
            layout(n, group, s, wraparound=wrap)
        return
    gather, inverse = layout(n, group, s, wraparound=wrap)
    assert gather.numel() % group == 0
    x = torch.randn(2, 3, n, 5)
    torch.testing.assert_close(unshift(shift(x, gather), inverse), x, atol=0, rtol=0)
    # every real position appears exactly once in the layout; the rest are pad slots
    real = gather[gather < n]
    assert sorted(real.tolist()) == list(range(n))


def test_group_size_equal_to_sequence_is_full_causal_attention():
    q, k, v = _qkv(n=24)
    out = s2_attention(q, k, v, S2AttnSettings(group_size_ratio=1.0))
    torch.testing.assert_close(out, ref.full_causal_attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [32, 30])
@pytest.mark.parametrize("heads", [(4, 2), (5, 5), (9, 3)])
def test_matches_naive_reference_no_wraparound(n, heads):
    h, hkv = heads
    q, k, v = _qkv(h=h, hkv=hkv, n=n)
    out = s2_attention(q, k, v, S2AttnSettings(0.25))
    torch.testing.assert_close(out, ref.s2_attention(q, k, v, 0.25), atol=1e-5, rtol=1e-5)


def test_matches_naive_reference_wraparound_and_ratio_eighth():
    q, k, v = _qkv(n=32)
    out = s2_attention(q, k, v, S2AttnSettings(0.25, wraparound=True))
    torch.testing.assert_close(out, ref.s2_attention(q, k, v, 0.25, wraparound=True), atol=1e-5, rtol=1e-5)
    out = s2_attention(q, k, v, S2AttnSettings(0.125))
    torch.testing.assert_close(out, ref.s2_attention(q, k, v, 0.125), atol=1e-5, rtol=1e-5)


def test_padding_mask_matches_reference():
    q, k, v = _qkv(n=32)
    key_valid = torch.ones(2, 32, dtype=torch.bool)
    key_valid[1, :5] = False  # left padding in row 1
    keep = torch.ones(32, 32, dtype=torch.bool).tril() & key_valid[:, None, None, :]
    out = s2_attention(q, k, v, S2AttnSettings(0.25), attention_mask=keep)
    expected = ref.s2_attention(q, k, v, 0.25, key_valid=key_valid)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def _future_dependence(settings: S2AttnSettings, n: int = 32) -> float:
    """max |∂ out[t] / ∂ (k, v)[t']| over t' > t — zero when no token sees a later one."""
    q, k, v = _qkv(n=n)
    k.requires_grad_(True)
    v.requires_grad_(True)
    worst = 0.0
    for t in range(n - 1):
        out = s2_attention(q, k, v, settings)
        gk, gv = torch.autograd.grad(out[:, :, t].sum(), (k, v))
        worst = max(worst, gk[:, :, t + 1 :].abs().max().item(), gv[:, :, t + 1 :].abs().max().item())
    return worst


def test_no_future_leak_by_default_and_the_roll_leaks():
    assert _future_dependence(S2AttnSettings(0.25)) == 0.0
    assert _future_dependence(S2AttnSettings(0.25, wraparound=True)) > 1e-3  # the paper's roll, opt-in


def test_settings_validation():
    with pytest.raises(ValueError, match="group_size_ratio"):
        S2AttnSettings(0.3)
    with pytest.raises(ValueError, match="group_size_ratio"):
        lf.LongLoraConfig(group_size_ratio=0.0)


# --- transformers integration ----------------------------------------------------------------------------------
def test_registered_attention_is_used_in_training_only():
    model = lf.attach(lf.tiny_llama(), lf.LongLoraConfig(rank=4))
    assert model.config._attn_implementation == s2attn.ATTN_NAME
    x = torch.randint(3, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    full = lf.tiny_llama()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).logits, full(x).logits, atol=1e-5, rtol=1e-5)
        model.train()
        s2 = model(x).logits
    # in training the first group (first 8 tokens, unshifted heads) still sees the same context as full attention
    # for the unshifted half, but later tokens do not: the outputs differ
    assert (s2 - full(x).logits).abs().max() > 1e-3
    lf.unload(model)
    assert model.config._attn_implementation == "sdpa"


def _tiny(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    if model_type == "qwen3":
        kw["head_dim"] = 16
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw)).eval()


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3"])
def test_other_llama_family_models_train_with_s2attn(model_type):
    model = lf.attach(_tiny(model_type), lf.LongLoraConfig(rank=4, group_size_ratio=1.0))
    x = torch.randint(3, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    ref_model = _tiny(model_type).train()
    model.train()
    # one group: S²-Attn is exactly full causal attention, through the registered function
    torch.testing.assert_close(model(x).logits, ref_model(x).logits, atol=1e-5, rtol=1e-5)
    lf.unload(model)
    model = lf.attach(_tiny(model_type), lf.LongLoraConfig(rank=4)).train()
    model(x, labels=x).loss.backward()
    assert all(p.grad is not None for _, p, _, _ in lf.core.inject.named_adapter_params(model))


def test_unsupported_model_type_is_a_clear_error():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    cfg = GPTNeoXConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                        num_attention_heads=4)  # fmt: skip
    with pytest.raises(ValueError, match=r"Supported model types: llama, mistral, qwen2, qwen3, gpt2"):
        lf.attach(GPTNeoXForCausalLM(cfg), lf.LongLoraConfig(rank=4, targets="all-linear"))


def test_gradient_through_s2attn_matches_reference_in_a_model():
    """Hidden states of a training-mode tiny Llama equal those computed with the naive reference attention."""
    from transformers import AttentionInterface

    x = torch.randint(3, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    model = lf.attach(lf.tiny_llama(), lf.LongLoraConfig(rank=4)).train()
    ours = model(x).logits

    def naive(module, q, k, v, mask, dropout=0.0, scaling=None, **kw):
        return ref.s2_attention(q, k, v, 0.25, scale=scaling).transpose(1, 2), None

    AttentionInterface.register("lorafam_test_naive_s2", naive)
    other = lf.tiny_llama().train()
    other.set_attn_implementation("lorafam_test_naive_s2")
    torch.testing.assert_close(ours, other(x).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("n", [32, 30, 7, 1024])
@pytest.mark.parametrize("s", [0, 1, 4])
@pytest.mark.parametrize("wrap", [False, True])
def test_slice_runs_move_data_exactly_like_the_gather_layout(n, s, wrap):
    group = max(s + 1, -(-n // 4))
    if wrap and n % group:
        return  # layout refuses it (test above)
    gather, inverse = layout(n, group, s, wraparound=wrap)
    total, runs = s2attn.layout_runs(n, group, s, wraparound=wrap)
    assert total == gather.numel() and len(runs) <= 3
    x = torch.randn(2, 3, n, 5)
    laid = s2attn.shift_runs(x, total, runs)
    torch.testing.assert_close(laid, shift(x, gather), atol=0, rtol=0)
    back = torch.cat(s2attn.unshift_runs(laid, runs), dim=2)
    torch.testing.assert_close(back, unshift(shift(x, gather), inverse), atol=0, rtol=0)


def test_groups_run_in_sdpas_fused_kernel_not_the_unfused_fallback():
    """Groups folded into heads (4-D) reach the fused CPU kernel; a 5-D input made SDPA materialise the scores
    with bmm + softmax (1.4× slower than full attention at 4096 tokens)."""
    from torch.profiler import ProfilerActivity, profile

    q, k, v = _qkv(b=1, h=4, hkv=2, n=64, d=8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        s2_attention(q, k, v, S2AttnSettings(0.25))
    names = {e.name for e in prof.events()}
    assert any("flash_attention" in name for name in names), sorted(names)
    assert "aten::bmm" not in names and "aten::_softmax" not in names


@pytest.mark.parametrize("heads", [(4, 2), (9, 3)])
def test_in_model_layout_equals_the_padded_layout(heads):
    """With n a multiple of G and no mask, S²-Attn runs in the projections' layout without pad slots: the same
    outputs and gradients as the general path (each half through the padded layout), and as the naive reference."""
    h, hkv = heads
    n, group = 64, 16
    q, k, v = (t.requires_grad_() for t in _qkv(b=1, h=h, hkv=hkv, n=n))
    kk, vv = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
    half = h // 2
    a = torch.cat(s2attn._grouped_attention(q[:, :half], kk[:, :half], vv[:, :half], None, 0, group, False, 0.0,
                                            None), dim=2)  # fmt: skip
    b = torch.cat(s2attn._grouped_attention(q[:, half:], kk[:, half:], vv[:, half:], None, group // 2, group,
                                            False, 0.0, None), dim=2)  # fmt: skip
    padded = torch.cat([a, b], dim=1)
    direct = s2attn._s2_in_model_layout(q, kk, vv, group, 0.0, None)
    assert direct.shape == (1, n, h, q.shape[-1]) and direct.is_contiguous()
    direct = direct.transpose(1, 2)
    torch.testing.assert_close(direct, padded, atol=1e-6, rtol=1e-6)
    go = torch.randn_like(direct)
    g1 = torch.autograd.grad(direct, (q, k, v), go)
    g2 = torch.autograd.grad(padded, (q, k, v), go)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    out = s2_attention(q, k, v, S2AttnSettings(0.25))
    torch.testing.assert_close(out, ref.s2_attention(q, k, v, 0.25), atol=1e-5, rtol=1e-5)
