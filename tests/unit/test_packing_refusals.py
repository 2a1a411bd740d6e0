"""``packing: true`` with aLoRA or a sequence-routed mixture is refused with the reason (issue 10, defect 6).

Packed rows hold several samples; aLoRA activates from the last invocation in the row and a sequence router pools
the whole row, so only the last sample was adapted (aLoRA) or all samples shared one gate (mixture), silently.
"""

from __future__ import annotations

import pytest

import lorafam as lf
from lorafam.train.config import make_config
from lorafam.train.trainer import TrainingError, train
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    return root, make_tiny_model_dir(root), write_jsonl(root / "data.jsonl", reverse_records(16))


@pytest.mark.parametrize(
    ("method", "args", "why"),
    [
        ("alora", {"invocation_tokens": [28, 29]}, "only the last sample"),
        ("mopeft", {"experts": ["lora", "dora"], "router": "sequence"}, "share one routing decision"),
    ],
)
def test_trainer_refuses_packing_for_sequence_level_members(setup, method, args, why):
    root, model_dir, data = setup
    cfg = base_config(model_dir, data, root / method, max_steps=1, packing=True, method=method, method_args=args)
    with pytest.raises(TrainingError, match=rf"packing: true cannot be used with adapter 'default' .*{why}"):
        train(make_config(cfg))


def test_token_router_and_lora_may_pack():
    from lorafam.data.dataset import check_packing

    model = lf.tiny_llama()
    lf.attach(model, lf.LoraConfig(rank=2, targets=["q_proj"]), name="a")
    lf.attach(model, lf.MixtureConfig(experts=["lora", "dora"], rank=2, targets=["v_proj"]), name="m")
    check_packing(lf.configs(model))  # nothing raised
