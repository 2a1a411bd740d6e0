"""cast_frozen: frozen base in bf16, trainable adapters (and their optimizer state) in fp32."""

from __future__ import annotations

import pytest
import torch

import lorafam as lf


def _batches(n: int = 20, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # a learnable stream (repeating patterns) so that the loss really moves in 20 steps
    pattern = torch.randint(3, 256, (8,), generator=g)
    return [torch.cat([pattern.roll(i)] * 4).unsqueeze(0).repeat(2, 1) for i in range(n)]


def _train(precision: str, cfg_cls=lf.LoraConfig, steps: int = 20) -> list[float]:
    model = lf.tiny_llama()
    torch.manual_seed(0)
    lf.attach(model, cfg_cls(rank=4, alpha=8, targets="all-linear"))
    if precision == "bf16":
        lf.cast_frozen(model)
    opt = lf.make_optimizer(model, lr=1e-2)
    model.train()
    losses = []
    for ids in _batches(steps):
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def test_trainable_stay_fp32_frozen_become_bf16():
    model = lf.attach(lf.tiny_llama(), lf.DoraConfig(rank=4, alpha=8, targets="all-linear"))
    assert lf.cast_frozen(model) is model
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all(p.dtype == torch.float32 for _, p in trainable)
    assert all(p.dtype == torch.bfloat16 for _, p in frozen)
    # rotary inv_freq stays fp32: positions need the precision
    inv = [b for n, b in model.named_buffers() if n.endswith("inv_freq")]
    assert inv and all(b.dtype == torch.float32 for b in inv)


def test_optimizer_state_is_fp32_after_a_step():
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, alpha=8, targets="all-linear"))
    lf.cast_frozen(model)
    opt = lf.make_optimizer(model, lr=1e-3)
    ids = _batches(1)[0]
    with torch.autocast("cpu", torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    states = [s for s in opt.state.values()]
    assert states and all(s["exp_avg"].dtype == torch.float32 for s in states)
    for _, p in ((n, p) for n, p in model.named_parameters() if p.requires_grad):
        assert p.grad is not None and p.grad.dtype == torch.float32


@pytest.mark.parametrize("cfg_cls", [lf.LoraConfig, lf.DoraConfig])
def test_loss_after_20_steps_close_to_fp32(cfg_cls):
    fp32 = _train("fp32", cfg_cls)
    bf16 = _train("bf16", cfg_cls)
    assert fp32[-1] < 0.8 * fp32[0], "the fp32 run did not learn: the comparison would be vacuous"
    assert abs(bf16[-1] - fp32[-1]) / fp32[-1] < 0.02, (fp32[-1], bf16[-1])


def test_cast_frozen_without_autocast_runs_mixed_dtypes():
    """bf16 base, fp32 adapters, no autocast: adapters cast their input up and their output back."""
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, alpha=8, targets="all-linear"))
    ref = lf.tiny_llama()
    lf.cast_frozen(model)
    ids = _batches(1)[0]
    with torch.no_grad():
        got = model(input_ids=ids).logits
        want = ref(input_ids=ids).logits
    assert got.dtype == torch.bfloat16
    # the adapters start at ΔW = 0, so the adapted bf16 model is exactly the bf16 base model...
    bf16_base = lf.tiny_llama().requires_grad_(False)
    lf.cast_frozen(bf16_base)
    with torch.no_grad():
        torch.testing.assert_close(got, bf16_base(input_ids=ids).logits, atol=0, rtol=0)
    # ...and that is the fp32 model up to bf16 rounding (measured: 0.0035 at max|logit| 0.52; allowed 2⁻⁵ of it,
    # 8 bf16 ulps, for rounding compounded over 2 layers and the head)
    assert float((got.float() - want).abs().max()) <= 2**-5 * float(want.abs().max())


@pytest.mark.parametrize("cfg", [lf.QuantumConfig(rank=4, targets="all-linear"), lf.MixtureConfig(rank=4)])
def test_adapter_buffers_stay_fp32_and_merge_works_on_a_bf16_base(cfg):
    """Regression: cast_frozen cast Quantum-PEFT's circuit buffers to bf16, and merging then failed on dtypes."""
    torch.manual_seed(0)
    model = lf.attach(lf.tiny_llama(), cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))  # a non-zero update (Λ / B start at zero)
    lf.cast_frozen(model)
    adapters = [m for m in model.modules() if isinstance(m, lf.Adapter)]
    assert adapters and all(b.dtype != torch.bfloat16 for a in adapters for b in a.buffers())
    model.eval()
    ids = torch.randint(3, 200, (1, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits.float()
        if getattr(type(adapters[0]), "mergeable", True):
            lf.merge(model)
            merged = model(input_ids=ids).logits.float()
            lf.unmerge(model)
            assert (merged - before).abs().max() < 0.1  # bf16 base weights round the merged sum
        after = model(input_ids=ids).logits.float()
    assert torch.isfinite(before).all() and (after - before).abs().max() < 0.1
