"""MaskSearch driven by hand as the driver drives it (next, progress, finish), no Ray: what each outcome tells
Optuna, masks asked for twice, stored results told instead of trained, and the promotion rule's edges."""

import pytest
from optuna.trial import TrialState

from frugalray import ResultsStore
from frugalray.config import SearchConfig
from frugalray.results.schema import TrialResult
from frugalray.study.masks import mask_params
from frugalray.study.planned import DONE
from frugalray.study.search import MaskSearch


def _search(tmp_path, model, **values):
    defaults = dict(task="demo_pos", model=model, budget=4, results=str(tmp_path / "r"), prior="none",
                    halving=False, name="s", min_layers=1, max_layers=2)
    config = SearchConfig(**(defaults | values))
    return MaskSearch(config, ResultsStore(config.results).check_writable())


def _result(planned, status="ok", **values):
    return TrialResult.from_row({"trial_id": f"{planned.config_hash}-t", "config_hash": planned.config_hash,
                                 "status": status, "kept_layers": list(planned.kept_layers),
                                 "n_kept_layers": len(planned.kept_layers), "task": "demo_pos",
                                 "model": planned.config.model, "seed": 0, **values})


def _enqueue(search, *masks):
    for kept in masks:
        search.study.enqueue_trial(mask_params(kept, search.num_layers))


def test_a_stopped_mask_is_told_pruned_with_each_checkpoints_rung_score_once(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, halving=True, rung_score="dev_loss", grace_steps=1)
    _enqueue(search, (0,))
    planned = search.next()
    search.progress(planned, 10, -9.0)  # as the worker reported it at its checkpoint
    search.finish(planned, _result(planned, "stopped", train_steps=20, checkpoint_steps=[10, 20],
                                   checkpoint_dev_f1=[0.0, 0.0], checkpoint_dev_loss=[1.5, 1.25], dev_f1=0.0))
    [trial] = search.study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {10: -9.0, 20: -1.25}  # the reported one kept, the rest from the row
    assert search.outcomes == {"done": 0, "failed": 0, "stopped": 1} and search.reported == {}


def test_progress_of_a_mask_that_is_not_running_is_ignored(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model)
    _enqueue(search, (0,), (1,))
    first = search.next()
    other = search.planned((2,))  # never handed out
    search.progress(other, 10, 0.5)
    search.progress(first, 10, 0.25)
    assert search.reported == {search.study.trials[0].number: {10}}
    assert search.study.trials[0].intermediate_values == {10: 0.25}


def test_a_mask_asked_for_while_it_trains_gets_that_runs_result(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, budget=2)
    _enqueue(search, (0,), (0,), (1,))
    first = search.next()
    second = search.next()  # (0,) again: parked on the running one, then (1,) handed out
    assert (first.kept_layers, second.kept_layers) == ((0,), (1,)) and search.handed_out == 2
    assert list(search.parked) == [first.config_hash] and len(search.parked[first.config_hash]) == 1
    search.finish(first, _result(first, dev_f1=0.75))
    trials = search.study.trials
    assert [(t.state, t.value) for t in trials[:2]] == [(TrialState.COMPLETE, 0.75)] * 2 and search.parked == {}
    search.finish(second, _result(second, "failed", error="RuntimeError: boom"))
    assert trials[2].number == search.study.trials[2].number and search.study.trials[2].state == TrialState.FAIL
    assert search.outcomes == {"done": 1, "failed": 1, "stopped": 0} and search.next() is DONE


def test_a_failed_mask_fails_every_trial_waiting_for_it_and_is_not_retried_in_this_run(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, budget=3)
    _enqueue(search, (0,), (0,), (1,))
    first = search.next()
    search.next()
    search.finish(first, _result(first, "failed", error="RuntimeError: boom"))
    assert [t.state for t in search.study.trials[:2]] == [TrialState.FAIL] * 2
    _enqueue(search, (0,), (2,))
    assert search.next().kept_layers == (2,)  # (0,) asked again: told failed, not handed out
    assert search.study.trials[3].state == TrialState.FAIL and search.failed == {first.config_hash: (0,)}


def test_stored_results_are_told_to_optuna_and_counted(tmp_path, tiny_model):
    earlier = _search(tmp_path, tiny_model)
    store = earlier.store
    for kept, f1 in (((0,), 0.5), ((1,), 0.25)):
        store.append(_result(earlier.planned(kept), dev_f1=f1, f1=f1))
    search = MaskSearch(earlier.config, store)
    assert search.told_from_store == 0 and search.known_masks == {(0,), (1,)}
    planned = search.next()  # warm start: the stored masks are asked for first, told, then a new one
    told = search.study.get_trials(states=[TrialState.COMPLETE])  # nothing trained yet: each one told
    assert search.told_from_store == len(told) >= 2 and planned.kept_layers not in {(0,), (1,)}
    assert [(t.state, t.value) for t in search.study.trials[:2]] == [(TrialState.COMPLETE, 0.5),
                                                                    (TrialState.COMPLETE, 0.25)]


