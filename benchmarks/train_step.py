"""Train-step speed, peak memory and unmerged generation speed: lorafam vs Hugging Face PEFT, LoRA and DoRA.

Issue 2, item 8. Setup: SmolLM2-135M-Instruct, batch 4 × seq 256, all 7 projections, r = 16, α = 32, AdamW.

Parts (``--parts``, default all):

- ``time``  train steps (forward + backward + AdamW step), lorafam and PEFT **interleaved in one process**
            (A B A B …, medians): LoRA and DoRA in fp32; then, in a second interleaved group, LoRA under
            ``torch.autocast("cpu", bfloat16)`` (lorafam with ``lf.cast_frozen``: frozen base stored in bf16) next
            to PEFT fp32 and PEFT under autocast. Achieved FLOP/s (counted by torch's flop counter) is reported
            next to the machine's measured matmul throughput.
- ``rss``   peak RSS of each configuration, each in its own process (a few train steps).
- ``gen``   64 greedy tokens (fp32, ``use_cache=True``, same prompt): base, unmerged LoRA / DoRA (lorafam and
            PEFT), merged LoRA; interleaved, medians.
- ``loss``  LoRA fp32 vs bf16 (cast_frozen + autocast) from the same init on the same text batches: loss after
            ``--loss-steps`` steps.

Run (from the repository root, never two benchmarks at once)::

    flock /tmp/lorafam-bench.lock python -m benchmarks.train_step
    flock /tmp/lorafam-bench.lock python -m benchmarks.train_step --tiny --parts time,gen   # smoke run

Writes ``benchmarks/results/train_step.json`` (``train_step_tiny.json`` with ``--tiny``) and the ``train-step``
section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from typing import Any

import torch

from benchmarks.common import (
    RESULTS,
    child_report,
    count_flops,
    interleaved,
    machine_info,
    matmul_gflops,
    python,
    run_child,
    write_json,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IMPLS = ("lorafam", "peft")
METHODS = ("lora", "dora")
PRECISIONS = ("fp32", "bf16")  # bf16 = torch.autocast("cpu", bfloat16) (+ cast_frozen for lorafam)


# ---------------------------------------------------------------------------------------------------------------
# models and steps
# ---------------------------------------------------------------------------------------------------------------
def load_base(tiny: bool) -> torch.nn.Module:
    import lorafam as lf

    if tiny:  # Llama architecture, small enough for a smoke run
        return lf.tiny_llama(vocab_size=256, hidden=128, layers=2, heads=4, kv_heads=2, intermediate=256)
    return lf.load_model()


def adapt(
    base: torch.nn.Module, impl: str, method: str, precision: str, rank: int, alpha: float
) -> torch.nn.Module:
    """A fresh adapted copy of ``base`` (the base is never modified)."""
    model = copy.deepcopy(base)
    if impl == "lorafam":
        import lorafam as lf

        cfg_cls = lf.DoraConfig if method == "dora" else lf.LoraConfig
        lf.attach(model, cfg_cls(rank=rank, alpha=alpha, targets=list(TARGETS)))
        if precision == "bf16":
            lf.cast_frozen(model, torch.bfloat16)
    elif impl == "peft":
        from peft import LoraConfig, get_peft_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(
                model,
                LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), use_dora=method == "dora"),
            )
    else:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return model.train()


class Trainer:
    """One configuration: model + AdamW (same optimizer class and settings for both libraries)."""

    def __init__(self, model: torch.nn.Module, precision: str, batches: list[torch.Tensor]):
        self.model = model
        self.autocast = precision == "bf16"
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        self.batches = batches
        self.i = 0
        self.last_loss = float("nan")

    def step(self) -> float:
        ids = self.batches[self.i % len(self.batches)]
        self.i += 1
        with torch.autocast("cpu", torch.bfloat16, enabled=self.autocast):
            loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = float(loss.detach())
        return self.last_loss


def random_batches(vocab: int, batch: int, seq: int, n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------------------
# part: time
# ---------------------------------------------------------------------------------------------------------------
def part_time(base: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    vocab = base.config.vocab_size
    batches = random_batches(vocab, args.batch, args.seq)
    out: dict[str, Any] = {"matmul_gflops_before": _matmul_ref(base, args.batch * args.seq)}

    fp32 = {f"{impl} {method} fp32": (impl, method, "fp32") for method in METHODS for impl in IMPLS}
    trainers = {k: Trainer(adapt(base, *v, args.rank, args.alpha), v[2], batches) for k, v in fp32.items()}
    print(f"[time] fp32 group: {list(trainers)}  ({args.repeats} rounds)", flush=True)
    out["fp32"] = interleaved({k: t.step for k, t in trainers.items()}, repeats=args.repeats, warmup=1)
    out["flops_per_step"] = {
        k: count_flops(trainers[k].step) for k in ("lorafam lora fp32", "lorafam dora fp32", "peft lora fp32")
    }
    del trainers

    if args.bf16_repeats > 0:
        group = {
            "lorafam lora bf16": ("lorafam", "lora", "bf16"),
            "peft lora bf16": ("peft", "lora", "bf16"),
            "peft lora fp32": ("peft", "lora", "fp32"),
        }
        trainers = {k: Trainer(adapt(base, *v, args.rank, args.alpha), v[2], batches) for k, v in group.items()}
        print(f"[time] bf16 group: {list(trainers)}  ({args.bf16_repeats} rounds)", flush=True)
        out["bf16"] = interleaved(
            {k: t.step for k, t in trainers.items()}, repeats=args.bf16_repeats, warmup=args.bf16_warmup
        )
        out["flops_per_step"]["lorafam lora bf16"] = count_flops(trainers["lorafam lora bf16"].step)
        del trainers
    out["matmul_gflops_after"] = _matmul_ref()
    print_gflops(out)
    return out


def _matmul_ref(base: torch.nn.Module | None = None, n_tokens: int = 1024) -> dict[str, Any]:
    """The machine's GEMM peak: one MLP projection, and (with ``base``) the model's own GEMM shapes, fp32 and bf16."""
    ref: dict[str, Any] = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    if base is not None:
        from benchmarks.common import gemm_peak
        from benchmarks.speed_parts import model_gemm_shapes

        shapes, counts = model_gemm_shapes(base.config, n_tokens)
        ref["model_shapes"] = gemm_peak(shapes, (torch.float32, torch.bfloat16), rounds=3, weights=counts)
    return ref


def print_gflops(out: dict[str, Any]) -> None:
    """Each configuration's achieved GFLOP/s beside this machine's GEMM peak at the model's shapes."""
    peak = out["matmul_gflops_before"].get("model_shapes", {})
    for group in ("fp32", "bf16"):
        for name, v in out.get(group, {}).items():
            flops = out["flops_per_step"].get(name)
            if flops is None:
                continue
            dt = "bfloat16" if name.endswith("bf16") else "float32"
            achieved = flops / v["median_s"] / 1e9
            ref = peak.get(dt, {}).get("peak_gflops")
            share = (
                f" = {100 * achieved / ref:.0f}% of the {dt} GEMM peak at the model's shapes ({ref:.1f})"
                if ref
                else ""
            )
            print(f"[time] {name:<20} {achieved:6.1f} GFLOP/s{share}", flush=True)


