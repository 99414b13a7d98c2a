"""The staged plan without Ray: trials are run in-process with the simulated runner."""

import dataclasses
import io
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.study.plan import StudyPlan, SweepConfig
from frugalray.testing import simulated_trial
from frugalray.training.trial import execute_trial


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")


def _sweep(tmp_path, tiny_model, **values):
    defaults = dict(name="t", tasks=("demo_pos",), model=tiny_model, seeds=(0,), results=str(tmp_path / "r"),
                    drop_middle=(2,), drop_ends=(2,), best=(2, 3), drop_worst=(1, 2))
    return SweepConfig(**(defaults | values))


def _run(plan: StudyPlan, limit: int | None = None, only_task: str | None = None) -> int:
    """Run queued trials in-process; returns how many were trained."""
    trained = 0
    while limit is None or trained < limit:
        plan.expand()
        queued = [p for p in plan.queue if only_task is None or p.task == only_task]
        if not queued:
            break
        plan.queue.remove(queued[0])
        row = execute_trial(queued[0].config, plan.store, runner=simulated_trial)  # as a Ray worker does
        plan.record(row)
        trained += 1
    return trained


def _rows(store):
    return store.table().to_pylist()


def test_stage_one_is_full_and_every_single_layer(tmp_path, tiny_model):
    plan = StudyPlan(_sweep(tmp_path, tiny_model, seeds=(0, 1)), ResultsStore(tmp_path / "r"))
    plan.expand()
    queued = [(p.stage, p.config.strategy, p.config.n, p.config.seed) for p in plan.queue]
    assert queued == [("single", "full", None, 0)] + [("single", "single", k, 0) for k in range(4)] + \
        [("single", "full", None, 1)] + [("single", "single", k, 1) for k in range(4)]


def test_best_n_uses_the_tasks_stage_one_scores(tmp_path, tiny_model):
    plan = StudyPlan(_sweep(tmp_path, tiny_model), ResultsStore(tmp_path / "r"))
    _run(plan)
    rows = _rows(plan.store)
    singles = {r["kept_layers"][0]: r["dev_f1"] for r in rows if r["strategy"] == "single"}
    ranked = sorted(singles, key=lambda k: (-singles[k], k))
    best = {r["strategy_n"]: r["kept_layers"] for r in rows if r["strategy"] == "best"}
    worst = {r["strategy_n"]: r["kept_layers"] for r in rows if r["strategy"] == "drop_worst"}
    assert best == {2: sorted(ranked[:2]), 3: sorted(ranked[:3])}
    assert worst == {1: sorted(ranked[:3]), 2: sorted(ranked[:2])}


def test_a_task_moves_on_while_another_is_still_in_stage_one(tmp_path, tiny_model):
    plan = StudyPlan(_sweep(tmp_path, tiny_model, tasks=("demo_pos", "demo_ner")), ResultsStore(tmp_path / "r"))
    _run(plan, only_task="demo_pos", limit=5)  # demo_pos stage 1 done, demo_ner not started
    plan.expand()
    assert ("demo_pos", "strategies") in plan.planned
    assert ("demo_ner", "strategies") not in plan.planned
    assert {p.task for p in plan.queue if p.stage == "strategies"} == {"demo_pos"}


def test_same_layer_set_trains_once_and_both_are_reported(tmp_path, tiny_model):
    plan = StudyPlan(_sweep(tmp_path, tiny_model), ResultsStore(tmp_path / "r"))
    trained = _run(plan)
    rows = _rows(plan.store)
    by_key = {(r["strategy"], r["strategy_n"], r["stage"]): r for r in rows}
    single0, first1 = by_key[("single", 0, "single")], by_key[("first", 1, "strategies")]
    assert single0["kept_layers"] == first1["kept_layers"] == [0]
    assert single0["config_hash"] == first1["config_hash"]
    assert single0["reused_from"] is None and first1["reused_from"] == single0["trial_id"]
    assert first1["trial_id"] == single0["trial_id"] + "-first"  # the alias row's own id names its strategy
    assert first1["f1"] == single0["f1"]
    trained_rows = [r for r in rows if r["reused_from"] is None]
    assert len(trained_rows) == trained == len({r["config_hash"] for r in rows})


