import json

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from frugalray import FrugalrayError, LoraSettings, ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.cli import main
from frugalray.export import export_trial, load_trained

FAST = TrainingSettings(epochs=1, batch_size=2, max_length=32, learning_rate=1e-3, lora_learning_rate=1e-2)


def _predict(model, tokenizer, sentences):
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("lora", [False, True], ids=["full-fine-tuning", "lora-merged"])
def test_export_round_trip_gives_the_trained_models_predictions(tmp_path, tiny_model, ner_task_file, lora):
    store = ResultsStore(tmp_path / "results")
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="mask", layers=(0, 2),
                                    lora=LoraSettings() if lora else None, training=FAST, save_model=True), store)
    assert row["status"] == "ok", row["error"]
    assert row["model_path"] == f"models/{row['trial_id']}"
    saved = tmp_path / "results" / row["model_path"]
    if lora:  # LoRA trials keep the adapter and the head, not a copy of the encoder
        assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    assert not list((tmp_path / "results" / "models").glob(".staging-*"))

    assert main(["export", store.location, "--trial", row["trial_id"][:20], "--out", str(tmp_path / "out")]) == 0
    exported = AutoModelForTokenClassification.from_pretrained(tmp_path / "out").eval()
    assert exported.config.num_hidden_layers == 2 and exported.config.frugalray_kept_layers == [0, 2]
    assert len(exported.roberta.encoder.layer) == 2
    assert not any("lora" in name for name, _ in exported.named_parameters())
    assert json.loads((tmp_path / "out" / "frugalray_trial.json").read_text())["lora"] is lora

    trained, _ = load_trained(saved)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    sentences = ["Jean habite à Paris .", "Marie travaille chez Renault à Lyon depuis 2010 ."]
    expected, got = _predict(trained, tokenizer, sentences), _predict(exported, tokenizer, sentences)
    assert torch.allclose(expected, got, atol=1e-5)
    assert torch.equal(expected.argmax(-1), got.argmax(-1))
    if lora:  # merging changed the encoder: the export is not the untrained base
        base = AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=exported.num_labels)
        assert not torch.allclose(base.roberta.encoder.layer[2].attention.self.query.weight,
                                  exported.roberta.encoder.layer[1].attention.self.query.weight)


def test_export_refuses_failed_trials_and_trials_without_weights(tmp_path, tiny_model, ner_task_file):
    store = ResultsStore(tmp_path / "results")
    plain = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=1, training=FAST), store)
    with pytest.raises(FrugalrayError, match=f"Trial {plain['trial_id']} has no saved weights; run it again with --save-model"):
        export_trial(store, plain["trial_id"], tmp_path / "out")
    store.append({"trial_id": "broken-1", "config_hash": "broken", "status": "failed", "error": "RuntimeError: CUDA out of memory"})
    with pytest.raises(FrugalrayError, match="Trial broken-1 failed \\(RuntimeError: CUDA out of memory\\)"):
        export_trial(store, "broken", tmp_path / "out")
    with pytest.raises(FrugalrayError, match="No trial 'nope'"):
        export_trial(store, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()
