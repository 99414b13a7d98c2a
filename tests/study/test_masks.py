"""What halving compares at a rung (``rung_score``, ``rung_curve``), on checkpoints whose dev F1 is not 0, with
every expected value written out: a score that ranked by the wrong column, or the right one the wrong way
round, would give other numbers and another order."""

import math

import pytest

from frugalray import FrugalrayError
from frugalray.config import RUNG_SCORES
from frugalray.study.masks import rung_curve, rung_score

# Four masks at one rung: a and b tie on dev F1, b with the lower dev loss; c has the lowest loss but a lower F1.
CHECKPOINTS = {"a": (0.70, 1.20), "b": (0.70, 0.80), "c": (0.65, 0.30), "d": (0.40, 2.00)}


@pytest.mark.parametrize("name,dev_f1,dev_loss,expected", [
    ("dev_f1", 0.70, 1.20, 0.70),
    ("dev_f1", 0.65, None, 0.65),  # the loss plays no part
    ("dev_loss", 0.70, 1.20, -1.20),
    ("dev_loss", 0.00, 0.30, -0.30),
    ("dev_f1_then_loss", 0.70, 1.20, 0.6999999988),  # 0.70 - 1e-9 * 1.20
    ("dev_f1_then_loss", 0.65, 0.30, 0.6499999997),
    ("dev_f1_then_loss", 0.40, 2000.0, 0.399999),  # a loss past 1e3 counts as 1e3: at most 1e-6 off the F1
])
def test_each_rung_score_of_a_checkpoint(name, dev_f1, dev_loss, expected):
    assert rung_score(name, dev_f1, dev_loss) == pytest.approx(expected, rel=0, abs=1e-13)


@pytest.mark.parametrize("loss", [None, math.nan, math.inf])
def test_a_missing_or_non_finite_loss_ranks_last(loss):
    assert rung_score("dev_loss", 0.9, loss) == -1000.0
    assert rung_score("dev_f1_then_loss", 0.9, loss) == pytest.approx(0.899999, rel=0, abs=1e-13)
    assert rung_score("dev_loss", 0.9, loss) < rung_score("dev_loss", 0.1, 999.0)  # below any finite loss
    assert rung_score("dev_f1_then_loss", 0.9, loss) < rung_score("dev_f1_then_loss", 0.9, 999.0)


@pytest.mark.parametrize("name,best_first", [
    ("dev_f1", ["a", "b", "c", "d"]),  # a and b tie: the sort keeps their order
    ("dev_loss", ["c", "b", "a", "d"]),  # lower loss first, whatever the F1
    ("dev_f1_then_loss", ["b", "a", "c", "d"]),  # F1 first; between equal F1s, the lower loss
])
def test_each_rung_score_ranks_the_masks_of_a_rung(name, best_first):
    scores = {mask: rung_score(name, f1, loss) for mask, (f1, loss) in CHECKPOINTS.items()}
    assert sorted(scores, key=lambda mask: -scores[mask]) == best_first
    if name == "dev_f1":
        assert scores["a"] == scores["b"]  # a tie halving cannot break
    else:
        assert len(set(scores.values())) == 4


def test_a_rows_curve_scores_each_checkpoint_by_its_step():
    row = {"checkpoint_steps": [2, 4, 6], "checkpoint_dev_f1": [0.25, 0.5, 0.5],
           "checkpoint_dev_loss": [1.5, 0.9, 0.7]}
    assert rung_curve(row, "dev_f1") == {2: 0.25, 4: 0.5, 6: 0.5}
    assert rung_curve(row, "dev_loss") == {2: -1.5, 4: -0.9, 6: -0.7}
    curve = rung_curve(row, "dev_f1_then_loss")
    assert list(curve) == [2, 4, 6]
    assert list(curve.values()) == pytest.approx([0.2499999985, 0.4999999991, 0.4999999993], rel=0, abs=1e-13)
    assert curve[6] > curve[4]  # the same F1 at a lower loss: the later checkpoint ranks higher
    # a row recorded before dev losses were: every checkpoint's loss is missing
    older = {"checkpoint_steps": [2, 4], "checkpoint_dev_f1": [0.25, 0.5]}
    assert rung_curve(older, "dev_loss") == {2: -1000.0, 4: -1000.0}
    assert rung_curve(older, "dev_f1") == {2: 0.25, 4: 0.5}
    assert rung_curve({}, "dev_loss") == {}


def test_an_unknown_rung_score_names_those_that_exist():
    assert RUNG_SCORES == ("dev_f1", "dev_loss", "dev_f1_then_loss")
    with pytest.raises(FrugalrayError, match="Unknown rung_score 'dev_los'. Did you mean 'dev_loss'"):
        rung_score("dev_los", 0.5, 1.0)


