"""The inference engine: base-cache reuse for aLoRA, equal outputs to the no-cache path, a read-only shared cache."""

from __future__ import annotations

import pytest
import torch

import lorafam as lf
from tests.conftest import perturb_adapters

INV1, INV2 = [7, 9], [11]
H = 40


def _model(arch: str = "llama"):
    make = {"llama": lf.tiny_llama, "gpt2": lf.tiny_gpt2}[arch]
    model = make()
    lf.attach(model, lf.ALoraConfig(rank=4, alpha=8, invocation_tokens=INV1), name="a1")
    lf.attach(model, lf.ALoraConfig(rank=4, alpha=8, invocation_tokens=INV2), name="a2")
    lf.attach(model, lf.LoraConfig(rank=4, alpha=8), name="plain")
    perturb_adapters(model, std=0.2)
    return model


def _history() -> torch.Tensor:
    return torch.randint(12, 256, (1, H), generator=torch.Generator().manual_seed(3))


def _cat(*parts) -> torch.Tensor:
    return torch.cat([p if isinstance(p, torch.Tensor) else torch.tensor([p]) for p in parts], dim=1)


def _snapshot(pc: lf.PrefixCache):
    return [(k._version, v._version, k.clone(), v.clone()) for k, v in zip(pc.keys, pc.values)]


def _assert_untouched(pc: lf.PrefixCache, snap) -> None:
    for (kv_, vv_, k0, v0), k, v in zip(snap, pc.keys, pc.values):
        assert k._version == kv_ and v._version == vv_, "the shared cache was written in place"
        assert torch.equal(k, k0) and torch.equal(v, v0)
        assert k.shape[2] == H


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_reuse_equals_no_cache_and_never_writes_the_shared_cache(arch):
    model = _model(arch)
    pc = lf.PrefixCache(model, _history())
    snap = _snapshot(pc)
    cases = {
        "a1": (_cat(pc.ids, [7, 9, 50, 51]), H),  # invocation after the history: all of it reused
        "a2": (_cat(pc.ids, [60, 11, 61]), H),
        None: (_cat(pc.ids, [60, 61]), H),  # the base model: the whole history
        "plain": (_cat(pc.ids, [7, 9, 50]), 0),  # plain LoRA changes every K/V: nothing reusable
    }
    for adapter, (ids, reused) in cases.items():
        cached = lf.generate(model, None, ids, adapter=adapter, cache=pc, max_new_tokens=6, eos_token_id=[])
        fresh = lf.generate(model, None, ids, adapter=adapter, max_new_tokens=6, eos_token_id=[])
        assert cached.reused_tokens == reused and fresh.reused_tokens == 0
        assert cached.prefilled_tokens == ids.shape[1] - reused
        assert cached.new_ids == fresh.new_ids, adapter
        torch.testing.assert_close(cached.first_logits, fresh.first_logits, atol=1e-5, rtol=1e-5)
        _assert_untouched(pc, snap)
    # the adapters really act: their first logits differ from the base model's on the same sequence
    ids = cases["a1"][0]
    base = lf.generate(model, None, ids, cache=pc, max_new_tokens=1)
    assert not torch.allclose(lf.generate(model, None, ids, "a1", pc, 1).first_logits, base.first_logits)


def test_invocation_inside_the_history_reuses_only_the_part_before_it():
    model = _model()
    hist = _history()
    hist[0, 30:32] = torch.tensor(INV1)
    pc = lf.PrefixCache(model, hist)
    snap = _snapshot(pc)
    ids = _cat(pc.ids, [50, 51])  # the last invocation starts at 30, inside the cached history
    cached = lf.generate(model, None, ids, adapter="a1", cache=pc, max_new_tokens=5, eos_token_id=[])
    fresh = lf.generate(model, None, ids, adapter="a1", max_new_tokens=5, eos_token_id=[])
    assert cached.reused_tokens == 30 and cached.new_ids == fresh.new_ids
    torch.testing.assert_close(cached.first_logits, fresh.first_logits, atol=1e-5, rtol=1e-5)
    # a prompt that diverges from the history reuses only the common prefix
    other = _cat(pc.ids[:, :20], [99, 7, 9, 50])
    got = lf.generate(model, None, other, adapter="a1", cache=pc, max_new_tokens=3, eos_token_id=[])
    assert got.reused_tokens == 20
    assert got.new_ids == lf.generate(model, None, other, "a1", max_new_tokens=3, eos_token_id=[]).new_ids
    # no invocation at all: the aLoRA row is the base model, with the whole history reused
    plain = _cat(_history(), [50])
    pc2 = lf.PrefixCache(model, _history())
    res = lf.generate(model, None, plain, adapter="a1", cache=pc2, max_new_tokens=4, eos_token_id=[])
    assert res.reused_tokens == H
    assert res.new_ids == lf.generate(model, None, plain, cache=pc2, max_new_tokens=4, eos_token_id=[]).new_ids
    _assert_untouched(pc, snap)


