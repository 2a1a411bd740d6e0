#!/usr/bin/env python
"""Trainer overhead and memory on SmolLM2-135M (LoRA r=16, all linear layers, batch 4 × 256 tokens).

Three arms, each in its own fresh process (so peak RSS is that arm's own), run one after the other:

- ``bare``:    the same lorafam LoRA model and batch in a bare loop — ``model(**batch, labels=...)`` (full logits,
               transformers' loss), backward, AdamW step, zero_grad. The floor the trainer is compared with.
- ``trainer``: ``lorafam.train.trainer.train`` on a dataset whose rows are exactly 256 tokens (chunked loss,
               metrics, progress, token counting — everything a real run does; no checkpoint is written).
- ``peft``:    Hugging Face PEFT LoRA with the same rank/targets in the same bare loop (the peer for memory).

Reported: mean wall and process-CPU seconds per step (first step excluded; CPU time is the steadier figure on
a shared machine) and peak RSS of each arm, and the ratios ``trainer / bare`` (target ≤ 1.05) and
``trainer RSS / peft RSS`` (target ≤ 0.75), plus the memory estimate against the trainer's measured peak. Results go to
``benchmarks/results/trainer_overhead.json``. Run under the shared lock:

    flock /tmp/lorafam-bench.lock python benchmarks/trainer_overhead.py [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, SEQ, RANK = 4, 256, 16
RESULTS = Path(__file__).resolve().parent / "results" / "trainer_overhead.json"


def _rows(tok, n: int) -> list[list[int]]:
    """n deterministic token rows of exactly SEQ tokens (text from the bundled dataset, concatenated)."""
    from lorafam.data.dataset import bundled_path

    text = " ".join(json.loads(x)["output"] for x in bundled_path("reverse_words").read_text().splitlines())
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return [ids[i * SEQ : (i + 1) * SEQ] for i in range(n)]


def _bare_loop(model, batch, steps: int) -> tuple[list[float], list[float]]:
    """(wall seconds, process CPU seconds) of each step."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    wall, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _timer_callback():
    """A trainer callback recording wall and CPU time between consecutive optimizer steps."""
    from lorafam.train.callbacks import Callback

    class Timer(Callback):
        name = "timer"

        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []

        def on_train_begin(self, model, total_steps) -> None:
            self.marks = [(time.perf_counter(), time.process_time())]

        def on_optimizer_step(self, step, model) -> None:
            self.marks.append((time.perf_counter(), time.process_time()))

        def deltas(self) -> tuple[list[float], list[float]]:
            pairs = list(zip(self.marks, self.marks[1:]))
            return [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]

    return Timer()


def arm(name: str, steps: int, workdir: Path) -> dict:
    """Run one arm in this process and return its measurements."""
    import torch

    import lorafam as lf

    tok = lf.load_tokenizer()
    rows = _rows(tok, BATCH)
    batch = {"input_ids": torch.tensor(rows), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long)}
    batch["labels"] = batch["input_ids"].clone()
    if name == "bare":
        model = lf.load_model().train()
        lf.attach(model, lf.LoraConfig(rank=RANK, alpha=2 * RANK, targets="all-linear"))
        wall, cpu = _bare_loop(model, batch, steps)
    elif name == "peft":
        import peft

        model = lf.load_model().train()
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = peft.get_peft_model(model, peft.LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=targets))
        wall, cpu = _bare_loop(model, batch, steps)
    elif name == "trainer":
        from lorafam.train.config import make_config
        from lorafam.train.trainer import train

        data = workdir / "rows.jsonl"
        all_rows = _rows(tok, BATCH)
        data.write_text("".join(json.dumps({"text": tok.decode(r)}) + "\n" for r in all_rows))
        cfg = make_config(
            {
                "dataset": str(data),
                "lora_rank": RANK,
                "lora_alpha": 2 * RANK,
                "cutoff_len": SEQ,
                "per_device_train_batch_size": BATCH,
                "learning_rate": 1e-4,
                "max_steps": steps,
                "logging_steps": 1,
                "save_steps": 0,
                "lr_scheduler_type": "constant",
                "max_grad_norm": None,
                "output_dir": str(workdir / "run"),
                "disable_progress": True,
                "plot_loss": False,
            }
        )
        timer = _timer_callback()
        res = train(cfg, extra_callbacks=[timer])
        assert res.data["truncated"] == BATCH, "rows must be exactly SEQ tokens"
        wall, cpu = timer.deltas()  # step k's interval: from the end of step k-1 (collate, logging included)
    else:
        raise ValueError(name)
    wall, cpu = wall[1:], cpu[1:]  # the first step warms up
    return {
        "arm": name,
        "seconds_per_step": sum(wall) / len(wall),
        "cpu_seconds_per_step": sum(cpu) / len(cpu),
        "wall_per_step": wall,
        "cpu_per_step": cpu,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "threads": torch.get_num_threads(),
    }


