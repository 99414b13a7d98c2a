"""Helpers of the sweep tests on a real (local) Ray: a small sweep of the test model, the simulated trials' rows."""

import os
import sys
import shutil
import tempfile
import time
from pathlib import Path

from frugalray.study.plan import SweepConfig

RUNNER = "frugalray.testing:simulated_trial"
ROOT = Path(__file__).resolve().parents[2]
RAY_CLI = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")


def short_temp_dir() -> str:
    return tempfile.mkdtemp(prefix="fr-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars


def sweep_config(tmp_path, tiny_model, **values) -> SweepConfig:
    """One task (demo_pos), one seed, the single stage: five trials of the 4-layer test model."""
    defaults = dict(name="t", tasks=("demo_pos",), model=tiny_model, seeds=(0,), results=str(tmp_path / "r"),
                    stages=("single",))
    return SweepConfig(**(defaults | values))


def device_fields(row) -> tuple[str, str, float, float]:
    """(GPU ids, node id, start, end) of a simulated trial's row (its ``device`` says them)."""
    fields = dict(part.split("=", 1) for part in row["device"].split()[1:])
    return fields["gpus"], fields["node"], float(fields["start"]), float(fields["end"])


def max_overlap(intervals) -> int:
    """The most (start, end) intervals that overlap at one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


def wait_for(condition, what: str, timeout: float, poll_s: float = 0.1):
    """Poll ``condition()`` until it returns something true (returned); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(poll_s)
    raise AssertionError(f"waited {timeout} s for {what}")