def test_lora_and_balanced_stages_follow_the_selection_rule(tmp_path, tiny_model):
    plan = StudyPlan(_sweep(tmp_path, tiny_model, lora_max_layers=3, lora_sizes=(2,)), ResultsStore(tmp_path / "r"))
    _run(plan)
    rows = _rows(plan.store)
    stage2 = [r for r in rows if r["stage"] == "strategies"]
    best_upto3 = max((r for r in stage2 if r["n_kept_layers"] <= 3), key=lambda r: (r["dev_f1"], -r["n_kept_layers"]))
    best_2 = max((r for r in stage2 if r["n_kept_layers"] == 2), key=lambda r: r["dev_f1"])
    lora = sorted(tuple(r["kept_layers"]) for r in rows if r["stage"] == "lora")
    assert lora == sorted({tuple(best_upto3["kept_layers"]), tuple(best_2["kept_layers"]), (0, 1, 2, 3)})
    assert all(r["lora"] and r["lora_train_head"] for r in rows if r["stage"] == "lora")
    full_seconds = next(r["train_seconds"] for r in rows if r["strategy"] == "full" and not r["lora"])
    for row in (r for r in rows if r["stage"] == "balanced"):
        pruned = next(r["train_seconds"] for r in stage2 if r["kept_layers"] == row["kept_layers"])
        assert row["epochs"] == round(full_seconds * 3 / pruned)
    assert plan.finished()


def test_lora_on_the_full_model_can_be_left_out(tmp_path, tiny_model):
    plan = StudyPlan(_sweep(tmp_path, tiny_model, stages=("single", "strategies", "lora"), lora_max_layers=3,
                            lora_sizes=(), lora_full=False), ResultsStore(tmp_path / "r"))
    _run(plan)
    lora = [r for r in _rows(plan.store) if r["stage"] == "lora"]
    assert len(lora) == 1 and lora[0]["lora"] and lora[0]["n_kept_layers"] <= 3
    assert not any(r["lora"] and r["strategy"] == "full" for r in _rows(plan.store))


def test_only_the_chosen_stages_keep_their_weights(tmp_path, tiny_model):
    plan = StudyPlan(_sweep(tmp_path, tiny_model, save_models=("lora",)), ResultsStore(tmp_path / "r"))
    _run(plan)
    planned = [p for trials in plan.planned.values() for p in trials]
    assert {p.stage for p in planned} == {"single", "strategies", "lora", "balanced"}
    assert all(p.config.save_model == (p.stage == "lora") for p in planned)


def test_rerun_skips_what_the_store_holds(tmp_path, tiny_model):
    sweep = _sweep(tmp_path, tiny_model)
    first = StudyPlan(sweep, ResultsStore(tmp_path / "r"))
    _run(first, limit=7)  # stage 1 complete, a couple of stage-2 trials
    again = StudyPlan(sweep, ResultsStore(tmp_path / "r"))
    again.expand()
    done = {r["config_hash"] for r in _rows(again.store)}
    assert not done & {p.config_hash for p in again.queue}
    _run(again)
    complete = StudyPlan(sweep, ResultsStore(tmp_path / "r"))
    assert complete.finished() and not complete.queue