def test_without_warm_start_stored_masks_are_only_told_when_asked_for(tmp_path, tiny_model):
    earlier = _search(tmp_path, tiny_model)
    earlier.store.append(_result(earlier.planned((0,)), dev_f1=0.5))
    search = MaskSearch(earlier.config.__class__(**(earlier.config.to_dict() | {"warm_start": False})),
                        earlier.store)
    assert search.study.get_trials(states=[TrialState.WAITING]) == []  # nothing enqueued


def test_a_two_objective_search_tells_both_values(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, objective="f1_vs_layers")
    _enqueue(search, (0, 1))
    planned = search.next()
    search.finish(planned, _result(planned, dev_f1=0.5))
    assert search.study.trials[0].values == [0.5, 2.0]


@pytest.mark.parametrize("peers,value,earns", [
    ([0.1, 0.5, 0.6], 0.55, True),   # the top third, by inclusive quantiles: cutoff 0.533 (exclusive: 0.567)
    ([0.1, 0.5, 0.6], 0.52, False),
    ([0.6, 0.6], 0.9, False),        # fewer peers than reduction_factor: no decision yet
])
def test_a_stopped_mask_earns_promotion_by_its_rung_among_its_peers(tmp_path, tiny_model, peers, value, earns):
    """The stopped mask stopped at step 15, between its checkpoints: its rung score there is its dev F1."""
    search = _search(tmp_path, tiny_model, halving=True, reduction_factor=3, rung_score="dev_f1")
    search.known = {f"k{i}": {"checkpoint_steps": [15], "checkpoint_dev_f1": [v]} for i, v in enumerate(peers)}
    search.stopped = {"x": {"train_steps": 15, "checkpoint_steps": [10], "checkpoint_dev_f1": [0.0],
                            "dev_f1": value, "dev_eval_loss": None}}
    assert search._earns_promotion("x") is earns


def test_a_stopped_mask_asked_for_again_without_a_claim_is_told_pruned_again(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, halving=True, reduction_factor=2, rung_score="dev_f1", grace_steps=1)
    _enqueue(search, (0,))
    planned = search.next()
    search.finish(planned, _result(planned, "stopped", train_steps=10, checkpoint_steps=[10],
                                   checkpoint_dev_f1=[0.125], dev_f1=0.125))
    _enqueue(search, (0,), (1,))
    assert search.next().kept_layers == (1,)  # (0,) has no peers to rank among: told, not trained again
    again = search.study.trials[1]
    assert again.state == TrialState.PRUNED and again.intermediate_values == {10: 0.125}


def test_a_promoted_mask_trains_to_the_end_once_and_then_leaves_the_stopped_ones(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, halving=True, reduction_factor=2, rung_score="dev_f1", grace_steps=1,
                     budget=6)
    curve = dict(train_steps=10, checkpoint_steps=[10])
    _enqueue(search, (0,), (1,), (2,))
    first, second, third = search.next(), search.next(), search.next()
    search.finish(first, _result(first, "stopped", checkpoint_dev_f1=[0.75], dev_f1=0.75, **curve))
    search.finish(second, _result(second, "stopped", checkpoint_dev_f1=[0.25], dev_f1=0.25, **curve))
    search.finish(third, _result(third, "failed", error="RuntimeError: boom"))
    assert search.outcomes == {"done": 0, "failed": 1, "stopped": 2}
    _enqueue(search, (0,))
    promoted = search.next()  # the best of its rung: trained on, to the end
    assert promoted.kept_layers == (0,) and promoted.full_fidelity and search.promoted == {first.config_hash}
    search.finish(promoted, _result(promoted, "stopped", checkpoint_dev_f1=[0.75], dev_f1=0.75, **curve))
    assert search.outcomes["stopped"] == 3
    _enqueue(search, (0,), (3,))
    assert search.next().kept_layers == (3,)  # promoted once only: (0,) is told pruned
    _enqueue(search, (1,), (2,))
    fourth = search.planned((3,))
    search.finish(fourth, _result(fourth, "failed", error="RuntimeError: again"))
    assert search.outcomes["failed"] == 2


