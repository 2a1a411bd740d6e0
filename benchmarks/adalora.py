"""AdaLoRA on the default model (SmolLM2-135M-Instruct): does it learn, what does it cost.

Two parts, one JSON file (``benchmarks/results/adalora.json``) and one section of BENCHMARKS.md:

``learn``  (and ``long``: 30 steps for the candidates) short runs on the arena's ``add3`` task (answer-only loss, chat template, batch 8, AdamW, constant
           learning rate): held-out answer NLL before and after N steps for PEFT's AdaLoRA at its defaults, our
           LoRA at lr 2e-4 (the peer) and our AdaLoRA over learning rates / initialisations. This is where the
           recommended learning rate in docs/adalora.md comes from.
``speed``  one training step (batch 4×256, fp32) of our LoRA at rank 12, our AdaLoRA at init rank 12 (allocating
           every step: the worst case) and PEFT's AdaLoRA, timed interleaved in one process; the allocator's own
           cost (orthogonality regulariser forward+backward, importance update + masking) timed separately;
           peak RSS of each configuration in its own process.

Run (the lock keeps benchmarks from overlapping):
    flock /tmp/lorafam-bench.lock python -m benchmarks.adalora [--part learn|speed|all] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    RESULTS,
    child_report,
    interleaved,
    machine_info,
    md_table,
    python,
    run_child,
    update_markdown_section,
    write_json,
)

OUT = RESULTS / "adalora.json"
TARGETS = "all-linear"


# ---------------------------------------------------------------------------------------------------------------
# data: add3 ("What is a + b?") with the chat template, loss on the answer only
# ---------------------------------------------------------------------------------------------------------------
def add3_rows(tok: Any, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        msgs = [{"role": "user", "content": f"What is {a} + {b}? Reply with only the number."}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        a_ids = tok(f"{a + b}{tok.eos_token}", add_special_tokens=False).input_ids
        rows.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    return rows


def collate(rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad)
    labels = torch.full((len(rows), n), -100)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def answer_nll(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Mean NLL of the answer tokens (computed from logits: PEFT adds its regulariser to ``.loss``)."""
    ids, labels, mask = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


# ---------------------------------------------------------------------------------------------------------------
# learn
# ---------------------------------------------------------------------------------------------------------------
LEARN_RUNS: list[dict[str, Any]] = [
    {"name": "LoRA r8 α16 (peer)", "kind": "lora", "lr": 2e-4},
    {"name": "PEFT AdaLoRA defaults", "kind": "peft", "lr": 2e-4},
    {"name": "AdaLoRA gaussian α8 (PEFT init)", "kind": "ours", "lr": 2e-4, "init": "gaussian", "alpha": 8},
    {"name": "AdaLoRA gaussian α8 (PEFT init)", "kind": "ours", "lr": 2e-3, "init": "gaussian", "alpha": 8},
    {"name": "AdaLoRA orthonormal α16", "kind": "ours", "lr": 2e-4},
    {"name": "AdaLoRA orthonormal α16", "kind": "ours", "lr": 1e-3},
    {"name": "AdaLoRA orthonormal α16", "kind": "ours", "lr": 2e-3},
    {"name": "AdaLoRA orthonormal α16", "kind": "ours", "lr": 5e-3},
    {"name": "AdaLoRA orthonormal α16", "kind": "ours", "lr": 1e-2},
    {"name": "AdaLoRA gaussian α16", "kind": "ours", "lr": 5e-3, "init": "gaussian"},
]
# longer runs for the candidates: is the fast start stable?
LONG_RUNS: list[dict[str, Any]] = [
    {"name": "LoRA r8 α16 (peer)", "kind": "lora", "lr": 2e-4},
    {"name": "AdaLoRA orthonormal α16", "kind": "ours", "lr": 5e-3},
]


def _key(run: dict[str, Any], steps: int, seed: int) -> str:
    cfg = {k: run[k] for k in ("kind", "lr", "init", "alpha", "rank") if k in run}
    return json.dumps({**cfg, "steps": steps, "seed": seed}, sort_keys=True)


def _build(kind: str, run: dict[str, Any], total: int) -> tuple[torch.nn.Module, Any, Any]:
    """(model, hook after optimizer.step() (allocation), extra loss term)."""
    import lorafam as lf
    from lorafam.train.callbacks import callbacks_for

    model = lf.load_model()
    if kind == "lora":
        lf.attach(model, lf.LoraConfig(rank=run.get("rank", 8), alpha=run.get("alpha", 16), targets=TARGETS))
        return model, (lambda step: None), (lambda: None)
    if kind == "peft":
        import peft

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = peft.AdaLoraConfig(init_r=12, target_r=8, target_modules=TARGETS, total_step=total)
            pm = peft.get_peft_model(model, cfg)
        # PEFT's forward adds the orthogonality term to outputs.loss; we add the same term ourselves
        return pm, (lambda step: pm.base_model.update_and_allocate(step)), (lambda: _peft_orth(pm, cfg))
    cfg = lf.AdaLoraConfig(
        init_rank=12,
        target_rank=8,
        alpha=run.get("alpha", 16),
        init=run.get("init", "orthonormal"),
        targets=TARGETS,
    )
    lf.attach(model, cfg)
    (cb,) = callbacks_for(model, total)
    return model, (lambda step: cb.on_optimizer_step(step, model)), (lambda: cb.extra_loss(model))