def test_views_share_storage_and_several_adapters_run_on_one_cache():
    model = _model()
    pc = lf.PrefixCache(model, _history())
    view = pc.view()
    assert view.layers[0].keys.data_ptr() == pc.keys[0].data_ptr()  # a slice, not a copy
    assert view.get_seq_length() == H and pc.view(10).get_seq_length() == 10
    ids = _cat(pc.ids, [7, 9, 11, 50])
    both = lf.generate(model, None, ids, adapter=["a1", "a2"], cache=pc, max_new_tokens=4, eos_token_id=[])
    assert both.reused_tokens == H
    fresh = lf.generate(model, None, ids, adapter=["a1", "a2"], max_new_tokens=4, eos_token_id=[])
    assert both.new_ids == fresh.new_ids


def test_extend_equals_a_fresh_prefix_cache():
    model = _model()
    pc = lf.PrefixCache(model, _history())
    more = torch.tensor([[20, 21, 22]])
    ext = pc.extend(model, more)
    ref = lf.PrefixCache(model, _cat(_history(), more))
    assert torch.equal(ext.ids, ref.ids) and len(pc) == H
    for a, b in zip(ext.keys, ref.keys):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_bad_input():
    model = _model()
    pc = lf.PrefixCache(model, _history())
    with pytest.raises(ValueError, match="adapter='nope' is not attached to this model; attached: \\['a1'"):
        lf.generate(model, None, pc.ids, adapter="nope", cache=pc)
    with pytest.raises(ValueError, match="built with another model"):
        lf.generate(_model(), None, pc.ids, cache=pc)
    with pytest.raises(ValueError, match="a text prompt needs a tokenizer"):
        lf.generate(model, None, "hello")
    with pytest.raises(ValueError, match="prompt: empty"):
        lf.generate(model, None, [])
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        lf.generate(model, None, pc.ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="upto=99 outside"):
        pc.view(99)


def test_sampling_is_seeded():
    model = _model()
    ids = _cat(_history(), [7, 9])
    a = lf.generate(model, None, ids, "a1", max_new_tokens=5, do_sample=True, top_k=20, seed=4, eos_token_id=[])
    b = lf.generate(model, None, ids, "a1", max_new_tokens=5, do_sample=True, top_k=20, seed=4, eos_token_id=[])
    assert a.new_ids == b.new_ids and len(a.new_ids) == 5


@pytest.mark.parametrize(("n", "own"), [(4, 4), (1, 7), (3, 9)])
def test_split_attention_equals_sdpa_on_the_concatenation(n, own):
    from transformers.integrations.sdpa_attention import repeat_kv

    from lorafam.serve.fastpath import split_attention

    g = torch.Generator().manual_seed(n + own)
    q = torch.randn(2, 6, n, 16, generator=g)
    pk, pv = torch.randn(2, 2, 30, 16, generator=g), torch.randn(2, 2, 30, 16, generator=g)
    k, v = torch.randn(2, 2, own, 16, generator=g), torch.randn(2, 2, own, 16, generator=g)
    keys, values = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    total = 30 + own
    mask = torch.arange(total)[None, :] <= (total - n + torch.arange(n))[:, None]
    want = torch.nn.functional.scaled_dot_product_attention(
        q, repeat_kv(keys, 3), repeat_kv(values, 3), attn_mask=mask, scale=0.25
    ).transpose(1, 2)
    got = split_attention(q, k, v, (pk, pv), 0.25)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_shared_view_keeps_the_prefix_apart():
    model = _model()
    pc = lf.PrefixCache(model, _history())
    view = pc.view(30, shared=True)
    layer = view.layers[0]
    assert view.get_seq_length() == 30 and layer.keys.numel() == 0
    assert layer.prefix[0].data_ptr() == pc.keys[0].data_ptr()
    ids = _cat(pc.ids, [7, 9, 50])
    with torch.no_grad(), lf.active_adapters(model, ["a1"]), lf.serve.fastpath.fast_inference(model) as ours:
        assert ours
        model(input_ids=ids[:, 30:], cache=view, use_cache=True)
    assert layer.keys.shape[2] == ids.shape[1] - 30  # only the call's own tokens are stored
    assert view.get_seq_length() == ids.shape[1]
