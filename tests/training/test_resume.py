"""A trial stopped at a dev checkpoint and resumed later from the state it kept there ends as the same trial
never stopped: same scores, same dev curve, same counts (``frugalray.training.resume``)."""

import dataclasses

import pytest

from frugalray import ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.training import resume

SETTINGS = TrainingSettings(epochs=2, batch_size=2, learning_rate=1e-3, max_length=32, eval_every_steps=1)
SAME = ("f1", "dev_f1", "eval_loss", "dev_eval_loss", "accuracy", "train_steps", "planned_steps", "train_tokens",
        "train_padded_tokens", "checkpoint_steps", "checkpoint_dev_f1", "checkpoint_dev_loss")


class Stopped(Exception):
    """What a scheduler's stop looks like from inside the trial: its report does not return."""


def _config(task, model, **training):
    return TrialConfig(task=task, model=model, strategy="first", n=2, seed=5,
                       training=dataclasses.replace(SETTINGS, **training))


@pytest.mark.parametrize("where", ["first checkpoint", "second epoch"])
def test_a_resumed_trial_ends_as_the_trial_never_stopped(tiny_model, ner_task_file, where):
    config = _config(ner_task_file, tiny_model)
    whole = execute_trial(config)
    assert whole["status"] == "ok", whole["error"]
    steps, per_epoch = whole["checkpoint_steps"], whole["planned_steps"] // 2
    stop_at = steps[0] if where == "first checkpoint" else min(s for s in steps if s > per_epoch)
    kept: dict[int, bytes] = {}

    def snapshot(step, state):
        kept[step] = resume.pack(state())  # as bytes, as the store holds them

    def report(progress):
        if progress["train_steps"] == stop_at:
            raise Stopped

    stopped = execute_trial(config, snapshot=snapshot, report=report)
    assert stopped["status"] == "failed" and "Stopped" in stopped["error"]
    assert sorted(kept) == [s for s in steps if s <= stop_at]  # a state at every checkpoint it reached
    resumed = execute_trial(config, resume=resume.unpack(kept[stop_at]))
    assert resumed["status"] == "ok", resumed["error"]
    assert resumed["resumed_from_step"] == stop_at and whole["resumed_from_step"] is None
    for column in SAME:
        assert resumed[column] == whole[column], column
    assert len(resumed["checkpoint_eval_seconds"]) == len(steps)


def test_the_state_a_search_kept_is_restored_on_its_own(tiny_model, ner_task_file):
    """Without the random state or the optimizer's moments a resumed trial would not end where the whole one does:
    a state from another configuration's weights gives other scores."""
    config = _config(ner_task_file, tiny_model)
    other = _config(ner_task_file, tiny_model, learning_rate=5e-3)
    kept = {}
    execute_trial(other, snapshot=lambda step, state: kept.setdefault(step, state()))
    whole, foreign = execute_trial(config), execute_trial(config, resume=kept[min(kept)])
    assert foreign["status"] == "ok" and foreign["checkpoint_dev_loss"] != whole["checkpoint_dev_loss"]


def test_kept_states_live_in_the_store_until_forgotten(tmp_path):
    store = ResultsStore(tmp_path)
    assert resume.kept(store, "abc") is None
    path = resume.keep(store, "abc", {"step": 3, "losses": [0.5, 0.25]})
    assert path.endswith("resume/abc.pt") and (tmp_path / "resume" / "abc.pt").is_file()
    assert resume.kept(store, "abc") == {"step": 3, "losses": [0.5, 0.25]}
    resume.forget(store, "abc")
    assert resume.kept(store, "abc") is None and not (tmp_path / "resume" / "abc.pt").exists()
    resume.forget(store, "abc")  # twice is fine


def test_only_trials_without_early_stopping_on_dev_resume():
    assert resume.resumable(SETTINGS)
    assert not resume.resumable(dataclasses.replace(SETTINGS, early_stopping_patience=2))
