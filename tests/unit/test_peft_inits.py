"""PEFT files whose ``init_lora_weights`` rewrites the base (PiSSA, OLoRA: reproduced exactly; CorDA, LoftQ, fast
PiSSA: refused with the reason and the conversion), and the audit of every other PEFT config key lorafam does
not implement (issue 10, defect 1). PEFT rewrites the base on *load* for these inits, so a file loaded as plain
LoRA gave logits 0.3 off PEFT's.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import lorafam as lf
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")

X = torch.randint(3, 256, (2, 12), generator=torch.Generator().manual_seed(0))
TARGETS = ["q_proj", "v_proj", "down_proj"]


def _logits(model):
    with torch.no_grad():
        return model(X).logits


def _peft_trained(init, use_dora=False, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(
            lf.tiny_llama(),
            peft.LoraConfig(
                r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init, use_dora=use_dora, **kw
            ),
        ).eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # "training": move A, B (and m) away from their init
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return pm


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_peft_pissa_olora_files_load_exactly(tmp_path, init, use_dora):
    pm = _peft_trained(init, use_dora)
    expected = _logits(pm)
    pm.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "adapter_config.json").read_text())["init_lora_weights"] == init
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = peft.PeftModel.from_pretrained(lf.tiny_llama(), tmp_path / "p").eval()
    torch.testing.assert_close(_logits(again), expected, atol=1e-5, rtol=1e-5)  # PEFT reproduces itself
    ours = lf.load_adapter(lf.tiny_llama(), tmp_path / "p")
    assert lf.configs(ours)["default"].init == init
    torch.testing.assert_close(_logits(ours), expected, atol=1e-5, rtol=1e-5)
    plain = lf.tiny_llama()  # the old behaviour: the same tensors on the untouched base are far off
    lf.attach(plain, lf.LoraConfig(rank=4, alpha=8, targets=TARGETS))
    assert (_logits(plain) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("init", ["pissa", "olora"])
def test_our_pissa_olora_init_equals_peft_and_loads_in_peft(tmp_path, init):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.get_peft_model(
            lf.tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=init)
        ).eval()
    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, alpha=8, targets=TARGETS, init=init))
    for name, p in pm.base_model.model.named_parameters():  # A, B and the residual base, tensor by tensor
        ours = name.replace(".lora_A.default.weight", ".adapters.default.lora_A")
        ours = ours.replace(".lora_B.default.weight", ".adapters.default.lora_B")
        ours = ours.replace(".base_layer.weight", ".base_layer.weight")
        torch.testing.assert_close(model.get_parameter(ours), p, atol=0, rtol=0, msg=name)
    torch.testing.assert_close(_logits(model), _logits(lf.tiny_llama()), atol=1e-4, rtol=1e-4)  # ≈ identity
    perturb_adapters(model)
    lf.save_adapter(model, tmp_path / "o")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = peft.PeftModel.from_pretrained(lf.tiny_llama(), tmp_path / "o").eval()
    torch.testing.assert_close(_logits(back), _logits(model), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("init", "why"),
    [("corda", "calibration-data"), ("loftq", "quantisation"), ("pissa_niter_4", "randomised SVD")],
)
def test_unreproducible_inits_are_refused_with_the_conversion(tmp_path, init, why):
    lf.save_adapter(lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, targets=TARGETS)), tmp_path / "a")
    cfg_file = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["init_lora_weights"] = init
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"init_lora_weights='{init}'.*{why}.*path_initial_model_for_weight"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "a")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("layer_replication", [[0, 2], [1, 2]]),
        ("use_qalora", True),
        ("trainable_token_indices", [1, 2]),
        ("target_parameters", ["mlp.experts"]),
        ("bias", "all"),
        ("lora_bias", True),
        ("use_bdlora", True),
    ],
)
def test_keys_that_change_the_outputs_are_refused(tmp_path, key, value):
    lf.save_adapter(lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=4, targets=TARGETS)), tmp_path / "a")
    cfg_file = tmp_path / "a" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg[key] = value
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"{key}=.*not supported"):
        lf.load_adapter(lf.tiny_llama(), tmp_path / "a")


@pytest.mark.parametrize(
    "kw",
    [{"layers_to_transform": [1]}, {"exclude_modules": ["down_proj"]}],
    ids=["layers_to_transform", "exclude_modules"],
)
def test_peft_module_selection_keys_are_honoured(tmp_path, kw):
    pm = _peft_trained(True, **kw)
    expected = _logits(pm)
    pm.save_pretrained(tmp_path / "p")
    ours = lf.load_adapter(lf.tiny_llama(), tmp_path / "p")
    torch.testing.assert_close(_logits(ours), expected, atol=1e-5, rtol=1e-5)
