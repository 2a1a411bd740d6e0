"""AdaLoRA: paper equations, the allocator against PEFT's RankAllocator, PEFT checkpoints both ways, bad input."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lorafam as lf
from lorafam.core.inject import adapted_layers
from lorafam.train.adalora_allocator import AdaLoraAllocator, budget_schedule
from lorafam.train.callbacks import callbacks_for
from tests.conftest import perturb_adapters
from tests.reference import adalora_ref as ref

peft = pytest.importorskip("peft")

LLAMA_T = ["q_proj", "v_proj", "down_proj"]
GPT2_T = ["c_attn", "c_fc"]
MODELS = {"llama": (lf.tiny_llama, LLAMA_T), "gpt2": (lf.tiny_gpt2, GPT2_T)}


def _x(n=12) -> torch.Tensor:
    return torch.randint(3, 256, (2, n), generator=torch.Generator().manual_seed(0))


def _one_layer(**kw):
    model = nn.Sequential()
    model.add_module("proj", nn.Linear(24, 12))
    lf.attach(model, lf.AdaLoraConfig(targets=["proj"], **kw))
    perturb_adapters(model, std=0.2)
    ((_, layer),) = adapted_layers(model)
    return model, layer, layer.adapters["default"]


# -- paper equations --------------------------------------------------------------------------------------------
def test_forward_and_merge_match_paper_equation():
    model, layer, ad = _one_layer(init_rank=5, target_rank=2, alpha=10)
    x = torch.randn(3, 4, 24)
    args = (layer.base_layer.weight, layer.base_layer.bias, ad.lora_A, ad.lora_E.view(-1), ad.lora_B, 10, 5)
    expected = ref.adalora_linear(x, *args)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    lf.merge(model)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_identity_at_init_and_orthonormal_init():
    model, layer, ad = _one_layer(init_rank=4, target_rank=2)
    with torch.no_grad():
        ad.lora_E.zero_()
        ad.reset_adapter_parameters()
    x = torch.randn(3, 24)
    torch.testing.assert_close(model(x), layer.base_layer(x))
    torch.testing.assert_close(ad.lora_A @ ad.lora_A.T, torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(ad.lora_B.T @ ad.lora_B, torch.eye(4), atol=1e-5, rtol=0)


def test_importance_scores_and_schedule_match_reference():
    torch.manual_seed(3)
    model = lf.attach(lf.tiny_llama(), lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=LLAMA_T, total_step=9))
    perturb_adapters(model)
    (cb,) = callbacks_for(model, 9)
    ads = {p: layer.adapters["default"] for p, layer in adapted_layers(model)}
    bars = {
        (p, k): (torch.zeros_like(getattr(a, k)),) * 2
        for p, a in ads.items()
        for k in ("lora_A", "lora_E", "lora_B")
    }
    for _ in range(3):
        for a in ads.values():
            for k in ("lora_A", "lora_E", "lora_B"):
                getattr(a, k).grad = torch.randn_like(getattr(a, k))
        cb.update_ipt()
        for (p, k), (bi, bu) in bars.items():
            w = getattr(ads[p], k)
            bars[(p, k)] = ref.ema_step(bi, bu, w.detach(), w.grad, 0.85, 0.85)
    for (p, k), (bi, bu) in bars.items():
        torch.testing.assert_close(cb.exp_avg_ipt[f"{p}.{k}"], bi)
        torch.testing.assert_close(cb.exp_avg_unc[f"{p}.{k}"], bu)
    ours = cb.triplet_scores()
    naive = {}
    for p in ads:
        s = {k: bars[(p, k)][0] * bars[(p, k)][1] for k in ("lora_A", "lora_E", "lora_B")}
        naive[p] = ref.triplet_score(s["lora_A"], s["lora_E"].view(-1), s["lora_B"])
        torch.testing.assert_close(ours[p], naive[p], atol=1e-7, rtol=1e-5)
    b0, bt = cb.init_bgt, cb.target_bgt
    assert (b0, bt) == (4 * len(ads), 2 * len(ads))
    for t in range(0, 12):
        assert budget_schedule(t, b0, bt, 2, 3, 9, 1)[0] == ref.budget(t, b0, bt, 2, 3, 9)
    budget = budget_schedule(4, b0, bt, 2, 3, 9, 1)[0]
    pattern = cb.mask_to_budget(budget)
    assert pattern == {f"{p}.lora_E": m for p, m in ref.keep_top(ours, budget).items()}
    assert sum(map(sum, pattern.values())) == budget
    for p, a in ads.items():  # masked triplets have λ = 0, kept ones keep their value
        keep = torch.tensor(pattern[f"{p}.lora_E"])
        assert (a.lora_E[~keep] == 0).all() and (a.lora_E[keep] != 0).all()


def test_orth_regulariser_matches_reference():
    model = lf.attach(
        lf.tiny_llama(), lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=LLAMA_T, init="gaussian")
    )
    (cb,) = callbacks_for(model, 10)
    ads = [layer.adapters["default"] for _, layer in adapted_layers(model)]
    naive = ref.orth_regulariser([a.lora_A for a in ads], [a.lora_B for a in ads])
    torch.testing.assert_close(cb.extra_loss(model), 0.5 * naive, atol=1e-6, rtol=1e-5)
    assert cb.extra_loss(model).requires_grad


# -- the allocator against PEFT's RankAllocator ----------------------------------------------------------------
def test_allocator_masks_the_same_triplets_as_peft():
    """Same weights and gradients every step through all phases (warm-up, cubic decrease every 2 steps,
    final freeze) → identical λ and identical rank patterns."""
    kw = {"tinit": 2, "tfinal": 3, "total_step": 12}
    ours = lf.attach(
        lf.tiny_llama(),
        lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=LLAMA_T, init="gaussian", delta_t=2, **kw),
    )
    perturb_adapters(ours)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = peft.AdaLoraConfig(init_r=4, target_r=2, target_modules=LLAMA_T, deltaT=2, lora_alpha=16, **kw)
        pm = peft.get_peft_model(lf.tiny_llama(), cfg)
    theirs = dict(pm.named_parameters())
    pairs = []
    for path, layer in adapted_layers(ours):
        for k in ("lora_A", "lora_E", "lora_B"):
            mine, peer = getattr(layer.adapters["default"], k), theirs[f"base_model.model.{path}.{k}.default"]
            with torch.no_grad():
                peer.copy_(mine)
            pairs.append((path, k, mine, peer))
    (cb,) = callbacks_for(ours, 12)
    patterns = []
    for step in range(1, 14):
        x = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(step))
        loss = ours(x, labels=x).loss + cb.extra_loss(ours)
        loss.backward()
        for _, _, mine, peer in pairs:
            peer.grad = mine.grad.clone()
        with torch.no_grad():  # the same plain SGD step on both sides
            for _, _, mine, peer in pairs:
                mine.sub_(1e-2 * mine.grad)
                peer.sub_(1e-2 * peer.grad)
        cb.on_optimizer_step(step, ours)
        pm.base_model.update_and_allocate(step)
        for path, k, mine, peer in pairs:
            assert torch.equal(mine, peer), f"step {step}: {path}.{k} differs from PEFT"
        peft_pattern = pm.peft_config["default"].rank_pattern
        if peft_pattern:
            got = {k.replace(".default", ""): v for k, v in peft_pattern.items()}
            assert lf.configs(ours)["default"].rank_pattern == got, f"step {step}"
            patterns.append(sum(map(sum, got.values())))
        ours.zero_grad()
        pm.zero_grad()
    assert patterns and patterns[-1] == cb.target_bgt and max(patterns) < cb.init_bgt


# -- PEFT checkpoints both ways ---------------------------------------------------------------------------------
def _peft_trained(make, targets):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, target_modules=targets, total_step=10)
        pm = peft.get_peft_model(make(), cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn_like(p) * 0.1)
    x = _x()
    pm(x, labels=x).loss.backward()
    pm.base_model.update_and_allocate(5)
    return pm.eval()


@pytest.mark.parametrize("arch", list(MODELS))
def test_peft_saves_lorafam_loads(tmp_path, arch):
    make, targets = MODELS[arch]
    pm = _peft_trained(make, targets)
    expected = pm(_x()).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(tmp_path / "peft")
    ours = lf.load_adapter(make(), tmp_path / "peft")
    torch.testing.assert_close(ours(_x()).logits, expected, atol=1e-5, rtol=1e-5)
    ranks = {p: layer.adapters["default"].rank for p, layer in adapted_layers(ours)}
    assert min(ranks.values()) < 4, "the checkpoint's rank_pattern was not applied"


@pytest.mark.parametrize("arch", list(MODELS))
def test_lorafam_saves_peft_loads(tmp_path, arch):
    make, targets = MODELS[arch]
    model = lf.attach(
        make(), lf.AdaLoraConfig(init_rank=4, target_rank=2, alpha=8, targets=targets, total_step=10)
    )
    perturb_adapters(model)
    (cb,) = callbacks_for(model, 10)
    x = _x()
    (model(x, labels=x).loss + cb.extra_loss(model)).backward()
    cb.on_optimizer_step(6, model)  # allocate mid-schedule: some triplets masked
    expected = model(x).logits
    lf.save_adapter(model, tmp_path / "ours")
    cfg = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    state = load_file(tmp_path / "ours" / "adapter_model.safetensors")
    assert cfg["peft_type"] == "ADALORA" and cfg["init_r"] == 4 and "r" not in cfg
    assert not any("ranknum" in k for k in state)
    for key, mask in cfg["rank_pattern"].items():
        assert state[f"base_model.model.{key}"].shape == (sum(mask), 1)
    assert sum(sum(m) for m in cfg["rank_pattern"].values()) < 4 * len(cfg["rank_pattern"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    torch.testing.assert_close(pm(x).logits, expected, atol=1e-5, rtol=1e-5)
    again = lf.load_adapter(make(), tmp_path / "ours")
    torch.testing.assert_close(again(x).logits, expected, atol=1e-6, rtol=1e-6)


def test_ranknum_accepted_on_read(tmp_path):
    pm = _peft_trained(*MODELS["llama"])
    expected = pm(_x()).logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(tmp_path / "p")
    f = tmp_path / "p" / "adapter_model.safetensors"
    state = load_file(f)
    for key in [k for k in state if k.endswith(".lora_E")]:
        state[key.replace(".lora_E", ".ranknum")] = torch.tensor([4.0])
    save_file(state, f)
    ours = lf.load_adapter(lf.tiny_llama(), tmp_path / "p")
    torch.testing.assert_close(ours(_x()).logits, expected, atol=1e-5, rtol=1e-5)


def test_rank_pattern_disagreeing_with_tensors_is_named(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=["q_proj"]))
    lf.save_adapter(model, tmp_path / "a")
    cfg_file = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["rank_pattern"] = {"model.layers.0.self_attn.q_proj.lora_E": [True, False, False, False]}
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.q_proj\.lora_E has rank 4"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "a")


# -- the callback in a training loop ----------------------------------------------------------------------------
def test_callback_in_a_plain_loop_reaches_target_budget_and_resumes():
    model = lf.attach(lf.tiny_llama(), lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=LLAMA_T, tfinal=2))
    cbs = callbacks_for(model, 8)  # total_step comes from the trainer's count
    assert len(cbs) == 1 and isinstance(cbs[0], AdaLoraAllocator)
    cb = cbs[0]
    cb.on_train_begin(model, 8)
    opt = lf.make_optimizer(model, lr=1e-2)
    for step in range(1, 9):
        x = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(step))
        (model(x, labels=x).loss + cb.extra_loss(model)).backward()
        opt.step()
        cb.on_optimizer_step(step, model)
        opt.zero_grad()
        if step == 4:
            saved = cb.state_dict()
    logs = cb.logs()
    assert logs["adalora_ranks"] == logs["adalora_budget"] == 2 * 6 and logs["adalora_orth_reg"] > 0
    for _, layer in adapted_layers(model):
        ad = layer.adapters["default"]
        assert (ad.lora_E[~ad.kept] == 0).all()
    fresh = AdaLoraAllocator(model, lf.configs(model)["default"], "default", 8)
    fresh.load_state_dict(saved)
    assert fresh.exp_avg_ipt.keys() == saved["exp_avg_ipt"].keys() and fresh.budget == saved["budget"]


def test_checkpoint_resume_is_exact(tmp_path):
    """A trainer checkpoint holds the sliced adapter + the callback state; restoring both (in the trainer's
    order: adapter first, then callbacks) gives back every tensor, masked triplets included."""
    from lorafam.core.checkpoint import load_adapter_state, read_adapter_weights

    def build():
        torch.manual_seed(0)
        cfg = lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=LLAMA_T, tfinal=2)
        return lf.attach(lf.tiny_llama(), cfg)

    model = build()
    (cb,) = callbacks_for(model, 10)
    opt = lf.make_optimizer(model, lr=1e-2)
    for step in range(1, 6):
        x = torch.randint(3, 256, (2, 10), generator=torch.Generator().manual_seed(step))
        (model(x, labels=x).loss + cb.extra_loss(model)).backward()
        opt.step()
        cb.on_optimizer_step(step, model)
        opt.zero_grad()
    lf.save_adapter(model, tmp_path / "ckpt")
    cb_state = cb.state_dict()
    assert any(a.kept is not None and not a.kept.all() for _, a in cb.slots), "nothing was masked"
    fresh = build()
    state = read_adapter_weights(tmp_path / "ckpt")
    load_adapter_state(fresh, state, "default", source="ckpt")  # sliced tensors into full-rank modules
    x = _x()
    torch.testing.assert_close(fresh(x).logits, model(x).logits, atol=1e-6, rtol=1e-6)
    (cb2,) = callbacks_for(fresh, 10)
    cb2.load_state_dict(cb_state)
    for (k, p), (_, q) in zip(cb._params(), cb2._params()):
        assert torch.equal(p, q), k
    assert [a.kept.tolist() for _, a in cb.slots] == [a.kept.tolist() for _, a in cb2.slots]


def test_inference_only_adapter_gets_no_callback(tmp_path):
    cfg = lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=["q_proj"], total_step=10)
    model = lf.attach(lf.tiny_llama(), cfg)
    lf.save_adapter(model, tmp_path / "a")
    loaded = lf.load_adapter(lf.tiny_llama(), tmp_path / "a")
    lf.core.inject.mark_trainable(loaded, [])  # nothing trains
    assert callbacks_for(loaded, 10) == []
    with torch.no_grad():
        loaded.model.layers[0].self_attn.q_proj.adapters["default"].lora_E.fill_(1.0)
    cb = AdaLoraAllocator(loaded, lf.configs(loaded)["default"], "default", 10)
    cb.on_optimizer_step(10, loaded)  # no gradients anywhere: the allocator leaves λ alone
    assert (loaded.model.layers[0].self_attn.q_proj.adapters["default"].lora_E == 1).all()


def test_qadalora_runs_on_an_nf4_base():
    pytest.importorskip("lorafam.quant.nf4")
    model = lf.attach(
        lf.tiny_llama(), lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=LLAMA_T, quantize="nf4")
    )
    perturb_adapters(model)
    x = _x()
    model(x, labels=x).loss.backward()
    assert all(layer.adapters["default"].lora_E.grad is not None for _, layer in adapted_layers(model))


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, match",
    [
        (
            {"tinit": 5, "tfinal": 5, "total_step": 10},
            r"'tinit' \(5\) \+ 'tfinal' \(5\) must be < 'total_step' \(10\)",
        ),
        ({"init_rank": 4, "target_rank": 8}, r"'target_rank' \(8\) must be <= 'init_rank' \(4\)"),
        ({"beta1": 1.0}, r"'beta1' must be in \(0, 1\)"),
        ({"orth_reg_weight": -1.0}, r"'orth_reg_weight' must be >= 0"),
        ({"delta_t": 0}, r"'delta_t' must be a positive integer"),
        ({"init": "kaiming"}, r"'init' must be 'orthonormal' or 'gaussian'"),
    ],
)
def test_bad_config_is_named(kw, match):
    with pytest.raises(ValueError, match=match):
        lf.AdaLoraConfig(**kw)


def test_rank_mirrors_init_rank_and_unknown_key_is_named():
    assert lf.AdaLoraConfig(rank=6).init_rank == 6 and lf.AdaLoraConfig(init_rank=6).rank == 6
    assert lf.AdaLoraConfig().rank == 12 and lf.AdaLoraConfig(rank=8, init_rank=6).rank == 6
    with pytest.raises(ValueError, match=r"unknown key 'init_r'.*Did you mean 'init_rank'"):
        lf.AdaLoraConfig.from_dict({"init_r": 4})


def test_total_step_must_be_known_and_valid_before_allocation():
    model = lf.attach(lf.tiny_llama(), lf.AdaLoraConfig(init_rank=4, target_rank=2, targets=["q_proj"], tinit=5))
    cb = AdaLoraAllocator(model, lf.configs(model)["default"])
    with pytest.raises(ValueError, match="'total_step' is unknown"):
        cb.on_optimizer_step(1, model)
    with pytest.raises(ValueError, match=r"'tinit' \(5\) \+ 'tfinal' \(0\) must be < 'total_step' \(5\)"):
        callbacks_for(model, 5)
