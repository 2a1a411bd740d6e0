"""``torch_compile: true``: the model body runs as one inductor-compiled graph during training.

What is compiled is the module :func:`lorafam.train.loss.causal_lm_loss` calls for hidden states (the decoder
body, ``model.base_model``: embeddings, every layer with its adapters, the final norm), compiled *in place*
(``nn.Module.compile``), so the module tree, parameter names, ``state_dict`` and checkpoints are exactly those of
the eager model. The output head and the cross-entropy stay eager: they are one chunked matmul pair
(:class:`lorafam.train.loss._ChunkedHeadCE`), which compilation cannot shorten.

Why: eager PyTorch runs every elementwise operation around the matmuls (RMSNorm's six, RoPE's rotate-and-add,
SiLU times up, the residual adds, autocast's casts) as its own kernel over the activations. Inductor fuses them.
Measured on an Intel Xeon with AMX (bf16 regime, SmolLM2-135M, LoRA r=16 on all seven projections, 1 × 256
tokens, 1 thread): 0.65 s per step compiled against 0.82 s eager; compiling took 85 s of the first step
(docs/performance.md).

The cost is that first step, and one more compilation when the batch shape first changes (dynamo then makes the
sequence length a symbolic size, so later lengths reuse that graph). ``lorafam train examples/lora.yaml
bf16=true torch_compile=true`` on the same machine: 0.91 s per step against 1.15 s eager, after 235 s of
compiling on a cold inductor cache (28 s with a warm one). Short runs do not win it back; long runs do.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def compiled_part(model: nn.Module) -> nn.Module:
    """The module that ``torch_compile`` compiles: the body a causal-LM loss calls, else the model itself."""
    from lorafam.train.loss import _body_and_head

    parts = _body_and_head(model)
    return parts[0] if parts is not None else model


def compile_for_training(model: nn.Module, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """Compile the body of ``model`` in place for training (see the module docstring); returns that body.

    Args:
        model: an adapted causal LM (after ``attach`` and, in the bf16 regime, ``cast_frozen``).
        backend: a ``torch.compile`` backend name.
        mode: a ``torch.compile`` mode (None, ``"default"``, ``"reduce-overhead"``, ``"max-autotune"``...).

    Raises:
        ValueError: an unknown backend, naming the valid ones.
    """
    import torch

    valid = torch._dynamo.list_backends(exclude_tags=())
    if backend not in valid:
        raise ValueError(f"torch_compile_backend={backend!r} is not a torch.compile backend here; valid: {valid}")
    part = compiled_part(model)
    kwargs: dict[str, Any] = {"backend": backend}
    if mode is not None:
        kwargs["mode"] = mode
    part.compile(**kwargs)
    return part


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` (or the body :func:`compile_for_training` compiles) has a compiled call."""
    return getattr(compiled_part(module), "_compiled_call_impl", None) is not None
