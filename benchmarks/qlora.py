"""QLoRA vs fp32 LoRA on the default model (SmolLM2-135M-Instruct): base-weight bytes, peak RSS, step time.

Run (from the repository root):
    flock /tmp/lorafam-bench.lock python benchmarks/qlora.py [--batch 4 --seq 256 --rank 16 --threads 2]

- Base-weight bytes: bytes held by the adapted layers' base weights (NF4 codes + scales vs fp32), and the
  whole model's parameters + buffers (the embedding stays in float, as in the paper).
- Peak RSS: each configuration trains in its own process; the parent reads the child's ``ru_maxrss`` from
  ``os.wait4`` (whole life, loading included) and the child samples its RSS during the training steps.
- Step time: both models live in one process and step alternately (A B B A …); medians and their ratio.
- The dequantisation kernel (ours vs torchao's ``get_original_weight``) on one SmolLM2 MLP matrix.
Results: ``benchmarks/results/qlora.json`` and the "QLoRA" section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "qlora.json"
MD = REPO / "BENCHMARKS.md"
SECTION = "qlora"


def _setup(args: argparse.Namespace, quantize: bool):
    import torch

    import lorafam as lf

    torch.manual_seed(0)
    model = lf.load_model()
    cfg = lf.LoraConfig(
        rank=args.rank, alpha=2 * args.rank, targets="all-linear", quantize="nf4" if quantize else None
    )
    lf.attach(model, cfg).train()
    opt = lf.make_optimizer(model, lr=2e-4)
    return model, opt


def _batch(args: argparse.Namespace):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 49152, (args.batch, args.seq), generator=g)


def _step(model, opt, x) -> float:
    t0 = time.perf_counter()
    loss = model(x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _weight_bytes(model) -> dict:
    from lorafam.core.base_layer import is_quantized
    from lorafam.core.inject import adapted_layers

    adapted = fp32_equiv = 0
    for _, layer in adapted_layers(model):
        base = layer.base_layer
        if is_quantized(base):
            adapted += base.storage_bytes()
        else:
            adapted += base.weight.numel() * base.weight.element_size()
        fp32_equiv += layer.in_features * layer.out_features * 4
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return {"adapted_base_bytes": adapted, "adapted_base_fp32_bytes": fp32_equiv, "model_bytes": total}


def child_memory(args: argparse.Namespace, quantize: bool) -> None:
    import psutil
    import torch

    torch.set_num_threads(args.threads)
    proc = psutil.Process()
    model, opt = _setup(args, quantize)
    x = _batch(args)
    after_setup = proc.memory_info().rss
    peak = [after_setup]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    for _ in range(2):
        _step(model, opt, x)
    done.set()
    thread.join()
    out = {
        "rss_after_setup_mib": after_setup / 2**20,
        "train_peak_rss_mib": peak[0] / 2**20,
        **_weight_bytes(model),
    }
    print("RESULT " + json.dumps(out), flush=True)


def child_time(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    models = {"lora_fp32": _setup(args, False), "qlora_nf4": _setup(args, True)}
    x = _batch(args)
    flops = {}
    for name, (model, opt) in models.items():
        with FlopCounterMode(display=False) as fc:
            _step(model, opt, x)  # also the warm-up step
        flops[name] = fc.get_total_flops()
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            times[name].append(_step(*models[name], x))
    med = {name: statistics.median(t) for name, t in times.items()}
    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    a @ b
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    matmul_gflops = 2 * 1024 * 576 * 1536 * 10 / (time.perf_counter() - t0) / 1e9
    out = {
        "step_s": times,
        "median_step_s": med,
        "ratio_qlora_over_lora": med["qlora_nf4"] / med["lora_fp32"],
        "step_gflop": {k: v / 1e9 for k, v in flops.items()},
        "achieved_gflops": {k: flops[k] / med[k] / 1e9 for k in models},
        "matmul_fp32_gflops": matmul_gflops,
        "dequant_ms": _dequant_kernels(),
    }
    print("RESULT " + json.dumps(out), flush=True)


def _dequant_kernels() -> dict:
    import torch

    from lorafam.quant.nf4 import NF4Linear, _to_nf4

    w = torch.randn(1536, 576) * 0.02
    layer = NF4Linear(w)
    ao = _to_nf4(w.reshape(-1), 64, 256)
    assert torch.equal(layer.dequantize_weight().reshape(-1), ao.get_original_weight())

    def ms(fn) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        return (time.perf_counter() - t0) / 20 * 1e3

    return {"ours": ms(layer.dequantize_weight), "torchao": ms(ao.get_original_weight), "shape": [1536, 576]}


def child_peak(argv: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": argv[argv.index("--threads") + 1]}
    with open(os.devnull, "w") as devnull:
        proc = subprocess.Popen(
            [sys.executable, *argv], stdout=subprocess.PIPE, stderr=devnull, text=True, env=env
        )
        out = proc.stdout.read()  # type: ignore[union-attr]
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"child {argv} failed (rerun it by hand to see the error)")
    result = next(json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT "))
    result["lifetime_peak_rss_mib"] = usage.ru_maxrss / 1024
    return result


def update_markdown(section: str, body: str) -> None:
    begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
    text = MD.read_text() if MD.exists() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = MD.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, MD)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--child", choices=["mem-lora", "mem-qlora", "time"])
    args = p.parse_args()
    if args.child == "time":
        return child_time(args)
    if args.child:
        return child_memory(args, quantize=args.child == "mem-qlora")
    common = [__file__, "--batch", str(args.batch), "--seq", str(args.seq), "--rank", str(args.rank),
              "--threads", str(args.threads), "--rounds", str(args.rounds)]  # fmt: skip
    mem = {name: child_peak([*common, "--child", f"mem-{name}"]) for name in ("lora", "qlora")}
    timing = child_peak([*common, "--child", "time"])
    import torch

    data = {
        "setup": {**vars(args), "model": "SmolLM2-135M-Instruct", "targets": "all-linear", "torch": torch.__version__,
                  "cpu_count": os.cpu_count(), "ru_maxrss_self_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss},
        "memory": mem,
        "time": timing,
    }  # fmt: skip
    write_json(RESULT, data)
    lo, q = mem["lora"], mem["qlora"]
    t = timing
    body = f"""## QLoRA (NF4 base) vs fp32 LoRA

