import dataclasses
import json
import re

import pyarrow as pa
import pytest
import torch

from frugalray import (FrugalrayError, LoraSettings, ResultsStore, TrainingSettings, TrialConfig,
                       execute_trial, prepare_trial)
from frugalray.config import ResourceRule
from frugalray.results.store import SCHEMA
from frugalray.training.environment import check_device

FAST = TrainingSettings(epochs=2, batch_size=2, learning_rate=1e-3, lora_learning_rate=1e-3, max_length=32)


def _config(task, model, **values):
    return TrialConfig(task=task, model=model, training=FAST, **values)


def test_trial_writes_a_valid_row(tmp_path, tiny_model, ner_task_file):
    store = ResultsStore(tmp_path)
    row = execute_trial(_config(ner_task_file, tiny_model, strategy="first", n=2, seed=3), store)
    assert row["status"] == "ok", row["error"]
    [stored] = store.table().to_pylist()
    pa.Table.from_pylist([stored], schema=SCHEMA)  # every column typed as the schema says
    assert stored["kept_layers"] == [0, 1] and stored["n_kept_layers"] == 2 and stored["num_layers"] == 4
    assert stored["task"] == "tiny_ner" and stored["strategy"] == "first" and stored["seed"] == 3
    for metric in ("accuracy", "precision", "recall", "f1", "dev_f1"):
        assert 0.0 <= stored[metric] <= 1.0
    assert stored["eval_loss"] > 0
    assert stored["train_seconds"] > 0 and stored["eval_seconds"] > 0
    assert stored["seconds_per_epoch"] == pytest.approx(stored["train_seconds"] / 2)
    assert stored["total_seconds"] > stored["train_seconds"] + stored["eval_seconds"]
    assert stored["train_tokens"] > 0 and stored["latency_ms"] > 0 and stored["peak_memory_mib"] > 0
    assert stored["total_params"] == stored["trainable_params"] > 0
    assert stored["model_mib"] == pytest.approx(stored["total_params"] * 4 / 2**20)
    assert stored["torch_version"] and stored["transformers_version"] and stored["code_version"]
    assert stored["device"] == "cpu" and stored["config_hash"] == row["config_hash"]


@pytest.mark.slow
def test_pruned_trial_is_smaller_than_full(tiny_model, ner_task_file):
    full = execute_trial(_config(ner_task_file, tiny_model))
    pruned = execute_trial(_config(ner_task_file, tiny_model, strategy="single", n=3))
    assert full["kept_layers"] == [0, 1, 2, 3] and pruned["kept_layers"] == [3]
    assert pruned["total_params"] < full["total_params"]
    assert pruned["model_mib"] < full["model_mib"]


@pytest.mark.slow
def test_sequence_task_trial(tmp_path, tiny_model, data_dir):
    spec = {"name": "tiny_sentiment", "head": "sequence", "metric": "classification", "format": "jsonl",
            "data_dir": str(data_dir), "train": "sentiment.jsonl", "dev": "sentiment.jsonl", "test": "sentiment.jsonl"}
    (tmp_path / "task.json").write_text(json.dumps(spec))
    row = execute_trial(TrialConfig(task=str(tmp_path / "task.json"), model=tiny_model, training=FAST))
    assert row["status"] == "ok", row["error"]
    assert row["task"] == "tiny_sentiment"
    assert row["accuracy"] in {0.0, 0.25, 0.5, 0.75, 1.0}


@pytest.mark.slow
def test_lora_trial_trains_adapters_and_head(tiny_model, ner_task_file):
    row = execute_trial(_config(ner_task_file, tiny_model, strategy="first", n=2, lora=LoraSettings(r=4)))
    assert row["status"] == "ok", row["error"]
    assert row["lora"] and row["lora_r"] == 4 and row["lora_train_head"] is True
    assert 0 < row["trainable_params"] < row["total_params"]
    assert row["learning_rate"] == FAST.lora_learning_rate


def test_same_layers_same_hash_and_seed_changes_it(tiny_model, ner_task_file):
    first = prepare_trial(_config(ner_task_file, tiny_model, strategy="first", n=2))
    mask = prepare_trial(_config(ner_task_file, tiny_model, strategy="mask", layers=(0, 1)))
    other_seed = prepare_trial(_config(ner_task_file, tiny_model, strategy="first", n=2, seed=1))
    lora = prepare_trial(_config(ner_task_file, tiny_model, strategy="first", n=2, lora=LoraSettings()))
    assert first.config_hash == mask.config_hash
    assert len({first.config_hash, other_seed.config_hash, lora.config_hash}) == 3


