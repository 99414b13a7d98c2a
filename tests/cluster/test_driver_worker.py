"""The driver's two halves in one process, no Ray started: the Tune function a worker runs (``tune_trial``; Tune's
``report`` and the worker's whereabouts replaced) and the searcher that hands Tune the planner's trials and gives
the planner their results (``PlannerSearcher``); the wire between them; what ``run_planner`` asks of Tune."""

import functools
import json
import math
import os
import re
import tempfile

import pytest

from frugalray import ResultsStore
from frugalray.results.schema import TrialResult
from frugalray.study.plan import StudyPlan, SweepConfig
from frugalray.study.planned import DONE

pytest.importorskip("ray")
from ray.tune.search import Searcher  # noqa: E402

from frugalray.cluster import driver  # noqa: E402
from frugalray.cluster.placement import Card, Placement  # noqa: E402

WHERE = {"node_id": "node-1", "node_host": "host-1", "gpu_ids": ["0"], "cpus": 1.0}


@pytest.fixture
def worker(tmp_path, monkeypatch):
    """Tune's report and the worker's whereabouts (a quarter of GPU 0 on node-1) replaced; yields the reports and
    the runs of ``tests.runners:recorded``."""
    reports, marks = [], tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("FRUGALRAY_TEST_MARKS", str(marks))
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
    monkeypatch.setattr("ray.tune.report", lambda metrics, **_: reports.append(metrics))
    share = {"gpu_share": 0.25}
    monkeypatch.setattr(driver, "where_it_runs", lambda placement: {
        key: placement.get(key) for key in ("node_type", "accelerator_type", "gpu_memory_gib")} | WHERE | share)
    monkeypatch.setattr("ray.get_runtime_context", lambda: type("Context", (), {"get_node_id": lambda self: "node-1"})())

    def runs():
        path = marks / "runs.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return reports, runs, share


def _searcher(tmp_path, tiny_model, task, demand=None, retries=0, **sweep):
    results = str(tmp_path / "r")
    plan = StudyPlan(SweepConfig(**({"name": "t", "tasks": (task,), "model": tiny_model, "seeds": (0,),
                                     "results": results, "stages": ("single",)} | sweep)), ResultsStore(results))
    extra = {"results": results, "retries": retries, "runner": "tests.runners:recorded", "rung_score": "dev_loss",
             "keep_state_at": []}
    return plan, driver.PlannerSearcher(plan, extra, demand or (lambda planned: {"CPU": 1.0}))


def _suggest_all(searcher) -> dict:
    configs = {}
    while (config := searcher.suggest(f"t{len(configs)}")) not in (None, Searcher.FINISHED):
        configs[f"t{len(configs)}"] = config
    return configs


def test_a_plan_runs_through_the_searcher_and_the_tune_function(tmp_path, tiny_model, ner_task_file, worker):
    reports, runs, _ = worker
    plan, searcher = _searcher(tmp_path, tiny_model, ner_task_file, retries=1)
    configs = _suggest_all(searcher)
    assert plan.queue == [] and len(configs) == 5  # every queued trial handed out once
    first = configs["t0"]
    planned = searcher.running["t0"]
    assert first["trial"] == planned.config.to_dict() and first["config_hash"] == planned.config_hash
    assert (first["task"], first["stage"], first["full_fidelity"]) == (planned.task, "single", False)
    assert first["task_fingerprint"] == planned.task_fingerprint
    assert first["resources"] == {"CPU": 1.0}
    assert first["placement"] == {"node_type": None, "accelerator_type": None, "gpu_memory_gib": None}
    assert {k: first[k] for k in ("results", "retries", "runner", "rung_score")} == {
        "results": str(tmp_path / "r"), "retries": 1, "runner": "tests.runners:recorded", "rung_score": "dev_loss"}
    assert searcher.suggest("waiting") is None  # nothing queued, trials running: wait for their results
    for trial_id, config in configs.items():
        driver.tune_trial(config)
        searcher.on_trial_complete(trial_id, reports[-1])
    assert searcher.suggest("after") == Searcher.FINISHED and searcher.running == {}
    rows = ResultsStore(tmp_path / "r").table().to_pylist()
    assert len(rows) == 5 and {(r["status"], r["error"]) for r in rows} == {("ok", None)}  # retries unused
    assert all((r["node_id"], r["node_host"], r["gpu_share"], r["gpu_ids"]) == ("node-1", "host-1", 0.25, ["0"])
               for r in rows)
    assert [run["gpu_memory_fraction"] for run in runs()] == [0.25] * 5  # the share caps the trial's memory
    row = TrialResult.from_json(reports[0]["row_json"])
    assert row.config_hash == configs["t0"]["config_hash"] and reports[0]["ok"] is True
    assert reports[0]["rung_score"] == pytest.approx(-row.dev_eval_loss)  # rungs on dev loss: lower goes on
    assert plan.counts()[(configs["t0"]["task"], "single")] == {"planned": 5, "done": 5, "failed": 0}


