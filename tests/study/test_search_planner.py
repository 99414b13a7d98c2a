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