@pytest.mark.parametrize("change", [dict(pad_to_multiple_of=8), dict(fused_optimizer=False), dict(compile=True),
                                    dict(dtype="bf16"), dict(length_grouping=4), dict(max_grad_norm=0.0),
                                    dict(trim_vocabulary=False), dict(early_stopping_patience=2),
                                    dict(dtype="auto")])
def test_every_training_knob_is_in_the_configuration_hash(tiny_model, ner_task_file, change):
    config = _config(ner_task_file, tiny_model, strategy="first", n=2)
    changed = dataclasses.replace(config, training=dataclasses.replace(config.training, **change))
    assert prepare_trial(changed).config_hash != prepare_trial(config).config_hash
    quicker_eval = dataclasses.replace(config, training=dataclasses.replace(config.training, eval_batch_size=7))
    assert prepare_trial(quicker_eval).config_hash == prepare_trial(config).config_hash


def test_a_failing_trial_is_a_failed_row(tmp_path, tiny_model, ner_task_file, monkeypatch):
    import frugalray.training.loop

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(frugalray.training.loop, "train", out_of_memory)
    store = ResultsStore(tmp_path)
    row = execute_trial(_config(ner_task_file, tiny_model), store)
    assert row["status"] == "failed"
    assert row["error"].startswith("RuntimeError: CUDA out of memory")
    [stored] = store.table().to_pylist()
    assert stored["status"] == "failed" and stored["config_hash"] == row["config_hash"]
    assert _ok_hashes(store) == set()


def test_bad_input_is_recorded_or_raised(tmp_path, tiny_model, ner_task_file):
    store = ResultsStore(tmp_path)
    bad = _config(ner_task_file, tiny_model, strategy="first", n=9)
    row = execute_trial(bad, store)
    assert row["status"] == "failed" and "valid N: 1..4" in row["error"]
    with pytest.raises(FrugalrayError, match="valid N"):
        execute_trial(bad, store, raise_input_errors=True)
    assert store.table().num_rows == 1


def test_lora_targets_missing_from_the_model(tiny_model, ner_task_file):
    config = _config(ner_task_file, tiny_model, lora=LoraSettings(target_modules=("q_proj",)))
    with pytest.raises(FrugalrayError, match=r"LoRA target module\(s\) \['q_proj'\] are not in .*query, value"):
        execute_trial(config, raise_input_errors=True)


def test_unknown_names_fail_before_anything_runs(tiny_model):
    with pytest.raises(FrugalrayError, match="Did you mean 'drop_middle'"):
        TrialConfig(task="demo_pos", strategy="drop_midle")
    with pytest.raises(FrugalrayError, match="Unknown model 'minilmm'. Did you mean 'minilm'"):
        prepare_trial(TrialConfig(task="demo_pos", model="minilmm"))


def test_config_round_trips_through_a_dict(tiny_model):
    config = TrialConfig(task="demo_pos", model=tiny_model, strategy="mask", layers=(0, 2),
                         lora=LoraSettings(train_head=False), training=FAST, seed=4)
    assert TrialConfig.from_dict(config.to_dict()) == config
    with pytest.raises(FrugalrayError, match="unknown key 'epoch'.*Did you mean 'epochs'"):
        TrialConfig.from_dict({"task": "demo_pos", "training": {"epoch": 3}})
    assert dataclasses.replace(config, seed=5).seed == 5


# -- settings are type-checked, devices exist -----------------------------------------------------------
def _search(**values):
    from frugalray.study.search import SearchConfig

    return SearchConfig(task="demo_pos", **values)


def _sweep(**values):
    from frugalray.study.plan import SweepConfig

    return SweepConfig(**({"tasks": ("demo_pos",)} | values))


