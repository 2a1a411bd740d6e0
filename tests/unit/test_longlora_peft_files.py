"""LongLoRA files in PEFT on tied-embedding models (SmolLM2-style Llama, GPT-2) and with ``target_context``
(issue 10, defect 4). The file lists the trained embeddings and norms in ``modules_to_save``; on a tied model it
also carries the head (PEFT gives each listed module its own copy, so the head would otherwise stay untrained:
0.93 off before). Position interpolation changes the base model's RoPE config, which an adapter file cannot do:
the file says so (``lorafam_base_model_changes``) and PEFT reproduces our outputs once the base has it.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import lorafam as lf
from lorafam.methods.longlora import apply_position_interpolation
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")

X = torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(0))


def _tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


BASES = {"llama-tied": (_tied_llama, ["q_proj", "k_proj", "v_proj", "o_proj"]), "gpt2": (lf.tiny_gpt2, ["c_attn"])}


def _trained(make, targets, **kw):
    model = lf.attach(make(), lf.LongLoraConfig(rank=4, alpha=8, targets=targets, **kw))
    perturb_adapters(model)
    g = torch.Generator().manual_seed(3)
    adapter_params = {id(p) for n, p in model.named_parameters() if ".adapters." in n}
    with torch.no_grad():  # "training" of the embeddings and norms (in place, as LongLoRA trains them)
        for p in model.parameters():
            if p.requires_grad and id(p) not in adapter_params:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _logits(model):
    with torch.no_grad():
        return model(X).logits


@pytest.mark.parametrize("base", list(BASES))
def test_peft_reproduces_longlora_on_a_tied_model(tmp_path, base):
    make, targets = BASES[base]
    model = _trained(make, targets)
    head = model.get_output_embeddings()
    assert head.weight is model.get_input_embeddings().weight  # the head trains with the tied embedding
    expected = _logits(model)
    lf.save_adapter(model, tmp_path / "ll")
    saved = json.loads((tmp_path / "ll" / "adapter_config.json").read_text())
    assert "lm_head" in saved["modules_to_save"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(make(), tmp_path / "ll").eval()
    torch.testing.assert_close(_logits(pm), expected, atol=1e-5, rtol=1e-5)
    again = lf.load_adapter(make(), tmp_path / "ll")  # and ours still loads it (the head key is consumed)
    torch.testing.assert_close(_logits(again), expected, atol=1e-6, rtol=1e-6)


def test_target_context_file_says_what_peft_must_add_and_then_matches(tmp_path):
    make, targets = BASES["llama-tied"]
    model = _trained(make, targets, target_context=200)  # 200 / 64 → linear RoPE factor 4
    expected = _logits(model)
    lf.save_adapter(model, tmp_path / "ll")
    saved = json.loads((tmp_path / "ll" / "adapter_config.json").read_text())
    change = saved["lorafam_base_model_changes"]
    assert change["rope_parameters"]["rope_type"] == "linear" and change["target_context"] == 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = peft.PeftModel.from_pretrained(make(), tmp_path / "ll").eval()
        assert (_logits(plain) - expected).abs().max() > 1e-3  # without the RoPE change: different outputs
        base = make()
        apply_position_interpolation(base, change["target_context"])  # what the note tells another tool to do
        pm = peft.PeftModel.from_pretrained(base, tmp_path / "ll").eval()
    torch.testing.assert_close(_logits(pm), expected, atol=1e-5, rtol=1e-5)