def _peft_orth(pm: Any, cfg: Any) -> torch.Tensor:
    terms = []
    for n, p in pm.named_parameters():
        if ("lora_A" in n or "lora_B" in n) and p.requires_grad:
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0])))
    return cfg.orth_reg_weight * torch.stack(terms).mean()


def run_learn(
    steps: int, seed: int, runs: list[dict[str, Any]], previous: dict[str, Any] | None, fresh: bool
) -> dict[str, Any]:
    """Train each run from the same seed on the same batches; runs already in ``previous`` with the same settings
    are kept (not re-run) unless ``fresh``."""
    import lorafam as lf

    tok = lf.load_tokenizer()
    pad = tok.pad_token_id or 0
    train_rows = add3_rows(tok, steps * 8, seed)
    held_out = collate(add3_rows(tok, 32, seed + 1), pad)
    done = {} if fresh or not previous else {_key(r, r["steps"], seed): r for r in previous.get("runs", [])}
    out: list[dict[str, Any]] = []
    for run in runs:
        if _key(run, steps, seed) in done:
            out.append(done[_key(run, steps, seed)])
            continue
        torch.manual_seed(seed)
        model, after_step, extra = _build(run["kind"], run, steps)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=run["lr"], weight_decay=0.0)
        model.eval()
        with torch.no_grad():
            before = float(answer_nll(model, held_out))
        model.train()
        curve, t0 = [], time.perf_counter()
        for step in range(1, steps + 1):
            batch = collate(train_rows[(step - 1) * 8 : step * 8], pad)
            nll = answer_nll(model, batch)
            reg = extra()
            (nll if reg is None else nll + reg).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            after_step(step)
            opt.zero_grad(set_to_none=True)
            curve.append(round(float(nll.detach()), 4))
        model.eval()
        with torch.no_grad():
            after = float(answer_nll(model, held_out))
        row = {**run, "steps": steps, "heldout_nll_before": before, "heldout_nll_after": after}
        row.update({"delta": after - before, "train_curve": curve, "seconds": time.perf_counter() - t0})
        print(f"{run['name']:<34} lr {run['lr']:<7g} held-out NLL {before:.3f} → {after:.3f}", flush=True)
        out.append(row)
        del model, opt
    return {"task": "add3", "batch": 8, "steps": steps, "seed": seed, "runs": out}


# ---------------------------------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------------------------------
SPEED = {"lora": "our LoRA r12", "adalora": "our AdaLoRA init r12", "peft-adalora": "PEFT AdaLoRA init r12"}


def _speed_model(kind: str, total: int = 1000) -> tuple[torch.nn.Module, Any, Any, Any]:
    """(model, optimizer, callback or PEFT tuner, kind) for one speed contender; allocation every step."""
    import lorafam as lf
    from lorafam.train.callbacks import callbacks_for

    model = lf.load_model()
    if kind == "lora":
        lf.attach(model, lf.LoraConfig(rank=12, alpha=24, targets=TARGETS))
        cb = None
    elif kind == "adalora":
        lf.attach(model, lf.AdaLoraConfig(init_rank=12, target_rank=8, alpha=24, targets=TARGETS))
        (cb,) = callbacks_for(model, total)
    else:
        import peft

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cfg = peft.AdaLoraConfig(
                init_r=12, target_r=8, lora_alpha=24, target_modules=TARGETS, total_step=total
            )
            model = peft.get_peft_model(model, cfg)
        cb = model.base_model
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    return model, opt, cb, kind


def _batch(b: int = 4, s: int = 256) -> torch.Tensor:
    return torch.randint(3, 49152, (b, s), generator=torch.Generator().manual_seed(0))


def _stepper(kind: str):
    model, opt, cb, _ = _speed_model(kind)
    x = _batch()
    state = {"step": 0}

    def step() -> None:
        state["step"] += 1
        loss = model(input_ids=x, labels=x).loss  # PEFT adds its regulariser here
        if kind == "adalora":
            loss = loss + cb.extra_loss(model)
        loss.backward()
        opt.step()
        if kind == "adalora":
            cb.on_optimizer_step(state["step"], model)
        elif kind == "peft-adalora":
            cb.update_and_allocate(state["step"])
        opt.zero_grad(set_to_none=True)

    return step, model, cb


