import dataclasses
import json

import pyarrow as pa
import pytest

from frugalray import (FrugalrayError, LoraSettings, ResultsStore, TrainingSettings, TrialConfig,
                       execute_trial, prepare_trial)
from frugalray.results import SCHEMA

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


def test_pruned_trial_is_smaller_than_full(tiny_model, ner_task_file):
    full = execute_trial(_config(ner_task_file, tiny_model))
    pruned = execute_trial(_config(ner_task_file, tiny_model, strategy="single", n=3))
    assert full["kept_layers"] == [0, 1, 2, 3] and pruned["kept_layers"] == [3]
    assert pruned["total_params"] < full["total_params"]
    assert pruned["model_mib"] < full["model_mib"]


def test_sequence_task_trial(tmp_path, tiny_model, data_dir):
    spec = {"name": "tiny_sentiment", "head": "sequence", "metric": "classification", "format": "jsonl",
            "data_dir": str(data_dir), "train": "sentiment.jsonl", "dev": "sentiment.jsonl", "test": "sentiment.jsonl"}
    (tmp_path / "task.json").write_text(json.dumps(spec))
    row = execute_trial(TrialConfig(task=str(tmp_path / "task.json"), model=tiny_model, training=FAST))
    assert row["status"] == "ok", row["error"]
    assert row["task"] == "tiny_sentiment"
    assert row["accuracy"] in {0.0, 0.25, 0.5, 0.75, 1.0}


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


def test_a_failing_trial_is_a_failed_row(tmp_path, tiny_model, ner_task_file, monkeypatch):
    import frugalray.training

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(frugalray.training, "train", out_of_memory)
    store = ResultsStore(tmp_path)
    row = execute_trial(_config(ner_task_file, tiny_model), store)
    assert row["status"] == "failed"
    assert row["error"].startswith("RuntimeError: CUDA out of memory")
    [stored] = store.table().to_pylist()
    assert stored["status"] == "failed" and stored["config_hash"] == row["config_hash"]
    assert store.completed_hashes() == set()


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