def test_a_stopped_mask_trained_to_the_end_is_no_longer_counted_stopped(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, halving=True, reduction_factor=2, rung_score="dev_f1", grace_steps=1)
    _enqueue(search, (0,), (1,))
    first, second = search.next(), search.next()
    curve = dict(train_steps=10, checkpoint_steps=[10])
    search.finish(first, _result(first, "stopped", checkpoint_dev_f1=[0.75], dev_f1=0.75, **curve))
    search.finish(second, _result(second, "ok", checkpoint_dev_f1=[0.25], dev_f1=0.25, **curve))
    _enqueue(search, (0,))
    promoted = search.next()
    search.finish(promoted, _result(promoted, "ok", checkpoint_dev_f1=[0.75], dev_f1=0.8, **curve))
    assert search.stopped == {} and first.config_hash in search.known


def test_the_search_waits_for_running_masks_when_its_budget_or_space_is_used_up(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, budget=1)
    planned = search.next()
    assert search.next() is None  # the budget is handed out, one still runs: wait for it
    search.finish(planned, _result(planned, dev_f1=0.5))
    assert search.next() is DONE
    small = _search(tmp_path / "small", tiny_model, budget=10, min_layers=1, max_layers=1)
    running = [small.next() for _ in range(4)]  # every mask of one layer
    assert len({p.kept_layers for p in running}) == 4 and small.next() is None  # the space is used up: wait
    for planned in running:
        small.finish(planned, _result(planned, dev_f1=0.5))
    assert small.next() is DONE


def test_masks_enqueued_twice_by_warm_start_and_the_prior_wait_once(tmp_path, tiny_model):
    earlier = _search(tmp_path, tiny_model)
    earlier.store.append(_result(earlier.planned((0,)), dev_f1=0.5))
    search = MaskSearch(earlier.config, earlier.store, prior=[(0,), (1,)])
    waiting = search.study.get_trials(states=[TrialState.WAITING])
    assert sorted(tuple(sorted(t.system_attrs["fixed_params"].items())) for t in waiting) == sorted(
        tuple(sorted(mask_params(kept, search.num_layers).items())) for kept in [(0,), (1,)])


def test_dev_is_scored_during_training_only_with_halving(tmp_path, tiny_model):
    assert _search(tmp_path, tiny_model).planned((0,)).config.training.eval_every_steps == 0
    halving = _search(tmp_path / "h", tiny_model, halving=True, grace_steps=3)
    assert halving.planned((0,)).config.training.eval_every_steps == 3


def test_a_search_on_another_copy_of_the_data_plans_its_trials_on_that_copy(tmp_path, tiny_model):
    import shutil

    from frugalray.data.tasks import load_task

    copy = tmp_path / "pos"
    shutil.copytree(load_task("demo_pos").spec.data_dir, copy)
    with open(copy / "pos_train.conll", "a") as train:
        train.write("\nun\tDET\nfilm\tNOUN\n")
    search = _search(tmp_path, tiny_model, data_dir=str(copy))
    planned = search.planned((0, 1))
    assert planned.config.data_dir == str(copy) and len(search.task.train) == len(load_task("demo_pos").train) + 1
    assert planned.task_fingerprint == search.task.fingerprint != load_task("demo_pos").fingerprint
    assert planned.config_hash != _search(tmp_path / "default", tiny_model).planned((0, 1)).config_hash


def test_rungs_on_dev_loss_rank_a_mask_stopped_between_checkpoints_by_its_last_loss(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, halving=True, reduction_factor=2, rung_score="dev_loss")
    search.known = {f"k{i}": {"checkpoint_steps": [15], "checkpoint_dev_f1": [0.0], "checkpoint_dev_loss": [loss]}
                    for i, loss in enumerate([1.0, 2.0])}
    stopped = {"train_steps": 15, "checkpoint_steps": [10], "checkpoint_dev_f1": [0.0], "dev_f1": 0.0}
    search.stopped = {"good": stopped | {"dev_eval_loss": 0.5}, "bad": stopped | {"dev_eval_loss": 3.0}}
    assert search._earns_promotion("good") and not search._earns_promotion("bad")


def test_a_two_objective_front_names_each_masks_layers(tmp_path, tiny_model):
    search = _search(tmp_path, tiny_model, objective="f1_vs_layers")
    _enqueue(search, (0,), (0, 1))
    for f1 in (0.5, 0.75):
        planned = search.next()
        search.finish(planned, _result(planned, dev_f1=f1))
    assert sorted(tuple(entry["kept_layers"]) for entry in search.front()) == [(0,), (0, 1)]
