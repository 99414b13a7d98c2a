"""Energy (kWh) and CO₂-eq (kg) of a trial's training and of its evaluation, with codecarbon's offline tracker.

codecarbon reads the best meter it finds: RAPL counters on Linux CPUs whose ``/sys/class/powercap`` is
readable, NVML on NVIDIA GPUs, and otherwise its documented estimate (the CPU's TDP times its load, from a
table of CPU models; RAM from its size). The offline tracker never uses the network: CO₂-eq is the energy
times the average intensity of the grid of ``energy_country`` (TrainingSettings, default FRA) from the
tables codecarbon ships. Every row says which meter was used (``energy_method``); when none could be read,
or energy is off (``training.energy=False``), the energy fields are null and ``energy_method`` says why:
measuring never fails a trial. codecarbon is kept quiet and writes no file (no emissions.csv, no lock).

>>> with measured_energy(True, "FRA", "cpu") as reading:   # doctest: +SKIP
...     train(...)
>>> reading.kwh, reading.method                            # doctest: +SKIP
(0.0021, 'cpu:rapl gpu:none ram:estimate (codecarbon 3.3.2 offline, FRA, process)')
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Iterator

# What codecarbon's CPU modes mean, in the words of its documentation.
CPU_METHODS = {"intel_rapl": "rapl", "intel_power_gadget": "power-gadget", "windows_emi": "rapl",
               "apple_powermetrics": "powermetrics", "cpu_load": "estimate(tdp x load)",
               "constant": "estimate(tdp)"}


@dataclass
class EnergyReading:
    """What one measured block used: kWh and kg CO₂-eq (None when not measured), and how it was measured."""

    kwh: float | None = None
    co2_kg: float | None = None
    method: str | None = None


@contextlib.contextmanager
def measured_energy(enabled: bool, country: str, device: str | None = None) -> Iterator[EnergyReading]:
    """Measure the energy of the block; the reading is filled when the block ends (even when it raises).

    ``device`` (``cuda:1``...) picks the GPU that NVML reads; other GPUs of the machine are left out.
    """
    reading = EnergyReading()
    if not enabled:
        reading.method = "off (training.energy=False)"
        yield reading
        return
    tracker = _start(country, device, reading)
    try:
        yield reading
    finally:
        if tracker is not None:
            _stop(tracker, country, reading)


def _start(country: str, device: str | None, reading: EnergyReading):
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        reading.method = "unavailable: codecarbon is not installed (pip install codecarbon)"
        return None
    logging.getLogger("codecarbon").setLevel(logging.CRITICAL)  # after the import: importing it sets INFO
    options = dict(country_iso_code=country, output_methods=[], output_dir=tempfile.gettempdir(),
                   log_level="critical", allow_multiple_runs=True, tracking_mode="process")
    gpus = gpu_ids(device)
    if gpus is not None:
        options["gpu_ids"] = gpus
    try:
        with _quiet():
            tracker = OfflineEmissionsTracker(**options)
            tracker.start()  # codecarbon swallows its own errors here: a tracker that did not start has no time
        if getattr(tracker, "_start_time", None) is None:
            raise RuntimeError("codecarbon's tracker did not start")
    except Exception as error:  # no meter readable, a broken install...: null energy, never a failed trial
        reading.method = f"unavailable: {type(error).__name__}: {error}"[:300]
        return None
    return tracker


def _stop(tracker, country: str, reading: EnergyReading) -> None:
    try:
        with _quiet():
            tracker.stop()
        data = getattr(tracker, "final_emissions_data", None)
        if data is None or data.energy_consumed is None:
            raise RuntimeError("codecarbon measured nothing")
        reading.kwh = float(data.energy_consumed)
        known = _known_country(country)
        reading.co2_kg = float(data.emissions) if known else None
        reading.method = describe(tracker) + ("" if known else f"; no grid intensity for {country!r}: CO2-eq null")
    except Exception as error:
        reading.kwh = reading.co2_kg = None
        reading.method = f"unavailable: {type(error).__name__}: {error}"[:300]


def describe(tracker) -> str:
    """Which meter codecarbon used for CPU, GPU and RAM, e.g. ``cpu:rapl gpu:nvml ram:estimate (...)``.

    codecarbon has no public accessor for the method it chose; its hardware list says it (``_hardware``:
    a CPU with its ``_mode``, GPUs read through NVML, RAM always estimated from its size).
    """
    import codecarbon

    cpu, gpu, ram = "none", "none", "none"
    for part in getattr(tracker, "_hardware", []):
        kind = type(part).__name__
        if kind == "CPU":
            mode = getattr(part, "_mode", "unknown")
            cpu = CPU_METHODS.get(mode, mode)
        elif kind == "GPU":
            gpu = "nvml"
        elif kind == "RAM":
            ram = "estimate"
        elif kind in ("AppleSiliconChip", "Raspberry"):
            cpu = kind.lower()
    scope = getattr(tracker, "_tracking_mode", "process")
    country = getattr(tracker, "_country_iso_code", "")
    return f"cpu:{cpu} gpu:{gpu} ram:{ram} (codecarbon {codecarbon.__version__} offline, {country}, {scope})"


def gpu_ids(device: str | None) -> list[int] | None:
    """The NVML index of a torch CUDA device: torch numbers the GPUs that CUDA_VISIBLE_DEVICES shows (as Ray
    sets it), NVML all of them. None: let codecarbon decide (a CPU trial, or names it cannot map).

    >>> gpu_ids("cuda:1"), gpu_ids("cpu")
    ([1], None)
    """
    if not device or not device.startswith("cuda"):
        return None
    index = int(device.partition(":")[2] or 0)
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    if not visible:
        return [index]
    if index < len(visible) and visible[index].isdigit():
        return [int(visible[index])]
    return None  # GPU UUIDs: codecarbon reads CUDA_VISIBLE_DEVICES itself


def _known_country(country: str) -> bool:
    from codecarbon.input import DataSource

    return country in DataSource().get_global_energy_mix_data()


@contextlib.contextmanager
def _quiet():
    """codecarbon's deprecation and runtime warnings and log lines stay out of the trial's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("codecarbon").setLevel(logging.CRITICAL)
        yield