def test_a_whole_gpu_is_not_capped_and_a_stored_trial_is_reported_not_run_again(tmp_path, tiny_model, ner_task_file,
                                                                              worker):
    reports, runs, share = worker
    share["gpu_share"] = 1.0
    _, searcher = _searcher(tmp_path, tiny_model, ner_task_file)
    config = searcher.suggest("t0")
    driver.tune_trial(config)
    assert [run["gpu_memory_fraction"] for run in runs()] == [None]  # a whole card: no memory cap
    driver.tune_trial(config)  # Tune retries a trial whose worker died after its append, before its report
    assert len(runs()) == 1 and len(ResultsStore(tmp_path / "r").table()) == 1
    assert reports[1]["row_json"] == reports[0]["row_json"]  # the stored row, reported again
    config["trial"]["save_model"] = True  # the same trial, wanted with its weights: the row has none
    driver.tune_trial(config)
    assert len(runs()) == 2


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_a_failing_trial_is_tried_retries_plus_one_times_then_recorded_once(tmp_path, tiny_model, oom_task_file, worker,
                                                                           retries):
    reports, runs, _ = worker
    _, searcher = _searcher(tmp_path, tiny_model, oom_task_file, retries=retries)
    [config] = [c for c in _suggest_all(searcher).values() if c["trial"]["strategy"] == "single"
                and c["trial"]["n"] == 1]  # layer set [1]: fails every time
    driver.tune_trial(config)
    assert [run["kept_layers"] for run in runs()] == [[1]] * (retries + 1)
    [row] = ResultsStore(tmp_path / "r").table().to_pylist()
    prefix = f"failed {retries + 1} attempt(s); last: " if retries else ""
    assert row["status"] == "failed" and row["error"].startswith(prefix + "RuntimeError: CUDA out of memory")
    assert row["config_hash"] == config["config_hash"] and reports[-1]["ok"] is False


def test_a_node_computing_another_hash_fails_the_trial_at_once_naming_both(tmp_path, tiny_model, ner_task_file, worker):
    reports, runs, _ = worker
    _, searcher = _searcher(tmp_path, tiny_model, ner_task_file, retries=2)
    config = searcher.suggest("t0")
    planned_hash = config["config_hash"]
    config["config_hash"] = "0123456789abcdef"  # what a driver with another model or version planned
    driver.tune_trial(config)
    [row] = ResultsStore(tmp_path / "r").table().to_pylist()
    assert runs() == [] and row["status"] == "failed"  # never trained, never retried
    assert row["error"].startswith("failed 1 attempt(s); last: FrugalrayError: Node node-1")  # not 3: no retry
    assert row["config_hash"] == "0123456789abcdef"  # the row the driver waits for
    assert f"computes configuration {planned_hash} for the trial the driver planned as 0123456789abcdef" in \
        row["error"] and "Node node-1" in row["error"]
    config["config_hash"], config["task_fingerprint"] = "fedcba9876543210", "sha256:other"
    driver.tune_trial(config)
    assert "but the driver planned this trial on data sha256:other" in reports[-1]["row_json"]


class _Planner:
    """A planner that hands out given trials and records what it is told."""

    def __init__(self, planned, progress=True):
        self.queue, self.finished, self.progressed = list(planned), [], []
        if progress:
            self.progress = lambda planned, steps, score: self.progressed.append((planned.config_hash, steps, score))

    def next(self):
        return self.queue.pop(0) if self.queue else DONE

    def finish(self, planned, result):
        self.finished.append((planned.config_hash, result.status, result.get("error_kind")))


class _Demand:
    """A placer sizing every trial for a quarter of an A10G, told when a trial's share is free again."""

    def __init__(self):
        self.released, self.asked = [], []

    def __call__(self, planned):
        self.asked.append(planned.config_hash)
        return Placement({"CPU": 1.0, "GPU": 0.25}, Card("A10G", 24.0, 1.0, 2.0, ("gpu_a10g",)))

    def release(self, planned):
        self.released.append(planned.config_hash)


