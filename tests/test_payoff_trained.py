"""benchmarks/payoff.py --trained: models trained elsewhere (saved with their weights) are exported and
re-evaluated instead of trained again, and trials that cannot stand for a layer set are refused by name."""

import shutil
import sys
from pathlib import Path

import pytest

from frugalray import ResultsStore, TrainingSettings, TrialConfig, execute_trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import payoff  # noqa: E402  (benchmarks/payoff.py)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, ner_task_file):
    """A store with the full tiny model (4 layers) and its first 2, saved; and its first 2 not saved."""
    store = ResultsStore(tmp_path_factory.mktemp("trained") / "r")
    training = TrainingSettings(epochs=1, batch_size=2, max_length=32)
    ids = {}
    for name, strategy, n, save in [("full", "full", None, True), ("first_2", "first", 2, True),
                                    ("unsaved", "first", 2, False), ("first_1", "first", 1, True)]:
        row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy=strategy, n=n, seed=len(ids),
                                        training=training, save_model=save), store)
        assert row["status"] == "ok", row["error"]
        ids[name] = row["trial_id"]
    return store, ids


def test_trained_models_are_read_with_their_rows(trained, tiny_model):
    store, ids = trained
    got, first, rows = payoff.trained_rows(str(store.location), f"full={ids['full']},first_2={ids['first_2']}",
                                           tiny_model, 4)
    assert first == [2] and got.location == store.location
    assert {name: row["trial_id"] for name, row in rows.items()} == {"full": ids["full"], "first_2": ids["first_2"]}
    assert rows["first_2"]["kept_layers"] == [0, 1] and rows["full"]["f1"] is not None


@pytest.mark.parametrize("trials,message", [
    ("first_2={first_2}", "full=TRIAL_ID and at least one first_K=TRIAL_ID, nothing else"),
    ("full={full},first_2={first_2},half={first_2}", "nothing else"),
    ("full={full},first_2=", "nothing else"),
    ("full={full},first_2=nope", "first_2=nope: no such trial in"),
    ("full={first_2},first_2={first_2}", "full needs an ok trial of"),
    ("full={full},first_2={first_1}", "keeping layers [0]; first_2 needs an ok trial of"),
    ("full={full},first_2={unsaved}", "its weights are not in"),
])
def test_trials_that_cannot_stand_for_their_layer_set_are_refused_by_name(trained, tiny_model, trials, message):
    store, ids = trained
    with pytest.raises(SystemExit) as refused:
        payoff.trained_rows(str(store.location), trials.format(**ids), tiny_model, 4)
    assert message in str(refused.value), str(refused.value)


def test_a_trial_of_another_model_is_refused(trained):
    store, ids = trained
    with pytest.raises(SystemExit) as refused:
        payoff.trained_rows(str(store.location), f"full={ids['full']},first_2={ids['first_2']}", "minilm", 4)
    assert "needs an ok trial of minilm" in str(refused.value)


def test_trained_models_are_exported_and_evaluated_not_trained_again(trained, tiny_model, tmp_path):
    source, ids = trained
    shutil.copytree(source.location, tmp_path / "r")  # the variants' rows join the store: a copy of its own
    store, first, rows = payoff.trained_rows(str(tmp_path / "r"), f"full={ids['full']},first_2={ids['first_2']}",
                                             tiny_model, 4)
    before = len(store.table())
    scores = payoff.measure_quality(tiny_model, first, "unused", ("fp32", "int8-all"), 1, 32, 0, tmp_path, "default",
                                    reuse=(store, rows))
    assert scores[("full", "fp32")]["trial_id"] == ids["full"]  # the stored row, not a new training run
    assert scores[("first_2", "fp32")]["trial_id"] == ids["first_2"]
    after = store.table().to_pylist()
    assert len(after) == before + 2  # one int8 variant of each, nothing trained
    variants = {r["source_trial_id"]: r for r in after if r["source_trial_id"]}
    assert set(variants) == {ids["full"], ids["first_2"]}
    assert {r["variant"] for r in variants.values()} == {"int8"}
    assert scores[("first_2", "int8-all")]["f1"] == variants[ids["first_2"]]["f1"]
    assert (tmp_path / "first_2-int8-all").is_dir() and not (tmp_path / "results").exists()
