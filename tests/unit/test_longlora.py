"""LongLoRA: trains at long sequence lengths, trainable embeddings/norms saved PEFT's way, position interpolation."""

from __future__ import annotations

import warnings

import pytest
import torch

import lorafam as lf
from lorafam.core.inject import named_adapter_params
from lorafam.methods.longlora import apply_position_interpolation, embedding_and_norm_params


def test_tiny_llama_trains_at_seq_1024():
    model = lf.attach(lf.tiny_llama(), lf.LongLoraConfig(rank=8)).train()
    opt = lf.make_optimizer(model, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    period = torch.randint(3, 256, (1, 16), generator=g)
    x = period.repeat(1, 64)  # 1024 tokens of a repeating pattern: learnable only by looking back
    losses = []
    for _ in range(8):
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses
    # the embedding and the norms trained too (the paper's "LoRA+")
    assert model.model.embed_tokens.weight.requires_grad and model.model.norm.weight.requires_grad


def test_embeddings_and_norms_are_chosen_by_module_type():
    keys = set(embedding_and_norm_params(lf.tiny_llama()))
    assert "model.embed_tokens.weight" in keys and "model.norm.weight" in keys
    assert "model.layers.0.input_layernorm.weight" in keys and "lm_head.weight" not in keys
    gpt_keys = set(embedding_and_norm_params(lf.tiny_gpt2()))
    assert {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.bias"} <= gpt_keys
    model = lf.attach(lf.tiny_llama(), lf.LongLoraConfig(rank=4, trainable_embeddings_and_norms=False))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{q.split('.adapters.')[0]}.adapters.{q.split('.adapters.')[1]}" for q, *_ in
                         named_adapter_params(model)}  # fmt: skip


def _trained(tmp_path):
    model = lf.attach(lf.tiny_llama(), lf.LongLoraConfig(rank=4)).train()
    opt = lf.make_optimizer(model, lr=1e-2)
    x = torch.randint(3, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        model(x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    lf.save_adapter(model, tmp_path / "ll")
    return model, x


def test_save_load_restores_embeddings_norms_and_config(tmp_path):
    model, x = _trained(tmp_path)
    with torch.no_grad():
        expected = model(x).logits
        assert (expected - lf.tiny_llama()(x).logits).abs().max() > 1e-3
    loaded = lf.load_adapter(lf.tiny_llama(), tmp_path / "ll")
    cfg = lf.configs(loaded)["default"]
    assert isinstance(cfg, lf.LongLoraConfig) and cfg.group_size_ratio == 0.25
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, expected, atol=1e-6, rtol=1e-6)


def test_peft_loads_our_longlora_file_as_lora_with_modules_to_save(tmp_path):
    peft = pytest.importorskip("peft")
    model, x = _trained(tmp_path)
    import json

    saved = json.loads((tmp_path / "ll" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA" and "embed_tokens" in saved["modules_to_save"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(lf.tiny_llama(), tmp_path / "ll").eval()
    with torch.no_grad():  # inference uses full attention, so PEFT reproduces the outputs exactly
        torch.testing.assert_close(pm(x).logits, model(x).logits, atol=1e-5, rtol=1e-5)


def test_position_interpolation_is_linear_rope_scaling():
    from transformers import LlamaForCausalLM

    model = lf.tiny_llama()  # max_position_embeddings 2048
    factor = apply_position_interpolation(model, 5000)
    assert factor == 3.0 and model.config.rope_parameters["rope_type"] == "linear"
    cfg = lf.tiny_llama().config
    cfg.rope_parameters = {**cfg.rope_parameters, "rope_type": "linear", "factor": 3.0}
    torch.manual_seed(0)
    fresh = LlamaForCausalLM(cfg).eval()
    fresh.load_state_dict(model.state_dict())
    x = torch.randint(3, 256, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, fresh(x).logits, atol=1e-5, rtol=1e-5)
        assert (model(x).logits - lf.tiny_llama()(x).logits).abs().max() > 1e-4
    assert apply_position_interpolation(lf.tiny_llama(), 1024) == 1.0  # within the trained context: no-op


def test_longlora_attach_with_target_context_and_errors():
    model = lf.attach(lf.tiny_llama(), lf.LongLoraConfig(rank=4, target_context=4096))
    assert model.config.rope_parameters["factor"] == 2.0
    with pytest.raises(ValueError, match="rotary"):
        lf.attach(lf.tiny_gpt2(), lf.LongLoraConfig(rank=4, targets=["c_attn"], target_context=4096))
    with pytest.raises(ValueError, match="target_context"):
        lf.LongLoraConfig(target_context=0)
