"""Ray Tune as frugalray's orchestrator, and only that: placement (CPU, or a GPU fraction sized from each
trial's memory estimate), spreading over nodes, rescheduling trials whose worker or node died.

What runs next comes from a planner (a sweep's ``StudyPlan``, a ``MaskSearch``: ``frugalray.study.planned``)
through one Tune searcher; every trial is an ordinary ``execute_trial`` in a worker, which appends its row to
the results store and reports it back as JSON (the wire format: ``TrialResult.to_json``).

>>> run_planner(plan, results="results", demand=lambda planned: {"CPU": 1})  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import sys
import tempfile
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from ray.tune.search import Searcher

from frugalray._registry import FrugalrayError
from frugalray.cluster.placement import Placement, where_it_runs
from frugalray.config import TrialConfig
from frugalray.results.schema import TrialResult
from frugalray.results.store import ResultsStore
from frugalray.study.masks import rung_score
from frugalray.study.planned import DONE, Planned
from frugalray.training import resume
from frugalray.training.identity import lacks_weights, make_trial_id
from frugalray.training.columns import base_row, failed_columns
from frugalray.training.trial import execute_trial

DEFAULT_RUNNER = "frugalray.training.trial:run_trial"


# -- inside a Ray worker -------------------------------------------------------------------------------
def tune_trial(config: dict) -> None:
    """The Tune function: run one trial (with in-process retries), append its row, report it.

    A trial whose row is already in the store is reported, not run again: Tune retries a trial whose worker
    died, and that worker may have died after its append, before its report reached the driver."""
    from ray import tune

    trial, rung = TrialConfig.from_dict(config["trial"]), config.get("rung_score", "dev_f1")
    store = ResultsStore(config["results"])
    earlier = store.trained_row(config["config_hash"])
    if earlier is not None and not lacks_weights(earlier, trial):  # Tune retries a trial whose worker died
        # after the append, before the report; a run that kept no weights trains again when they are wanted
        tune.report(to_report(earlier, rung))
        return
    runner = _same_as_planned(_import(config["runner"]), config["config_hash"], config["task_fingerprint"])
    where = where_it_runs(config.get("placement") or {})
    gpu_share = where["gpu_share"]
    attempts = config["retries"] + 1
    # A trial that scores dev on the way reports each checkpoint, for an early-stopping scheduler; when the
    # scheduler stops it, that report's call does not return (Tune ends the trial) and the driver stores the
    # row the report carried (``PlannerSearcher.on_trial_complete``).
    checkpoints = (lambda stopped: tune.report(to_report(stopped, rung))) if trial.training.eval_every_steps else None
    resumption = _resumption(config, trial, store)
    for attempt in range(1, attempts + 1):
        result = execute_trial(trial, store, append=False, runner=runner, report=checkpoints,  # appended below
                               gpu_memory_fraction=gpu_share if gpu_share and gpu_share < 1 else None, **resumption)
        if result.status == "ok" or result.error.startswith("FrugalrayError") or attempt == attempts:
            break
        _free_gpu_memory()  # e.g. after a CUDA OOM, before the next attempt
    if result.status != "ok":
        error = f"failed {attempt} attempt(s); last: {result.error}" if attempts > 1 else result.error
        # the driver waits for the trial it planned, even a failed one
        result = result.replace(error=error, config_hash=config["config_hash"])
    result = result.replace(**where)
    store.append(result)
    if result.status == "ok" and "snapshot" in resumption:
        resume.forget(store, config["config_hash"])  # trained to the end: nothing left to go on from
    tune.report(to_report(result, rung))


def _resumption(config: dict, trial: TrialConfig, store: ResultsStore) -> dict:
    """A search trial's state kept at the rungs where the scheduler may stop it (``keep_state_at``), and a
    stopped mask the search promoted going on from the state it kept (``frugalray.training.resume``)."""
    rungs = set(config.get("keep_state_at") or ())
    if not rungs or not resume.resumable(trial.training):
        return {}
    keep = functools.partial(resume.keep, store, config["config_hash"])
    options = {"snapshot": lambda step, state: keep(state()) if step in rungs else None}
    start = resume.kept(store, config["config_hash"]) if config.get("full_fidelity") else None
    return options | ({"resume": start} if start is not None else {})


def _same_as_planned(runner, config_hash: str, task_fingerprint: str):
    """``runner``, behind a check that this node prepared the trial the driver planned (same hash).

    A node whose copy of a task's data differs would otherwise train another trial under another hash,
    and the driver would wait for the planned one forever."""

    def checked(prepared, *args, **kwargs):
        if prepared.config_hash != config_hash:
            raise FrugalrayError(_mismatch(prepared, config_hash, task_fingerprint))
        return runner(prepared, *args, **kwargs)

    return checked


def _mismatch(prepared, config_hash: str, task_fingerprint: str) -> str:
    import socket

    import ray

    node = f"Node {ray.get_runtime_context().get_node_id()} ({socket.gethostname()})"
    task = prepared.task
    if task.fingerprint == task_fingerprint:
        return (f"{node} computes configuration {prepared.config_hash} for the trial the driver planned as "
                f"{config_hash}, on the same data {task_fingerprint}: the model or frugalray version differs there")
    return (f"{node} reads task '{task.name}' as data {task.fingerprint}, but the driver planned this trial on "
            f"data {task_fingerprint}; every node must read the same data "
            f"({task.spec.data_dir or task.spec.dataset}). The trial was not trained")


def _free_gpu_memory() -> None:
    import gc

    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


def _import(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# -- the wire ------------------------------------------------------------------------------------------
REPORTED = ("f1", "dev_f1", "n_kept_layers", "latency_ms", "train_steps")  # scalars for Tune and its schedulers


def to_report(result: TrialResult, rung: str = "dev_f1") -> dict:
    """What a worker reports: a few scalars for Tune's loggers and schedulers (``dev_eval_loss`` NaN where there
    is none; ``rung_score``, what halving compares: see ``SearchConfig.rung_score``), and the whole result as
    JSON: ``row_json`` for a finished trial, ``stopped_row_json`` at a checkpoint (the row it leaves if stopped
    there)."""
    scalars = {key: float(result.get(key) or 0.0) for key in REPORTED}
    loss = result.get("dev_eval_loss")
    scalars["dev_eval_loss"] = float(loss) if loss is not None else math.nan
    scalars["rung_score"] = rung_score(rung, scalars["dev_f1"], loss)
    key = "stopped_row_json" if result.status == "stopped" else "row_json"
    return {"config_hash": result.config_hash, "ok": result.status == "ok", **scalars, key: result.to_json()}


def from_report(report: dict) -> TrialResult:
    return TrialResult.from_json(report["row_json"])


# -- in the driver -----------------------------------------------------------------------------------
class PlannerSearcher(Searcher):
    """The one Tune searcher: it hands out the planner's trials and gives it their results."""

    def __init__(self, planner, extra: dict, demand: Callable[[Planned], dict]):
        super().__init__(metric="f1", mode="max")
        self.planner, self.extra, self.demand = planner, extra, demand
        self.running: dict[str, Planned] = {}

    def suggest(self, trial_id: str):
        planned = self.planner.next()
        if planned is DONE:
            return Searcher.FINISHED
        if planned is None:
            return None
        self.running[trial_id] = planned
        placement = self.demand(planned)
        if isinstance(placement, dict):  # a plain resource dict
            placement = Placement(placement)
        return {"trial": planned.config.to_dict(), "config_hash": planned.config_hash,
                "task_fingerprint": planned.task_fingerprint, "task": planned.task, "stage": planned.stage,
                "resources": placement.resources, "placement": placement.columns(),
                "full_fidelity": planned.full_fidelity, **self.extra}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        planned = self.running.get(trial_id)
        if planned is not None and "stopped_row_json" in result and hasattr(self.planner, "progress"):
            self.planner.progress(planned, int(result["train_steps"]), result["rung_score"])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        planned = self.running.pop(trial_id, None)
        if planned is None:
            return
        if hasattr(self.demand, "release"):  # its share of the card is free again
            self.demand.release(planned)
        if not error and result and "row_json" not in result and "stopped_row_json" in result:
            # the scheduler stopped it at a checkpoint: its row says how far it trained, never a final result
            stopped = TrialResult.from_json(result["stopped_row_json"])
            ResultsStore(self.extra["results"]).append(stopped)
            self.planner.finish(planned, stopped)
        elif error or not result or "row_json" not in result:
            # the worker or node died more often than max_failures allows: record it, keep going
            lost = lost_row(planned)
            ResultsStore(self.extra["results"]).append(lost)
            self.planner.finish(planned, lost)
        else:
            self.planner.finish(planned, from_report(result))

    def save(self, checkpoint_path: str) -> None:  # the results store is the state; nothing else to save
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


