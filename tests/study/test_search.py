"""Layer-mask search through Ray Tune's OptunaSearch, with simulated trials (scheduling is under test)."""

import itertools
import os
from collections import Counter

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.model.importance import proxy_prior, spearman
from frugalray.cluster.session import start_local_ray
from frugalray.cluster.runs import run_search
from frugalray.config import SearchConfig
from frugalray.study.masks import mask_space, open_study
from frugalray.strategies import kept_layers

ray = pytest.importorskip("ray")
RUNNER = "frugalray.testing:simulated_trial"


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One private Ray (on loopback, as a search started without RAY_ADDRESS) for the module's searches. Its
    workers inherit the environment it starts with: simulated trials that do not sleep, and the table replayed
    trials read."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
        environment.setenv("FRUGALRAY_REPLAY_TABLE", str(tmp_path_factory.mktemp("replay") / "table"))
        start_local_ray(num_cpus=2, num_gpus=0)
        try:
            yield
        finally:
            ray.shutdown()  # the Ray this fixture started


def _search(tmp_path, model, **values):
    defaults = dict(task="demo_pos", model=model, budget=4, results=str(tmp_path / "r"), prior="none",
                    halving=False, resources={"cpus_per_trial": 0.5}, name="s")
    return SearchConfig(**(defaults | values))


def _trained(tmp_path):
    return [r for r in ResultsStore(tmp_path / "r").table().to_pylist() if r["reused_from"] is None]


def test_space_respects_the_constraint_for_any_sample():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = mask_space(6, 2, 3)
    for _ in range(200):
        kept = space(study.ask())["layers"]
        assert 2 <= len(kept) <= 3 and kept == sorted(set(kept))


@pytest.mark.slow
def test_search_trains_masks_within_the_constraint_once_each(tmp_path, tiny_model, local_ray):
    run_search(_search(tmp_path, tiny_model, budget=5, exactly=3), runner=RUNNER)
    rows = _trained(tmp_path)
    assert len(rows) == 4  # 4 layers, exactly 3: only four masks exist, however often they are sampled
    assert all(len(r["kept_layers"]) == 3 and r["stage"] == "search" for r in rows)
    assert len({r["config_hash"] for r in rows}) == len(rows)


@pytest.mark.slow
def test_warm_start_tells_stored_results_instead_of_retraining(tmp_path, tiny_model, local_ray):
    run_search(_search(tmp_path, tiny_model, budget=3, max_layers=2), runner=RUNNER)
    first = {r["config_hash"] for r in _trained(tmp_path)}
    outcome = run_search(_search(tmp_path, tiny_model, name="s2", budget=3, max_layers=2), runner=RUNNER)
    rows = _trained(tmp_path)
    assert len(rows) == len({r["config_hash"] for r in rows}) == 6  # three new masks, nothing twice
    assert first <= {r["config_hash"] for r in rows}
    study = outcome["study"]
    told = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert outcome["told_from_store"] >= 3 and len(told) >= 6


@pytest.mark.slow
def test_multi_objective_front_is_non_dominated(tmp_path, tiny_model, local_ray):
    outcome = run_search(_search(tmp_path, tiny_model, budget=6, objective="f1_vs_layers", max_layers=3),
                         runner=RUNNER)
    front = outcome["front"]
    assert front
    for a in front:
        for b in front:
            dominated = (b["dev_f1"] >= a["dev_f1"] and b["n_kept_layers"] <= a["n_kept_layers"]
                         and (b["dev_f1"], b["n_kept_layers"]) != (a["dev_f1"], a["n_kept_layers"]))
            assert not dominated, (a, b)
        assert len(a["kept_layers"]) == a["n_kept_layers"]
    from frugalray.results.fronts import read_fronts

    [stored] = read_fronts(ResultsStore(tmp_path / "r"))
    assert stored.num_rows == len(front)
    assert stored.schema.field("kept_layers").type == pa.list_(pa.int32())  # typed like the trials' columns
    assert stored.schema.field("n_kept_layers").type == pa.int32() and stored.schema.field("dev_f1").type == pa.float64()


@pytest.mark.slow
def test_resume_continues_the_same_study(tmp_path, tiny_model, local_ray):
    config = _search(tmp_path, tiny_model, budget=3, min_layers=1, max_layers=3)
    run_search(config, runner=RUNNER)
    study, _ = open_study(config, ResultsStore(tmp_path / "r"))
    before = len(study.trials)
    outcome = run_search(config, runner=RUNNER)
    assert outcome["study"].study_name == "s" and len(outcome["study"].trials) >= before + 3
    assert len(_trained(tmp_path)) == 6