def allocator_overhead(repeats: int = 5) -> dict[str, Any]:
    """Our callback's own work on the real model: regulariser fwd+bwd, and importance update + masking."""
    model, _, cb, _ = _speed_model("adalora")
    x = _batch(1, 16)
    model(input_ids=x, labels=x).loss.backward()  # gradients present, as after a real step
    reg, alloc = [], []
    for i in range(repeats):
        t = time.perf_counter()
        cb.extra_loss(model).backward()
        reg.append(time.perf_counter() - t)
        t = time.perf_counter()
        cb.update_and_allocate(i + 1)
        alloc.append(time.perf_counter() - t)
    return {"orth_reg_fwd_bwd_s": statistics.median(reg), "importance_and_mask_s": statistics.median(alloc)}


def child(kind: str, steps: int) -> None:
    step, _, _ = _stepper(kind)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    child_report({"kind": kind, "step_s": times})


def run_speed(repeats: int, threads: int) -> dict[str, Any]:
    steppers = {SPEED[k]: _stepper(k)[0] for k in SPEED}
    timing = interleaved(steppers, repeats=repeats, warmup=1)
    overhead = allocator_overhead()
    env = {"OMP_NUM_THREADS": str(threads)}
    mem = {}
    for kind in SPEED:
        r = run_child([python(), "-m", "benchmarks.adalora", "--child", kind, "--threads", str(threads)], env=env)
        if r["returncode"] != 0:
            raise RuntimeError(f"child {kind} failed:\n{r['stderr_tail']}")
        mem[SPEED[kind]] = r["peak_rss_mib"]
        print(f"  peak RSS {SPEED[kind]:<24} {r['peak_rss_mib']:.0f} MiB", flush=True)
    return {"batch": [4, 256], "dtype": "float32", "timing": timing, "peak_rss_mib": mem, "allocator": overhead}


# ---------------------------------------------------------------------------------------------------------------
def markdown(data: dict[str, Any]) -> str:
    lines = ["## AdaLoRA (`python -m benchmarks.adalora`)", ""]
    if "speed" in data:
        sp = data["speed"]
        base = sp["timing"][SPEED["lora"]]["median_s"]
        base_mem = sp["peak_rss_mib"][SPEED["lora"]]
        rows = [
            [
                name,
                t["median_s"],
                t["median_s"] / base,
                sp["peak_rss_mib"][name],
                sp["peak_rss_mib"][name] / base_mem,
            ]
            for name, t in sp["timing"].items()
        ]
        lines += [
            f"One fp32 training step, batch {sp['batch'][0]}×{sp['batch'][1]}, all linear layers, AdaLoRA "
            "allocating every step; interleaved medians; peak RSS per configuration in its own process.",
            "",
            md_table(["configuration", "step s", "× our LoRA", "peak RSS MiB", "× our LoRA"], rows),
            "",
            f"Allocator cost per step on the real model: orthogonality regulariser forward+backward "
            f"{sp['allocator']['orth_reg_fwd_bwd_s'] * 1e3:.0f} ms, importance update + masking "
            f"{sp['allocator']['importance_and_mask_s'] * 1e3:.0f} ms.",
            "",
        ]
    for part in ("learn", "learn_long"):
        if part not in data:
            continue
        le = data[part]
        rows = [
            [r["name"], r["lr"], r["heldout_nll_before"], r["heldout_nll_after"], r["delta"]] for r in le["runs"]
        ]
        lines += [
            f"Does it learn? `add3`, batch {le['batch']}, {le['steps']} steps, AdamW, constant lr, clip 1.0, "
            f"seed {le['seed']}; held-out answer NLL (32 items).",
            "",
            md_table(["run", "lr", "NLL before", f"NLL after {le['steps']} steps", "change"], rows),
            "",
        ]
    m = data["machine"]
    lines.append(
        f"Machine: {m['cpu']}, {m['torch_threads']} torch thread(s), torch {m['versions']['torch']}, "
        f"peft {m['versions']['peft']}, {m['time_utc']}."
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["learn", "long", "speed", "all"], default="all")
    ap.add_argument("--steps", type=int, default=10, help="training steps per learn run")
    ap.add_argument("--long-steps", type=int, default=30, help="training steps per long learn run")
    ap.add_argument("--fresh", action="store_true", help="re-run learn runs already in the results file")
    ap.add_argument("--repeats", type=int, default=4, help="interleaved rounds for the speed part")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=list(SPEED), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, steps=3)
        return
    data: dict[str, Any] = json.loads(OUT.read_text()) if OUT.exists() else {}
    if args.part in ("learn", "all"):
        data["learn"] = run_learn(args.steps, args.seed, LEARN_RUNS, data.get("learn"), args.fresh)
    if args.part in ("long", "all"):
        data["learn_long"] = run_learn(args.long_steps, args.seed, LONG_RUNS, data.get("learn_long"), args.fresh)
    if args.part in ("speed", "all"):
        data["speed"] = run_speed(args.repeats, args.threads)
    data["machine"] = machine_info()
    write_json(OUT, data)
    update_markdown_section("adalora", markdown(data))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
