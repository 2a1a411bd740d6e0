"""NF4 with double quantisation written literally, block by block, sharing no code with src.

QLoRA (Dettmers et al., NeurIPS 2023, arXiv 2305.14314) §3:
    NormalFloat code book q_k: quantiles of N(0, 1) rescaled to [-1, 1], 7 negative values, exact 0, 8 positive.
    block-wise absmax:    c₁ = max_j |W_j| over each block of 64 values,
    code index:           idx_j = argmin_k | W_j / c₁ − q_k |,
    dequantisation:       W'_j = q[idx_j] · c₁'.
Double quantisation as torchao implements it (the paper's variant quantises c₁ to FP8 in blocks of 256; torchao
uses symmetric int8, which is what we store — FAMILY.md §2):
    μ = mean(c₁);  per block of 256 scales: f = 256 / (2 · max |c₁ − μ|),  c₁q = clamp(round((c₁ − μ) · f), −128, 127)
    c₁' = c₁q / f + μ
"""

from __future__ import annotations

import torch

# bitsandbytes' full-precision NF4 table (functional.py get_4bit_type("nf4")), the values from the paper's construction
NF4_PAPER = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]  # fmt: skip
# torchao stores the table rounded to 4 decimals
NF4_TORCHAO = [round(v, 4) for v in NF4_PAPER]


def quantize_dequantize(w: torch.Tensor, block: int = 64, scaler_block: int = 256) -> torch.Tensor:
    """Quantise ``w`` (numel a multiple of block · scaler_block) and return the dequantised tensor W'."""
    flat = w.detach().float().reshape(-1)
    n_blocks = flat.numel() // block
    code = torch.tensor(NF4_TORCHAO, dtype=torch.float32)
    absmax = torch.zeros(n_blocks)
    idx = torch.zeros(flat.numel(), dtype=torch.long)
    for b in range(n_blocks):
        vals = flat[b * block : (b + 1) * block]
        absmax[b] = vals.abs().max()
        for j in range(block):
            idx[b * block + j] = int(torch.argmin((vals[j] / absmax[b] - code).abs()))
    mean = absmax.mean()
    scales = torch.zeros(n_blocks)
    for s in range(n_blocks // scaler_block):
        centred = absmax[s * scaler_block : (s + 1) * scaler_block] - mean
        factor = 256 / (2 * centred.abs().max())
        q = (centred * factor).round().clamp(-128, 127)
        scales[s * scaler_block : (s + 1) * scaler_block] = q / factor + mean
    out = torch.zeros_like(flat)
    for i in range(flat.numel()):
        out[i] = code[idx[i]] * scales[i // block]
    return out.view(w.shape)
