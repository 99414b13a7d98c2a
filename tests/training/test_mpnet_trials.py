"""Whole trials of a tiny random MPNet (hidden 32, 4 layers; padding id 1 as all-mpnet-base-v2's): a pruned
model on its own vocabulary, stopped early; LoRA on MPNet's own projections; a student distilled from the
fine-tuned full MPNet, hidden states included."""

import dataclasses

import pytest
import torch

from frugalray import LoraSettings, ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.config import RecoverySettings
from frugalray.testing import conll_words, tiny_model_dir
from frugalray.training import early_stopping
from frugalray.training.prepared import prepare_trial
from frugalray.training.trial import run_trial

FAST = TrainingSettings(epochs=2, batch_size=2, learning_rate=1e-3, lora_learning_rate=1e-3, max_length=32,
                        energy=False)


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory, data_dir) -> str:
    words = conll_words(*data_dir.glob("ner_*.conll"))
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny_mpnet"), words, "mpnet", num_layers=4))


def _scripted_dev(monkeypatch, f1s: list[float]) -> None:
    """Early stopping sees these dev F1s, epoch after epoch (the rest of dev is scored for real)."""
    scripted, original = iter(f1s), early_stopping.EarlyStopping.__call__

    def scripted_dev(self, epoch):
        real = self.score_dev
        self.score_dev = lambda: {**real(), "f1": next(scripted)}
        try:
            return original(self, epoch)
        finally:
            self.score_dev = real

    monkeypatch.setattr(early_stopping.EarlyStopping, "__call__", scripted_dev)


def test_a_pruned_mpnet_stops_early_on_its_own_vocabulary_with_the_weights_of_the_whole_one(tmp_path, mpnet_dir,
                                                                                           ner_task_file, monkeypatch):
    """MPNet numbers positions from the padding id (1): the trimmed embedding keeps it at its index, so the
    trimmed run trains the model the whole embedding trains."""
    from frugalray.model.saved import load_trained

    def run(trim: bool):
        monkeypatch.undo()
        _scripted_dev(monkeypatch, [0.5, 0.4, 0.3])
        training = dataclasses.replace(FAST, epochs=4, weight_decay=0.3, early_stopping_patience=2,
                                       trim_vocabulary=trim, dtype="fp32")
        config = TrialConfig(task=ner_task_file, model=mpnet_dir, strategy="mask", layers=(1, 3), training=training)
        row = run_trial(prepare_trial(config), device="cpu", save_to=str(tmp_path / str(trim)))
        assert (row["epochs_trained"], row["best_epoch"]) == (3, 1)
        return row, load_trained(str(tmp_path / str(trim)))[0]

    (whole_row, whole), (trim_row, trimmed) = run(False), run(True)
    vocabulary = whole.get_input_embeddings().weight.shape[0]
    assert whole_row["embedding_rows_trained"] == vocabulary > trim_row["embedding_rows_trained"] > 0
    assert trimmed.config.frugalray_kept_layers == [1, 3]
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(trimmed.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert trim_row["f1"] == pytest.approx(whole_row["f1"], abs=1e-9)


def test_lora_on_mpnet_trains_and_records_the_modules_that_trained(tmp_path, mpnet_dir, ner_task_file):
    row = execute_trial(TrialConfig(task=ner_task_file, model=mpnet_dir, strategy="first", n=2,
                                    lora=LoraSettings(r=4), training=FAST), ResultsStore(tmp_path))
    assert row.status == "ok", row.error
    assert row.lora_target_modules == ["q", "v"] and row.num_layers == 4 and row.kept_layers == [0, 1]
    assert 0 < row.trainable_params < row.total_params / 2


def test_an_mpnet_student_distils_its_hidden_states_through_either_layer_map(tmp_path, mpnet_dir, ner_task_file):
    store = ResultsStore(tmp_path)
    teacher = execute_trial(TrialConfig(task=ner_task_file, model=mpnet_dir, training=FAST, save_model=True), store)
    assert teacher.status == "ok", teacher.error
    uniform = TrialConfig(task=ner_task_file, model=mpnet_dir, strategy="mask", layers=(0, 2), training=FAST,
                          recovery=RecoverySettings(method="distill", beta=0.5, hidden_map="uniform"))
    kept = dataclasses.replace(uniform, recovery=dataclasses.replace(uniform.recovery, hidden_map="kept"))
    rows = [execute_trial(config, store) for config in (uniform, kept)]
    for row in rows:
        assert row.status == "ok", row.error
        assert (row.recovery, row.distill_beta, row.teacher_trial_id) == ("distill", 0.5, teacher.trial_id)
    assert [row.distill_hidden_map for row in rows] == ["uniform", None]
    assert rows[0].config_hash != rows[1].config_hash