def markdown(r: dict) -> str:
    """The BENCHMARKS.md section for one result file."""
    a = r["arms"]
    lines = [
        "## Trainer overhead and memory (`benchmarks/trainer_overhead.py`)",
        "",
        f"SmolLM2-135M, LoRA r={r['rank']} on all linear layers, batch {r['batch']} × {r['seq']} tokens, fp32, "
        f"{a['bare']['threads']} threads, {r['steps_per_arm']} steps per arm (first excluded), each arm in its "
        f"own process; load average at the end {r['machine']['load_avg_1m_at_end']:.1f}.",
        "",
        "| arm | s/step (wall) | CPU s/step | peak RSS (GiB) |",
        "|---|---|---|---|",
    ]
    for name, label in (("bare", "bare loop (lorafam LoRA, full logits)"), ("trainer", "lorafam trainer"),
                        ("peft", "PEFT LoRA, bare loop")):  # fmt: skip
        x = a[name]
        lines.append(
            f"| {label} | {x['seconds_per_step']:.2f} | {x['cpu_seconds_per_step']:.2f} | {x['peak_rss_gib']:.2f} |"
        )
    lines += [
        "",
        f"trainer / bare step time: {r['time_ratio_trainer_over_bare']:.3f} wall, "
        f"{r['cpu_time_ratio_trainer_over_bare']:.3f} CPU (target ≤ 1.05); trainer / PEFT peak RSS: "
        f"{r['rss_ratio_trainer_over_peft']:.3f} (target ≤ 0.75); `lorafam estimate` for this run: "
        f"{r['estimate_total_gib']:.2f} GiB = {r['estimate_over_trainer_rss']:.2f} × the trainer's measured peak.",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="steps per arm (the first is excluded; default 4)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per arm (default 2)")
    ap.add_argument("--arm", default=None, help=argparse.SUPPRESS)  # internal: run one arm
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(arm(args.arm, args.steps, Path(args.workdir))))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": ""}
    arms = {}
    with tempfile.TemporaryDirectory() as work:
        for name in ("bare", "trainer", "peft"):
            cmd = [sys.executable, __file__, "--arm", name, "--steps", str(args.steps), "--threads",
                   str(args.threads), "--workdir", work]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            arms[name] = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{name:8s} {arms[name]['seconds_per_step']:.2f} s/step  peak RSS {arms[name]['peak_rss_gib']:.2f} GiB"
            )
    import torch

    from lorafam.train.estimate import estimate_memory

    est = estimate_memory(None, rank=RANK, batch_size=BATCH, seq_len=SEQ)
    result = {
        "benchmark": "trainer_overhead",
        "model": "SmolLM2-135M-Instruct",
        "batch": BATCH,
        "seq": SEQ,
        "rank": RANK,
        "steps_per_arm": args.steps,
        "arms": arms,
        "time_ratio_trainer_over_bare": arms["trainer"]["seconds_per_step"] / arms["bare"]["seconds_per_step"],
        "cpu_time_ratio_trainer_over_bare": arms["trainer"]["cpu_seconds_per_step"]
        / arms["bare"]["cpu_seconds_per_step"],
        "rss_ratio_trainer_over_peft": arms["trainer"]["peak_rss_gib"] / arms["peft"]["peak_rss_gib"],
        "estimate_total_gib": est.total,
        "estimate_over_trainer_rss": est.total / arms["trainer"]["peak_rss_gib"],
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "load_avg_1m_at_end": os.getloadavg()[0],
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(RESULTS)
    print(markdown(result))
    print(
        f"trainer/bare step time {result['time_ratio_trainer_over_bare']:.3f} "
        f"(CPU time {result['cpu_time_ratio_trainer_over_bare']:.3f})  "
        f"trainer/peft peak RSS {result['rss_ratio_trainer_over_peft']:.3f}  "
        f"estimate/measured {result['estimate_over_trainer_rss']:.2f}   → {RESULTS}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
