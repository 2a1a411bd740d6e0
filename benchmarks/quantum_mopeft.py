"""Quantum-PEFT and the MoPEFT-style mixture on the default model (SmolLM2-135M-Instruct): size and cost vs LoRA.

One JSON file (``benchmarks/results/quantum_mopeft.json``) and one section of BENCHMARKS.md:

``params``  trainable parameters on all linear layers for our LoRA and Quantum-PEFT at the same K (and L = 1, 2),
            counted on the attached model (``lf.trainable_summary``'s numbers), plus the mixture's.
``learn``   does it learn at all? 12 AdamW steps (batch 8) on a word-reversal task, answer-only loss; held-out
            answer NLL before and after: our LoRA and the mixture at lr 2e-4, Quantum-PEFT at 2e-3 and 2e-2.
``speed``   one fp32 training step (AdamW) of our LoRA (the peer), Quantum-PEFT and the mixture (LoRA + DoRA +
            Quantum-PEFT, token router) at the same rank, timed interleaved in one process; the circuits' own cost
            (all U, V of the model, forward + backward) timed separately; peak RSS of each in its own process.

Run (the lock keeps benchmarks from overlapping):
    flock /tmp/lorafam-bench.lock python -m benchmarks.quantum_mopeft [--batch 1 --seq 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

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

OUT = RESULTS / "quantum_mopeft.json"
SPEED = {"lora": "our LoRA r=8", "quantum": "Quantum-PEFT K=8, L=1", "mopeft": "mixture LoRA+DoRA+QPEFT r=8"}


def _config(kind: str, rank: int = 8, layers: int = 1):
    import lorafam as lf

    if kind == "lora":
        return lf.LoraConfig(rank=rank, alpha=2 * rank, targets="all-linear")
    if kind == "quantum":
        return lf.QuantumConfig(rank=rank, alpha=2 * rank, layers=layers, targets="all-linear")
    return lf.MEMBERS["mopeft"].make_config(rank=rank, alpha=2 * rank, targets="all-linear")


def count_params() -> dict[str, Any]:
    import lorafam as lf
    from lorafam.core.inject import count_params as count

    base = lf.load_model()
    rows = []
    for k in (1, 4, 8, 16, 64):
        row: dict[str, Any] = {"K": k}
        for kind, layers in (("lora", 1), ("quantum", 1), ("quantum", 2)):
            model = lf.attach(base, _config(kind, k, layers), name="bench")
            row[kind if kind == "lora" else f"quantum_L{layers}"] = count(model)[0]
            lf.unload(model)
        rows.append(row)
    model = lf.attach(base, _config("mopeft", 8), name="bench")
    mix = count(model)[0]
    lf.unload(model)
    return {"targets": "all-linear (7 projections × 30 blocks)", "rows": rows, "mopeft_r8": mix}


WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "music",
    "paper",
    "green",
    "light",
    "window",
    "orange",
    "table",
    "silver",
    "garden",
    "winter",
    "yellow",
    "bridge",
]


def _rows(tok: Any, n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w = rng.sample(WORDS, 4)
        msgs = [{"role": "user", "content": "Reverse the order of these words: " + ", ".join(w)}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False).input_ids
        a_ids = tok(", ".join(reversed(w)) + tok.eos_token, add_special_tokens=False).input_ids
        rows.append((p_ids + a_ids, [-100] * len(p_ids) + a_ids))
    return rows


def _batch_of(
    rows: list[tuple[list[int], list[int]]], pad: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
    return ids, labels, mask


def learn(steps: int = 12) -> dict[str, Any]:
    import lorafam as lf
    from lorafam.train.callbacks import callbacks_for

    tok = lf.load_tokenizer()
    train, held = _rows(tok, 8 * steps, 0), _rows(tok, 16, 1)
    hx, hy, hm = _batch_of(held, tok.pad_token_id)
    runs = []
    runs_to_do = [("lora", 2e-4), ("quantum", 2e-3), ("quantum", 2e-2), ("mopeft", 2e-4)]
    for kind, lr in runs_to_do:
        torch.manual_seed(0)
        model = lf.attach(lf.load_model(), _config(kind))
        opt = lf.make_optimizer(model, lr=lr)
        cbs = callbacks_for(model, total_steps=steps)

        def nll(model: Any = model) -> float:
            model.eval()
            with torch.no_grad():
                return float(model(input_ids=hx, attention_mask=hm, labels=hy).loss)

        before = nll()
        t0 = time.perf_counter()
        for i in range(steps):
            model.train()
            x, y, m = _batch_of(train[8 * i : 8 * i + 8], tok.pad_token_id)
            loss = model(input_ids=x, attention_mask=m, labels=y).loss
            for cb in cbs:
                extra = cb.extra_loss(model)
                loss = loss if extra is None else loss + extra
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        after = nll()
        runs.append({"name": SPEED[kind], "lr": lr, "heldout_nll_before": before, "heldout_nll_after": after,
                     "seconds": time.perf_counter() - t0})  # fmt: skip
        print(runs[-1], flush=True)
    return {"steps": steps, "batch": 8, "runs": runs}


def _stepper(kind: str, batch: int, seq: int):
    import lorafam as lf
    from lorafam.train.callbacks import callbacks_for

    model = lf.attach(lf.load_model(), _config(kind))
    model.train()
    opt = lf.make_optimizer(model, lr=1e-4)
    cbs = callbacks_for(model, total_steps=100)
    x = torch.randint(3, 49152, (batch, seq), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        loss = model(input_ids=x, labels=x).loss
        for cb in cbs:
            extra = cb.extra_loss(model)
            if extra is not None:
                loss = loss + extra
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def circuit_cost(repeats: int = 3) -> dict[str, Any]:
    """All U, V circuits of the model once (batched per shape), forward and forward + backward."""
    from lorafam.core.inject import adapted_layers

    _, model = _stepper("quantum", 1, 8)
    ads = [layer.adapters["default"] for _, layer in adapted_layers(model)]
    bank = ads[0]._bank
    fwd, fwd_bwd = [], []
    for _ in range(repeats):
        bank.clear()
        t = time.perf_counter()
        with torch.no_grad():
            bank._compute()
        fwd.append(time.perf_counter() - t)
        bank.clear()
        t = time.perf_counter()
        bank._compute()
        total = sum((r["u"].sum() + r["v"].sum()) for r in bank._results.values())
        total.backward()
        fwd_bwd.append(time.perf_counter() - t)
    groups = {f"N={n},K={k},L={L}": len(m) for (n, k, L), m in bank.groups.items()}
    return {
        "forward_s": statistics.median(fwd),
        "forward_backward_s": statistics.median(fwd_bwd),
        "groups": groups,
    }


def child(kind: str, steps: int, batch: int, seq: int) -> None:
    step, _ = _stepper(kind, batch, seq)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    child_report({"kind": kind, "step_s": times})


def run_speed(repeats: int, threads: int, batch: int, seq: int) -> dict[str, Any]:
    steppers = {SPEED[k]: _stepper(k, batch, seq)[0] for k in SPEED}
    timing = interleaved(steppers, repeats=repeats, warmup=1)
    circuits = circuit_cost()
    env = {"OMP_NUM_THREADS": str(threads)}
    mem = {}
    for kind in SPEED:
        argv = [python(), "-m", "benchmarks.quantum_mopeft", "--child", kind, "--threads", str(threads)]
        r = run_child([*argv, "--batch", str(batch), "--seq", str(seq)], env=env)
        if r["returncode"] != 0:
            raise RuntimeError(f"child {kind} failed:\n{r['stderr_tail']}")
        mem[SPEED[kind]] = r["peak_rss_mib"]
        print(f"  peak RSS {SPEED[kind]:<30} {r['peak_rss_mib']:.0f} MiB", flush=True)
    return {"batch": [batch, seq], "dtype": "float32", "timing": timing, "peak_rss_mib": mem, "circuits": circuits}


def markdown(data: dict[str, Any]) -> str:
    pr = data["params"]
    rows = [
        [r["K"], f"{r['lora']:,}", f"{r['quantum_L1']:,}", f"{r['quantum_L2']:,}", r["lora"] / r["quantum_L1"]]
        for r in pr["rows"]
    ]
    sp = data["speed"]
    base, base_mem = sp["timing"][SPEED["lora"]]["median_s"], sp["peak_rss_mib"][SPEED["lora"]]
    srows = [
        [name, t["median_s"], t["median_s"] / base, sp["peak_rss_mib"][name], sp["peak_rss_mib"][name] / base_mem]
        for name, t in sp["timing"].items()
    ]
    c = sp["circuits"]
    m = data["machine"]
    le = data["learn"]
    lrows = [[r["name"], r["lr"], r["heldout_nll_before"], r["heldout_nll_after"]] for r in le["runs"]]
    return "\n".join(
        [
            "## Quantum-PEFT and MoPEFT (`python -m benchmarks.quantum_mopeft`)",
            "",
            f"Trainable parameters on SmolLM2-135M-Instruct, {pr['targets']}, counted on the attached model:",
            "",
            md_table(["K", "LoRA r=K", "Quantum-PEFT L=1", "Quantum-PEFT L=2", "LoRA ÷ Quantum (L=1)"], rows),
            "",
            f"The mixture (LoRA + DoRA + Quantum-PEFT at r=8, with routers): {pr['mopeft_r8']:,} trainable.",
            "",
            f"One fp32 training step (AdamW), batch {sp['batch'][0]}×{sp['batch'][1]}, all linear layers; "
            "interleaved medians; peak RSS per configuration in its own process:",
            "",
            md_table(["configuration", "step s", "× our LoRA", "peak RSS MiB", "× our LoRA"], srows),
            "",
            f"Quantum-PEFT's circuits alone (all {sum(c['groups'].values())} U/V factors, batched per shape "
            f"{c['groups']}): forward {c['forward_s'] * 1e3:.0f} ms, forward + backward "
            f"{c['forward_backward_s'] * 1e3:.0f} ms per step. At inference the factors are cached.",
            "",
            f"Does it learn? Reverse 4 words, {le['steps']} AdamW steps of batch {le['batch']} (clip 1.0, constant lr), "
            "answer-only loss; held-out answer NLL on 16 items:",
            "",
            md_table(["configuration", "lr", "NLL before", "NLL after"], lrows),
            "",
            f"Machine: {m['cpu']}, {m['torch_threads']} torch thread(s), torch {m['versions']['torch']}, "
            f"{m['time_utc']}.",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds for the speed part")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--learn-steps", type=int, default=12)
    ap.add_argument("--part", choices=["all", "speed"], default="all", help="speed: re-time, keep params/learn")
    ap.add_argument("--child", choices=list(SPEED), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child, 3, args.batch, args.seq)
        return
    if args.part == "speed" and OUT.exists():  # re-measure speed only; keep the earlier counts and learn runs
        data = json.loads(OUT.read_text())
        data["machine"] = machine_info()
    else:
        data = {"machine": machine_info(), "params": count_params()}
        print(data["params"], flush=True)
        data["learn"] = learn(args.learn_steps)
    data["speed"] = run_speed(args.repeats, args.threads, args.batch, args.seq)
    write_json(OUT, data)
    update_markdown_section("quantum_mopeft", markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
