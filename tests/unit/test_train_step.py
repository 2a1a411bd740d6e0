"""The one optimizer step (lorafam.train.step): hook order, accumulation, clipping, non-finite stop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lorafam.train.callbacks import Callback
from lorafam.train.step import optimizer_step


class _Events(Callback):
    name = "events"

    def __init__(self, log: list[str], model: nn.Module) -> None:
        self.log, self.model = log, model

    def extra_loss(self, model):
        self.log.append("extra_loss")
        return (model.weight**2).sum() * 0.0 + 1.0

    def on_after_backward(self, step, model):
        assert model.weight.grad is not None
        self.log.append(f"after_backward:{step}")

    def on_optimizer_step(self, step, model):
        assert model.weight.grad is not None  # gradients are still there (AdaLoRA needs them)
        self.log.append(f"optimizer_step:{step}")


class _Sched:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def get_last_lr(self):
        return [0.5]

    def step(self):
        self.log.append("scheduler")


class _Opt(torch.optim.SGD):
    def __init__(self, params, log):
        super().__init__(params, lr=0.1)
        self.log = log

    def step(self, closure=None):
        self.log.append("optimizer")
        return super().step(closure)

    def zero_grad(self, set_to_none: bool = True):
        self.log.append("zero_grad")
        super().zero_grad(set_to_none=set_to_none)


def _setup():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    log: list[str] = []
    return model, log, _Opt(model.parameters(), log)


def test_hooks_run_in_the_written_order():
    model, log, opt = _setup()
    batches = [torch.randn(2, 3), torch.randn(2, 3)]

    def loss_fn(x):
        log.append("forward")
        out = model(x).pow(2).sum()
        return out, out

    res = optimizer_step(3, model, opt, batches, loss_fn, [_Events(log, model)], scheduler=_Sched(log))
    assert log == [
        "forward", "extra_loss", "forward", "extra_loss",
        "after_backward:3", "optimizer", "optimizer_step:3", "scheduler", "zero_grad",
    ]  # fmt: skip
    assert res.lr == 0.5 and res.extra == pytest.approx(1.0)  # extra 1.0 per micro-batch, averaged over 2
    assert model.weight.grad is None


def test_accumulated_gradient_equals_one_big_batch_and_clip_reports_the_norm():
    model, _, opt = _setup()
    x = torch.randn(4, 3)
    ref = nn.Linear(3, 1, bias=False)
    ref.load_state_dict(model.state_dict())
    (ref(x).pow(2).mean()).backward()
    want = ref.weight.grad.norm().item()
    res = optimizer_step(1, model, opt, [x[:2], x[2:]], lambda b: (model(b).pow(2).mean() / 2, torch.zeros(())),
                         max_grad_norm=1e9)  # fmt: skip
    assert res.grad_norm == pytest.approx(want, rel=1e-6)


def test_non_finite_loss_stops_before_the_optimizer_moves():
    model, log, opt = _setup()
    before = model.weight.detach().clone()

    def stop(what, value):
        raise RuntimeError(f"{what} is {value}")

    with pytest.raises(RuntimeError, match="loss is nan"):
        optimizer_step(1, model, opt, [torch.randn(2, 3)],
                       lambda b: (model(b).sum() * float("nan"), torch.tensor(float("nan"))), on_nonfinite=stop)  # fmt: skip
    assert "optimizer" not in log and torch.equal(model.weight, before)
