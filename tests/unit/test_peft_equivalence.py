"""LoRA / rsLoRA / DoRA against Hugging Face PEFT in both directions: same checkpoint, same logits."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import lorafam as lf
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")

CASES = {
    "lora": lambda targets: lf.LoraConfig(rank=4, alpha=8, targets=targets),
    "rslora": lambda targets: lf.LoraConfig(rank=4, alpha=8, targets=targets, use_rslora=True),
    "dora": lambda targets: lf.DoraConfig(rank=4, alpha=8, targets=targets),
}
MODELS = {
    "llama": (lf.tiny_llama, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gpt2": (lf.tiny_gpt2, ["c_attn", "c_proj", "c_fc"]),
}


def _peft_config(case: str, targets: list[str]):
    return peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        use_rslora=case == "rslora",
        use_dora=case == "dora",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def _x() -> torch.Tensor:
    return torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", list(MODELS))
def test_peft_saves_lorafam_loads(tmp_path, case, arch):
    make, targets = MODELS[arch]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(make(), _peft_config(case, targets)).eval()
    _perturb_magnitude(pm)
    expected = pm(_x()).logits
    pm.save_pretrained(tmp_path / "peft")
    ours = lf.load_adapter(make(), tmp_path / "peft")
    torch.testing.assert_close(ours(_x()).logits, expected, atol=1e-5, rtol=1e-5)


def _perturb_magnitude(pm) -> None:
    """DoRA: move m away from ‖W0 + sBA‖ (its init), so the magnitude path g = m / ‖W0 + sBA‖ is not 1."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))


def test_dora_magnitude_is_not_idle_in_the_cross_load_test(tmp_path):
    """The perturbation above matters: the same PEFT DoRA file with and without it gives different logits."""
    make, targets = MODELS["llama"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(make(), _peft_config("dora", targets)).eval()
    with torch.no_grad():
        before = pm(_x()).logits
        _perturb_magnitude(pm)
        assert (pm(_x()).logits - before).abs().max() > 1e-2


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", list(MODELS))
def test_lorafam_saves_peft_loads(tmp_path, case, arch):
    make, targets = MODELS[arch]
    model = lf.attach(make(), CASES[case](targets))
    perturb_adapters(model)
    expected = model(_x()).logits
    lf.save_adapter(model, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    torch.testing.assert_close(pm(_x()).logits, expected, atol=1e-5, rtol=1e-5)
    # and back again through lorafam
    again = lf.load_adapter(make(), tmp_path / "ours")
    torch.testing.assert_close(again(_x()).logits, expected, atol=1e-6, rtol=1e-6)


def test_all_linear_matches_peft(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, alpha=8, targets="all-linear"))
    perturb_adapters(model)
    lf.save_adapter(model, tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(lf.tiny_llama(), tmp_path / "a").eval()
    torch.testing.assert_close(pm(_x()).logits, model(_x()).logits, atol=1e-5, rtol=1e-5)
    ours_keys = set(lf.core.checkpoint.adapter_state(model))
    peft_keys = set(peft.get_peft_model_state_dict(pm))
    assert ours_keys == peft_keys
    _ = copy
