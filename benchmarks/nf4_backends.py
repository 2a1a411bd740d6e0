"""torchao NF4 (ours) vs bitsandbytes Linear4bit on one SmolLM2-sized layer: speed and the input-gradient check.

bitsandbytes is not a lorafam dependency; install it aside for this probe:
    pip install --no-deps --target /tmp/bnb bitsandbytes
    flock /tmp/lorafam-bench.lock env PYTHONPATH=/tmp/bnb OMP_NUM_THREADS=1 python benchmarks/nf4_backends.py
Prints JSON: forward+backward ms (input 1024 × 576 → 1536, fp32 compute, one thread) and the max error of the
input gradient against grad · W′ in training, after an eval-mode forward, after ``inference_mode`` on 3-D input.
"""

from __future__ import annotations

import json
import time
import warnings

import bitsandbytes as bnb
import torch

from lorafam.quant.nf4 import NF4Linear


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    w = torch.nn.Linear(576, 1536, bias=False).weight.detach().clone()
    b4 = bnb.nn.Linear4bit(576, 1536, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    b4.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4", compress_statistics=True)
    b4 = b4.to("cpu")  # bitsandbytes quantises on the move to a device
    layers = {
        "torchao_nf4_lorafam": (NF4Linear(w), lambda: NF4Linear(w).dequantize_weight()),
        "bitsandbytes": (
            b4,
            lambda: bnb.functional.dequantize_4bit(b4.weight.data, b4.weight.quant_state).float(),
        ),
    }
    x = torch.randn(1024, 576)
    out = {"bitsandbytes_version": bnb.__version__}
    for name, (layer, deq) in layers.items():
        wd = deq()

        def fwd_bwd(layer=layer) -> None:
            xi = x.clone().requires_grad_(True)
            layer(xi).sum().backward()

        def grad_err(shape=(8, 576), layer=layer, wd=wd) -> float:
            xi = torch.randn(*shape).requires_grad_(True)
            g = torch.randn(*shape[:-1], 1536)
            layer(xi).backward(g)
            return float("inf") if xi.grad is None else (xi.grad - g @ wd).abs().max().item()

        layer.train()
        fwd_bwd()
        t0 = time.perf_counter()
        for _ in range(5):
            fwd_bwd()
        res = {"fwd_bwd_ms": (time.perf_counter() - t0) / 5 * 1e3, "grad_err_train": grad_err()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layer.eval()
            with torch.no_grad():
                layer(x[:8])
            layer.train()
            res["grad_err_after_eval"] = grad_err()
            layer.eval()
            with torch.inference_mode():
                layer(torch.randn(2, 8, 576))
            layer.train()
            res["grad_err_after_inference_mode_3d"] = grad_err((2, 8, 576))
        res["warnings"] = [str(c.message)[:160] for c in caught]
        out[name] = res
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
