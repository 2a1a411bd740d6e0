"""Hugging Face Trainer compatibility of `lorafam train`: the output layout PEFT loads, trainer_state.json and
train_results.json field names, eval/save strategies with eval_dataset, HF optimizer and scheduler names,
report_to tensorboard, adapter_name_or_path, method full / freeze — and LLaMA-Factory's example YAMLs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import lorafam as lf
from lorafam.train.config import SCHEDULERS, load_config, make_config
from lorafam.train.trainer import train
from tests.train_support import base_config, make_tiny_model_dir, reverse_records, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
LF_DIR = ROOT / "tests" / "data" / "llamafactory"
# Every key of hiyouga/LLaMA-Factory's examples/train_lora/*.yaml and examples/train_qlora/*.yaml at ff6d4d1
# (commented-out eval keys included), listed by reading those files.
LLAMAFACTORY_EXAMPLE_KEYS = {
    "model_name_or_path", "trust_remote_code", "image_max_pixels", "video_max_pixels", "video_fps",
    "video_maxlen", "quantization_bit", "quantization_method", "double_quantization", "stage", "do_train",
    "finetuning_type", "lora_rank", "lora_target", "freeze_vision_tower", "freeze_multi_modal_projector",
    "freeze_language_model", "pref_beta", "pref_loss", "deepspeed", "dataset", "dataset_dir", "template",
    "cutoff_len", "max_samples", "preprocessing_num_workers", "dataloader_num_workers", "packing",
    "tokenized_path", "output_dir", "logging_steps", "save_steps", "plot_loss", "overwrite_output_dir",
    "save_only_model", "report_to", "ray_num_workers", "per_device_train_batch_size",
    "gradient_accumulation_steps", "learning_rate", "num_train_epochs", "lr_scheduler_type", "warmup_ratio",
    "bf16", "ddp_timeout", "resume_from_checkpoint", "eval_dataset", "val_size", "per_device_eval_batch_size",
    "eval_strategy", "eval_steps",
}  # fmt: skip
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model_dir = make_tiny_model_dir(root)
    data = write_jsonl(root / "data.jsonl", reverse_records(32))
    held = write_jsonl(root / "held.jsonl", reverse_records(6, seed=9))
    return root, model_dir, data, held


def run(setup, out_name, **extra):
    root, model_dir, data, _ = setup
    return train(make_config(base_config(model_dir, data, root / out_name, **extra)))


def test_output_dir_is_a_peft_adapter_with_identical_logits(setup):
    res = run(setup, "layout", max_steps=4, save_steps=2, val_size=4, eval_steps=2)
    out = setup[0] / "layout"
    assert res.adapter_dir == str(out)
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    x = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    ours = lf.load_adapter(lf.load_model(str(setup[1])), out).eval()
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup[1]), str(out)).eval()
    with torch.no_grad():
        a, b = ours(x).logits, theirs(x).logits
    base = lf.load_model(str(setup[1])).eval()(x).logits
    assert torch.equal(a, b) or float((a - b).abs().max()) < 1e-5
    assert float((a - base).abs().max()) > 1e-4  # the trained adapter is really applied

    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["global_step"], state["max_steps"]) == (4, 4)
    losses = [r for r in state["log_history"] if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4] and {"learning_rate", "grad_norm", "epoch"} <= set(
        losses[0]
    )
    assert [r["step"] for r in state["log_history"] if "eval_loss" in r] == [2, 4]
    assert "train_runtime" in state["log_history"][-1]
    results = json.loads((out / "train_results.json").read_text())
    for key in ("train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second", "epoch"):
        assert key in results, key
    assert results["train_loss"] == pytest.approx(sum(v for _, v in res.loss_curve) / 4)
    assert results["steps"] == 4 and "loss_curve" in results  # lorafam's own fields stay beside HF's
    ck = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert ck["global_step"] == 2 and ck["max_steps"] == 4 and ck["log_history"]


def test_eval_dataset_and_epoch_strategies(setup):
    # 32 rows / batch 4 = 8 steps per epoch; 2 epochs
    res = run(setup, "epochs", max_steps=None, num_train_epochs=2, eval_dataset=str(setup[3]),
              eval_strategy="epoch", save_strategy="epoch", logging_steps=4)  # fmt: skip
    out = setup[0] / "epochs"
    assert [s for s, _ in res.eval_curve] == [8, 16]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-8"]  # the end is the final save
    assert res.data["val"] == 0 or res.data["train"] == 32
    none = run(setup, "no-eval", eval_dataset=str(setup[3]), eval_strategy="no", save_strategy="no", save_steps=2)
    assert none.eval_curve == [] and not list((setup[0] / "no-eval").glob("checkpoint-*"))


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop"])
def test_hf_optimizer_names_train(setup, optim):
    res = run(setup, f"opt-{optim}", max_steps=2, optim=optim, learning_rate=1e-2)
    assert len(res.loss_curve) == 2 and all(v == v for _, v in res.loss_curve)


def test_every_hf_scheduler_builds_and_the_trainer_follows_get_scheduler(setup):
    from transformers import get_scheduler

    from lorafam.train.schedule import build_scheduler

    model = lf.attach(lf.tiny_llama(), lf.LoraConfig(rank=2, alpha=4))
    for name in SCHEDULERS:
        extra = {"cosine_with_min_lr": {"min_lr_rate": 0.1}, "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
                 "warmup_stable_decay": {"num_decay_steps": 2}}  # fmt: skip
        kw = {"lr_scheduler_type": name, "lr_scheduler_kwargs": extra.get(name, {}), "warmup_steps": 2}
        if name in ("reduce_lr_on_plateau", "greedy"):
            kw.update(val_size=2, eval_steps=1)
        cfg = make_config(kw)
        build_scheduler(torch.optim.SGD(model.parameters(), lr=0.1), cfg, 10)
    res = run(setup, "poly", max_steps=6, lr_scheduler_type="polynomial", warmup_steps=2,
              lr_scheduler_kwargs={"power": 2.0, "lr_end": 1e-5})  # fmt: skip
    logged = [json.loads(x)["lr"] for x in (setup[0] / "poly" / "metrics.jsonl").read_text().splitlines()]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-3)
    sched = get_scheduler("polynomial", opt, num_warmup_steps=2, num_training_steps=6,
                          scheduler_specific_kwargs={"power": 2.0, "lr_end": 1e-5})  # fmt: skip
    expected = []
    for _ in range(6):
        expected.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert logged == pytest.approx(expected) and res.steps == 6


def test_reduce_lr_on_plateau_steps_on_the_eval_loss(setup):
    res = run(setup, "plateau", max_steps=6, val_size=4, eval_steps=1, lr_scheduler_type="reduce_lr_on_plateau",
              lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "threshold": 10.0}, learning_rate=1e-3)  # fmt: skip
    lrs = [json.loads(x)["lr"] for x in (setup[0] / "plateau" / "metrics.jsonl").read_text().splitlines()
           if "lr" in json.loads(x)]  # fmt: skip
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0] and res.steps == 6  # halved after "no improvement"


def test_report_to_tensorboard_mirrors_metrics_jsonl(setup):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(setup, "tb", max_steps=3, report_to="tensorboard")
    out = setup[0] / "tb"
    acc = EventAccumulator(str(out / "runs"))
    acc.Reload()
    tb = [e.value for e in acc.Scalars("train/loss")]
    jsonl = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert tb == pytest.approx(jsonl, rel=1e-6)


def test_adapter_name_or_path_continues_from_the_adapter(setup):
    first = run(setup, "first", max_steps=4)
    from lorafam.core.checkpoint import read_adapter_weights
    from lorafam.train.build import build_model

    cfg = make_config(base_config(setup[1], setup[2], setup[0] / "second", adapter_name_or_path=first.adapter_dir))
    model, _ = build_model(cfg)
    saved = read_adapter_weights(first.adapter_dir)
    from lorafam.core.checkpoint import adapter_state

    now = adapter_state(model)
    assert saved.keys() == now.keys() and all(torch.equal(saved[k], now[k].cpu()) for k in saved)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)
    second = train(cfg)
    assert second.loss_curve[0][1] < first.loss_curve[0][1]  # starts where the first run ended, not from scratch


def test_method_full_and_freeze(setup):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(setup[1])
    run(setup, "full", method="full", max_steps=2, learning_rate=1e-3, save_steps=1)
    full = AutoModelForCausalLM.from_pretrained(setup[0] / "full")  # a plain transformers folder at the root
    assert (
        float((full.model.layers[0].mlp.up_proj.weight - base.model.layers[0].mlp.up_proj.weight).abs().max()) > 0
    )
    assert (setup[0] / "full" / "checkpoint-1" / "trainable.safetensors").is_file()
    run(setup, "freeze", method="freeze", freeze_trainable_layers=1, max_steps=2, learning_rate=1e-3)
    frozen = AutoModelForCausalLM.from_pretrained(setup[0] / "freeze")
    assert torch.equal(frozen.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    assert not torch.equal(frozen.model.layers[1].mlp.up_proj.weight, base.model.layers[1].mlp.up_proj.weight)
    res = run(setup, "full", method="full", max_steps=2, learning_rate=1e-3, save_steps=1,
              resume_from_checkpoint=True)  # fmt: skip
    assert res.steps == 2


# -- LLaMA-Factory's example YAMLs (our copies with the same keys) -------------------------------------------------
def test_our_yamls_cover_every_key_of_llamafactorys_examples():
    import yaml

    keys = set()
    for f in LF_DIR.glob("*.yaml"):
        keys |= set(yaml.safe_load(f.read_text()))
    assert keys >= LLAMAFACTORY_EXAMPLE_KEYS, sorted(LLAMAFACTORY_EXAMPLE_KEYS - keys)


@pytest.mark.parametrize("name", sorted(p.name for p in LF_DIR.glob("*.yaml") if p.name != "lora_dpo.yaml"))
def test_llamafactory_yaml_passes_print_config(name, capsys):
    from lorafam.cli import main

    assert main(["train", str(LF_DIR / name), "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert "model_name_or_path: models/tiny-llama" in out
    assert "trust_remote_code (LLaMA-Factory) is ignored" in err


def test_llamafactory_dpo_yaml_is_refused_with_the_reason(capsys):
    from lorafam.cli import main

    assert main(["train", str(LF_DIR / "lora_dpo.yaml"), "--print-config"]) == 2
    assert "stage='dpo' is not supported here" in capsys.readouterr().err


def test_llamafactory_sft_yaml_trains_for_real(setup):
    cfg = load_config(
        LF_DIR / "lora_sft.yaml",
        [f"model_name_or_path={setup[1]}", f"dataset_dir={LF_DIR}", f"output_dir={setup[0] / 'lf-sft'}"],
    )
    assert cfg.template == "qwen3_nothink" and cfg.eval_dataset == ["alpaca_en_demo"]
    res = train(cfg)
    # identity (4) + alpaca_en_demo (20) = 24 rows, batch 1 × 8 accumulation = 3 steps per epoch, 3 epochs
    assert res.steps == 9 and res.data["formats"] == {"alpaca": 24}
    assert [s for s, _ in res.eval_curve] == [9]  # eval_steps 500 > 9: evaluated at the end
    assert res.loss_curve[-1][1] < res.loss_curve[0][1]
    assert (Path(res.output_dir) / "adapter_model.safetensors").is_file()


def test_additional_target_trains_modules_to_save(setup):
    """LLaMA-Factory's additional_target (axolotl lora_modules_to_save) → PEFT's modules_to_save."""
    res = run(setup, "extra", max_steps=2, additional_target="lm_head", learning_rate=1e-2)
    cfg = json.loads((Path(res.output_dir) / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["lm_head"]
    assert make_config({"lora_modules_to_save": ["embed_tokens"]}).additional_target == ["embed_tokens"]
