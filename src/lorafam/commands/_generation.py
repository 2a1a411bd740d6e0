"""Generation helpers shared by ``generate``, ``chat`` and ``quickstart``: load a base (+ adapter), decode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn


class AdapterMismatchError(ValueError):
    """The adapter folder was trained on a different base model."""


def check_adapter_base(adapter_dir: str | Path, model: nn.Module, base_name: str | None) -> None:
    """Refuse an adapter whose ``base_model_name_or_path`` names another base than the one loaded."""
    cfg_file = Path(adapter_dir) / "adapter_config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: not an adapter folder (adapter_config.json missing)")
    recorded = json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    loaded = getattr(getattr(model, "config", None), "_name_or_path", None)
    if recorded and loaded and _norm(recorded) != _norm(loaded):
        given = base_name or "the embedded default"
        raise AdapterMismatchError(
            f"{adapter_dir}: this adapter was trained on base {recorded!r}, but the model loaded is {loaded!r} "
            f"(--model {given}). Pass the matching --model, or --ignore-base-mismatch if you know they are the same"
        )


def _norm(name: str) -> str:
    p = Path(name).expanduser()
    return str(p.resolve()) if p.exists() else name


def load_for_inference(
    model_name: str | None,
    adapter: str | None,
    ignore_mismatch: bool = False,
    device: str | None = None,
) -> tuple[nn.Module, Any]:
    """The base model (+ adapter when given) in eval mode, and its tokenizer."""
    import lorafam as lf

    model = lf.load_model(model_name, device=device)
    tok = lf.load_tokenizer(model_name)
    if adapter:
        if not ignore_mismatch:
            check_adapter_base(adapter, model, model_name)
        lf.load_adapter(model, adapter)
    return model.eval(), tok


def chat_prompt(tok: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


@torch.no_grad()
def generate_batch(
    model: nn.Module,
    tok: Any,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    batch_size: int = 16,
) -> list[str]:
    """Greedy (or sampled) completions of already-rendered prompts, batched with left padding."""
    outs: list[str] = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(prompts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(next(model.parameters()).device) for k, v in enc.items()}
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            outs += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        tok.padding_side = side
    return outs


def stream(model: nn.Module, tok: Any, prompt: str, max_new_tokens: int = 256, temperature: float = 0.0) -> str:
    """Decode one prompt, printing tokens to the terminal as they come; returns the text."""
    from transformers import TextStreamer

    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(next(model.parameters()).device)
    streamer = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(
        **enc,
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=None,
        top_k=None,
        streamer=streamer,
        pad_token_id=tok.pad_token_id,
    )
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
