"""glibc malloc settings for a training or serving process (see docs/performance.md, "The allocator").

A training step allocates and frees the same few hundred MB of activations and gradients every step. With
glibc's default thresholds, a freed block at the top of the heap beyond 128 KiB-32 MiB (the trim threshold,
which follows the mmap threshold upwards) is handed back to the kernel, and a block above the mmap threshold is
its own mapping that ``free`` unmaps. The next step asks for the same memory again and touches it through
minor page faults: on SmolLM2-135M, LoRA r=16, 37,000-49,000 faults per step at 1 x 256 tokens (1 thread) and
196,600 (770 MB) at 4 x 256 (2 threads). :func:`tune_allocator` keeps that memory in the process instead
(``mallopt``: allocations up to 1 GiB come from the heap, and the heap is never trimmed): 0-1 faults per
step. In ``python -m benchmarks.allocator``: on an Intel Xeon with AMX, LoRA and DoRA steps 2.5-4 % faster for
5-11 % more peak RSS with a 2 GiB trim cap (``allocator_session8.json``) and 5-7 % at 1 x 256, 16-22 % at 4 x 256
for 7-8 % more with never-trim (``allocator_session10.json``); on an AMD EPYC Zen 4, no gain at 1 x 256 and 4-15 %
at 4 x 256 for 4-6 % more (``allocator_session9.json``, all in ``benchmarks/results/``). At 4096 tokens (LongLoRA) it is
what keeps the logits-sized buffers from being faulted in again at every step.

This is what jemalloc or tcmalloc under ``LD_PRELOAD`` also buy (PyTorch's CPU tuning guide suggests them);
``mallopt`` needs no extra library. Only glibc has it: elsewhere (macOS, musl, Windows) this is a no-op, and so
it is when the user already chose (``MALLOC_*_`` environment variables, a preloaded allocator) or opted out
with ``LORAFAM_TUNE_MALLOC=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from dataclasses import dataclass, field

__all__ = ["AllocatorTuning", "tune_allocator"]

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # bytes: allocations below this come from the heap (reused, not unmapped on free)
# bytes of free heap top kept before trimming; -1 is glibc's "never trim" (mallopt(3)). A cap of 2 GiB - 1 (the
# largest C int) was not enough: a LongLoRA step at 4096 tokens frees several 805 MB logits-sized buffers at
# once, the heap top was trimmed, and every step faulted 380,000-800,000 pages (1.5-3 GB) back in
TRIM_THRESHOLD = -1
_SETTINGS = (
    ("M_MMAP_THRESHOLD", M_MMAP_THRESHOLD, MMAP_THRESHOLD),
    ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, TRIM_THRESHOLD),
)
OPT_OUT = "LORAFAM_TUNE_MALLOC"
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class AllocatorTuning:
    """What :func:`tune_allocator` did: ``applied`` with the ``settings`` it made, or why not (``reason``)."""

    applied: bool
    reason: str
    settings: dict[str, int] = field(default_factory=dict)


_DONE: AllocatorTuning | None = None


@functools.cache  # find_library runs ldconfig: once per process
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    # glibc exports gnu_get_libc_version; musl and others do not (their mallopt, if any, ignores these numbers)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def tune_allocator(environ: dict[str, str] | None = None) -> AllocatorTuning:
    """Keep freed activation memory in the process (glibc ``mallopt``) so that steps stop page-faulting.

    Idempotent: the first call decides and later calls return its record. Call it early, before the model is
    built (settings apply to allocations made afterwards). ``lorafam``'s CLI calls it for every command.
    ``environ`` (default ``os.environ``) is where the opt-out and the user's own allocator settings are read.
    """
    global _DONE
    if _DONE is not None:
        return _DONE
    env = os.environ if environ is None else environ
    _DONE = _decide(env)
    return _DONE


def _decide(env: os._Environ[str] | dict[str, str]) -> AllocatorTuning:
    if env.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return AllocatorTuning(False, f"{OPT_OUT}={env[OPT_OUT]} (opted out)")
    own = [k for k in _USER_SETTINGS if k in env]
    if own:
        return AllocatorTuning(False, f"left to the user's own settings: {', '.join(own)}")
    preload = env.get("LD_PRELOAD", "")
    other = [a for a in _OTHER_ALLOCATORS if a in preload]
    if other:
        return AllocatorTuning(False, f"another allocator is preloaded ({other[0]}: LD_PRELOAD={preload})")
    libc = _libc()
    if libc is None:
        return AllocatorTuning(False, f"not glibc ({sys.platform}): nothing to tune")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    refused = [name for name, number, value in _SETTINGS if libc.mallopt(number, value) != 1]
    if refused:
        return AllocatorTuning(False, f"glibc refused mallopt({', '.join(refused)})")
    settings = {name: value for name, _, value in _SETTINGS}
    return AllocatorTuning(True, "glibc: freed activations stay in the heap", settings)


def trim_heap() -> bool:
    """Hand the heap's free pages back to the kernel now (glibc ``malloc_trim(0)``, which also releases free
    pages inside the heap, not only at its top). True where it released something; False elsewhere.

    Quantising a base layer by layer frees tens of MB of temporaries per layer between long-lived packed
    tensors. With :func:`tune_allocator`'s settings those temporaries come from the heap, and in some runs the
    freed holes were not reused: the heap grew, and QLoRA's peak RSS while attaching went from 1.1 GB to
    1.8-2.7 GB on SmolLM2-135M (session 10, same command, three runs in eight). Trimming after each layer keeps
    the holes out of the resident set (:func:`lorafam.quant.nf4.quantize_base`)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return bool(libc.malloc_trim(0))