@pytest.mark.parametrize("build,message", [
    (lambda: LoraSettings(r="8"), r"^LoraSettings: r must be int, got '8' \(str\)$"),
    (lambda: LoraSettings(target_modules="query"), r"target_modules must be a list of str, got 'query' \(str\)"),
    (lambda: LoraSettings(train_head="no"), r"train_head must be bool, got 'no'"),
    (lambda: LoraSettings(dropout=float("nan")), r"dropout must be a finite number, got nan"),
    (lambda: ResourceRule(fixed_fraction=float("inf")), r"^ResourceRule: fixed_fraction must be a finite number"),
    (lambda: ResourceRule(gpus=1), r"gpus must be bool, got 1 \(int\)"),
    (lambda: _sweep(seeds=("0",)), r"^SweepConfig: seeds must be a list of int, got \('0',\) \(tuple\)"),
    (lambda: _sweep(tasks="demo_pos"), r"tasks must be a list of str, got 'demo_pos' \(str\)"),
    (lambda: _sweep(data_dirs={"demo_pos": 3}), r"data_dirs must be a list of \(str, str\), got \{'demo_pos': 3\}"),
    (lambda: _sweep(autoscale_wait_s=float("inf")), r"autoscale_wait_s must be a finite number"),
    (lambda: _search(budget=True), r"^SearchConfig: budget must be int, got True \(bool\)"),
    (lambda: _search(training={"learning_rate": float("inf")}), r"SearchConfig: training: learning_rate must be a finite"),
    (lambda: TrialConfig(task="demo_pos", n="2"), r"^TrialConfig: n must be int or None, got '2' \(str\)"),
    (lambda: TrialConfig(task="demo_pos", layers=(0, "1")), r"layers must be a list of int or None"),
    (lambda: TrialConfig(task="demo_pos", scores=(0.5, float("nan"))), r"scores must be a list of finite numbers"),
    (lambda: TrialConfig(task="demo_pos", lora={"r": "4"}), r"^TrialConfig: lora: r must be int, got '4' \(str\)$"),
    (lambda: TrialConfig(task="demo_pos", training=TrainingSettings(learning_rate=float("inf"))),
     r"^TrainingSettings: learning_rate must be a finite number, got inf \(float\)$"),
])
def test_every_settings_class_checks_its_field_types(build, message):
    with pytest.raises(FrugalrayError, match=message):
        build()


def test_settings_from_files_name_the_file_and_the_key(tmp_path):
    with pytest.raises(FrugalrayError, match=r"^trial.json: training: epochs must be int, got '3' \(str\)$"):
        TrialConfig.from_dict({"task": "demo_pos", "training": {"epochs": "3"}}, "trial.json")
    path = tmp_path / "lora.json"
    path.write_text('{"r": 8, "lora_alpha": 16, "train_head": "false"}')
    with pytest.raises(FrugalrayError, match=rf"^{re.escape(str(path))}: train_head must be bool, got 'false'"):
        LoraSettings.from_json(path)
    assert ResourceRule(cpus_per_trial=2).cpus_per_trial == 2  # an int is a float
    assert _sweep(seeds=[0, 1], data_dirs={"demo_pos": "/data"}).data_dirs == (("demo_pos", "/data"),)


def test_the_field_check_needs_no_torch():
    import subprocess
    import sys

    code = ("import sys, frugalray.config._fields as c; from dataclasses import dataclass\n"
            "@dataclass\nclass S:\n    rate: float = 1.0\n"
            "try:\n    c.check_fields(S(rate=float('inf')))\nexcept c.FrugalrayError as e:\n    print(e)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["S: rate must be a finite number, got inf (float)", "False"]


def test_check_device_accepts_cpu_and_names_what_exists():
    check_device(None)
    check_device("cpu")
    with pytest.raises(FrugalrayError, match=r"^Device 'gpu' is not a device name; available here: cpu"):
        check_device("gpu")


NO_GPU = pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                            reason="needs a machine without a GPU")


@NO_GPU
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps"])
def test_a_missing_device_fails_the_trial_before_the_model_loads(tiny_model, ner_task_file, monkeypatch, device):
    import frugalray.model.loading

    def loaded(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(frugalray.model.loading, "load_tokenizer", loaded)
    monkeypatch.setattr(frugalray.model.loading, "load_model", loaded)
    row = execute_trial(_config(ner_task_file, tiny_model), device=device)
    assert row["status"] == "failed"
    assert row["error"] == f"FrugalrayError: Device '{device}' is not available on this machine; available here: cpu"
    with pytest.raises(FrugalrayError, match=f"Device '{device}'"):
        execute_trial(_config(ner_task_file, tiny_model), device=device, raise_input_errors=True)


class _WorkerContext:
    """What a Ray worker knows of where it runs (``ray.get_runtime_context()``), for a worker granted ``resources``."""

    def __init__(self, resources: dict):
        self.resources = resources

    def get_assigned_resources(self) -> dict:
        return self.resources

    def get_accelerator_ids(self) -> dict:
        return {"GPU": ["0"] if self.resources.get("GPU") else []}

    def get_node_id(self) -> str:
        return "0" * 56


@pytest.fixture()
def fake_gpu(monkeypatch):
    """torch.cuda as on a machine with one GPU, recording what a trial asks of its allocator: (call, arguments)."""
    from frugalray.training.environment import environment

    environment()  # this machine's, kept for the session's later rows (it is read once), before CUDA seems there
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device=None: asked.append(("cap", fraction, device)))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: asked.append(("reset", device)))
    return asked