def _planned(tmp_path, tiny_model, task):
    plan, _ = _searcher(tmp_path, tiny_model, task)
    plan.expand()
    return plan.queue[:3]


def test_the_searcher_records_a_stopped_trial_and_a_lost_one_and_frees_their_shares(tmp_path, tiny_model,
                                                                                   ner_task_file):
    planned = _planned(tmp_path, tiny_model, ner_task_file)
    planner, demand = _Planner(planned), _Demand()
    results = str(tmp_path / "searched")
    searcher = driver.PlannerSearcher(planner, {"results": results}, demand)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(3)}
    assert searcher.suggest("t3") == Searcher.FINISHED
    assert demand.asked == [p.config_hash for p in planned]  # each trial sized for itself
    assert configs["t0"]["resources"] == {"CPU": 1.0, "GPU": 0.25}
    assert configs["t0"]["placement"] == {"node_type": "gpu_a10g", "accelerator_type": "A10G", "gpu_memory_gib": 24.0}
    stopped = TrialResult.from_row({"config_hash": planned[0].config_hash, "trial_id": "s", "status": "stopped",
                                    "train_steps": 12, "dev_f1": 0.25, "dev_eval_loss": 0.5})
    checkpoint = driver.to_report(stopped, "dev_loss")
    searcher.on_trial_result("t0", checkpoint)
    searcher.on_trial_result("t1", {"train_steps": 3, "rung_score": 0.0})  # a final report: no progress
    searcher.on_trial_result("unknown", checkpoint)
    assert planner.progressed == [(planned[0].config_hash, 12, -0.5)]
    searcher.on_trial_complete("t0", checkpoint)  # the scheduler stopped it there
    searcher.on_trial_complete("t1", None, error=True)  # its worker died more often than max_failures allows
    searcher.on_trial_complete("t1")  # told twice: once only
    assert demand.released == [planned[0].config_hash, planned[1].config_hash]
    searcher.on_trial_complete("unknown", checkpoint)
    assert planner.finished == [(planned[0].config_hash, "stopped", None), (planned[1].config_hash, "failed", "lost")]
    assert demand.released == [planned[0].config_hash, planned[1].config_hash]
    rows = {r["config_hash"]: r for r in ResultsStore(results).table().to_pylist()}
    assert rows.keys() == {planned[0].config_hash, planned[1].config_hash}
    assert (rows[planned[0].config_hash]["status"], rows[planned[0].config_hash]["train_steps"]) == ("stopped", 12)
    lost = rows[planned[1].config_hash]
    assert (lost["status"], lost["error_kind"], lost["kept_layers"], lost["n_kept_layers"]) == (
        "failed", "lost", list(planned[1].kept_layers), len(planned[1].kept_layers))
    assert lost["task_fingerprint"] == planned[1].task_fingerprint
    assert re.fullmatch(rf"{planned[1].config_hash}-lost-20\d{{6}}T\d{{12}}", lost["trial_id"])  # now, in UTC
    assert lost["error"] == "trial process died (worker or node lost) more often than max_failures allows"
    finished = TrialResult.from_row({"config_hash": planned[2].config_hash, "trial_id": "f", "status": "ok", "f1": 0.5})
    searcher.on_trial_complete("t2", driver.to_report(finished))
    assert planner.finished[-1] == (planned[2].config_hash, "ok", None)
    assert len(ResultsStore(results).table()) == 2  # the worker appended a finished trial's row, not the searcher


@pytest.mark.parametrize("result,error", [
    ({"config_hash": "x", "ok": False}, False),  # a result that carries no row
    ({"row_json": TrialResult.from_row({"config_hash": "x", "status": "ok"}).to_json()}, True),  # then it died
])
def test_a_trial_tune_ends_without_its_final_row_is_recorded_lost(tmp_path, tiny_model, ner_task_file, result,
                                                                  error):
    planned = _planned(tmp_path, tiny_model, ner_task_file)
    planner = _Planner(planned)
    searcher = driver.PlannerSearcher(planner, {"results": str(tmp_path / "s")}, lambda p: {"CPU": 1.0})
    searcher.suggest("t0")
    searcher.on_trial_complete("t0", result, error=error)
    assert planner.finished == [(planned[0].config_hash, "failed", "lost")]
    assert [r["error_kind"] for r in ResultsStore(tmp_path / "s").table().to_pylist()] == ["lost"]