@pytest.mark.slow
def test_proxy_prior_is_tried_first(tmp_path, tiny_model, local_ray):
    outcome = run_search(_search(tmp_path, tiny_model, budget=3, min_layers=1, max_layers=3, prior="proxy"),
                         runner=RUNNER)
    first = [t.user_attrs["kept_layers"] for t in outcome["study"].trials[:3]]
    assert [len(k) for k in first] == [1, 2, 3]  # keep the 1, 2, 3 most important layers by the proxy


@pytest.mark.parametrize("values,message", [
    ({"min_layers": 3, "max_layers": 2}, "No mask satisfies the constraint"),
    ({"exactly": 5}, "No mask satisfies the constraint"),
    ({"min_layers": 0}, "No mask satisfies the constraint"),
    ({"objective": "f1_vs_layer"}, "Unknown objective 'f1_vs_layer'. Did you mean 'f1_vs_layers'"),
    ({"budget": 0}, "budget must be a positive"),
])
def test_bad_search_input_fails_before_any_trial(tmp_path, tiny_model, values, message):
    with pytest.raises(FrugalrayError, match=message):
        run_search(_search(tmp_path, tiny_model, **values), runner=RUNNER)
    assert not (tmp_path / "r" / "trials").exists() or not list((tmp_path / "r" / "trials").iterdir())


def test_unwritable_storage_fails_before_any_trial(tmp_path, tiny_model):
    (tmp_path / "file").write_text("x")
    ray_before = ray.is_initialized()  # another test of the module may have started one
    with pytest.raises(FrugalrayError, match="storage .* cannot be opened or written"):
        run_search(_search(tmp_path, tiny_model, storage=f"sqlite:///{tmp_path}/file/db.sqlite3"), runner=RUNNER)
    assert ray.is_initialized() is ray_before  # nor started a Ray


def test_proxy_prior_and_strategy_agree():
    scores = (0.4, 0.1, 0.3, 0.2)
    assert proxy_prior(scores, 1, 3) == [(0,), (0, 2), (0, 2, 3)]
    assert kept_layers("drop_proxy", 4, n=1, scores=scores) == (0, 2, 3)
    assert spearman(scores, (4, 1, 3, 2)) == pytest.approx(1.0)
    assert spearman(scores, (1, 4, 2, 3)) == pytest.approx(-1.0)