# ---------------------------------------------------------------------------------------------------------------
# part: rss (each configuration in its own process)
# ---------------------------------------------------------------------------------------------------------------
def child_rss(args: argparse.Namespace) -> None:
    base = load_base(args.tiny)
    if args.impl == "base":  # the frozen model alone: what loading costs
        child_report({"config": "base model loaded", "steps": 0})
        return
    model = adapt(base, args.impl, args.method, args.precision, args.rank, args.alpha)
    del base
    trainer = Trainer(model, args.precision, random_batches(model.config.vocab_size, args.batch, args.seq))
    times = []
    for _ in range(args.rss_steps):
        t = time.perf_counter()
        trainer.step()
        times.append(time.perf_counter() - t)
    child_report(
        {"config": f"{args.impl} {args.method} {args.precision}", "steps": args.rss_steps, "step_s": times}
    )


def part_rss(args: argparse.Namespace) -> dict[str, Any]:
    configs = [("base", "lora", "fp32")]
    configs += [(impl, method, "fp32") for method in METHODS for impl in IMPLS]
    if args.bf16_repeats > 0:
        configs += [("lorafam", "lora", "bf16"), ("peft", "lora", "bf16")]
    out: dict[str, Any] = {}
    for impl, method, precision in configs:
        argv = [python(), "-m", "benchmarks.train_step", "--child-rss", "--impl", impl, "--method", method]
        steps = args.rss_steps if precision == "fp32" else args.rss_steps_bf16
        argv += ["--precision", precision, "--rss-steps", str(steps), "--batch", str(args.batch)]
        argv += ["--seq", str(args.seq), "--rank", str(args.rank), "--alpha", str(args.alpha)]
        argv += ["--threads", str(torch.get_num_threads())] + (["--tiny"] if args.tiny else [])
        key = "base model loaded" if impl == "base" else f"{impl} {method} {precision}"
        r = run_child(argv)
        if r["returncode"] != 0:
            raise RuntimeError(f"rss child {key} failed:\n{r['stderr_tail']}")
        out[key] = {"peak_rss_mib": r["peak_rss_mib"], "wall_s": r["wall_s"], "step_s": r["result"].get("step_s")}
        print(f"[rss] {key:<24} peak {r['peak_rss_mib']:8.0f} MiB", flush=True)
    return out