def test_dev_f1_then_loss_orders_by_f1_first_and_breaks_ties_by_the_lower_loss():
    """For any two checkpoints: a higher dev F1 (by a thousandth of a point or more) ranks higher whatever the
    losses; equal F1s rank by the lower loss; the score is never more than 1e-6 below the F1."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    f1 = st.floats(0, 1)
    loss = st.one_of(st.none(), st.floats(0, 1e4), st.just(math.nan), st.just(math.inf))

    @hypothesis.given(f1, f1, loss, loss)
    def ranks(f1_a, f1_b, loss_a, loss_b):
        a, b = rung_score("dev_f1_then_loss", f1_a, loss_a), rung_score("dev_f1_then_loss", f1_b, loss_b)
        if f1_a - f1_b >= 1e-5:
            assert a > b
        if f1_a == f1_b:  # a loss missing, non-finite or past 1e3 counts as 1e3
            counted = lambda loss: min(loss, 1e3) if loss is not None and math.isfinite(loss) else 1e3
            if counted(loss_b) - counted(loss_a) >= 1e-3:
                assert a > b
            elif counted(loss_a) == counted(loss_b):
                assert a == b
        assert f1_a - 1.000001e-6 <= a <= f1_a

    ranks()


# -- fronts, rungs and the Optuna study, each with its values written out ----------------------------------
from frugalray import ResultsStore  # noqa: E402
from frugalray.config import SearchConfig, TrainingSettings  # noqa: E402
from frugalray.study.masks import (grace_steps, mask_params, mask_space, non_dominated, open_study,  # noqa: E402
                                   pareto_front, rungs, study_attributes)

ROWS = [{"id": "a", "f": 0.90, "n": 3}, {"id": "b", "f": 0.80, "n": 2}, {"id": "c", "f": 0.70, "n": 3},
        {"id": "d", "f": 0.80, "n": 2}, {"id": "e", "f": 0.60, "n": 1}, {"id": "g", "f": 0.90, "n": 4}]


def test_non_dominated_keeps_the_rows_nothing_beats_best_first():
    front = non_dominated(ROWS, ("f", "n"), ("maximize", "minimize"))
    # c is beaten by a (same n, lower f), g by a (same f, more layers); b and d are equal: neither beats the other
    assert [r["id"] for r in front] == ["a", "b", "d", "e"]
    # both maximized: more layers is better now, so g beats a
    assert [r["id"] for r in non_dominated(ROWS, ("f", "n"), ("maximize", "maximize"))] == ["g"]
    # both minimized: e has the fewest layers and the lowest f
    assert [r["id"] for r in non_dominated(ROWS, ("f", "n"), ("minimize", "minimize"))] == ["e"]
    # one column: every row with the best value, and only those
    assert [r["id"] for r in non_dominated(ROWS, ("f",), ("maximize",))] == ["a", "g"]
    assert non_dominated([], ("f",), ("maximize",)) == []


def test_rungs_multiply_by_the_reduction_factor_until_the_end_of_training():
    assert rungs(35, 3, 315) == [35, 105]
    assert rungs(10, 2, 80) == [10, 20, 40]  # 80 is the end: not a rung
    assert rungs(10, 2, 81) == [10, 20, 40, 80]
    assert rungs(5, 4, 5) == [] and rungs(6, 4, 5) == []


def _config(**values) -> SearchConfig:
    return SearchConfig(**({"task": "demo_pos", "max_layers": 3} | values))


def test_the_first_rung_defaults_to_the_training_over_the_factor_squared_and_never_before_warm_up():
    no_warmup = TrainingSettings(warmup_ratio=0.0)
    assert grace_steps(_config(training=no_warmup), 90) == 10  # 90 // 3**2
    assert grace_steps(_config(training=no_warmup, reduction_factor=2), 90) == 22  # 90 // 2**2
    assert grace_steps(_config(training=no_warmup), 5) == 1  # at least one step
    assert grace_steps(_config(training=TrainingSettings(warmup_ratio=0.2)), 90) == 18  # after the 18 warm-up steps
    assert grace_steps(_config(training=TrainingSettings(warmup_ratio=0.05)), 90) == 10  # warm-up (5) ends first
    assert grace_steps(_config(training=no_warmup, grace_steps=7), 90) == 7  # as configured
    with pytest.raises(FrugalrayError, match=r"grace_steps=7: the first rung must come after the 18 warm-up steps "
                                             r"\(warmup_ratio 0.2 of 90 steps\)"):
        grace_steps(_config(training=TrainingSettings(warmup_ratio=0.2), grace_steps=7), 90)
    with pytest.raises(FrugalrayError, match=r"grace_steps=90: a trial trains 90 steps in all \(3 epochs\)"):
        grace_steps(_config(training=TrainingSettings(warmup_ratio=0.0, epochs=3), grace_steps=90), 90)
    with pytest.raises(FrugalrayError, match="grace_steps=95"):
        grace_steps(_config(training=no_warmup, grace_steps=95), 90)


def test_a_mask_is_one_keep_flag_per_layer():
    assert mask_params((0, 2), 4) == {"keep_0": True, "keep_1": False, "keep_2": True, "keep_3": False}
    assert mask_params((), 2) == {"keep_0": False, "keep_1": False}


def test_the_study_records_every_setting_that_gives_its_values_their_meaning():
    from frugalray._version import __version__
    from frugalray.config import LoraSettings

    config = _config(objective="f1_vs_layers", seed=3, data_dir="/data/x", sampler="random", startup_trials=4,
                     halving=True, grace_steps=5, reduction_factor=2, rung_score="dev_f1", min_layers=2,
                     lora=LoraSettings(r=4))
    attributes = study_attributes(config)
    assert attributes == {
        "task": "demo_pos", "model": "minilm", "objective": "f1_vs_layers",
        "constraint": {"min_layers": 2, "max_layers": 3, "exactly": None},
        "training": config.training.to_dict(), "lora": config.lora.to_dict(), "seed": 3, "data_dir": "/data/x",
        "frugalray_version": __version__, "sampler": "random", "startup_trials": 4,
        "halving": {"on": True, "grace_steps": 5, "reduction_factor": 2, "rung_score": "dev_f1"}}
    assert attributes["lora"]["r"] == 4 and study_attributes(_config())["lora"] is None


def test_a_study_opens_with_its_metrics_and_attributes_and_fails_trials_a_killed_driver_left_running(tmp_path):
    import optuna

    store = ResultsStore(tmp_path)
    study, _ = open_study(_config(name="s", objective="f1_vs_layers", halving=False), store)
    assert (tmp_path / "optuna.db").is_file()  # the default storage: beside the results
    assert study.metric_names == ["dev_f1", "n_kept_layers"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.user_attrs["task"] == "demo_pos" and study.user_attrs["halving"]["on"] is False
    assert type(study.sampler).__name__ == "NSGAIISampler"
    left = study.ask()  # a driver killed with this trial running
    study.tell(study.ask(), [0.5, 2])
    again, _ = open_study(_config(name="s", objective="f1_vs_layers", budget=3), store)  # the budget binds nothing
    states = [t.state for t in again.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert again.trials[0].number == left.number


def test_a_study_in_memory_writes_no_database(tmp_path):
    import optuna

    study, _ = open_study(_config(name="s", storage="memory"), ResultsStore(tmp_path))
    assert isinstance(study._storage, optuna.storages.InMemoryStorage) and list(tmp_path.iterdir()) == []
    study.tell(study.ask(), 0.5)
    assert study.best_value == 0.5


@pytest.mark.parametrize("values,setting", [
    ({"task": "demo_ner"}, "task"), ({"model": "other"}, "model"), ({"seed": 1}, "seed"),
    ({"max_layers": 2}, "constraint"), ({"training": TrainingSettings(epochs=9)}, "training"),
])
def test_a_study_created_with_other_settings_is_refused(tmp_path, values, setting):
    store = ResultsStore(tmp_path)
    open_study(_config(name="s"), store)
    with pytest.raises(FrugalrayError, match=rf"Optuna study 's' in sqlite:///{tmp_path}/optuna.db was created with "
                                             rf"other settings \({setting}: .* there, .* here\); give this search"):
        open_study(_config(name="s", **values), store)


@pytest.mark.parametrize("values,sampler", [({}, "TPESampler"), ({"sampler": "random"}, "RandomSampler"),
                                            ({"objective": "f1_vs_latency"}, "NSGAIISampler")])
def test_the_sampler_follows_the_setting_and_the_objective(tmp_path, values, sampler):
    study, _ = open_study(_config(name="s", startup_trials=4, **values), ResultsStore(tmp_path))
    assert type(study.sampler).__name__ == sampler
    if sampler == "TPESampler":
        assert study.sampler._n_startup_trials == 4  # Optuna's default is 10


def test_a_remote_store_needs_an_explicit_storage_and_a_bad_one_is_named(tmp_path):
    remote = ResultsStore(tmp_path)
    remote.local = False  # as for s3://... (no file of the store is touched before the check)
    with pytest.raises(FrugalrayError, match="A remote results location needs an explicit Optuna storage"):
        open_study(_config(name="s"), remote)
    with pytest.raises(FrugalrayError, match=r"Optuna storage 'sqlite:////nonexistent/dir/x.db' cannot be opened"):
        open_study(_config(name="s", storage="sqlite:////nonexistent/dir/x.db"), ResultsStore(tmp_path))


def test_the_front_of_a_study_holds_its_best_completed_trials_with_their_masks():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    multi = optuna.create_study(directions=["maximize", "minimize"])
    for f1, n, state in [(0.9, 3, "COMPLETE"), (0.8, 2, "COMPLETE"), (0.7, 3, "COMPLETE"), (0.95, 3, "PRUNED")]:
        trial = multi.ask()
        trial.set_user_attr("kept_layers", list(range(n)))
        if state == "COMPLETE":
            multi.tell(trial, [f1, n])
        else:
            multi.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert pareto_front(multi, ("dev_f1", "n_kept_layers")) == [
        {"kept_layers": [0, 1, 2], "dev_f1": 0.9, "n_kept_layers": 3.0, "optuna_trial": 0},
        {"kept_layers": [0, 1], "dev_f1": 0.8, "n_kept_layers": 2.0, "optuna_trial": 1}]
    single = optuna.create_study(direction="maximize")
    assert pareto_front(single, ("dev_f1",)) == []  # nothing completed yet
    single.tell(single.ask(), state=optuna.trial.TrialState.PRUNED)
    assert pareto_front(single, ("dev_f1",)) == []  # a stopped mask is no result
    for f1, kept in [(0.6, [1]), (0.75, [0, 2])]:
        trial = single.ask()
        trial.set_user_attr("kept_layers", kept)
        single.tell(trial, f1)
    assert pareto_front(single, ("dev_f1",)) == [{"kept_layers": [0, 2], "dev_f1": 0.75, "optuna_trial": 2}]
    tied = single.ask()  # another mask as good: a single objective still has one best, the first found
    tied.set_user_attr("kept_layers", [3])
    single.tell(tied, 0.75)
    assert pareto_front(single, ("dev_f1",)) == [{"kept_layers": [0, 2], "dev_f1": 0.75, "optuna_trial": 2}]


class _Answers:
    """An Optuna trial whose answers are given: keep_k -> True/False, in order; records what was asked."""

    def __init__(self, answers: dict[str, bool]):
        self.answers, self.asked = answers, []

    def suggest_categorical(self, name, choices):
        assert choices == [True, False]
        self.asked.append(name)
        return self.answers[name]


@pytest.mark.parametrize("low,high,answers,kept,asked", [
    (1, 3, {"keep_0": True, "keep_1": False, "keep_2": True, "keep_3": False}, [0, 2], 4),
    (1, 2, {"keep_0": True, "keep_1": True}, [0, 1], 2),  # the maximum reached: layers 2 and 3 are left out unasked
    (2, 3, {"keep_0": False, "keep_1": False}, [2, 3], 2),  # the rest is needed to reach the minimum: kept unasked
    (3, 3, {"keep_0": False}, [1, 2, 3], 1),
    (4, 4, {}, [0, 1, 2, 3], 0),  # every layer, nothing to ask
])
def test_the_mask_space_asks_only_what_the_bounds_leave_open(low, high, answers, kept, asked):
    trial = _Answers(answers)
    assert mask_space(4, low, high)(trial) == {"layers": kept}
    assert trial.asked == [f"keep_{k}" for k in range(asked)]


def test_a_study_with_several_other_settings_names_each(tmp_path):
    store = ResultsStore(tmp_path)
    open_study(_config(name="s"), store)
    with pytest.raises(FrugalrayError) as refused:
        open_study(_config(name="s", task="demo_ner", seed=2), store)
    assert "(task: 'demo_pos' there, 'demo_ner' here; seed: 0 there, 2 here)" in str(refused.value)


@pytest.mark.parametrize("sampler,objective", [("random", "f1"), ("tpe", "f1"), ("tpe", "f1_vs_layers")])
def test_the_sampler_draws_the_same_masks_for_the_same_sampler_seed(tmp_path, sampler, objective):
    def drawn(folder, seed) -> list:
        config = _config(name="s", sampler=sampler, sampler_seed=seed, objective=objective)
        study, _ = open_study(config, ResultsStore(folder).check_writable())
        return [mask_space(6, 1, 3)(study.ask())["layers"] for _ in range(6)]

    first = drawn(tmp_path / "a", 7)
    assert drawn(tmp_path / "b", 7) == first and drawn(tmp_path / "c", 8) != first
