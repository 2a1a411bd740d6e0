"""aLoRA on the real SmolLM2-135M-Instruct: the ChatML invocation, PEFT parity both ways, base-cache reuse."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import lorafam as lf
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.slow

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _chat(tok, turns: int = 3) -> str:
    messages = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"Question {i}: name a colour and a fruit."})
        messages.append({"role": "assistant", "content": f"Answer {i}: blue and a pear."})
    return tok.apply_chat_template(messages, tokenize=False)


def test_chatml_invocation_resolves_and_a_space_ending_one_is_refused(smollm2):
    _, tok = smollm2
    cfg = lf.ALoraConfig.from_string("<|im_start|>assistant\n", tok)
    assert cfg.invocation_tokens == tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    with pytest.raises(ValueError, match="invocation_string='Answer: ' tokenises differently in context"):
        lf.ALoraConfig.from_string("Answer: ", tok)


def test_peft_parity_and_cache_reuse_on_smollm2(smollm2, tmp_path):
    _, tok = smollm2
    inv = lf.ALoraConfig.from_string("<|im_start|>assistant\n", tok).invocation_tokens
    model = lf.attach(lf.load_model(), lf.ALoraConfig(rank=8, alpha=16, targets=TARGETS, invocation_tokens=inv))
    perturb_adapters(model, std=0.02)
    history = tok(_chat(tok), return_tensors="pt", add_special_tokens=False).input_ids
    full = torch.cat([history, torch.tensor([inv])], dim=1)
    lf.save_adapter(model, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(lf.load_model(), tmp_path / "ours").eval()
    with torch.no_grad():
        ours_logits = model(full).logits
        torch.testing.assert_close(pm(full).logits, ours_logits, atol=1e-4, rtol=1e-4)
    # PEFT's documented reuse recipe vs our engine: same greedy continuation, and both equal the no-cache path
    with torch.no_grad(), pm.disable_adapter():
        kv = pm(input_ids=history, use_cache=True).past_key_values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pm.generate(
            input_ids=full,
            attention_mask=torch.ones_like(full),
            past_key_values=copy.deepcopy(kv),
            max_new_tokens=8,
            do_sample=False,
        )[0, full.shape[1] :].tolist()
    pc = lf.PrefixCache(model, history)
    cached = lf.generate(model, tok, full, adapter="default", cache=pc, max_new_tokens=8, eos_token_id=[])
    fresh = lf.generate(model, tok, full, adapter="default", max_new_tokens=8, eos_token_id=[])
    assert cached.reused_tokens == history.shape[1]
    assert cached.new_ids == fresh.new_ids == want
    torch.testing.assert_close(cached.first_logits, ours_logits[0, -1], atol=1e-4, rtol=1e-4)
    # PEFT wrote it, we load it: identical logits
    pm.save_pretrained(tmp_path / "peft")
    again = lf.load_adapter(lf.load_model(), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(again(full).logits, ours_logits, atol=1e-5, rtol=1e-5)