def test_a_corrupt_trial_file_retrains_only_what_it_held(tmp_path, tiny_model):
    sweep = _sweep(tmp_path, tiny_model)
    _run(StudyPlan(sweep, ResultsStore(tmp_path / "r")))
    store = ResultsStore(tmp_path / "r")
    victim = next(r for r in _rows(store) if (r["strategy"], r["strategy_n"]) == ("first", 3))
    assert victim["reused_from"] is None  # drop_every 4 (and best 3...) keep the same layers: alias rows
    [path] = [f for f in store.files() if pq.read_table(f).column("trial_id")[0].as_py() == victim["trial_id"]]
    Path(path).write_bytes(Path(path).read_bytes()[:100])  # truncated, as a full disk leaves a file

    again = StudyPlan(sweep, ResultsStore(tmp_path / "r"))
    again.expand()
    assert [(p.config.strategy, p.config.n) for p in again.queue] == [("first", 3)]
    assert _run(again) == 1 and again.finished()
    reported = [(r["config_hash"], r["strategy"], r["strategy_n"], r["stage"]) for r in _rows(again.store)]
    assert len(reported) == len(set(reported))  # the alias rows the store kept are not written again


def test_summary_counts_configurations_whose_latest_run_failed(tmp_path, tiny_model):
    from frugalray.results.summary import summary

    plan = StudyPlan(_sweep(tmp_path, tiny_model, stages=("single",)), ResultsStore(tmp_path / "r"))
    _run(plan)
    fixed, broken, *_ = _rows(plan.store)
    hour = timedelta(hours=1)
    plan.store.append(fixed | {"trial_id": "oom-then-fixed", "status": "failed", "error": "RuntimeError: CUDA out of memory",
                               "finished_at": fixed["finished_at"] - hour})
    plan.store.append(broken | {"trial_id": "broken-later", "status": "failed", "error": "RuntimeError: boom",
                                "finished_at": broken["finished_at"] + hour})
    out = io.StringIO()
    summary(plan, stream=out)
    assert "failed trials: 1" in out.getvalue()


def test_failed_trials_are_rows_and_the_plan_goes_on(tmp_path, tiny_model, oom_task_file, capsys):
    task = oom_task_file  # layer set [1] fails
    plan = StudyPlan(_sweep(tmp_path, tiny_model, tasks=(str(task),)), ResultsStore(tmp_path / "r"))
    _run(plan)
    rows = _rows(plan.store)
    failed = [r for r in rows if r["status"] == "failed"]
    assert [r["kept_layers"] for r in failed if r["reused_from"] is None] == [[1]]
    assert "CUDA out of memory" in failed[0]["error"]
    assert any(r["stage"] == "lora" for r in rows)  # later stages still ran
    assert any("missing for layer(s) [1]" in note for note in plan.notes)  # best/drop_worst need every layer
    assert "frugalray: note: " in capsys.readouterr().err  # said as it happened, on stderr
    # what later stages choose from: the successful rows of the stages named, never the failed one
    given = plan._task_rows(str(task), ("single",))
    assert sorted(r["kept_layers"] for r in given) == [[0], [0, 1, 2, 3], [2], [3]]


def test_as_the_clusters_planner_it_hands_out_waits_for_inputs_counts_and_says_done(tmp_path, tiny_model, oom_task_file):
    """``next()`` / ``finish()``, as the driver calls them: every queued trial is handed out once; with the queue
    empty it answers None while a running trial's row may plan more (the strategies need every single layer),
    DONE once nothing runs and nothing is left; ``counts()`` per stage: planned, done, failed."""
    from frugalray.study.planned import DONE

    task = oom_task_file  # layer set [1] fails
    plan = StudyPlan(_sweep(tmp_path, tiny_model, tasks=(str(task),), stages=("single", "strategies")),
                     ResultsStore(tmp_path / "r"))
    handed = []
    while (planned := plan.next()) not in (None, DONE):
        handed.append(planned)
    assert [(p.stage, p.config.strategy, p.config.n) for p in handed] == [("single", "full", None)] + [
        ("single", "single", k) for k in range(4)]
    assert plan.running == {p.config_hash for p in handed}
    assert plan.counts() == {(str(task), "single"): {"planned": 5, "done": 0, "failed": 0}}  # the task as named
    for index, planned in enumerate(handed):
        assert plan.next() is None  # the strategies wait for the last single layer
        plan.finish(planned, execute_trial(planned.config, plan.store, runner=simulated_trial))
        assert planned.config_hash not in plan.running and len(plan.running) == len(handed) - index - 1
    assert plan.counts()[(str(task), "single")] == {"planned": 5, "done": 4, "failed": 1}
    strategies = []
    while (planned := plan.next()) not in (None, DONE):
        strategies.append(planned)
    assert strategies and {p.stage for p in strategies} == {"strategies"}
    assert plan.next() is None  # they run: not done yet
    for planned in strategies:
        plan.finish(planned, execute_trial(planned.config, plan.store, runner=simulated_trial))
    assert plan.next() == DONE and plan.running == set()
    counted = plan.counts()[(str(task), "strategies")]
    assert counted["planned"] > len(strategies)  # strategies sharing a layer set (or a stage-one run) share a trial
    assert counted == {"planned": counted["planned"], "done": counted["planned"], "failed": 0}  # only [1] fails


