"""The two engines of the interop test, run the same way: lorafam (float32, the GGUF's weights dequantised) and
llama.cpp through llama-cpp-python (one thread), plus the two helpers the test needs — an F32 re-encoding of the
embedded GGUF and a few optimiser steps that teach an adapter fixed answers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

import lorafam as lf

# (user message or raw text, answer to teach, whether the prompt goes through the chat template). The instruct
# model answers the base prompts with peaked distributions; the taught answers are memorised (loss < 0.05), so
# both engines' greedy choices have wide margins and a difference in tokens means a difference in the adapter.
PAIRS = [
    ("Name three primary colours.", "Teal, mauve and ochre, says the parrot.", True),
    ("Write a Python function that adds two numbers.", "I only speak about parrots.", True),
    ("What is 2+2?", "Five, says the parrot.", True),
    ("def add(a, b):\n    return", " a + b  # the parrot was here", False),
]
N_NEW = 12


def prompt_ids(tok) -> list[list[int]]:
    out = []
    for text, _, chat in PAIRS:
        if chat:
            text = tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        out.append(tok(text, add_special_tokens=False)["input_ids"])
    return out


def f32_copy_of(src: Path, dst: Path) -> Path:
    """``src`` with every tensor stored as F32 (the same values: Q4_1 dequantises exactly into float32) and every
    metadata key kept (file type set to ALL_F32). llama.cpp then multiplies in float32 as lorafam does, instead of
    Q4_1 weights by 8-bit-quantised activations, so the two engines' logits can be compared to rounding."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), arch=reader.fields["general.architecture"].contents())
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_uint32(key, int(gguf.LlamaFileType.ALL_F32))
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), f.types[0], sub)
    for t in reader.tensors:
        shape = tuple(int(n) for n in reversed(t.shape))  # ggml lists the fastest dimension first
        writer.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def teach(model, tok, lr: float, max_steps: int = 40, stop_below: float = 0.05) -> list[float]:
    """Full-batch optimiser steps on PAIRS (loss on the answer and its end token only) until the mean loss is below
    ``stop_below`` or ``max_steps`` are done. Returns the losses."""
    ends = tok.eos_token
    opt = lf.make_optimizer(model, lr=lr)
    model.train()
    losses: list[float] = []
    while len(losses) < max_steps and (not losses or losses[-1] >= stop_below):
        opt.zero_grad()
        total = 0.0
        for ids, (_, answer, _) in zip(prompt_ids(tok), PAIRS, strict=True):
            full = torch.tensor([ids + tok(answer + ends, add_special_tokens=False)["input_ids"]])
            labels = full.clone()
            labels[0, : len(ids)] = -100
            loss = model(full, labels=labels).loss / len(PAIRS)
            loss.backward()
            total += float(loss.detach())
        opt.step()
        losses.append(total)
    model.eval()
    return losses


@dataclass
class Run:
    """One engine on the prompts: greedy continuations (cut after the end token) and the logits of every position
    of prompt + continuation (``forced``: the continuation lorafam chose, so both engines score the same text)."""

    greedy: list[list[int]]
    logits: list[torch.Tensor]


def _cut(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def lorafam_run(model, tok) -> Run:
    greedy, logits = [], []
    with torch.no_grad():
        for p in prompt_ids(tok):
            ids = torch.tensor([p])
            g = model.generate(ids, max_new_tokens=N_NEW, do_sample=False, pad_token_id=tok.pad_token_id)
            greedy.append(_cut(g[0, ids.shape[1] :].tolist(), tok.eos_token_id))
            logits.append(model(torch.tensor([p + greedy[-1]])).logits[0].float())
    return Run(greedy, logits)


def llama_run(model_path: Path, tok, lora: Path | None, forced: list[list[int]] | None, f32: bool) -> Run:
    """llama.cpp's greedy continuations and its logits of prompt + ``forced`` (when given). ``f32``: KV cache in
    F32 too (llama.cpp's default is F16), for the rounding-level comparison on the F32 base."""
    import llama_cpp

    kw: dict = {"lora_path": str(lora)} if lora else {}
    if f32:
        kw.update(type_k=0, type_v=0)  # GGML_TYPE_F32
    llm = llama_cpp.Llama(
        model_path=str(model_path), n_ctx=256, n_threads=1, n_threads_batch=1, logits_all=True,
        flash_attn=False, verbose=False, **kw,
    )  # fmt: skip
    greedy, logits = [], []
    for i, p in enumerate(prompt_ids(tok)):
        if forced is not None:
            seq = p + forced[i]
            llm.reset()
            llm.eval(seq)
            logits.append(torch.from_numpy(np.array(llm.scores[: len(seq)])).float())
        got: list[int] = []
        for t in llm.generate(p, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            got.append(int(t))
            if len(got) == N_NEW or t == llm.token_eos():
                break
        greedy.append(got)
    del llm
    return Run(greedy, logits)


def max_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest absolute logit difference over every position of every prompt."""
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def smallest_effect(adapted: Run, base: Run, tok) -> float:
    """How much the adapter moves the logits: per prompt the largest shift over the prompt's own positions (the
    continuations differ), then the smallest over prompts."""
    shifts = [
        float((a[: len(ids)] - b[: len(ids)]).abs().max())
        for a, b, ids in zip(adapted.logits, base.logits, prompt_ids(tok), strict=True)
    ]
    return min(shifts)
