"""aLoRA: config rules, bad input, PEFT cross-loading both ways, generation parity with PEFT."""

from __future__ import annotations

import warnings

import pytest
import torch

import lorafam as lf
from lorafam.methods.alora import activation_states, last_occurrence
from tests.conftest import perturb_adapters

peft = pytest.importorskip("peft")

INV = [7, 9]
MODELS = {
    "llama": (lf.tiny_llama, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gpt2": (lf.tiny_gpt2, ["c_attn", "c_proj", "c_fc"]),
}


def _batch() -> torch.Tensor:
    x = torch.randint(10, 256, (4, 18), generator=torch.Generator().manual_seed(2))
    x[0, 3:5] = torch.tensor(INV)
    x[0, 11:13] = torch.tensor(INV)
    x[2, 0:2] = torch.tensor(INV)
    x[3, 16:18] = torch.tensor(INV)
    return x


def _peft_model(make, targets):
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
        alora_invocation_tokens=INV,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(make(), cfg).eval()


# ---------------------------------------------------------------------------------------------------------------
class GreedyTokenizer:
    """A toy tokenizer: longest match over a few multi-character pieces, else one id per character.

    ".Q" and ":T" are pieces, so "Q:" merges with a preceding "." or a following "T" — the in-context problem.
    """

    pieces = ["<|im_start|>", ".Q", ":T", "assistant"]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            for j, piece in enumerate(self.pieces):
                if text.startswith(piece, i):
                    ids.append(1000 + j)
                    i += len(piece)
                    break
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids


def test_resolve_string_rule():
    tok = GreedyTokenizer()
    cfg = lf.ALoraConfig(invocation_string="<|im_start|>assistant\n").resolve(tok)
    assert cfg.invocation_tokens == [1000, 1003, 10]
    assert lf.ALoraConfig.from_string("<|im_start|>assistant\n", tok).invocation_tokens == [1000, 1003, 10]
    with pytest.raises(ValueError, match="invocation_string='Q:' tokenises differently in context"):
        lf.ALoraConfig(invocation_string="Q:").resolve(tok)
    # the caller may accept the risk explicitly
    assert lf.ALoraConfig(invocation_string="Q:").resolve(tok, check_context=False).invocation_tokens == [81, 58]
    with pytest.raises(ValueError, match="invocation_tokens=\\[1\\] but invocation_string"):
        lf.ALoraConfig(invocation_string="<|im_start|>", invocation_tokens=[1]).resolve(tok)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "set 'invocation_tokens'"),
        ({"invocation_tokens": [-1]}, "'invocation_tokens' must be a list of non-negative"),
        ({"invocation_tokens": "7 9"}, "'invocation_tokens' must be a list"),
        ({"invocation_string": ""}, "'invocation_string' must be a non-empty string"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lf.ALoraConfig(**kwargs)


def test_bad_attach_and_merge():
    with pytest.raises(ValueError, match="call config.resolve\\(tokenizer\\)"):
        lf.attach(lf.tiny_llama(), lf.ALoraConfig(invocation_string="<|im_start|>"))
    with pytest.raises(ValueError, match="outside the model's vocabulary \\(size 256\\)"):
        lf.attach(lf.tiny_llama(), lf.ALoraConfig(invocation_tokens=[5, 300]))
    model = lf.attach(lf.tiny_llama(), lf.ALoraConfig(invocation_tokens=INV))
    with pytest.raises(NotImplementedError, match="cannot be merged: aLoRA adapts only the tokens from the invo"):
        lf.merge(model)
    with pytest.raises(NotImplementedError, match="cannot be merged"):
        lf.merge_and_unload(model)


def test_unload_removes_the_hook_and_config_round_trips():
    model = lf.tiny_llama()
    n_hooks = len(model.model._forward_pre_hooks)
    cfg = lf.ALoraConfig(invocation_tokens=INV, invocation_string="x", rank=4)
    lf.attach(model, cfg)
    assert len(model.model._forward_pre_hooks) == n_hooks + 1 and "default" in activation_states(model)
    lf.unload(model)
    assert len(model.model._forward_pre_hooks) == n_hooks and activation_states(model) == {}
    assert lf.ALoraConfig.from_dict(cfg.to_dict()) == cfg


def test_inputs_embeds_only_runs_as_base_with_a_warning():
    model = lf.attach(lf.tiny_llama(), lf.ALoraConfig(invocation_tokens=INV))
    perturb_adapters(model, std=0.2)
    x = _batch()
    emb = model.get_input_embeddings()(x)
    with pytest.warns(UserWarning, match="no input_ids"):
        got = model(inputs_embeds=emb).logits
    with lf.disabled(model):
        torch.testing.assert_close(got, model(x).logits, atol=0, rtol=0)


def test_contract_invocation_occurs_in_contract_input():
    """family.py's contract_kwargs rely on the contract suite's fixed input; fail loudly if that changes."""
    from tests.contract.test_adapter_contract import _x

    inv = torch.tensor(lf.METHODS["alora"].contract_kwargs["invocation_tokens"])
    assert last_occurrence(_x(), inv).tolist()[0] >= 0, "the contract input no longer contains the invocation"


# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", list(MODELS))
def test_peft_saves_lorafam_loads(tmp_path, arch):
    make, targets = MODELS[arch]
    pm = _peft_model(make, targets)
    x = _batch()
    expected = pm(x).logits
    pm.save_pretrained(tmp_path / "peft")
    ours = lf.load_adapter(make(), tmp_path / "peft")
    assert isinstance(lf.configs(ours)["default"], lf.ALoraConfig)
    assert lf.configs(ours)["default"].invocation_tokens == INV
    torch.testing.assert_close(ours(x).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", list(MODELS))
def test_lorafam_saves_peft_loads(tmp_path, arch):
    make, targets = MODELS[arch]
    model = lf.attach(make(), lf.ALoraConfig(rank=4, alpha=8, targets=targets, invocation_tokens=INV))
    perturb_adapters(model, std=0.2)
    x = _batch()
    expected = model(x).logits
    lf.save_adapter(model, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = peft.PeftModel.from_pretrained(make(), tmp_path / "ours").eval()
    assert pm.peft_config["default"].alora_invocation_tokens == INV
    torch.testing.assert_close(pm(x).logits, expected, atol=1e-5, rtol=1e-5)
    with lf.disabled(model):  # and every row really differs from the base only from t* on
        base = model(x).logits
    assert not torch.allclose(expected[0, 11:], base[0, 11:])
    torch.testing.assert_close(expected[1], base[1], atol=0, rtol=0)


def test_generation_matches_peft(tmp_path):
    make, targets = MODELS["llama"]
    pm = _peft_model(make, targets)
    pm.save_pretrained(tmp_path / "peft")
    ours = lf.load_adapter(make(), tmp_path / "peft")
    x = _batch()[:, :14]  # rows 0/2 invoked (row 0 twice), rows 1/3 not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pm.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
    got = ours.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=6, do_sample=False)
    assert torch.equal(got, want)
    for row in range(x.shape[0]):
        res = lf.generate(ours, None, x[row], adapter="default", max_new_tokens=6, eos_token_id=[])
        assert res.new_ids == want[row, 14:].tolist()
