"""tune_allocator: glibc mallopt so that freed activations are reused instead of page-faulted in again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from lorafam.core import allocator
from lorafam.core.allocator import AllocatorTuning

GLIBC = allocator._libc() is not None
_PYTHONPATH = {k: v for k, v in os.environ.items() if k == "PYTHONPATH"}  # a checkout run without installing


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"LORAFAM_TUNE_MALLOC": "0"}, "opted out"),
        ({"LORAFAM_TUNE_MALLOC": "off"}, "opted out"),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "jemalloc"),
    ],
)
def test_the_users_choice_is_left_alone(env: dict[str, str], reason: str) -> None:
    got = allocator._decide(env)
    assert not got.applied and not got.settings
    assert reason in got.reason


# The check runs in a fresh interpreter: mallopt is process-wide, and this one's heap has a history.
_FAULTS = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    if sys.argv[1] == "tuned":
        from lorafam.core.allocator import tune_allocator
        r = tune_allocator()
        assert r.applied, r.reason
        assert tune_allocator() is r  # idempotent
    mib, count = int(sys.argv[2]), int(sys.argv[3])
    def step():  # what a training step does to its activations: fresh buffers, written, freed
        xs = [torch.empty(mib << 18).fill_(1.0) for _ in range(count)]  # count x mib MiB of fp32
        del xs
    for _ in range(3):  # warm-up: the heap grows to the steps' size (its layout can settle for a step or two)
        step()
    faults = []
    for _ in range(7):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        step()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps(sorted(faults)[3]))  # the median step
    """
)


def _faults_per_step(mode: str, mib: int = 32, count: int = 4) -> float:
    """Minor page faults of the median step (``count`` blocks of ``mib`` MiB), in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", _FAULTS, mode, str(mib), str(count)], capture_output=True, text=True, check=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "LORAFAM_TUNE_MALLOC": "1", **_PYTHONPATH},
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere tune_allocator is a no-op")
def test_tuned_steps_reuse_their_memory_where_the_default_faults_it_in_again() -> None:
    default, tuned = _faults_per_step("default"), _faults_per_step("tuned")
    pages = 4 * (32 << 20) // 4096  # 32768 pages of 4 KiB are written per step
    assert default > pages / 2  # glibc unmaps blocks this large on free: every step faults them in again
    assert tuned < pages / 100  # tuned: the freed blocks stay in the heap and are reused as they are


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's; elsewhere tune_allocator is a no-op")
def test_the_heap_top_is_kept_however_much_is_freed_at_once() -> None:
    # a LongLoRA step at 4096 tokens frees several 805 MB logits-sized buffers together, more than the largest
    # finite trim threshold mallopt takes (2 GiB - 1): with that cap such a step faulted 380,000-800,000 pages
    # back in, and a toy like this one in some runs (it depends on what else lies at the heap's top); with
    # "never trim" none, deterministically. 3 x 768 MiB here
    tuned = _faults_per_step("tuned", 768, 3)
    pages = 3 * (768 << 20) // 4096
    assert tuned < pages / 100


@pytest.mark.skipif(GLIBC, reason="the no-op case of a platform without glibc")
def test_elsewhere_it_is_a_no_op() -> None:
    got = allocator._decide({})
    assert got == AllocatorTuning(False, got.reason) and "not glibc" in got.reason


_HOLES = textwrap.dedent(
    """
    from lorafam.core.allocator import tune_allocator, trim_heap

    def anon_mib():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                return int(line.split()[1]) // 1024

    assert tune_allocator().applied
    temps, keep = [], []
    for _ in range(10):  # a quantiser's pattern: a large temporary, then a small tensor that stays
        temps.append(bytearray(32 << 20))  # zero-filled: every page is touched
        keep.append(bytearray(1 << 20))
    del temps  # ten 32 MiB holes between the keepers: never trimmed, and resident
    before = anon_mib()
    released = trim_heap()
    print(released, before, anon_mib())
    """
)


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_trim_heap_releases_the_holes_between_live_blocks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HOLES], capture_output=True, text=True, check=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "LORAFAM_TUNE_MALLOC": "1", **_PYTHONPATH},
    )  # fmt: skip
    released, before, after = done.stdout.split()
    assert released == "True"
    assert int(before) - int(after) > 0.9 * 10 * 32  # the holes' pages left the resident set


def test_quantising_a_layer_trims_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch import nn

    from lorafam.quant import nf4

    calls: list[int] = []
    monkeypatch.setattr(nf4, "trim_heap", lambda: calls.append(1) or True)
    nf4.quantize_base(nn.Linear(64, 128, bias=False).requires_grad_(False))
    nf4.quantize_base(nn.Linear(128, 64).requires_grad_(False))
    assert len(calls) == 2