def test_a_search_trial_reports_each_checkpoint_keeps_state_and_forgets_it_once_trained(tmp_path, tiny_model,
                                                                                      ner_task_file, worker):
    from frugalray import TrainingSettings
    from frugalray.training import resume

    reports, runs, _ = worker
    training = TrainingSettings(epochs=2, batch_size=2, eval_every_steps=2)
    _, searcher = _searcher(tmp_path, tiny_model, ner_task_file, demand=_Demand(),
                            training=training)
    config = searcher.suggest("t0") | {"keep_state_at": [2], "full_fidelity": True}
    store = ResultsStore(tmp_path / "r")
    resume.keep(store, config["config_hash"], {"step": 2})  # kept when the scheduler stopped it at its rung
    driver.tune_trial(config)
    [run] = runs()
    assert run["options"] == ["report", "resume", "snapshot"]  # checkpoints reported, state kept, and resumed
    *checkpoints, final = reports
    assert checkpoints and all("stopped_row_json" in r and "row_json" not in r for r in checkpoints)
    assert [r["train_steps"] for r in checkpoints] == [2.0 * (i + 1) for i in range(len(checkpoints))]
    assert all(r["rung_score"] == pytest.approx(-r["dev_eval_loss"]) for r in checkpoints)  # rungs on dev loss
    assert "row_json" in final and final["ok"] is True
    assert resume.kept(store, config["config_hash"]) is None  # trained to the end: nothing left to go on from
    [row] = store.table().to_pylist()
    assert (row["accelerator_type"], row["node_type"], row["gpu_memory_gib"]) == ("A10G", "gpu_a10g", 24.0)
    del config["rung_score"]  # a config from before the setting: rungs on dev F1
    config["trial"]["seed"] = 1
    driver.tune_trial(config)
    assert reports[-1]["rung_score"] == pytest.approx(reports[-1]["dev_f1"])


def test_a_failed_search_trial_keeps_the_state_it_would_resume_from(tmp_path, tiny_model, oom_task_file, worker):
    from frugalray import TrainingSettings
    from frugalray.training import resume

    reports, runs, _ = worker
    training = TrainingSettings(epochs=2, batch_size=2, eval_every_steps=2)
    _, searcher = _searcher(tmp_path, tiny_model, oom_task_file, training=training)
    [config] = [c for c in _suggest_all(searcher).values() if c["trial"]["n"] == 1 and c["trial"]["strategy"] == "single"]
    config |= {"keep_state_at": [2], "full_fidelity": True}
    resume.keep(ResultsStore(tmp_path / "r"), config["config_hash"], {"step": 2})
    driver.tune_trial(config)  # fails (simulated CUDA OOM)
    assert reports[-1]["ok"] is False
    assert resume.kept(ResultsStore(tmp_path / "r"), config["config_hash"]) == {"step": 2}  # a later run resumes


def test_a_planner_without_progress_is_not_told_checkpoints(tmp_path, tiny_model, ner_task_file):
    planned = _planned(tmp_path, tiny_model, ner_task_file)
    planner = _Planner(planned, progress=False)
    searcher = driver.PlannerSearcher(planner, {"results": str(tmp_path / "s")}, lambda p: {"CPU": 1.0})
    searcher.suggest("t0")
    stopped = TrialResult.from_row({"config_hash": planned[0].config_hash, "status": "stopped", "train_steps": 4})
    searcher.on_trial_result("t0", driver.to_report(stopped))  # no AttributeError
    assert not hasattr(planner, "progressed") or planner.progressed == []


def test_the_wire_carries_scalars_for_tune_and_the_whole_row():
    row = {"config_hash": "h", "trial_id": "t", "status": "ok", "f1": 0.5, "dev_f1": 0.4, "dev_eval_loss": 0.3,
           "n_kept_layers": 2, "train_steps": 10, "latency_ms": None}
    report = driver.to_report(TrialResult.from_row(row), "dev_loss")
    assert {k: v for k, v in report.items() if k != "row_json"} == {
        "config_hash": "h", "ok": True, "f1": 0.5, "dev_f1": 0.4, "n_kept_layers": 2.0, "latency_ms": 0.0,
        "train_steps": 10.0, "dev_eval_loss": 0.3, "rung_score": -0.3}
    assert driver.from_report(report).to_row() == TrialResult.from_row(row).to_row()
    assert driver.to_report(TrialResult.from_row(row))["rung_score"] == 0.4  # rungs on dev F1 by default
    stopped = driver.to_report(TrialResult.from_row(row | {"status": "stopped", "dev_eval_loss": None}))
    assert "row_json" not in stopped and json.loads(stopped["stopped_row_json"])["status"] == "stopped"
    assert stopped["ok"] is False and math.isnan(stopped["dev_eval_loss"])


