"""The ``gen`` and ``loss`` parts of ``benchmarks.train_step`` (unmerged generation; bf16 vs fp32 loss)."""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import interleaved
from benchmarks.train_step import METHODS, PRECISIONS, Trainer, adapt


# ---------------------------------------------------------------------------------------------------------------
def _perturb(model: torch.nn.Module, seed: int = 1, std: float = 0.02) -> None:
    """Non-zero B (and magnitude noise) so that the adapters change the output, as trained ones would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn(p.shape, generator=g) * std)


def _copy_to_peft(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Load our adapter tensors (PEFT's key layout) into the PEFT model."""
    from peft import set_peft_model_state_dict

    from lorafam.core.checkpoint import adapter_state

    result = set_peft_model_state_dict(theirs, adapter_state(ours))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"adapter copy to PEFT: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")


def part_gen(base: torch.nn.Module, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    import lorafam as lf

    if tok is not None:
        msgs = [{"role": "user", "content": "Explain in a few sentences why the sky is blue."}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        ids = prompt["input_ids"]
    else:
        ids = torch.randint(3, base.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    models: dict[str, torch.nn.Module] = {"base": copy.deepcopy(base).eval()}
    for method in METHODS:
        ours = adapt(base, "lorafam", method, "fp32", args.rank, args.alpha).eval()
        _perturb(ours)
        models[f"lorafam {method} unmerged"] = ours
        theirs = adapt(base, "peft", method, "fp32", args.rank, args.alpha).eval()
        _copy_to_peft(ours, theirs)  # the same adapter weights in both libraries
        models[f"peft {method} unmerged"] = theirs
    merged = copy.deepcopy(models["lorafam lora unmerged"])
    models["lorafam lora merged"] = lf.merge(merged)
    for m in models.values():
        m.generation_config.pad_token_id = m.generation_config.eos_token_id

    n = args.gen_tokens
    produced: dict[str, list[int]] = {}

    def runner(name: str) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                out = models[name].generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    use_cache=True,
                )
            produced[name] = out[0, ids.shape[1] :].tolist()

        return run

    print(f"[gen] {list(models)}  ({args.gen_repeats} rounds, {n} tokens)", flush=True)
    timing = interleaved({k: runner(k) for k in models}, repeats=args.gen_repeats, warmup=1)
    res = {
        k: {**v, "tokens_per_s": n / v["median_s"], "x_base": timing["base"]["median_s"] / v["median_s"]}
        for k, v in timing.items()
    }
    return {
        "prompt_tokens": int(ids.shape[1]),
        "new_tokens": n,
        "results": res,
        "merged_equals_unmerged_tokens": produced["lorafam lora merged"] == produced["lorafam lora unmerged"],
        "lorafam_equals_peft_tokens": {
            m: produced[f"lorafam {m} unmerged"] == produced[f"peft {m} unmerged"] for m in METHODS
        },
    }


def text_batches(tok: Any, vocab: int, batch: int, seq: int, n: int) -> list[torch.Tensor]:
    """``n`` batches of real English text (Python's own documentation strings), for the loss comparison."""
    import importlib

    docs: list[str] = []
    for name in ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "textwrap", "unittest"):
        mod = importlib.import_module(name)
        for obj in [mod] + [getattr(mod, a) for a in sorted(dir(mod)) if not a.startswith("_")]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 80 and doc not in docs:
                docs.append(doc)
    text = "\n\n".join(docs)
    ids = torch.tensor(tok(text).input_ids) if tok is not None else torch.randint(0, vocab, (batch * seq * n,))
    need = batch * seq * n
    if ids.numel() < need:
        ids = ids.repeat(need // ids.numel() + 1)
    return list(ids[:need].view(n, batch, seq))


# ---------------------------------------------------------------------------------------------------------------
# part: loss (fp32 vs bf16 from the same init, same batches)
# ---------------------------------------------------------------------------------------------------------------
def part_loss(base: torch.nn.Module, tok: Any, args: argparse.Namespace) -> dict[str, Any]:
    vocab = base.config.vocab_size
    batches = text_batches(tok, vocab, args.loss_batch, args.loss_seq, args.loss_steps)
    curves: dict[str, list[float]] = {}
    for precision in PRECISIONS:
        torch.manual_seed(0)  # same A init in both runs
        trainer = Trainer(adapt(base, "lorafam", "lora", precision, args.rank, args.alpha), precision, batches)
        for p in trainer.opt.param_groups:
            p["lr"] = args.loss_lr
        t = time.perf_counter()
        curves[precision] = [trainer.step() for _ in range(args.loss_steps)]
        print(
            f"[loss] {precision}: {curves[precision][0]:.4f} → {curves[precision][-1]:.4f} "
            f"({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
        del trainer
    last = {k: v[-1] for k, v in curves.items()}
    return {
        "batch": args.loss_batch,
        "seq": args.loss_seq,
        "steps": args.loss_steps,
        "lr": args.loss_lr,
        "curves": curves,
        "final": last,
        "rel_diff": abs(last["bf16"] - last["fp32"]) / last["fp32"],
    }