def test_an_unknown_task_fails_before_any_data_is_read(tmp_path, tiny_model):
    with pytest.raises(FrugalrayError, match="Unknown task 'wikiner_ner'. Did you mean 'wikiner'"):
        StudyPlan(_sweep(tmp_path, tiny_model, tasks=("wikiner_ner",)), ResultsStore(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("values,message", [
    ({"stages": ("single", "lora_stage")}, "stages: Unknown stage 'lora_stage'. Did you mean 'lora'?"),
    ({"save_models": ("loras",)}, r"save_models: Unknown stage 'loras'. Did you mean 'lora'\? Available: balanced, lora, recover, single, strategies"),
    ({"seeds": ()}, "at least one seed"),
    ({"data_dirs": {"ftb_pos": "/x"}}, "does not run"),
    ({"full_model_epochs": -1}, "full_model_epochs must be >= 0"),
    ({"full_model_epochs": 6, "full_model_patience": 0}, "full_model_patience >= 1"),
    ({"recovery": {"teacher_epochs": 6}}, "set full_model_epochs and full_model_patience instead"),
])
def test_bad_sweep_settings_fail_before_anything_runs(tmp_path, tiny_model, values, message):
    with pytest.raises(FrugalrayError, match=message):
        _sweep(tmp_path, tiny_model, **values)


def test_unknown_sweep_key_fails(tmp_path):
    with pytest.raises(FrugalrayError, match="unknown key 'seed'.*Did you mean 'seeds'"):
        SweepConfig.from_dict({"tasks": ["demo_pos"], "seed": [0]})
    with pytest.raises(FrugalrayError, match="unknown key 'epoch'"):
        SweepConfig.from_dict({"tasks": ["demo_pos"], "training": {"epoch": 3}})


def test_a_registered_stage_is_planned_listed_and_accepted_with_nothing_else_changed(tmp_path, tiny_model,
                                                                                    monkeypatch, capsys):
    import frugalray.strategies
    from frugalray.cli import main
    from frugalray.study.stages import STAGES, Stage

    def extra(inputs):
        """Two layers more than the best single layer (an example)."""
        best = max(r["dev_f1"] for r in inputs.rows(("single",)) if r["strategy"] == "single")
        return [("first", {"n": 3})] if best >= 0 else []

    monkeypatch.setitem(STAGES._items, "extra", Stage("extra", ("single",), extra, "An example stage."))
    monkeypatch.setattr(frugalray.strategies, "STAGE_NAMES", frugalray.strategies.STAGE_NAMES + ("extra",))
    plan = StudyPlan(_sweep(tmp_path, tiny_model, stages=("single", "extra")), ResultsStore(tmp_path / "r"))
    _run(plan)
    assert plan.finished()
    assert [(r["stage"], r["strategy"], r["kept_layers"]) for r in _rows(plan.store) if r["stage"] == "extra"] == [
        ("extra", "first", [0, 1, 2])]
    assert main(["stages"]) == 0
    assert "extra" in capsys.readouterr().out


def test_the_recover_stage_plans_students_of_the_saved_full_model(tmp_path, tiny_model):
    sweep = _sweep(tmp_path, tiny_model, stages=("single", "strategies", "recover"), lora_max_layers=3,
                   lora_sizes=(2,), recover_methods=("finetune", "distill", "partial"))
    plan = StudyPlan(sweep, ResultsStore(tmp_path / "r"))
    _run(plan)
    assert plan.finished()
    rows = _rows(plan.store)
    [full] = [r for r in rows if r["stage"] == "single" and r["strategy"] == "full"]
    assert full["model_path"]  # the teacher keeps its weights for its students
    students = [r for r in rows if r["stage"] == "recover"]
    sets = {tuple(r["kept_layers"]) for r in students}
    assert (0, 1) in sets and len(sets) <= 3  # the first half, and the selection (best <= 3 layers, best with 2)
    combos = {(r["init"], r["recovery"]) for r in students}
    assert combos == {("pretrained", "distill"), ("pretrained", "partial"), ("finetuned", "finetune"),
                      ("finetuned", "distill"), ("finetuned", "partial")}  # the study's own ran in 'strategies'
    assert all(r["teacher_trial_id"] == full["trial_id"] for r in students if (r["init"], r["recovery"]) !=
               ("pretrained", "partial"))


def test_a_full_model_trained_without_its_weights_trains_again_for_the_recover_stage(tmp_path, tiny_model):
    store = ResultsStore(tmp_path / "r")
    _run(StudyPlan(_sweep(tmp_path, tiny_model, stages=("single",)), store))  # an earlier sweep: no teacher kept
    [before] = [r for r in _rows(store) if r["strategy"] == "full"]
    assert before["model_path"] is None
    plan = StudyPlan(_sweep(tmp_path, tiny_model, stages=("single", "strategies", "recover"), lora_max_layers=3,
                            lora_sizes=(2,), recover_methods=("distill",)), store)
    assert [p.config.strategy for p in plan.expand()] == ["full"]  # the singles are done; the teacher is not
    assert not plan.stage_done("demo_pos", "single")  # so nothing that needs it starts before it is trained
    _run(plan)
    rows = _rows(store)
    teacher = next(r for r in rows if r["strategy"] == "full" and r["model_path"])
    students = [r for r in rows if r["stage"] == "recover"]
    assert students and all(r["status"] == "ok" and r["teacher_trial_id"] == teacher["trial_id"] for r in students)


def test_a_converged_full_model_is_the_baseline_and_the_teacher_of_the_students(tmp_path, tiny_model):
    sweep = _sweep(tmp_path, tiny_model, stages=("single", "strategies", "recover"), lora_max_layers=3,
                   lora_sizes=(2,), recover_methods=("finetune",), recover_inits=("finetuned",),
                   full_model_epochs=5, full_model_patience=1)
    plan = StudyPlan(sweep, ResultsStore(tmp_path / "r"))
    _run(plan)
    assert plan.finished()
    rows = _rows(plan.store)
    [full] = [r for r in rows if r["strategy"] == "full"]  # one full model: the converged one
    assert (full["epochs"], full["early_stopping_patience"], full["model_path"] is not None) == (5, 1, True)
    others = [r for r in rows if r["strategy"] != "full" and r["stage"] != "recover"]
    assert others and all((r["epochs"], r["early_stopping_patience"]) == (3, 0) for r in others)
    students = [r for r in rows if r["stage"] == "recover"]
    assert students and all(r["status"] == "ok" and r["teacher_trial_id"] == full["trial_id"]
                            and (r["epochs"], r["teacher_epochs"], r["teacher_patience"]) == (3, 5, 1) for r in students)
    from frugalray.results.views import compute_view

    budget = compute_view(plan.store, "budget").table.to_pylist()  # compared with the converged model
    assert budget and all(r["f1_vs_full"] == pytest.approx(r["f1"] - full["f1"]) for r in budget)
    recovery = compute_view(plan.store, "recovery").table.to_pylist()
    assert recovery and all((r["full_epochs"], r["full_patience"]) == (5, 1) for r in recovery)
    assert {r["recovery"] for r in recovery} == {"pretrained+finetune", "finetuned+finetune[teacher <=5 epochs, patience 1]"}
    # a student of the converged model is another configuration than one of a full model trained like itself
    from frugalray.training.prepared import prepare_trial
    from frugalray.training.recovery import teacher_config

    student = next(p.config for p in plan.planned[("demo_pos", "recover")])
    assert teacher_config(student).training == sweep.full_training
    plain = dataclasses.replace(student, recovery=dataclasses.replace(student.recovery, teacher_epochs=0, teacher_patience=0))
    assert teacher_config(plain).training == sweep.training
    assert prepare_trial(plain).config_hash != prepare_trial(student).config_hash


def test_drop_block_runs_on_the_block_the_proxy_ranks_lowest(tmp_path, tiny_model):
    from frugalray.model.importance import block_scores
    from frugalray.strategies import lowest_block

    plan = StudyPlan(_sweep(tmp_path, tiny_model, stages=("single", "strategies"), drop_block=(2,)),
                     ResultsStore(tmp_path / "r"))
    _run(plan)
    [row] = [r for r in _rows(plan.store) if r["strategy"] == "drop_block"]
    start = lowest_block(block_scores("demo_pos", tiny_model), 2)
    assert row["kept_layers"] == [k for k in range(4) if not start <= k < start + 2]


@pytest.mark.slow
def test_both_proxies_from_one_load_of_the_model_are_the_proxies_computed_apart(tiny_model):
    from frugalray.model.importance import block_scores, importance_scores, proxy_scores

    # `frugalray importance` computes both proxies from one load of the model: the same numbers
    layers, blocks = importance_scores("demo_pos", tiny_model)
    assert layers == pytest.approx(proxy_scores("demo_pos", tiny_model))
    assert [list(b) for b in blocks] == [pytest.approx(list(b)) for b in block_scores("demo_pos", tiny_model)]


def test_a_tasks_data_folder_from_the_sweep_is_where_the_plan_reads_it(tmp_path, tiny_model):
    import shutil

    from frugalray.data import tasks

    folder = tmp_path / "pos"
    folder.mkdir()
    demo = Path(tasks.__file__).parent / "demo"
    for split in ("dev", "test"):
        shutil.copy(demo / f"pos_{split}.conll", folder / f"pos_{split}.conll")
    sentences = (demo / "pos_train.conll").read_text().strip().split("\n\n")
    (folder / "pos_train.conll").write_text("\n\n".join(sentences + sentences[-7:]) + "\n")  # 7 more
    shipped = StudyPlan(_sweep(tmp_path, tiny_model), ResultsStore(tmp_path / "a")).data["demo_pos"].train
    plan = StudyPlan(_sweep(tmp_path, tiny_model, data_dirs={"demo_pos": str(folder)}), ResultsStore(tmp_path / "r"))
    assert len(plan.data["demo_pos"].train) == len(shipped) + 7


def test_a_row_recorded_again_writes_nothing_more(tmp_path, tiny_model):
    """The driver may record a trial twice (a lost worker's row, then its retry): nothing is written twice."""
    plan = StudyPlan(_sweep(tmp_path, tiny_model, stages=("single", "strategies")), ResultsStore(tmp_path / "r"))
    _run(plan)
    rows = _rows(plan.store)
    [shared] = [r for r in rows if r["reused_from"] is None and r["kept_layers"] == [0]]  # single 0 and first 1
    assert plan.record(shared) == [] and plan.record(dict(shared, trial_id="retried")) == []
    assert len(_rows(plan.store)) == len(rows)
