"""Sweep runners for tests, imported by name inside Ray workers (``runner="tests.runners:side_by_side"``):
the simulated trial of ``frugalray.testing``, with what a test needs to make a moment certain instead of
likely (whatever the machine's load). Their settings come from the environment, which workers inherit.

- ``side_by_side``: the first FRUGALRAY_TEST_TOGETHER trials of a sweep run at the same time.
- ``held_on_a_node``: a trial on the node named in FRUGALRAY_TEST_MARKS/hold_node never ends; the test removes
  that node under it (a file: the node's id is known only once it runs, after its workers' environment).
- ``dies_keeping_layer_1``: the worker of the trial that keeps layer 1 alone dies every time it runs it.
- ``held_once_on_card``: the first trial placed on the card FRUGALRAY_TEST_HOLD_CARD never ends; the test removes
  its node under it.
- ``recorded``: the simulated trial, each call recorded (runs.jsonl in FRUGALRAY_TEST_MARKS).

Marks go to FRUGALRAY_TEST_MARKS (a folder), start marks of the simulated trial to FRUGALRAY_SIMULATED_MARKS.
"""

import os
import re
import signal
import time
import uuid
from pathlib import Path

from frugalray.testing import _where, mark_start, simulated_trial

# A trial that waits longer than this for the moment it waits for gives up (and its test fails).
PATIENCE_S = float(os.environ.get("FRUGALRAY_TEST_PATIENCE_S", "300"))


def side_by_side(prepared, device=None, gpu_memory_fraction=None, **kwargs) -> dict:
    """Arrive (a mark), wait until FRUGALRAY_TEST_TOGETHER trials have arrived, then run the simulated trial.
    The row's ``device`` interval starts at the arrival: the first N intervals all hold the N-th arrival; it
    ends with the GPU share the trial was given to cap its memory at (``share=``)."""
    marks, together = Path(os.environ["FRUGALRAY_TEST_MARKS"]), int(os.environ["FRUGALRAY_TEST_TOGETHER"])
    arrived = time.time()
    (marks / f"arrived-{uuid.uuid4().hex}").touch()
    deadline = time.monotonic() + PATIENCE_S
    while len(list(marks.glob("arrived-*"))) < together and time.monotonic() < deadline:
        time.sleep(0.05)
    row = simulated_trial(prepared, device, gpu_memory_fraction, **kwargs)
    device = re.sub(r"start=\S+", f"start={arrived:.3f}", row["device"])
    return row | {"device": f"{device} share={gpu_memory_fraction}"}


def held_on_a_node(prepared, *args, **kwargs) -> dict:
    """On the node named in FRUGALRAY_TEST_MARKS/hold_node: leave a start mark, then wait to be killed with
    the node; elsewhere the simulated trial."""
    _, node = _where()
    hold = Path(os.environ["FRUGALRAY_TEST_MARKS"], "hold_node")
    if not hold.exists() or node != hold.read_text().strip():
        return simulated_trial(prepared, *args, **kwargs)
    mark_start(prepared, node, time.time())
    time.sleep(PATIENCE_S)
    raise RuntimeError(f"node {node} was to be removed while this trial ran on it; it was not")


def dies_keeping_layer_1(prepared, *args, **kwargs) -> dict:
    """The trial that keeps layer 1 alone: a mark per attempt (``died-<pid>``), then its worker process dies
    (SIGKILL, as the OOM killer does it). Every other trial: the simulated trial."""
    if prepared.kept_layers != (1,):
        return simulated_trial(prepared, *args, **kwargs)
    Path(os.environ["FRUGALRAY_TEST_MARKS"], f"died-{os.getpid()}").touch()
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def held_once_on_card(prepared, *args, **kwargs) -> dict:
    """The first trial placed on the card named in FRUGALRAY_TEST_HOLD_CARD (its ``accelerator_type``): leave a
    start mark, then wait to be killed with its node; every other trial (and that one run again): the simulated
    trial."""
    import ray

    card = os.environ["FRUGALRAY_TEST_HOLD_CARD"]
    granted = ray.get_runtime_context().get_assigned_resources()
    if f"accelerator_type:{card}" in granted:
        held = Path(os.environ["FRUGALRAY_TEST_MARKS"], "held")
        try:  # the first to create the file is the one held; the file names it
            descriptor = os.open(held, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            pass
        else:
            _, node = _where()
            mark_start(prepared, node, time.time())
            os.write(descriptor, prepared.config_hash.encode())
            os.close(descriptor)
            time.sleep(PATIENCE_S)
            raise RuntimeError(f"node {node} was to be removed while this trial ran on it; it was not")
    return simulated_trial(prepared, *args, **kwargs)


def recorded(prepared, device=None, gpu_memory_fraction=None, **kwargs) -> dict:
    """The simulated trial, each call recorded as a JSON line in FRUGALRAY_TEST_MARKS/runs.jsonl: the kept
    layers, the GPU memory fraction the trial was capped at, the options it was given."""
    import json

    with open(Path(os.environ["FRUGALRAY_TEST_MARKS"], "runs.jsonl"), "a") as runs:
        runs.write(json.dumps({"kept_layers": list(prepared.kept_layers), "gpu_memory_fraction": gpu_memory_fraction,
                               "options": sorted(kwargs)}) + "\n")
    return simulated_trial(prepared, device, gpu_memory_fraction, **kwargs)