# ---------------------------------------------------------------------------------------------------------------
def summary(data: dict[str, Any]) -> dict[str, Any]:
    """The target ratios, all from this run."""
    s: dict[str, Any] = {}
    t = data.get("time")
    if t:
        med = {k: v["median_s"] for k, v in t["fp32"].items()}
        s["lora_fp32_step_vs_peft"] = med["lorafam lora fp32"] / med["peft lora fp32"]
        s["dora_step_vs_our_lora"] = med["lorafam dora fp32"] / med["lorafam lora fp32"]
        s["peft_dora_step_vs_peft_lora"] = med["peft dora fp32"] / med["peft lora fp32"]
        s["dora_fp32_step_vs_peft_dora"] = med["lorafam dora fp32"] / med["peft dora fp32"]
        s["achieved_gflops"] = {k: t["flops_per_step"][k] / med[k] / 1e9 for k in t["flops_per_step"] if k in med}
        if "bf16" in t:
            b = {k: v["median_s"] for k, v in t["bf16"].items()}
            s["lora_bf16_step_vs_peft_fp32"] = b["lorafam lora bf16"] / b["peft lora fp32"]
            s["peft_bf16_step_vs_peft_fp32"] = b["peft lora bf16"] / b["peft lora fp32"]
            s["achieved_gflops"]["lorafam lora bf16"] = (
                t["flops_per_step"]["lorafam lora bf16"] / b["lorafam lora bf16"] / 1e9
            )
    r = data.get("rss")
    if r:
        s["lora_rss_vs_peft"] = r["lorafam lora fp32"]["peak_rss_mib"] / r["peft lora fp32"]["peak_rss_mib"]
        s["dora_rss_vs_our_lora"] = r["lorafam dora fp32"]["peak_rss_mib"] / r["lorafam lora fp32"]["peak_rss_mib"]
        s["peft_dora_rss_vs_peft_lora"] = r["peft dora fp32"]["peak_rss_mib"] / r["peft lora fp32"]["peak_rss_mib"]
    g = data.get("gen")
    if g:
        s["gen_x_base"] = {k: v["x_base"] for k, v in g["results"].items()}
    lo = data.get("loss")
    if lo:
        s["bf16_loss_rel_diff"] = lo["rel_diff"]
    return s


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default="time,rss,gen,loss", help="comma list of: time, rss, gen, loss")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--repeats", type=int, default=4, help="interleaved rounds of the fp32 step group")
    ap.add_argument("--bf16-repeats", type=int, default=2, help="rounds of the bf16 group (0 skips bf16)")
    ap.add_argument("--bf16-warmup", type=int, default=1, help="untimed rounds before the bf16 group")
    ap.add_argument("--rss-steps", type=int, default=2, help="train steps per peak-RSS child")
    ap.add_argument("--rss-steps-bf16", type=int, default=1, help="train steps per bf16 peak-RSS child")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--gen-repeats", type=int, default=5)
    ap.add_argument("--loss-steps", type=int, default=20)
    ap.add_argument("--loss-batch", type=int, default=2, help="smaller than --batch: bf16 is slow on AVX2 CPUs")
    ap.add_argument("--loss-seq", type=int, default=128)
    ap.add_argument("--loss-lr", type=float, default=2e-4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2 (smoke run)")
    ap.add_argument("--no-markdown", action="store_true", help="do not touch BENCHMARKS.md")
    # child mode (peak RSS of one configuration)
    ap.add_argument("--child-rss", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", choices=(*IMPLS, "base"), default="lorafam", help=argparse.SUPPRESS)
    ap.add_argument("--method", choices=METHODS, default="lora", help=argparse.SUPPRESS)
    ap.add_argument("--precision", choices=PRECISIONS, default="fp32", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*register_constant.*")
    if args.child_rss:
        child_rss(args)
        return 0

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"time", "rss", "gen", "loss"})
    if unknown:
        ap.error(f"--parts: unknown {unknown}; choose from time, rss, gen, loss")
    out_path = RESULTS / ("train_step_tiny.json" if args.tiny else "train_step.json")
    import lorafam as lf

    t0 = time.perf_counter()
    base = load_base(args.tiny)
    tok = None if args.tiny else lf.load_tokenizer()
    data: dict[str, Any] = {
        "benchmark": "train_step",
        "command": "python -m benchmarks.train_step " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {
            "model": "tiny_llama" if args.tiny else "SmolLM2-135M-Instruct",
            "batch": args.batch,
            "seq": args.seq,
            "rank": args.rank,
            "alpha": args.alpha,
            "targets": TARGETS,
            "optimizer": "torch.optim.AdamW(lr=1e-4) over trainable parameters, both libraries",
            "repeats": args.repeats,
            "bf16_repeats": args.bf16_repeats,
            "rss_steps": {"fp32": args.rss_steps, "bf16": args.rss_steps_bf16},
            "gen_repeats": args.gen_repeats,
        },
        "machine": machine_info(),
    }
    if "time" in parts:
        data["time"] = part_time(base, args)
    if "gen" in parts:
        from benchmarks.train_step_gen import part_gen

        data["gen"] = part_gen(base, tok, args)
    if "loss" in parts:
        from benchmarks.train_step_parts import part_loss

        data["loss"] = part_loss(base, tok, args)
    if "rss" in parts:
        del base
        data["rss"] = part_rss(args)
    data["summary"] = summary(data)
    data["wall_s"] = time.perf_counter() - t0
    if out_path.exists() and set(parts) != {"time", "rss", "gen", "loss"}:  # a partial run keeps other parts
        import json

        old = json.loads(out_path.read_text())
        for k in ("time", "rss", "gen", "loss"):
            if k not in data and k in old:
                data[k] = old[k]
                data.setdefault("parts_from_earlier_runs", {})[k] = old.get("machine", {}).get("time_utc")
        data["summary"] = summary(data)
    write_json(out_path, data)
    print(f"wrote {out_path}")
    if not args.no_markdown and not args.tiny:
        from benchmarks.train_step_report import write_markdown

        write_markdown(data)
    for k, v in data["summary"].items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