@pytest.mark.slow
def test_fronts_and_importance_on_the_command_line(tmp_path, tiny_model, ner_task_file, local_ray, capsys):
    from frugalray.cli import main

    run_search(_search(tmp_path, tiny_model, budget=3, objective="f1_vs_layers", max_layers=2), runner=RUNNER)
    capsys.readouterr()
    assert main(["results", str(tmp_path / "r"), "--fronts"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "== s (f1_vs_layers)" and out[1].split()[:3] == ["kept_layers", "dev_f1", "n_kept_layers"]
    assert main(["importance", "--task", ner_task_file, "--model", tiny_model]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "proxy_importance"] and [line.split()[0] for line in lines[2:6]] == list("0123")
    blocks = lines[lines.index(next(line for line in lines if line.startswith("Blocks:"))) + 1:]
    assert blocks[0].split() == ["block_size", "proxy_drops", "angular_distance"]
    assert [line.split()[0] for line in blocks[2:]] == ["1", "2", "3"]  # every block size short of the whole model
    assert main(["results", str(tmp_path / "empty"), "--fronts"]) == 2


def test_the_optuna_study_names_its_metrics_and_records_its_settings(tmp_path, tiny_model):
    from frugalray import __version__

    config = _search(tmp_path, tiny_model, objective="f1_vs_layers", max_layers=2,
                     training={"epochs": 2, "learning_rate": 1e-4})
    open_study(config, ResultsStore(tmp_path / "r").check_writable())
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'r'}/optuna.db")  # Optuna alone
    assert study.metric_names == ["dev_f1", "n_kept_layers"]
    attrs = study.user_attrs
    assert (attrs["task"], attrs["model"], attrs["objective"]) == ("demo_pos", tiny_model, "f1_vs_layers")
    assert attrs["constraint"] == {"min_layers": 1, "max_layers": 2, "exactly": None}
    assert (attrs["training"]["epochs"], attrs["training"]["learning_rate"]) == (2, 1e-4)
    assert attrs["lora"] is None and attrs["seed"] == 0 and attrs["frugalray_version"] == __version__
    open_study(config, ResultsStore(tmp_path / "r"))  # the same search resumes
    other = _search(tmp_path, tiny_model, objective="f1_vs_layers", max_layers=3, training={"epochs": 2})
    with pytest.raises(FrugalrayError, match=r"Optuna study 's' .* was created with other settings \(constraint: .*; "
                                             r"training: .*\); give this search another name"):
        open_study(other, ResultsStore(tmp_path / "r"))


def test_fronts_are_typed_like_the_trials_whatever_wrote_them(tmp_path):
    from frugalray.results.fronts import read_fronts, write_front

    store = ResultsStore(tmp_path)
    write_front(store, "new", "f1_vs_layers", [{"kept_layers": [0, 2], "dev_f1": 0.9, "n_kept_layers": 2.0,
                                                "optuna_trial": 3}])
    # as earlier versions wrote them: whatever types the Python values had
    old = pa.Table.from_pylist([{"search": "old", "objective": "f1_vs_latency", "kept_layers": [1], "dev_f1": 0.7,
                                 "latency_ms": 3.5, "optuna_trial": 1}])
    pq.write_table(old, tmp_path / "fronts" / "old.parquet")
    (tmp_path / "fronts" / "broken.parquet").write_bytes(b"PAR1 not a front")
    new, old = sorted(read_fronts(store), key=lambda table: table.column("search")[0].as_py())
    assert new.schema.field("n_kept_layers").type == pa.int32() and new.column("n_kept_layers").to_pylist() == [2]
    assert new.schema.field("kept_layers").type == old.schema.field("kept_layers").type == pa.list_(pa.int32())
    assert old.column_names == ["search", "objective", "kept_layers", "dev_f1", "latency_ms", "optuna_trial"]


def test_the_multi_objective_sampler_pickles_as_tune_pickles_its_searcher():
    import pickle
    import threading

    import optuna

    from frugalray.study._samplers import NSGAIISampler

    def objectives(trial):
        return trial.suggest_float("a", 0, 1), trial.suggest_float("b", 0, 1)

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=NSGAIISampler(seed=3))
    study.optimize(objectives, n_trials=4)
    copy = pickle.loads(pickle.dumps(study))  # Tune writes the searcher (and with it the study) at start
    locks = [v for v in vars(copy.sampler).values() if isinstance(v, type(threading.Lock()))]
    assert all(not lock.locked() for lock in locks)
    assert len(locks) == len([v for v in vars(study.sampler).values() if isinstance(v, type(threading.Lock()))])
    copy.optimize(objectives, n_trials=2)  # the loaded copy samples on
    assert len(copy.trials) == 6 and len(study.trials) == 4


