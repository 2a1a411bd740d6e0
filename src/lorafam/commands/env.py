"""``lorafam env``: what a bug report needs — versions, the device, and whether bf16 is fast here."""

from __future__ import annotations

import argparse

EPILOG = """examples:
  lorafam env
  lorafam env --json > env.json"""


_PACKAGES = ("torch", "transformers", "peft", "safetensors", "gguf", "pydantic", "datasets", "tensorboard",
             "llama_cpp_python", "filelock", "numpy")  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def collect() -> dict[str, object]:
    """The environment as a flat dict (versions are None for packages that are not installed)."""
    import platform
    from importlib import metadata

    import torch

    from lorafam import __version__
    from lorafam.train.trainer import native_bf16

    def version(name: str) -> str | None:
        try:
            return metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            return None

    cpu = getattr(torch, "cpu", None)
    info: dict[str, object] = {
        "lorafam": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_avx512_bf16": bool(cpu and cpu._is_avx512_bf16_supported()),
        "cpu_amx": bool(cpu and cpu._is_amx_tile_supported()),
        "bf16_fast_on_cpu": native_bf16("cpu"),
        "cuda": torch.cuda.is_available(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
        info["bf16_fast_on_cuda"] = native_bf16("cuda")
    from lorafam.core.allocator import tune_allocator

    tuning = tune_allocator()  # the CLI has made this call already; here its record is read
    info["malloc_tuned"] = tuning.applied
    info["malloc_tuning"] = tuning.reason
    info["distributed_gloo"] = torch.distributed.is_available() and torch.distributed.is_gloo_available()
    for name in _PACKAGES:
        info[name] = version(name)
    return info


def _cpu_model() -> str:
    import platform
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def run(args: argparse.Namespace) -> int:
    import json

    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="lorafam env", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in info.items():
        table.add_row(k, "—" if v is None else str(v))
    Console().print(table)
    if not info["bf16_fast_on_cpu"] and not info["cuda"]:
        Console().print("bf16 is emulated on this CPU (no AMX / AVX512-BF16): keep bf16: false here.")
    return 0