@pytest.mark.parametrize("verbose", [0, 1])
def test_run_planner_asks_tune_for_the_plan_as_configured(tmp_path, monkeypatch, verbose):
    captured = {}

    class Tuner:
        def __init__(self, trainable, tune_config, run_config):
            captured.update(trainable=trainable, tune=tune_config, run=run_config)

        def fit(self):
            captured["output"] = os.environ.get("RAY_AIR_NEW_OUTPUT")
            captured["pending"] = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")

    class Scheduler:
        def rungs(self):
            return [10, 30]

    wrapped = {}
    monkeypatch.setattr("ray.tune.Tuner", Tuner)
    monkeypatch.setattr("ray.tune.with_resources", lambda fn, resources: wrapped.update(fn=fn, resources=resources)
                        or "wrapped")
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    planner, scheduler, callback = _Planner([]), Scheduler(), object()
    driver.run_planner(planner, name="sweep", results="s3://bucket/p?region=x", demand=lambda p: {"CPU": 1.0},
                       runner="pkg.mod:fn", retries=2, max_failures=5, max_concurrent=3, verbose=verbose,
                       callbacks=[callback], scheduler=scheduler, rung_score="dev_loss")
    tune, run = captured["tune"], captured["run"]
    assert captured["trainable"] == "wrapped" and wrapped["fn"] is driver.tune_trial
    assert wrapped["resources"]({"resources": {"CPU": 2.0, "GPU": 0.5}}).bundles == [{"CPU": 2.0, "GPU": 0.5}]
    assert (tune.num_samples, tune.max_concurrent_trials, tune.reuse_actors, tune.scheduler) == (-1, 3, True, scheduler)
    assert tune.search_alg.planner is planner and tune.search_alg.extra == {
        "results": "s3://bucket/p?region=x", "retries": 2, "runner": "pkg.mod:fn", "rung_score": "dev_loss",
        "keep_state_at": [10, 30]}
    assert run.name.startswith("sweep-20") and run.storage_path == "s3://bucket/p/_tune?region=x"
    assert (run.failure_config.max_failures, run.verbose, run.callbacks) == (5, verbose, [callback])
    assert captured["output"] == ("0" if verbose == 0 else "1")  # Tune's legacy output: silent at verbose 0
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"  # as it was
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT")
    demand = _Demand()
    driver.run_planner(planner, name="s", results=str(tmp_path), demand=demand)
    assert captured["tune"].search_alg.demand is demand and captured["run"].verbose == 0
    assert captured["tune"].search_alg.extra == {"results": str(tmp_path), "retries": 0, "rung_score": "dev_f1",
                                                 "runner": "frugalray.training.trial:run_trial", "keep_state_at": []}
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ
    assert captured["run"].storage_path == os.path.join(tempfile.gettempdir(), "frugalray-tune")
    assert captured["run"].callbacks == []
    assert captured["tune"].max_concurrent_trials is None and captured["run"].failure_config.max_failures == 2
    assert captured["pending"] is None  # a search: Tune's own limit


def test_a_sweep_lets_its_trials_wait_for_resources_together_unless_told_otherwise(monkeypatch):
    """Tune lets one trial at a time wait when it has a searcher: a sweep's plan is known up front, and its
    whole demand is to reach the autoscaler. max_concurrent (Tune's own limit then) and the user's setting win."""
    seen = []

    class Tuner:
        def __init__(self, trainable, tune_config, run_config):
            pass

        def fit(self):
            seen.append(os.environ.get("TUNE_MAX_PENDING_TRIALS_PG"))

    monkeypatch.setattr("ray.tune.Tuner", Tuner)
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG", raising=False)
    run = functools.partial(driver.run_planner, _Planner([]), name="s", results="/tmp/r", demand=_Demand())
    run(max_pending=200)
    run(max_pending=200, max_concurrent=4)
    run()
    monkeypatch.setenv("TUNE_MAX_PENDING_TRIALS_PG", "7")
    run(max_pending=200)
    assert seen == ["200", None, None, "7"]
    assert os.environ["TUNE_MAX_PENDING_TRIALS_PG"] == "7"
    monkeypatch.delenv("TUNE_MAX_PENDING_TRIALS_PG")
    run(max_pending=200)
    assert "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ  # as it was
