"""Early stopping on dev: a trial trains until dev stops improving and keeps its best epoch's weights."""

import pytest
import torch

from frugalray import TrainingSettings, TrialConfig, prepare_trial
from frugalray.training import early_stopping
from frugalray.training.early_stopping import EarlyStopping
from frugalray.training.trial import run_trial


def test_patience_counts_epochs_without_a_better_dev_score_ties_broken_by_dev_loss():
    model = torch.nn.Linear(2, 1)
    scores = iter([(0.0, 1.0), (0.0, 0.8), (0.3, 0.9), (0.3, 0.95), (0.2, 0.7), (0.9, 0.1)])

    def score():
        f1, loss = next(scores)
        return {"f1": f1, "eval_loss": loss}

    stopper = EarlyStopping(model, patience=2, score_dev=score)
    stops = [stopper(epoch) for epoch in range(5)]
    assert stops == [False, False, False, False, True]  # epoch 2 improves on a tie (lower loss), epoch 3 is best
    assert stopper.columns() == {"epochs_trained": 5, "best_epoch": 3}


def test_the_best_epochs_weights_are_put_back():
    model = torch.nn.Linear(2, 1)
    values = iter([0.5, 0.2])
    stopper = EarlyStopping(model, patience=1, score_dev=lambda: {"f1": next(values), "eval_loss": 0.0})
    stopper(0)
    best = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert stopper(1) is True
    stopper.restore()
    assert torch.equal(model.weight, best)


def _script_dev(monkeypatch, f1s: list[float], snapshots: dict | None = None) -> None:
    """Early stopping sees these dev F1s, epoch after epoch (the rest of dev is scored for real); with
    ``snapshots``, the model's weights after each epoch, by epoch number."""
    scripted, original = iter(f1s), EarlyStopping.__call__

    def scripted_dev(self, epoch):
        real = self.score_dev
        self.score_dev = lambda: {**real(), "f1": next(scripted)}
        if snapshots is not None:
            snapshots[epoch + 1] = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        try:
            return original(self, epoch)
        finally:
            self.score_dev = real

    monkeypatch.setattr(early_stopping.EarlyStopping, "__call__", scripted_dev)


def test_a_trial_stops_when_dev_stops_improving_and_keeps_the_best_epoch(tmp_path, tiny_model, ner_task_file,
                                                                          monkeypatch):
    from frugalray.model.saved import load_trained

    snapshots = {}
    _script_dev(monkeypatch, [0.5, 0.4, 0.45, 0.3, 0.9], snapshots)  # epochs 1..5: the best is the first; patience
    # 2 stops after 3. The whole embedding: the snapshots are of the model as it trains (trimmed, it has fewer
    # rows; the test below compares trimmed and whole runs).
    training = TrainingSettings(epochs=5, batch_size=4, learning_rate=1e-3, max_length=32, early_stopping_patience=2,
                                energy=False, trim_vocabulary=False)
    config = TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=2, training=training)
    row = run_trial(prepare_trial(config), device="cpu", save_to=str(tmp_path / "model"))
    assert (row["epochs_trained"], row["best_epoch"]) == (3, 1)
    assert row["train_steps"] == 3 * row["planned_steps"] // 5
    assert not torch.equal(snapshots[1]["classifier.weight"], snapshots[3]["classifier.weight"])
    saved, _ = load_trained(str(tmp_path / "model"))
    for name, value in saved.state_dict().items():
        torch.testing.assert_close(value, snapshots[1][name], msg=name)


def test_early_stopping_is_in_the_hash_only_when_on():
    assert "early_stopping_patience" not in TrainingSettings().identity()
    assert TrainingSettings(early_stopping_patience=2).identity()["early_stopping_patience"] == 2
    with pytest.raises(Exception, match="early_stopping_patience"):
        TrainingSettings(early_stopping_patience=-1)


@pytest.mark.slow
def test_early_stopping_with_a_trimmed_vocabulary_keeps_the_same_best_weights(tmp_path, tiny_model, ner_task_file,
                                                                               monkeypatch):
    """The rows a trimmed vocabulary leaves out decay for as many steps as the kept epoch trained, not all."""
    from frugalray.model.saved import load_trained

    def run(trim: bool):
        monkeypatch.undo()  # each run wraps the original hook, not the previous run's wrapper
        _script_dev(monkeypatch, [0.5, 0.4, 0.3])
        training = TrainingSettings(epochs=4, batch_size=4, learning_rate=1e-3, max_length=32, weight_decay=0.3,
                                    early_stopping_patience=2, trim_vocabulary=trim, energy=False, dtype="fp32")
        config = TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=2, training=training)
        row = run_trial(prepare_trial(config), device="cpu", save_to=str(tmp_path / str(trim)))
        assert (row["epochs_trained"], row["best_epoch"]) == (3, 1)
        return load_trained(str(tmp_path / str(trim)))[0].state_dict()

    whole, trimmed = run(False), run(True)
    for name, value in whole.items():
        torch.testing.assert_close(trimmed[name], value, rtol=1e-5, atol=1e-6, msg=name)