def lost_row(planned: Planned) -> TrialResult:
    """The row of a trial whose process died more often than ``max_failures`` allows: failed, error_kind
    ``lost``, with what the driver planned (configuration, kept layers, data), nothing measured."""
    now = datetime.now(timezone.utc)
    return TrialResult.from_row(base_row(planned.config, None) | failed_columns(
        "trial process died (worker or node lost) more often than max_failures allows", "lost") | {
        "config_hash": planned.config_hash, "trial_id": make_trial_id(planned.config_hash, now, "lost"),
        "kept_layers": list(planned.kept_layers), "n_kept_layers": len(planned.kept_layers),
        "task_fingerprint": planned.task_fingerprint, "finished_at": now})


def run_planner(planner, *, name: str, results: str, demand: Callable[[Planned], dict], runner: str = DEFAULT_RUNNER,
                retries: int = 0, max_failures: int = 2, max_concurrent: int | None = None, verbose: int = 0,
                callbacks: list | None = None, scheduler=None, rung_score: str = "dev_f1",
                max_pending: int | None = None) -> None:
    """Run every trial ``planner`` hands out until it says DONE (Ray must be initialized); ``scheduler``: a Tune
    scheduler that may stop trials early (``frugalray.cluster.halving``) on the trials' ``rung_score``, FIFO
    without one; ``max_pending``: how many trials may wait for resources at once (see :func:`_tune_settings`)."""
    from ray import tune
    from ray.tune import PlacementGroupFactory

    extra = {"results": results, "retries": retries, "runner": runner, "rung_score": rung_score,
             "keep_state_at": scheduler.rungs() if hasattr(scheduler, "rungs") else []}
    searcher = PlannerSearcher(planner, extra, demand)
    trainable = tune.with_resources(tune_trial, lambda config: PlacementGroupFactory([config["resources"]]))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=-1,
                                    max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}", storage_path=_tune_storage(results),
            failure_config=tune.FailureConfig(max_failures=max_failures), verbose=verbose,
            callbacks=callbacks or [],
        ),
    )
    with _environment(_tune_settings(verbose, max_pending, max_concurrent)):
        tuner.fit()


