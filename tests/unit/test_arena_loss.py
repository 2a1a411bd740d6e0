"""The arena's answer-only loss (output head on labelled positions only) equals the model's own full loss."""

from __future__ import annotations

import pytest
import torch

import lorafam as lf
from lorafam.arena.harness import answer_loss


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 250, (3, 16), generator=g)
    labels = torch.full_like(ids, -100)
    labels[0, 10:14] = ids[0, 10:14]  # answers at different places per row, as with real prompts
    labels[1, 5:16] = ids[1, 5:16]
    labels[2, 12:15] = ids[2, 12:15]
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0  # right padding
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _check(model: torch.nn.Module) -> None:
    batch = _batch()
    full = model(**batch).loss
    ours = answer_loss(model, batch)
    assert torch.allclose(ours, full, atol=1e-5), (float(ours), float(full))
    ours.backward()  # and it trains: gradients reach the trainable parameters
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("make", [lf.tiny_llama, lf.tiny_gpt2])
def test_equals_the_full_loss_on_lorafam_adapters(make) -> None:
    torch.manual_seed(0)
    _check(lf.attach(make(), lf.LoraConfig(rank=4, targets="all-linear", init="gaussian")))


def test_equals_the_full_loss_through_peft_and_for_alora() -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    _check(peft.get_peft_model(lf.tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"])))
    ids = _batch()["input_ids"]
    cfg = lf.ALoraConfig(rank=4, targets="all-linear", invocation_tokens=[int(ids[0, 8]), int(ids[0, 9])])
    _check(lf.attach(lf.tiny_llama(), cfg))


def test_full_fine_tuning_gets_head_gradients() -> None:
    model = lf.tiny_llama()
    for p in model.parameters():
        p.requires_grad_(True)
    _check(model)
