"""The training loop on a tiny Llama: outputs, schedules, accumulation, resume, refusal, NaN stop, callbacks."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from lorafam.core.checkpoint import read_adapter_weights
from lorafam.train.callbacks import Callback
from lorafam.train.config import make_config
from lorafam.train.trainer import NonFiniteLossError, TrainingError, lr_lambda, train
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    model_dir = make_tiny_model_dir(root)
    data = write_jsonl(root / "data.jsonl", reverse_records(48))
    return root, model_dir, data


def run(setup, out_name, **extra):
    root, model_dir, data = setup
    return train(make_config(base_config(model_dir, data, root / out_name, **extra)))


def adapter(path) -> dict[str, torch.Tensor]:
    return read_adapter_weights(path)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_run_writes_metrics_checkpoints_adapter_and_learns(setup):
    res = run(setup, "basic", max_steps=8, save_steps=2, save_total_limit=2, val_size=8, eval_steps=4,
              plot_loss=True)  # fmt: skip
    out = setup[0] / "basic"
    assert res.steps == 8 and len(res.loss_curve) == 8
    assert res.loss_curve[-1][1] < res.loss_curve[0][1]
    assert [s for s, _ in res.eval_curve] == [4, 8]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    ck = out / "checkpoint-6"
    for f in ("adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
              "rng_state_0.pth", "trainer_state.json"):  # fmt: skip
        assert (ck / f).is_file(), f
    assert json.loads((ck / "trainer_state.json").read_text())["global_step"] == 6
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["current_steps"] for r in train_rows] == list(range(1, 9))
    assert {"lr", "grad_norm", "tokens_per_second", "remaining_time", "epoch"} <= set(train_rows[0])
    assert any("eval_ppl" in r for r in rows)
    assert (out / "metrics.csv").read_text().startswith("current_steps,")
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "run_config.yaml").is_file() and (out / "adapter_config.json").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(setup[1])


def test_adapter_loads_back_with_identical_outputs(setup):
    import lorafam as lf

    res = run(setup, "reload", max_steps=3)
    model = lf.load_model(str(setup[1]))
    lf.load_adapter(model, res.adapter_dir)
    x = torch.randint(0, 1000, (2, 10))
    with torch.no_grad():
        tuned = model(x).logits
        with lf.disabled(model):
            base = model(x).logits
    assert (tuned - base).abs().max() > 1e-4  # training changed something


def test_gradient_accumulation_matches_a_bigger_batch(setup):
    a = run(
        setup,
        "acc1",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_steps=4,
        learning_rate=1e-3,
    )
    b = run(
        setup,
        "acc2",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=4,
        learning_rate=1e-3,
    )
    assert max_diff(adapter(a.adapter_dir), adapter(b.adapter_dir)) < 1e-5
    for (_, la), (_, lb) in zip(a.loss_curve, b.loss_curve):
        assert la == pytest.approx(lb, abs=1e-5)


def test_in_process_resume_is_exact(setup):
    full = run(setup, "full", max_steps=6, save_steps=3, lr_scheduler_type="cosine", warmup_steps=2)
    part = run(setup, "part", max_steps=6, save_steps=3, lr_scheduler_type="cosine", warmup_steps=2)
    out = setup[0] / "part"
    # pretend the run died after step 3: drop what came later, then resume

    for f in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json"):
        (out / f).unlink()
    resumed = run(setup, "part", max_steps=6, save_steps=3, lr_scheduler_type="cosine", warmup_steps=2,
                  resume_from_checkpoint=True)  # fmt: skip
    assert max_diff(adapter(full.adapter_dir), adapter(resumed.adapter_dir)) <= 1e-6
    assert resumed.loss_curve == part.loss_curve
    steps = [json.loads(x)["current_steps"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # lines past the checkpoint were dropped, then re-logged once


def test_output_dir_with_another_run_is_refused_then_overwritten(setup):
    run(setup, "taken", max_steps=1)
    marker = setup[0] / "taken" / "notes.txt"
    marker.write_text("mine")
    with pytest.raises(TrainingError, match="output_dir=.*taken is not empty.*overwrite_output_dir"):
        run(setup, "taken", max_steps=1)
    run(setup, "taken", max_steps=1, overwrite_output_dir=True)
    assert marker.read_text() == "mine"  # files that are not ours are never deleted


def test_dataset_smaller_than_one_batch(setup):
    with pytest.raises(TrainingError, match="48 training rows but one optimizer step needs 64"):
        run(setup, "small", per_device_train_batch_size=64)


class _Recorder(Callback):
    name = "recorder"

    def __init__(self, nan_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.nan_at = nan_at
        self.calls = 0

    def extra_loss(self, model):
        self.calls += 1
        if self.nan_at is not None and self.calls >= self.nan_at:
            return torch.tensor(float("nan"))
        return torch.zeros(())

    def on_after_backward(self, step, model):
        self.events.append(("after_backward", step))

    def on_optimizer_step(self, step, model):
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)  # before zero_grad
        self.events.append(("optimizer_step", step))

    def logs(self):
        return {"recorder_calls": float(self.calls)}


def test_callbacks_are_called_in_order_and_logged(setup):
    rec = _Recorder()
    root, model_dir, data = setup
    train(make_config(base_config(model_dir, data, root / "cb", max_steps=2)), extra_callbacks=[rec])
    assert rec.events == [
        ("after_backward", 1),
        ("optimizer_step", 1),
        ("after_backward", 2),
        ("optimizer_step", 2),
    ]
    rows = [json.loads(x) for x in (root / "cb" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["recorder_calls"] == 2.0


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(setup):
    root, model_dir, data = setup
    cfg = make_config(base_config(model_dir, data, root / "nan", max_steps=6, save_steps=2))
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 5: loss is nan.*checkpoint-4"):
        train(cfg, extra_callbacks=[_Recorder(nan_at=5)])
    out = root / "nan"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["stopped"] == "loss is nan"


def test_schedules():
    lin = lr_lambda("linear", 2, 10)
    assert [lin(s) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    cos = lr_lambda("cosine", 0, 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert lr_lambda("constant", 5, 10)(0) == 1.0
    assert lr_lambda("constant_with_warmup", 4, 10)(2) == 0.5


def test_loraplus_groups_are_used(setup):
    import lorafam as lf
    from lorafam.train.build import build_model

    root, model_dir, data = setup
    cfg = make_config(base_config(model_dir, data, root / "lp", method="loraplus"))
    model, _ = build_model(cfg)
    from lorafam.train.build import loraplus_ratio

    opt = lf.make_optimizer(model, lr=1e-3, loraplus_ratio=loraplus_ratio(cfg))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["b"] == pytest.approx(16 * lrs["a"])


def test_gradient_checkpointing_gives_the_same_run(setup):
    a = run(setup, "gc0", max_steps=3, learning_rate=1e-3)
    b = run(setup, "gc1", max_steps=3, learning_rate=1e-3, gradient_checkpointing=True)
    assert max_diff(adapter(a.adapter_dir), adapter(b.adapter_dir)) < 1e-6
    from lorafam.train.build import build_model

    root, model_dir, data = setup
    model, _ = build_model(make_config(base_config(model_dir, data, root / "x", gradient_checkpointing=True)))
    assert model.is_gradient_checkpointing


def test_packing_and_bf16_runs(setup):
    packed = run(setup, "packed", max_steps=2, packing=True, per_device_train_batch_size=1, cutoff_len=256)
    assert packed.data["packed_rows"] < 48 and packed.steps == 2
    res = run(setup, "bf16", max_steps=2, bf16=True)
    assert all(t.dtype == torch.float32 for t in adapter(res.adapter_dir).values())
    assert torch.isfinite(torch.tensor(res.final_loss))


def test_resume_without_a_checkpoint_starts_fresh(setup):
    out = setup[0] / "fresh"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"current_steps": 3, "loss": 9.0}\n')  # a run killed before step 1's save
    res = run(setup, "fresh", max_steps=2, resume_from_checkpoint=True)
    steps = [json.loads(x)["current_steps"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert res.steps == 2 and steps == [1, 2]


def test_torch_compile_gives_the_same_run(setup):
    """``torch_compile: true`` (HF's key): the body runs compiled, the run's adapter is eager's to fp32 rounding."""
    from torch._dynamo.utils import counters

    a = run(setup, "tc0", max_steps=3, learning_rate=1e-3)
    counters.clear()
    b = run(setup, "tc1", max_steps=3, learning_rate=1e-3, torch_compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did compile the body
    wa, wb = adapter(a.adapter_dir), adapter(b.adapter_dir)
    assert max_diff(wa, wb) < 1e-5
    assert (
        max_diff(wa, adapter(run(setup, "tc2", max_steps=3, learning_rate=2e-3).adapter_dir)) > 1e-4
    )  # sensitive
    assert [round(x, 4) for _, x in a.loss_curve] == [round(x, 4) for _, x in b.loss_curve]


@pytest.mark.parametrize("member", ["dora", "qlora", "longlora"])
def test_torch_compile_other_members_give_the_same_run(setup, member):
    """Members whose adapters keep caches (DoRA's norm, skipped while dynamo traces) or train embeddings: the
    compiled run, evaluation included, equals eager's."""
    kw = dict(max_steps=4, learning_rate=1e-3, member=member, val_size=8, eval_steps=2)  # no-grad evaluation too
    a = run(setup, f"tc-{member}-0", **kw)
    b = run(setup, f"tc-{member}-1", **kw, torch_compile=True)
    assert max_diff(adapter(a.adapter_dir), adapter(b.adapter_dir)) < 1e-5
    assert [round(x, 4) for _, x in a.loss_curve] == [round(x, 4) for _, x in b.loss_curve]
    assert len(a.eval_curve) == 2 and [round(x, 4) for _, x in a.eval_curve] == [
        round(x, 4) for _, x in b.eval_curve
    ]


def test_torch_compile_refusals(setup):
    from lorafam.train.compile import compile_for_training, is_compiled

    with pytest.raises(TrainingError, match=r"torch_compile_backend='nope'.*valid: \[.*'inductor'"):
        run(setup, "tc-bad", max_steps=1, torch_compile=True, torch_compile_backend="nope")
    with pytest.raises(ValueError, match="torch_compile_mode"):
        make_config(base_config(setup[1], setup[2], setup[0] / "x", torch_compile_mode="fastest"))
    with pytest.raises(ValueError, match="'torch_compile' with 'fsdp'"):
        make_config(base_config(setup[1], setup[2], setup[0] / "x", torch_compile=True, fsdp=True))
    import lorafam as lf

    model = lf.tiny_llama(vocab_size=64, hidden=16, layers=1, heads=2, kv_heads=1, intermediate=32)
    before = list(model.state_dict())
    assert not is_compiled(model)
    body = compile_for_training(model, backend="eager")
    assert body is model.model and is_compiled(model) and list(model.state_dict()) == before


def test_dora_traces_without_graph_breaks():
    """Under dynamo DoRA computes its norm without the version-counter cache, so the body is one graph."""
    from torch._dynamo.utils import counters

    import lorafam as lf
    from lorafam.train.compile import compile_for_training
    from lorafam.train.loss import causal_lm_loss

    torch._dynamo.reset()  # the other tests' compiled graphs of the same forward count against dynamo's cache limit
    torch.manual_seed(0)
    model = lf.tiny_llama(vocab_size=64, hidden=32, layers=1, heads=4, kv_heads=2, intermediate=64)
    lf.attach(model, lf.DoraConfig(rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"]))
    eager = copy.deepcopy(model).train()
    model.train()
    compile_for_training(model, backend="eager")
    x = torch.randint(0, 64, (2, 12))
    counters.clear()
    got, _ = causal_lm_loss(model, {"input_ids": x, "labels": x})
    want, _ = causal_lm_loss(eager, {"input_ids": x, "labels": x})
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(got, want)