def _tune_settings(verbose: int, max_pending: int | None, max_concurrent: int | None) -> dict[str, str]:
    """The environment Tune reads when it starts, for this run.

    - Output: Tune's default output engine prints its experiment box at every verbosity, where a plan that grows
      as results arrive (num_samples=-1) shows as "Number of trials 9223372036854775807". Its legacy engine
      (RAY_AIR_NEW_OUTPUT=0) prints nothing at verbose=0.
    - Pending trials: with a searcher, Tune lets one trial at a time wait for resources unless
      max_concurrent_trials is set. An autoscaler then sees the demand of one trial more than is running and
      starts nodes one by one, and a short trial that ends before the next is placed hands its worker on to it,
      whatever other nodes are idle. A plan known up front (a sweep) lets ``max_pending`` wait, as Tune lets a
      grid search; a TUNE_MAX_PENDING_TRIALS_PG of the user's own is kept."""
    settings = {} if verbose else {"RAY_AIR_NEW_OUTPUT": "0"}
    if max_pending and not max_concurrent and "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ:
        settings["TUNE_MAX_PENDING_TRIALS_PG"] = str(max_pending)
    return settings


@contextlib.contextmanager
def _environment(settings: dict[str, str]):
    """``settings`` in os.environ for the block, each variable as it was afterwards."""
    before = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _tune_storage(results: str) -> str:
    """Tune's own bookkeeping lives beside the results when they are shared storage, else in a temp dir."""
    if "://" in results:  # into the path: Arrow's options (?endpoint_override=...) stay after it
        parts = urlsplit(results)
        return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/_tune"))
    return os.path.join(tempfile.gettempdir(), "frugalray-tune")