@pytest.mark.slow
def test_halving_stops_masks_early_and_a_stopped_mask_is_never_a_result(tmp_path, tiny_model, local_ray):
    """Successive halving stops masks at rungs counted in steps; their rows say so, Optuna has them as pruned,
    and no view, front or best trial ever holds one of their partial scores."""
    from frugalray.results.views import compute_view
    from frugalray.study.masks import rungs

    config = _search(tmp_path, tiny_model, budget=8, min_layers=1, max_layers=3, halving=True, grace_steps=3,
                     reduction_factor=2, max_concurrent=1, training={"epochs": 2})
    outcome = run_search(config, runner=RUNNER)
    store = ResultsStore(tmp_path / "r")
    rows = store.table().to_pylist()
    planned = rows[0]["planned_steps"]
    # one trial at a time, the virtual clock of the replays (frugalray.cluster.simulated) decides as Ray Tune did
    import dataclasses

    from frugalray.cluster.simulated import VirtualRun

    clock = VirtualRun(slots=1)
    run_search(dataclasses.replace(config, results=str(tmp_path / "virtual")), runner=RUNNER, executor=clock)
    assert _decisions(clock.runs) == _decisions(sorted(rows, key=lambda r: r["finished_at"]))
    stopped = [r for r in rows if r["status"] == "stopped"]
    finished = [r for r in rows if r["status"] == "ok"]
    assert stopped and finished, [(r["status"], r["train_steps"]) for r in rows]
    assert all(r["train_steps"] == planned for r in finished)
    for row in stopped:  # stopped at a rung, scored on dev only, its curve kept
        assert row["train_steps"] in rungs(3, 2, planned) and row["f1"] is None
        assert row["checkpoint_steps"][-1] == row["train_steps"] and row["dev_f1"] == row["checkpoint_dev_f1"][-1]
    assert len({r["config_hash"] for r in rows}) == len(rows)  # no mask trained twice
    study = outcome["study"]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned) >= len(stopped) and all(t.intermediate_values for t in pruned)
    best = max(finished, key=lambda r: r["dev_f1"])
    assert study.best_value == best["dev_f1"] and study.best_trial.user_attrs["kept_layers"] == best["kept_layers"]
    shown = compute_view(store, "strategies").table.to_pylist()
    assert sorted(tuple(r["kept_layers"]) for r in shown) == sorted(tuple(r["kept_layers"]) for r in finished)
    assert [f["kept_layers"] for f in outcome["front"]] == [best["kept_layers"]]

    outcome = run_search(config, runner=RUNNER)  # resumed, with a budget of 8 new trainings again
    again = ResultsStore(tmp_path / "r").table().to_pylist()
    rows_of = lambda config_hash: sorted((r for r in again if r["config_hash"] == config_hash),
                                         key=lambda r: r["finished_at"])
    # what the first run trained to the end is not trained again: its row is still the mask's only row
    assert all([r["trial_id"] for r in rows_of(row["config_hash"])] == [row["trial_id"]] for row in finished)
    assert Counter(r["config_hash"] for r in again if r["status"] == "ok").most_common(1)[0][1] == 1  # none twice
    # the rest of the space was searched: all 14 masks of 1 to 3 of the 4 layers have a row now
    assert len({tuple(r["kept_layers"]) for r in again}) == 14
    # A mask stopped at a rung, asked for again once it ranked among the best there, was promoted: trained to the
    # end once more, under the same configuration, its stopped row kept beside its result.
    promoted = {r["config_hash"] for r in again if r["status"] == "ok"} & {r["config_hash"] for r in again
                                                                          if r["status"] == "stopped"}
    assert promoted, [(r["kept_layers"], r["status"], r["train_steps"]) for r in again]
    for config_hash in promoted:
        stopped_row, result = rows_of(config_hash)
        assert (stopped_row["status"], result["status"]) == ("stopped", "ok")
        assert stopped_row["train_steps"] in rungs(3, 2, planned) and result["train_steps"] == planned
        assert any(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["kept_layers"] == result["kept_layers"]
                   and t.value == result["dev_f1"] for t in outcome["study"].trials)  # Optuna has its result
    # a stopped mask that did not earn it stays stopped: told to Optuna as pruned again, never retrained
    assert all(len(rows_of(row["config_hash"])) == 1 for row in stopped if row["config_hash"] not in promoted)


@pytest.mark.slow
def test_halving_with_a_front_objective_searches_each_depth_apart(tmp_path, tiny_model, local_ray):
    config = _search(tmp_path, tiny_model, budget=6, min_layers=1, max_layers=3, halving=True, grace_steps=3,
                     reduction_factor=2, objective="f1_vs_layers", max_concurrent=1, training={"epochs": 2})
    outcome = run_search(config, runner=RUNNER)
    names = [search.config.name for search in outcome["searches"]]
    assert names == ["s-n3", "s-n2", "s-n1"]
    assert [search.config.budget for search in outcome["searches"]] == [2, 2, 2]
    assert {len(f["kept_layers"]) for f in outcome["front"]} <= {1, 2, 3} and outcome["front"]
    ok = {tuple(r["kept_layers"]) for r in ResultsStore(tmp_path / "r").table().to_pylist() if r["status"] == "ok"}
    assert all(tuple(f["kept_layers"]) in ok for f in outcome["front"])


@pytest.mark.parametrize("values,message", [
    ({"grace_steps": 500}, "a trial trains .* steps in all"),
    ({"grace_steps": 1, "training": {"warmup_ratio": 0.5}}, "the first rung must come after the .* warm-up steps"),
    ({"reduction_factor": 1}, "reduction_factor >= 2"),
    ({"sampler": "tpee"}, "Unknown sampler 'tpee'. Did you mean 'tpe'"),
])
def test_bad_halving_settings_fail_before_any_trial(tmp_path, tiny_model, values, message):
    ray_before = ray.is_initialized()  # another test of the module may have started one
    with pytest.raises(FrugalrayError, match=message):
        run_search(_search(tmp_path, tiny_model, halving=True, **values), runner=RUNNER)
    assert ray.is_initialized() is ray_before  # nor started a Ray


