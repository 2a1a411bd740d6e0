"""MoPEFT-style mixture: naive reference, forced one-hot router, gradients, sequence gates under a KV cache,
manifest save/load, balance loss and router statistics, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import lorafam as lf
from lorafam.core.inject import adapted_layers
from lorafam.train.callbacks import callbacks_for
from tests.conftest import perturb_adapters
from tests.reference import mixture_ref
from tests.reference.mixture_ref import balance, mixture_linear

EXPERTS = ["lora", "dora", "quantum"]


def _one_layer(**kw):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(24, 16))
    lf.attach(model, lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, targets=["proj"], **kw))
    perturb_adapters(model, std=0.3)
    ((_, layer),) = adapted_layers(model)
    return model, layer, layer.adapters["default"]


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"router": "sequence"},
        {"top_k": 1},
        {"top_k": 2, "renormalize": True},
        {"router": "sequence", "top_k": 2},
    ],
)
def test_matches_naive_reference(kw):
    model, layer, mix = _one_layer(**kw)
    x = torch.randn(2, 5, 24)
    deltas = [ex.delta_weight(layer.base_layer).double() for ex in mix.experts]
    base = layer.base_layer
    ref = mixture_linear(
        x.double(), base.weight.double(), base.bias.double(), deltas,
        mix.router_weight.double(), mix.router_bias.double(), kw.get("router", "token"),
        kw.get("top_k"), kw.get("renormalize", False),
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(model(x).double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("router", ["token", "sequence"])
@pytest.mark.parametrize("expert", [0, 1, 2])
def test_router_forced_one_hot_equals_that_single_expert(router, expert):
    model = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, router=router))
    perturb_adapters(model)
    single = lf.attach(lf.tiny_llama(), lf.MEMBERS[EXPERTS[expert]].make_config(rank=4, alpha=8))
    with torch.no_grad():
        for (_, layer), (_, other) in zip(adapted_layers(model), adapted_layers(single)):
            mix = layer.adapters["default"]
            mix.router_weight.zero_()
            mix.router_bias.fill_(float("-inf"))
            mix.router_bias[expert] = 0.0
            other.adapters["default"].load_state_dict(mix.experts[expert].state_dict())
    x = torch.randint(3, 256, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, single(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("router", ["token", "sequence"])
def test_gradients_reach_the_router(router):
    model = lf.attach(lf.tiny_gpt2(), lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, router=router, top_k=2))
    perturb_adapters(model)
    x = torch.randint(3, 256, (2, 10))
    model(x, labels=x).loss.backward()
    for _, layer in adapted_layers(model):
        mix = layer.adapters["default"]
        assert mix.router_weight.grad is not None and mix.router_weight.grad.abs().sum() > 0
        assert mix.router_bias.grad.abs().sum() > 0


def test_sequence_gates_constant_over_the_sequence_and_ignore_padding():
    model = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, router="sequence"))
    perturb_adapters(model, std=0.5)
    mixes = [layer.adapters["default"] for _, layer in adapted_layers(model)]
    x = torch.randint(3, 256, (2, 9))
    with torch.no_grad():
        model(x)
    gates = [m.last_gates.clone() for m in mixes]
    assert all(g.shape == (2, 3) for g in gates)  # one gate vector per sequence, not per token
    assert (gates[0][0] - gates[0][1]).abs().max() > 1e-4  # different sequences route differently
    # left padding + attention mask: the same sequence gets the same gates
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), x], dim=1)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 9, dtype=torch.long)], dim=1)
    pos = (mask.cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        model(padded, attention_mask=mask, position_ids=pos)
    for m, g in zip(mixes, gates):
        torch.testing.assert_close(m.last_gates, g, atol=1e-5, rtol=1e-5)


def test_sequence_gates_fixed_by_the_prompt_during_cached_generation():
    model = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, router="sequence"))
    perturb_adapters(model, std=0.5)
    mix = next(layer.adapters["default"] for _, layer in adapted_layers(model))
    seen: list[torch.Tensor] = []
    layer = next(layer for _, layer in adapted_layers(model))
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(mix.last_gates.clone()))
    prompt = torch.randint(3, 256, (1, 7))
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    handle.remove()
    assert out.shape[1] == 12 and len(seen) == 5  # prefill + 4 decode steps
    for g in seen[1:]:
        torch.testing.assert_close(g, seen[0], atol=0, rtol=0)
    # the rule is "fixed by the prompt": re-reading the whole generated text (no cache) routes differently
    with torch.no_grad():
        model(out)
    assert (mix.last_gates - seen[0]).abs().max() > 1e-6


def test_manifest_save_load_identical_with_router_stats(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, top_k=2))
    perturb_adapters(model)
    model.train()
    x = torch.randint(3, 256, (2, 10))
    inputs: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda mod, args, p=path: inputs.__setitem__(p, args[0].detach()))
        for path, layer in adapted_layers(model)
    ]
    model(x, labels=x).loss.backward()  # one training forward: router statistics accumulate
    for h in hooks:
        h.remove()
    model.eval()
    stats = lf.router_stats(model)
    # each layer's statistic is the mean top-2 gate over the 20 tokens, from the naive reference router
    assert sorted(stats) == sorted(inputs)
    for path, layer in adapted_layers(model):
        mix = layer.adapters["default"]
        u = inputs[path].reshape(-1, inputs[path].shape[-1]).float()
        _, ref_gates = mixture_ref.gates(u, mix.router_weight.float(), mix.router_bias.float(), top_k=2)
        torch.testing.assert_close(torch.tensor(stats[path]), ref_gates.mean(0), atol=1e-6, rtol=1e-5)
        assert sum(stats[path]) < 1 - 1e-3  # top-2 of 3 without renormalising: the third share is missing
    with torch.no_grad():
        expected = model(x).logits
    lf.save_adapter(model, tmp_path / "mix")
    manifest = json.loads((tmp_path / "mix" / "adapter_config.json").read_text())
    assert manifest["peft_type"] == "LORAFAM_MIXTURE"
    assert [e["method"] for e in manifest["lorafam_config"]["experts"]] == EXPERTS
    loaded = lf.load_adapter(lf.tiny_llama(), tmp_path / "mix")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected, atol=0, rtol=0)
    assert lf.router_stats(loaded) == stats


def test_balance_loss_collected_and_router_stats_logged():
    model = lf.attach(lf.tiny_gpt2(), lf.MixtureConfig(experts=EXPERTS, rank=4, alpha=8, balance_loss_weight=0.5))
    perturb_adapters(model)
    model.train()
    (cb,) = callbacks_for(model, total_steps=10)
    x = torch.randint(3, 256, (2, 10))
    probs = {}
    mixes = [layer.adapters["default"] for _, layer in adapted_layers(model)]
    handles = [
        layer.register_forward_pre_hook(lambda mod, args, i=i: probs.__setitem__(i, args[0].detach()))
        for i, (_, layer) in enumerate(adapted_layers(model))
    ]
    loss = model(x, labels=x).loss
    for h in handles:
        h.remove()
    extra = cb.extra_loss(model)
    expected = []
    for i, mix in enumerate(mixes):
        u = probs[i].reshape(-1, probs[i].shape[-1]).double()
        p = torch.softmax(u @ mix.router_weight.double().T + mix.router_bias.double(), dim=-1)
        expected.append(balance(p))
    torch.testing.assert_close(extra.double(), 0.5 * torch.stack(expected).mean(), atol=1e-6, rtol=1e-5)
    (loss + extra).backward()
    assert all(m.router_weight.grad.abs().sum() > 0 for m in mixes)
    assert cb.extra_loss(model) is None  # consumed: no double counting
    logs = cb.logs()
    overall = [logs[f"router/default/e{i}_{m}"] for i, m in enumerate(EXPERTS)]
    assert abs(sum(overall) - 1.0) < 1e-6
    assert "router/default/L00/e0" in logs and "router/default/L01/e2" in logs
    assert cb.logs().keys() == {"router/default/balance"}  # window reset after logging


def test_bad_input_names_the_key():
    with pytest.raises(ValueError, match=r"experts\[1\]\.targets"):
        lf.MixtureConfig(experts=[lf.LoraConfig(targets=["q_proj"]), lf.DoraConfig(targets=["v_proj"])], rank=4)
    with pytest.raises(ValueError, match=r"experts\[0\]\.targets"):
        lf.MixtureConfig(experts=[lf.LoraConfig(targets=["q_proj"]), "dora"], targets=["v_proj"])
    with pytest.raises(ValueError, match=r"experts\[1\].*unknown member 'dorra'.*Did you mean 'dora'"):
        lf.MixtureConfig(experts=["lora", "dorra"])
    with pytest.raises(ValueError, match=r"experts\[0\]: 'alora' cannot be a mixture expert"):
        lf.MixtureConfig(experts=[{"member": "alora", "invocation_tokens": [5]}, "lora"])
    with pytest.raises(ValueError, match=r"'mixture' cannot be a mixture expert"):
        lf.MixtureConfig(experts=[{"member": "mopeft"}, "lora"])
    with pytest.raises(ValueError, match="'top_k'"):
        lf.MixtureConfig(experts=["lora", "dora"], top_k=3)
    with pytest.raises(ValueError, match="'router'"):
        lf.MixtureConfig(experts=["lora"], router="layer")
    with pytest.raises(ValueError, match=r"experts\[2\].*'rank' \(K=100\)"):
        lf.attach(lf.tiny_gpt2(), lf.MixtureConfig(experts=["lora", "dora", {"member": "quantum", "rank": 100}]))


def test_yaml_style_dict_experts_and_round_trip_of_the_config():
    cfg = lf.MEMBERS["mopeft"].make_config(rank=4, alpha=8, experts=["lora", {"member": "quantum", "layers": 2}])
    assert cfg.experts[1].layers == 2 and cfg.experts[1].rank == 4
    again = lf.MixtureConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