@pytest.mark.parametrize("device,share,expected", [
    ("cuda", 0.25, [("cap", 0.25, torch.device("cuda")), ("reset", torch.device("cuda"))]),
    ("cuda:0", 0.5, [("cap", 0.5, torch.device("cuda:0")), ("reset", torch.device("cuda:0"))]),
    (None, 0.25, [("cap", 0.25, torch.device("cuda")), ("reset", torch.device("cuda"))]),  # CUDA is the default
    ("cuda", None, [("reset", torch.device("cuda"))]),  # a whole GPU: no cap
    ("cpu", 0.25, []),  # a share of a GPU means nothing on the CPU
])
def test_a_trial_sharing_a_gpu_caps_its_allocator_at_the_share_it_was_granted(fake_gpu, device, share, expected):
    from frugalray.training.trial import _device

    assert _device(device, share) == torch.device(device or "cuda")
    assert fake_gpu == expected


def test_the_share_ray_grants_a_trial_is_the_one_its_allocator_is_capped_at(fake_gpu, monkeypatch, tmp_path, tiny_model,
                                                                            ner_task_file):
    """``tune_trial`` (in a Ray worker) hands the GPU share Ray assigned it to the trial, which caps its allocator
    with it before anything is loaded; a whole GPU (or none) sets no cap."""
    import ray
    from ray import tune

    from frugalray.cluster import driver
    from frugalray.testing import simulated_trial
    from frugalray.training import trial

    def runner(prepared, device, gpu_memory_fraction, **options):  # places the trial as run_trial does first
        trial._device(device, gpu_memory_fraction)
        return simulated_trial(prepared, device, gpu_memory_fraction, **options)

    config = _config(ner_task_file, tiny_model)
    prepared = trial.prepare_trial(config)
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
    monkeypatch.setattr(driver, "_import", lambda path: runner)
    reported = []
    monkeypatch.setattr(tune, "report", reported.append)
    for granted, expected in ((0.25, [("cap", 0.25, torch.device("cuda"))]), (1.0, []), (None, [])):
        monkeypatch.setattr(ray, "get_runtime_context", lambda: _WorkerContext({"CPU": 1.0} | (
            {"GPU": granted} if granted else {})))
        fake_gpu.clear()
        driver.tune_trial({"trial": config.to_dict(), "results": str(tmp_path / str(granted)), "retries": 0,
                           "runner": "fake:runner", "config_hash": prepared.config_hash,
                           "task_fingerprint": prepared.task.fingerprint})
        assert [entry for entry in fake_gpu if entry[0] == "cap"] == expected, granted
    assert len(reported) == 3


def _ok_hashes(store) -> set[str]:
    """Configuration hashes that have a successful row."""
    return {row["config_hash"] for row in store.table().to_pylist() if row["status"] == "ok"}


@pytest.mark.slow
def test_latency_is_isolated_only_for_a_lone_trial_with_nothing_else_of_frugalray_running(
        tmp_path, tiny_model, ner_task_file, activity):
    import subprocess
    import sys

    from frugalray.training.environment import others_running, running

    config = TrialConfig(task=ner_task_file, model=tiny_model, training=dataclasses.replace(FAST, epochs=1, energy=False))
    assert execute_trial(config, alone=True)["latency_isolated"] is True
    assert execute_trial(config)["latency_isolated"] is False  # a sweep's trial: others may run beside it
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        activity.mkdir(parents=True, exist_ok=True)
        (activity / f"{other.pid}-abcd.trial").touch()  # another process's trial, still running
        assert others_running() == [f"{other.pid}.trial"]
        row = execute_trial(config, alone=True)
        assert row["status"] == "ok" and row["latency_isolated"] is False
    finally:
        other.kill()
        other.wait()
    assert others_running() == [] and not (activity / f"{other.pid}-abcd.trial").exists()  # a dead writer's marker
    with running("trial"):  # this process's own marker is not "another"
        assert others_running() == []