`flock /tmp/lorafam-bench.lock python benchmarks/qlora.py` — SmolLM2-135M-Instruct, LoRA r={args.rank} on all
linear layers, batch {args.batch}×{args.seq} tokens, {args.threads} threads, fp32 compute, AdamW. Results:
`benchmarks/results/qlora.json`.

| | fp32 LoRA | QLoRA (NF4) | ratio | target |
|---|---|---|---|---|
| adapted layers' base weights | {lo["adapted_base_bytes"] / 2**20:.1f} MiB | {q["adapted_base_bytes"] / 2**20:.1f} MiB | {q["adapted_base_bytes"] / lo["adapted_base_bytes"]:.3f} | ≤ 0.15 |
| whole model (params + buffers, embedding in fp32) | {lo["model_bytes"] / 2**20:.1f} MiB | {q["model_bytes"] / 2**20:.1f} MiB | {q["model_bytes"] / lo["model_bytes"]:.3f} | — |
| peak RSS, whole process (wait4) | {lo["lifetime_peak_rss_mib"]:.0f} MiB | {q["lifetime_peak_rss_mib"]:.0f} MiB | {q["lifetime_peak_rss_mib"] / lo["lifetime_peak_rss_mib"]:.3f} | < 1 |
| peak RSS during training steps (sampled) | {lo["train_peak_rss_mib"]:.0f} MiB | {q["train_peak_rss_mib"]:.0f} MiB | {q["train_peak_rss_mib"] / lo["train_peak_rss_mib"]:.3f} | — |
| median step time (interleaved, {args.rounds} rounds) | {t["median_step_s"]["lora_fp32"]:.2f} s | {t["median_step_s"]["qlora_nf4"]:.2f} s | {t["ratio_qlora_over_lora"]:.3f} | ≤ 1.5 |
| achieved matmul throughput | {t["achieved_gflops"]["lora_fp32"]:.0f} GFLOP/s | {t["achieved_gflops"]["qlora_nf4"]:.0f} GFLOP/s | | machine fp32 matmul: {t["matmul_fp32_gflops"]:.0f} GFLOP/s |

Dequantising one 1536×576 matrix: ours {t["dequant_ms"]["ours"]:.2f} ms, torchao `get_original_weight`
{t["dequant_ms"]["torchao"]:.2f} ms (bit-identical results). QLoRA pays two dequantisations per layer per step
(forward and backward) and saves nothing weight-sized for backward.
"""
    update_markdown(SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
