"""Where a trial runs: the device it asks for (checked before anything loads), the hardware and library
versions every row records, and whether anything else of frugalray runs on the machine beside it.

>>> check_device("cpu")
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from frugalray._version import __version__
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
    """Where a row was computed: hardware, library versions, code version. The versions come from the installed
    packages' metadata, not from importing them: peft pulls in much of transformers' model code, seconds of every
    fresh Ray worker's first trial that needs neither."""
    from importlib.metadata import version

    import torch

    return {
        "hardware": f"{_cpu_name()}, {os.cpu_count()} cpus"
        + (f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""),
        "torch_version": torch.__version__,
        "transformers_version": version("transformers"),
        "peft_version": version("peft"),
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


def _activity_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"frugalray-running-{os.getuid() if hasattr(os, 'getuid') else 'user'}"


@contextlib.contextmanager
def running(what: str) -> Iterator[None]:
    """Mark this process as running frugalray work (a trial, a latency measurement) while the block runs, so
    that a measurement elsewhere on the machine knows it is not alone (``others_running``).

    >>> with running("trial"):
    ...     others_running()
    []
    """
    folder = _activity_dir()
    marker = folder / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.{what}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # an unwritable temporary folder only costs the isolation label
        marker = None
    try:
        yield
    finally:
        if marker is not None:
            marker.unlink(missing_ok=True)


def others_running() -> list[str]:
    """What other live processes of this user mark as running frugalray work (``pid.what``); markers of
    processes that are gone (killed) are removed."""
    found = []
    try:
        markers = list(_activity_dir().iterdir())
    except OSError:
        return []
    for marker in markers:
        pid_text, _, rest = marker.name.partition("-")
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        if _alive(int(pid_text)):
            found.append(f"{pid_text}.{rest.partition('.')[2]}")
        else:
            marker.unlink(missing_ok=True)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