@pytest.mark.slow
def test_dev_checkpoints_record_a_curve_and_leave_training_unchanged(tmp_path, tiny_model, ner_task_file):
    """Scoring dev during training changes nothing the model learns, and each checkpoint offers the row the
    trial would leave if an early-stopping scheduler stopped it there."""
    plain = execute_trial(_config(ner_task_file, tiny_model, strategy="first", n=2, seed=1))
    stops = []
    checked = dataclasses.replace(FAST, eval_every_steps=1)
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=2, seed=1,
                                    training=checked), ResultsStore(tmp_path), report=stops.append)
    assert row["status"] == "ok", row["error"]
    assert row["config_hash"] == plain["config_hash"]  # scoring dev is bookkeeping: same configuration
    for column in ("f1", "dev_f1", "eval_loss", "train_tokens"):
        assert row[column] == plain[column], column
    assert row["train_steps"] == row["planned_steps"] == plain["train_steps"] >= 4
    expected = list(range(1, row["planned_steps"]))
    assert row["checkpoint_steps"] == expected and len(row["checkpoint_dev_f1"]) == len(expected)
    losses = row["checkpoint_dev_loss"]
    assert len(losses) == len(expected) and all(loss > 0 for loss in losses)
    assert len(set(losses)) > 1  # the loss of each checkpoint, not one value repeated
    seconds = row["checkpoint_eval_seconds"]
    assert len(seconds) == len(expected) and all(0 < value < row["total_seconds"] for value in seconds)
    assert plain["checkpoint_steps"] is None and plain["checkpoint_dev_loss"] is None
    assert [s["train_steps"] for s in stops] == expected
    last = stops[-1]
    assert last["status"] == "stopped" and last["f1"] is None and last["config_hash"] == row["config_hash"]
    assert last["dev_f1"] == row["checkpoint_dev_f1"][-1] and last["checkpoint_steps"] == expected
    assert last["dev_eval_loss"] == losses[-1] == last["checkpoint_dev_loss"][-1]
    assert 0 < last["train_seconds"] <= row["train_seconds"] and last["trial_id"] == row["trial_id"]
    assert [r["status"] for r in ResultsStore(tmp_path).table().to_pylist()] == ["ok"]  # stops are the caller's


@pytest.mark.parametrize("native", [True, False])
def test_native_bf16_trains_in_bf16_only_where_the_cpu_has_bf16_instructions(tiny_model, ner_task_file, monkeypatch,
                                                                              native):
    import frugalray.training.loop as loop

    entered = []
    plain = loop._autocast
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(loop, "_autocast", lambda device, dtype: entered.append(dtype) or plain(device, dtype))
    training = dataclasses.replace(FAST, dtype="native-bf16")
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, training=training, strategy="first", n=2))
    assert row["status"] == "ok", row["error"]
    assert row["dtype"] == "native-bf16" and row["autocast"] == ("bf16" if native else "fp32")
    assert entered and set(entered) == {torch.bfloat16 if native else None}  # training and scoring alike


def test_autocast_resolves_each_dtype_on_each_device(monkeypatch):
    from frugalray.training.loop import autocast_dtype, cpu_has_native_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not cpu_has_native_bf16()
    assert [autocast_dtype(d, cpu) for d in ("auto", "fp32", "bf16", "native-bf16")] == [None, None, torch.bfloat16, None]
    assert [autocast_dtype(d, cuda) for d in ("auto", "fp32", "bf16", "native-bf16")] == [
        torch.bfloat16, None, torch.bfloat16, torch.bfloat16]
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)  # AMX alone is enough
    assert cpu_has_native_bf16() and autocast_dtype("native-bf16", cpu) == torch.bfloat16
    assert autocast_dtype("auto", cpu) is None  # the default stays fp32 on CPUs
    with pytest.raises(ValueError, match="dtype 'fp16' is not one of auto, fp32, bf16, native-bf16"):
        autocast_dtype("fp16", cpu)  # a caller's typo is not read as 'auto'
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("native-bf16", cuda) is None and autocast_dtype("auto", cuda) is None
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert not cpu_has_native_bf16()  # a torch without the probes: fp32


def test_a_rows_environment_names_library_versions_without_importing_them():
    """Every trial's row names its libraries' versions; reading them must not import peft (seconds in each fresh
    Ray worker, whose simulated or non-LoRA trial never needs it)."""
    import subprocess
    import sys
    from importlib.metadata import version

    probe = ("import json, sys; from frugalray.training.environment import environment; e = environment(); "
             "print(json.dumps([e['peft_version'], e['transformers_version'], 'peft' in sys.modules]))")
    printed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert json.loads(printed.strip().splitlines()[-1]) == [version("peft"), version("transformers"), False]
