import dataclasses
import sys
from types import SimpleNamespace

import pytest

from frugalray import FrugalrayError, ResultsStore, TrainingSettings, TrialConfig, execute_trial, prepare_trial
from frugalray.training import energy
from frugalray.training.energy import describe, gpu_ids, measured_energy

FAST = TrainingSettings(epochs=1, batch_size=2, learning_rate=1e-3, max_length=32)


def test_a_trial_records_the_energy_of_its_training_and_of_its_evaluation(tmp_path, tiny_model, ner_task_file,
                                                                         monkeypatch, capfd):
    pytest.importorskip("codecarbon")
    monkeypatch.chdir(tmp_path)  # the user's folder: codecarbon must write nothing into it
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, training=FAST), ResultsStore(tmp_path / "r"))
    assert row["status"] == "ok", row["error"]
    assert row["train_kwh"] > 0 and row["eval_kwh"] > 0
    assert row["train_co2_kg"] > 0 and row["eval_co2_kg"] > 0 and row["energy_country"] == "FRA"
    assert row["energy_method"].startswith("cpu:") and "codecarbon" in row["energy_method"]
    assert "offline, FRA" in row["energy_method"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no emissions.csv, no lock, no log
    assert "codecarbon" not in capfd.readouterr().err  # its logging kept quiet


def test_energy_is_off_with_one_setting_that_does_not_change_the_configuration(tiny_model, ner_task_file):
    on = TrialConfig(task=ner_task_file, model=tiny_model, training=FAST)
    off = dataclasses.replace(on, training=dataclasses.replace(FAST, energy=False, energy_country="DEU"))
    assert prepare_trial(on).config_hash == prepare_trial(off).config_hash
    row = execute_trial(off)
    assert row["status"] == "ok", row["error"]
    assert (row["train_kwh"], row["eval_kwh"], row["train_co2_kg"]) == (None, None, None)
    assert row["energy_method"] == "off (training.energy=False)" and row["energy_country"] == "DEU"


@pytest.mark.parametrize("broken", ["not installed", "no meter"])
@pytest.mark.slow
def test_an_unreadable_meter_never_fails_a_trial(tiny_model, ner_task_file, monkeypatch, broken):
    if broken == "not installed":
        monkeypatch.setitem(sys.modules, "codecarbon", None)  # import codecarbon raises ImportError
        expected = "unavailable: codecarbon is not installed (pip install codecarbon)"
    else:
        pytest.importorskip("codecarbon")

        class NoMeter:
            def __init__(self, **options):
                raise PermissionError("/sys/class/powercap/intel-rapl: permission denied")

        monkeypatch.setattr("codecarbon.OfflineEmissionsTracker", NoMeter)
        expected = "unavailable: PermissionError: /sys/class/powercap/intel-rapl: permission denied"
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, training=FAST))
    assert row["status"] == "ok", row["error"]
    assert row["train_kwh"] is None and row["eval_kwh"] is None and row["energy_method"] == expected


def test_a_tracker_that_fails_when_it_stops_leaves_null_energy():
    pytest.importorskip("codecarbon")

    class Broken:
        _start_time = 1.0

        def stop(self):
            raise RuntimeError("NVML: GPU is lost")

    reading = energy.EnergyReading(kwh=1.0)
    energy._stop(Broken(), "FRA", reading)
    assert (reading.kwh, reading.co2_kg) == (None, None)
    assert reading.method == "unavailable: RuntimeError: NVML: GPU is lost"


def test_the_method_names_the_meter_codecarbon_chose():
    pytest.importorskip("codecarbon")
    # codecarbon's hardware classes, by name: RAPL on the CPU, NVML on the GPU, RAM estimated
    CPU = type("CPU", (), {"_mode": "intel_rapl"})
    GPU, RAM = type("GPU", (), {}), type("RAM", (), {})
    tracker = SimpleNamespace(_hardware=[RAM(), CPU(), GPU()], _tracking_mode="process", _country_iso_code="FRA")
    assert describe(tracker).startswith("cpu:rapl gpu:nvml ram:estimate (codecarbon ")
    CPU._mode = "cpu_load"
    assert describe(SimpleNamespace(_hardware=[CPU()])).startswith("cpu:estimate(tdp x load) gpu:none ram:none")


def test_an_unknown_country_keeps_the_energy_and_says_why_co2_is_missing():
    pytest.importorskip("codecarbon")
    with measured_energy(True, "XYZ") as reading:
        sum(i * i for i in range(100_000))
    assert reading.kwh > 0 and reading.co2_kg is None
    assert reading.method.endswith("no grid intensity for 'XYZ': CO2-eq null")


def test_the_gpu_nvml_reads_is_the_one_torch_runs_on(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_ids("cuda:1") == [1] and gpu_ids("cuda") == [0] and gpu_ids("cpu") is None and gpu_ids(None) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # as Ray sets it: torch's cuda:1 is the machine's GPU 3
    assert gpu_ids("cuda:1") == [3] and gpu_ids("cuda:0") == [2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f3c,GPU-12ab")
    assert gpu_ids("cuda:0") is None  # UUIDs: codecarbon reads the variable itself


@pytest.mark.parametrize("country", ["fr", "FRANCE", "F1A", ""])
def test_a_bad_country_code_is_refused(country):
    with pytest.raises(FrugalrayError, match="energy_country=.*3-letter ISO 3166-1 alpha-3 country code"):
        TrainingSettings(energy_country=country)