@pytest.mark.slow
def test_a_task_file_named_relative_to_the_caller_is_found_by_every_trial(tmp_path, tiny_model, local_ray,
                                                                           monkeypatch):
    """Tune runs each trial in a folder of its own: a relative task path must not fail there (nor be retried
    over and over within the run when a trial does fail)."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    outcome = run_search(_search(tmp_path, tiny_model, task="fixtures/ner_task.json", budget=3, max_layers=2),
                         runner=RUNNER)
    rows = _trained(tmp_path)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert outcome["front"]


def test_a_stopped_mask_asked_for_again_trains_to_the_end_once_if_it_now_ranks_among_the_best(tmp_path, tiny_model):
    """Asynchronous halving decides on the masks seen so far; a mask stopped early that would now pass its
    rung is promoted (once) when the sampler wants it again; one that would not stays stopped."""
    from frugalray.results.schema import TrialResult
    from frugalray.study.search import MaskSearch

    config = _search(tmp_path, tiny_model, exactly=2, halving=True, grace_steps=2, reduction_factor=2,
                     training={"epochs": 2})
    store = ResultsStore(tmp_path / "r").check_writable()
    search = MaskSearch(config, store)
    step, planned = 2, search.max_steps

    def row(kept, status, value):
        hashed = search.planned(kept).config_hash
        return TrialResult.from_row({"trial_id": f"{hashed}-x", "config_hash": hashed, "status": status,
                                     "kept_layers": list(kept), "n_kept_layers": 2, "train_steps": step if status == "stopped" else planned,
                                     "planned_steps": planned, "checkpoint_steps": [step], "checkpoint_dev_f1": [value],
                                     "checkpoint_dev_loss": [1 - value], "dev_f1": value, "task": "demo_pos",
                                     "model": tiny_model, "seed": 0})

    for kept, value in (((0, 1), 0.2), ((0, 2), 0.3), ((0, 3), 0.4)):
        store.append(row(kept, "ok", value))
    store.append(row((1, 2), "stopped", 0.9))  # stopped when only worse-looking masks... now the best there
    store.append(row((1, 3), "stopped", 0.1))
    search = MaskSearch(config, store)
    good, bad = search.planned((1, 2)).config_hash, search.planned((1, 3)).config_hash
    assert search._earns_promotion(good) and not search._earns_promotion(bad)
    search.promoted.add(good)
    assert not search._earns_promotion(good)  # once
    assert search.planned((1, 2), full_fidelity=True).config_hash == good  # the same configuration, trained on


def test_a_search_whose_every_mask_is_settled_ends_without_asking_the_sampler_again(tmp_path, tiny_model):
    """Once every mask is trained or stopped with no claim to go on, the search is over: it neither spins
    on the sampler (each ask of a known mask costs a sampler step and a storage write) nor waits. A stopped mask
    that now ranks among the best at its rung is not settled: it is handed out, to train to the end."""
    from frugalray.results.schema import TrialResult
    from frugalray.study.planned import DONE
    from frugalray.study.search import MaskSearch

    config = _search(tmp_path, tiny_model, exactly=2, halving=True, grace_steps=2, reduction_factor=2,
                     training={"epochs": 2}, budget=100)
    store = ResultsStore(tmp_path / "r").check_writable()
    search = MaskSearch(config, store)
    planned = search.max_steps

    def row(kept, status, value):
        hashed = search.planned(kept).config_hash
        return TrialResult.from_row({"trial_id": f"{hashed}-x", "config_hash": hashed, "status": status,
                                     "kept_layers": list(kept), "n_kept_layers": 2,
                                     "train_steps": 2 if status == "stopped" else planned, "planned_steps": planned,
                                     "checkpoint_steps": [2], "checkpoint_dev_f1": [value], "dev_f1": value,
                                     "checkpoint_dev_loss": [1 - value], "task": "demo_pos", "model": tiny_model,
                                     "seed": 0})

    def searched(last: float):
        store = ResultsStore(tmp_path / f"r{last}").check_writable()
        for kept, value in (((0, 1), 0.2), ((0, 2), 0.3), ((0, 3), 0.4), ((1, 2), 0.5)):
            store.append(row(kept, "ok", value))
        store.append(row((1, 3), "stopped", 0.1))
        store.append(row((2, 3), "stopped", last))
        return MaskSearch(config, store)

    search = searched(0.05)
    asked = len(search.study.trials)
    assert search.next() == DONE
    assert len(search.study.trials) == asked  # not one more ask

    search = searched(0.9)  # (2, 3) stopped, but now the best at its rung
    handed = search.next()
    assert handed != DONE and handed is not None
    assert handed.kept_layers == (2, 3) and handed.full_fidelity


def test_tpe_models_the_results_after_startup_trials_random_masks(tmp_path, tiny_model):
    """``startup_trials`` is Optuna's n_startup_trials: until that many masks have results, TPE samples at random
    (its independent sampler); after, it models them."""
    from frugalray.study.search import MaskSearch

    for startup in (2, 10):
        config = _search(tmp_path / str(startup), tiny_model, max_layers=3, startup_trials=startup)
        store = ResultsStore(tmp_path / str(startup) / "r").check_writable()
        search = MaskSearch(config, store)
        assert search.study.sampler._n_startup_trials == startup
        assert search.study.user_attrs["startup_trials"] == startup
    with pytest.raises(FrugalrayError, match="startup_trials must be >= 0"):
        _search(tmp_path, tiny_model, startup_trials=-1)


@pytest.mark.parametrize("score", ["dev_f1", "dev_loss", "dev_f1_then_loss"])
@pytest.mark.slow
def test_rungs_compare_the_chosen_score_where_dev_f1_ties(tmp_path, tiny_model, local_ray, score):
    """Early in an NER training every mask's dev F1 is 0: rungs on dev F1 compare ties and stop nothing, while
    rungs on dev loss (or dev F1 with ties broken by dev loss) stop the masks whose loss is higher. Replayed
    from a recorded table whose masks' dev loss is known, so what was stopped can be checked."""
    from frugalray.results.schema import TrialResult
    from frugalray.study.search import MaskSearch

    config = _search(tmp_path, tiny_model, exactly=2, halving=True, grace_steps=2, reduction_factor=2, budget=6,
                     training={"epochs": 2}, max_concurrent=1, rung_score=score, sampler="random")
    table = ResultsStore(os.environ["FRUGALRAY_REPLAY_TABLE"]).check_writable()  # the same for every case
    search = MaskSearch(config, ResultsStore(tmp_path / "scratch").check_writable())
    planned = search.max_steps
    masks = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    loss = {kept: 1.0 + 0.1 * i for i, kept in enumerate(masks)}  # (0, 1) lowest ... (2, 3) highest
    steps = list(range(1, planned))
    if not table.table().num_rows:  # written by the first case
        for kept in masks:
            hashed = search.planned(kept).config_hash
            table.append(TrialResult.from_row({
                "trial_id": f"{hashed}-t", "config_hash": hashed, "status": "ok", "kept_layers": list(kept),
                "n_kept_layers": 2, "train_steps": planned, "planned_steps": planned, "checkpoint_steps": steps,
                "checkpoint_dev_f1": [0.0] * len(steps), "checkpoint_dev_loss": [loss[kept]] * len(steps),
                "dev_f1": 0.5 - loss[kept] / 10, "f1": 0.5, "dev_eval_loss": loss[kept], "task": "demo_pos",
                "model": tiny_model, "seed": 0}))
    outcome = run_search(config, runner="frugalray.testing:replayed_trial")
    rows = sorted(ResultsStore(tmp_path / "r").table().to_pylist(), key=lambda r: r["finished_at"])
    assert sorted(tuple(r["kept_layers"]) for r in rows) == masks  # each mask once
    stopped = [r for r in rows if r["status"] == "stopped"]
    if score == "dev_f1":
        assert not stopped  # ties at 0 are never below the cutoff
        return
    assert stopped
    for row in stopped:  # a stopped mask had a higher loss at its rung than a mask that went on before it
        earlier = [r for r in rows if r["finished_at"] < row["finished_at"]]
        assert any(loss[tuple(r["kept_layers"])] < loss[tuple(row["kept_layers"])] for r in earlier)
        assert row["checkpoint_dev_loss"][-1] == pytest.approx(loss[tuple(row["kept_layers"])])
    pruned = [t for t in outcome["study"].trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned  # Optuna has the rung scores as the stopped masks' intermediate values
    for trial in pruned:  # every checkpoint's dev F1 is 0: the score is minus the loss, or minus a 1e-9th of it
        recorded = loss[tuple(trial.user_attrs["kept_layers"])]
        expected = {"dev_loss": -recorded, "dev_f1_then_loss": -1e-9 * recorded}[score]
        assert trial.intermediate_values and all(value == pytest.approx(expected, rel=1e-9, abs=0)
                                                 for value in trial.intermediate_values.values())


def _decisions(rows):
    return [(list(r["kept_layers"]), r["status"], r["train_steps"]) for r in rows]


def test_a_search_on_the_virtual_clock_reprints_itself(tmp_path, tiny_model, monkeypatch):
    """Two trials at once, the virtual clock's run (``frugalray.cluster.simulated``) is the same run every time:
    the same masks handed out, stopped and finished in the same order, at the same virtual times."""
    import dataclasses

    from frugalray.cluster.simulated import VirtualRun

    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
    config = _search(tmp_path, tiny_model, budget=8, min_layers=1, max_layers=3, halving=True, grace_steps=3,
                     reduction_factor=2, max_concurrent=2, training={"epochs": 2})
    runs = []
    for attempt in range(2):
        clock = VirtualRun(slots=2)
        run_search(dataclasses.replace(config, results=str(tmp_path / f"run{attempt}")), runner=RUNNER, executor=clock)
        runs.append(clock.runs)
    assert runs[0] == runs[1] and len(runs[0]) >= 8
    assert {r["status"] for r in runs[0]} == {"ok", "stopped"}
    overlapping = [(a, b) for a, b in zip(runs[0], runs[0][1:]) if b["start"] < a["end"]]
    assert overlapping  # two at once: some trial started before the one before it ended


def test_on_the_virtual_clock_a_promoted_mask_goes_on_from_where_it_stopped(tmp_path, tiny_model):
    """A search run twice on one store promotes masks it stopped; with resume they train only the steps they had
    left, and the clock counts those alone."""
    from frugalray.cluster.simulated import VirtualRun
    from frugalray.study.masks import rungs

    config = _search(tmp_path, tiny_model, budget=8, min_layers=1, max_layers=3, halving=True, grace_steps=3,
                     reduction_factor=2, max_concurrent=1, training={"epochs": 2})
    first = VirtualRun(slots=1, resume=True)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
        run_search(config, runner=RUNNER, executor=first)
        second = VirtualRun(slots=1, resume=True)
        run_search(config, runner=RUNNER, executor=second)
    stopped = {tuple(r["kept_layers"]): r["train_steps"] for r in first.runs + second.runs if r["status"] == "stopped"}
    promoted = [r for r in second.runs if r["resumed_from"]]
    assert promoted, _decisions(second.runs)
    planned = ResultsStore(tmp_path / "r").table().to_pylist()[0]["planned_steps"]
    for run in promoted:
        assert run["resumed_from"] == stopped[tuple(run["kept_layers"])] in rungs(3, 2, planned)
        assert run["status"] == "ok" and run["train_steps"] == planned - run["resumed_from"]
        assert run["timeline"][0][1] == 0 and run["timeline"][-1][1] > run["train_steps"]  # dev scores cost too
    assert all(r["resumed_from"] == 0 for r in first.runs)


def _virtual(config, slots=1):
    """Run ``config`` on the virtual clock (no Ray, no sleep): its result and the clock's runs."""
    from frugalray.cluster.simulated import VirtualRun

    clock = VirtualRun(slots=slots)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
        result = run_search(config, runner=RUNNER, executor=clock)
    return result, clock.runs


def test_a_budget_as_large_as_a_small_space_tries_each_mask_once(tmp_path, tiny_model):
    """Four masks of one layer, a budget of four: TPE soon proposes masks it has tried; each is replaced by an
    untried one, so every mask trains exactly once, and the progress counts say so."""
    config = _search(tmp_path, tiny_model, budget=4, min_layers=1, max_layers=1, startup_trials=1)
    result, runs = _virtual(config)
    assert sorted(tuple(r["kept_layers"]) for r in runs) == [(0,), (1,), (2,), (3,)]
    [search] = result["searches"]
    assert search.counts() == {("demo_pos", "search"): {"planned": 4, "done": 4, "failed": 0}}
    assert search._untried() is None  # nothing left to try


def test_halving_counts_stopped_masks_as_done_and_failed_ones_apart(tmp_path, tiny_model, oom_task_file):
    task = oom_task_file  # layer set [1] fails
    config = _search(tmp_path, tiny_model, task=str(task), budget=4, min_layers=1, max_layers=1, halving=True,
                     grace_steps=2, reduction_factor=2, training={"epochs": 4, "batch_size": 1})
    result, runs = _virtual(config)
    statuses = Counter(r["status"] for r in runs)
    assert statuses["failed"] == 1 and statuses["stopped"] >= 1
    [search] = result["searches"]
    assert search.counts() == {(str(task), "search"): {"planned": 4, "done": statuses["ok"] + statuses["stopped"],
                                                       "failed": 1}}


def test_a_front_objective_with_halving_combines_each_depths_best_into_one_front(tmp_path, tiny_model):
    """One search per kept-layer count; the front is the non-dominated set of their best rows, each the row a
    finished mask left (its kept layers, its F1, the layers it kept), never a stopped one."""
    config = _search(tmp_path, tiny_model, budget=9, min_layers=1, max_layers=3, halving=True, grace_steps=3,
                     reduction_factor=2, objective="f1_vs_layers", training={"epochs": 2})
    result, runs = _virtual(config)
    searches = result["searches"]
    assert [s.config.exactly for s in searches] == [3, 2, 1]
    finished = {tuple(r["kept_layers"]) for r in runs if r["status"] == "ok"}
    for search in searches:
        rows = search.best_rows()
        assert rows and all(len(r["kept_layers"]) == search.config.exactly for r in rows)
        assert all(tuple(r["kept_layers"]) in finished and r["status"] == "ok" for r in rows)
        assert all(r["n_kept_layers"] == search.config.exactly and "f1" in r for r in rows)
    best = [row for search in searches for row in search.best_rows()]
    front = result["front"]
    assert front and all(row in best for row in front)
    for row in best:  # each row off the front is dominated by one on it
        if row not in front:
            assert any(f["dev_f1"] >= row["dev_f1"] and f["n_kept_layers"] <= row["n_kept_layers"] for f in front)
    for a in front:  # and none on the front dominates another
        assert not any(b is not a and b["dev_f1"] >= a["dev_f1"] and b["n_kept_layers"] <= a["n_kept_layers"]
                       and (b["dev_f1"], b["n_kept_layers"]) != (a["dev_f1"], a["n_kept_layers"]) for b in front)


def test_a_planned_mask_is_the_searchs_trial_configuration(tmp_path, tiny_model, ner_task_file):
    """Every setting of the search reaches the trial it plans (model, LoRA, training, seed, data, name), under
    the stage 'search', and the trial's identity says which data it was planned on."""
    from frugalray import LoraSettings
    from frugalray.data.tasks import load_task
    from frugalray.study.search import MaskSearch
    from frugalray.training.prepared import prepare_trial

    config = _search(tmp_path, tiny_model, task=ner_task_file, seed=3, lora=LoraSettings(r=4), name="named",
                     halving=True, grace_steps=1, training={"epochs": 2, "batch_size": 1})
    search = MaskSearch(config, ResultsStore(tmp_path / "r").check_writable())
    planned = search.planned((0, 2), full_fidelity=True)
    trial = planned.config
    assert (trial.task, trial.model, trial.strategy, trial.layers, trial.seed) == (ner_task_file, tiny_model, "mask",
                                                                                  (0, 2), 3)
    assert (trial.lora, trial.data_dir, trial.sweep, trial.stage) == (LoraSettings(r=4), None, "named", "search")
    assert trial.training.epochs == 2 and trial.training.eval_every_steps == search.eval_every_steps > 0
    assert (planned.task, planned.stage, planned.kept_layers, planned.full_fidelity) == (ner_task_file, "search",
                                                                                         (0, 2), True)
    assert planned.task_fingerprint == load_task(ner_task_file).fingerprint
    assert planned.config_hash == prepare_trial(trial).config_hash


def test_in_a_large_space_an_untried_mask_is_drawn_at_random_within_the_bounds(tmp_path, tiny_model, monkeypatch):
    """Past 50,000 masks the untried one is drawn, not listed: within the kept-layer bounds, never a settled mask,
    the same draw for the same seed and count handed out, None when a thousand draws find only settled masks."""
    from frugalray.study.search import MaskSearch

    search = MaskSearch(_search(tmp_path, tiny_model, min_layers=2, max_layers=3),
                        ResultsStore(tmp_path / "r").check_writable())
    monkeypatch.setattr(search, "space_size", 10 ** 6)
    settled = {(0, 1), (0, 1, 2)}
    monkeypatch.setattr(search, "_settled", lambda: settled)
    draws = []
    for handed_out in range(40):
        search.handed_out = handed_out
        mask = search._untried()
        assert mask == search._untried()  # the same state draws the same mask
        draws.append(mask)
    assert all(2 <= len(m) <= 3 and list(m) == sorted(set(m)) and set(m) <= {0, 1, 2, 3} for m in draws)
    assert not settled & set(draws) and len(set(draws)) >= 4  # varied draws, never a settled mask
    assert {len(m) for m in draws} == {2, 3}
    every = {m for n in (2, 3) for m in itertools.combinations(range(4), n)}
    monkeypatch.setattr(search, "_settled", lambda: every)
    assert search._untried() is None
