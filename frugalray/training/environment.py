"""Where a trial runs: the device it asks for (checked before anything loads), and the hardware and library
versions every row records.

>>> check_device("cpu")
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from frugalray import __version__
from frugalray._registry import FrugalrayError


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have, naming those it has; None (the default device) is fine.

    >>> check_device("cpu")  # while "gpu" or "cuda:3" on a machine without it raises FrugalrayError
    """
    if device is None:
        return
    import torch

    available = ["cpu"]
    if torch.cuda.is_available():
        available += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        available += ["mps"]
    here = f"available here: {', '.join(available)}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise FrugalrayError(f"Device {device!r} is not a device name; {here}") from None
    if parsed.type != "cpu" and str(parsed) not in available:
        raise FrugalrayError(f"Device {device!r} is not available on this machine; {here}")


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return "cpu"


@functools.cache
def environment() -> dict:
    import peft
    import torch
    import transformers

    return {
        "hardware": f"{_cpu_name()}, {os.cpu_count()} cpus"
        + (f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": peft.__version__,
        "frugalray_version": __version__,
        "code_version": _code_version(),
    }


def _cpu_name() -> str:
    """The CPU model (``AMD EPYC 7R13 Processor``) where Linux tells it, else the architecture."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return f"{platform.machine()} {platform.processor() or platform.system()}"


def _code_version() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__
