"""Sweeps on Ray Tune: the staged plan feeds a Tune searcher; every trial is an ordinary trial.

Ray is the orchestrator and only that: placement (CPU, or a GPU fraction sized from the trial's memory
estimate), spreading over nodes, rescheduling trials whose worker or node died. What to run next and
what is already done come from the plan and the results store, so re-running the same sweep resumes it.

>>> run_sweep(SweepConfig(tasks=("demo_pos",), model="minilm", seeds=(0,), results="results"))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import sys
import tempfile
import time
from datetime import datetime, timezone

from ray.tune.search import Searcher

from frugalray._registry import FrugalrayError
from frugalray.pipeline import StudyPlan, SweepConfig, _Planned
from frugalray.ray_session import connect_or_start_ray, ensure_ray  # noqa: F401 (connect_or_start_ray: sweep files)
from frugalray.resources import estimate_memory_gib, fits
from frugalray.results import COLUMNS, ResultsStore
from frugalray.trial import TrialConfig, base_row, execute_trial

DEFAULT_RUNNER = "frugalray.trial:run_trial"


# -- inside a Ray worker -------------------------------------------------------------------------------
def tune_trial(config: dict) -> None:
    """The Tune function: run one trial (with in-process retries), append its row, report it."""
    import ray
    from ray import tune

    trial = TrialConfig.from_dict(config["trial"])
    store = ResultsStore(config["results"])
    runner = _import(config.get("runner", DEFAULT_RUNNER))
    if "config_hash" in config:  # sweeps send the trial they planned; this node must prepare the same one
        runner = _same_as_planned(runner, config["config_hash"], config["task_fingerprint"])
    gpu_share = ray.get_runtime_context().get_assigned_resources().get("GPU")
    attempts = config.get("retries", 0) + 1
    for attempt in range(1, attempts + 1):
        row = execute_trial(trial, store, append=False, runner=runner,  # appended below, after any retries
                            gpu_memory_fraction=gpu_share if gpu_share and gpu_share < 1 else None)
        if row["status"] == "ok" or row["error"].startswith("FrugalrayError") or attempt == attempts:
            break
        _free_gpu_memory()  # e.g. after a CUDA OOM, before the next attempt
    if row["status"] != "ok" and attempts > 1:
        row["error"] = f"failed {attempt} attempt(s); last: {row['error']}"
    if row["status"] != "ok" and "config_hash" in config:
        row["config_hash"] = config["config_hash"]  # the driver waits for the trial it planned, even a failed one
    store.append(row)
    tune.report(_to_report(row))


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


def _to_report(row: dict) -> dict:
    """Scalars for Tune's loggers, and the whole row as JSON for the driver."""
    text = json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()})
    scalars = {key: float(row.get(key) or 0.0) for key in ("f1", "dev_f1", "n_kept_layers", "latency_ms")}
    return {"config_hash": row["config_hash"], "ok": row["status"] == "ok", **scalars, "row_json": text}


def _from_report(result: dict) -> dict:
    values = json.loads(result["row_json"])
    row = {k: values.get(k) for k in COLUMNS}
    for key in ("started_at", "finished_at"):
        if isinstance(row[key], str):
            row[key] = datetime.fromisoformat(row[key])
    return row


# -- in the driver -----------------------------------------------------------------------------------
class PipelineSearcher(Searcher):
    """A Tune searcher that hands out the plan's trials as their inputs appear."""

    def __init__(self, plan: StudyPlan, extra: dict, demand, progress=None):
        super().__init__(metric="f1", mode="max")
        self.plan, self.extra, self.demand, self.progress = plan, extra, demand, progress
        self.running: dict[str, _Planned] = {}

    def suggest(self, trial_id: str):
        self.plan.expand()
        planned = self.plan.pop()
        if planned is None:
            return Searcher.FINISHED if not self.running and self.plan.finished() else None
        self.running[trial_id] = planned
        if self.progress:
            self.progress.started(planned)
        return {"trial": planned.config.to_dict(), "config_hash": planned.config_hash,
                "task_fingerprint": self.plan.data[planned.task].fingerprint, "resources": self.demand(planned),
                **self.extra}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        planned = self.running.pop(trial_id, None)
        if planned is None:
            return
        if error or not result or "row_json" not in result:
            # the worker or node died more often than max_failures allows: record it, keep going
            row = base_row(planned.config, None) | {
                "config_hash": planned.config_hash, "status": "failed",
                "error": "trial process died (worker or node lost) more often than max_failures allows",
                "trial_id": f"{planned.config_hash}-lost-{int(time.time())}",
                "finished_at": datetime.now(timezone.utc),
            }
            self.plan.store.append(row)
        else:
            row = _from_report(result)
        self.plan.record(row)
        if self.progress:
            self.progress.finished(planned, row)

    def save(self, checkpoint_path: str) -> None:  # the results store is the state; nothing else to save
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


class Progress:
    """Trials done, running and failed per stage, with an ETA; a summary at the end."""

    def __init__(self, plan: StudyPlan, every_s: float = 5.0, stream=sys.stdout):
        self.plan, self.every_s, self.stream = plan, every_s, stream
        self.start = time.monotonic()
        self.running: dict[tuple[str, str], int] = {}
        self.durations: list[float] = []
        self.started_at: dict[str, float] = {}
        self.last = 0.0

    def __getstate__(self) -> dict:  # Tune pickles its searcher (and so this); an open stream does not pickle
        return {k: v for k, v in self.__dict__.items() if k != "stream"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, stream=sys.stdout)

    def started(self, planned: _Planned) -> None:
        key = (planned.task, planned.stage)
        self.running[key] = self.running.get(key, 0) + 1
        self.started_at[planned.config_hash] = time.monotonic()
        self.show()

    def finished(self, planned: _Planned, row: dict) -> None:
        key = (planned.task, planned.stage)
        self.running[key] = max(0, self.running.get(key, 0) - 1)
        if planned.config_hash in self.started_at:
            self.durations.append(time.monotonic() - self.started_at.pop(planned.config_hash))
        self.show()

    def lines(self) -> list[str]:
        """One line per (task, stage): done/planned, running, failed."""
        out = []
        for (task, stage), c in sorted(self.plan.counts().items(), key=lambda kv: (kv[0][0], STAGE_ORDER[kv[0][1]])):
            running = self.running.get((task, stage), 0)
            out.append(f"  {task:16} {stage:11} {c['done']:4}/{c['planned']:<4} done  {running:3} running  "
                       f"{c['failed']:3} failed")
        return out

    def eta(self) -> str:
        remaining = sum(c["planned"] - c["done"] - c["failed"] for c in self.plan.counts().values())
        running = max(1, sum(self.running.values()))
        if not self.durations or not remaining:
            return "?"
        seconds = remaining * (sum(self.durations) / len(self.durations)) / running
        return f"{seconds / 60:.1f} min"

    def show(self, force: bool = False) -> None:
        """A one-line status (at most every ``every_s``), or the full table when ``force``."""
        now = time.monotonic()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        counts = self.plan.counts()
        done = sum(c["done"] for c in counts.values())
        failed = sum(c["failed"] for c in counts.values())
        planned = sum(c["planned"] for c in counts.values())
        active = [f"{task}:{stage} {c['done'] + c['failed']}/{c['planned']}"
                  for (task, stage), c in sorted(counts.items()) if c["done"] + c["failed"] < c["planned"]]
        print(f"[frugalray {now - self.start:5.0f}s] {done}/{planned} done, {sum(self.running.values())} running, "
              f"{failed} failed, ETA {self.eta()} (planned stages) | {'; '.join(active)}",
              file=self.stream, flush=True)
        if force:
            print("\n".join(self.lines()), file=self.stream, flush=True)


STAGE_ORDER = {"single": 0, "strategies": 1, "lora": 2, "balanced": 3}


def trial_demand(sweep: SweepConfig, model_config: dict, has_gpus: bool, planned: _Planned) -> dict[str, float]:
    """Ray resources of one planned trial, from its memory estimate."""
    config = planned.config
    estimate = estimate_memory_gib(model_config, len(planned.kept_layers), config.training.batch_size,
                                   config.training.max_length, lora=config.lora is not None,
                                   lora_r=config.lora.r if config.lora else 8)
    return sweep.resources.for_trial(estimate, has_gpus)


def run_sweep(sweep: SweepConfig, *, runner: str = DEFAULT_RUNNER, ray_init: dict | None = None,
              connect=None, stream=sys.stdout) -> StudyPlan:
    """Run (or resume) a sweep to the end; returns the plan, whose store holds every row.

    When Ray is not yet initialized: ``ray.init(**ray_init)`` if given, else ``connect()``, else
    ``connect_or_start_ray()`` (the cluster named by RAY_ADDRESS, or a private local Ray)."""
    sweep = _absolute_paths(sweep)  # Ray workers run in their own folders: relative paths would move
    store = ResultsStore(sweep.results).check_writable()  # an unreachable location fails before anything runs
    plan = StudyPlan(sweep, store)
    plan.expand()
    if plan.finished():  # a finished sweep: nothing to schedule, no cluster needed
        print(f"frugalray: sweep '{sweep.name}' is complete in {sweep.results}; nothing to run", file=stream)
        return plan
    from ray import tune
    from ray.tune import PlacementGroupFactory

    ensure_ray(ray_init, connect)
    model_config = _model_config_dict(sweep.model)
    nodes = alive_nodes()
    has_gpus = any(node.get("GPU", 0) > 0 for node in nodes)
    demands = {tuple(sorted(trial_demand(sweep, model_config, has_gpus, p).items())) for p in plan.queue}
    _check_fit([dict(d) for d in demands], nodes, sweep.autoscale_wait_s)

    progress = Progress(plan, stream=stream)
    extra = {"results": sweep.results, "retries": sweep.retries, "runner": runner}
    searcher = PipelineSearcher(plan, extra, lambda p: trial_demand(sweep, model_config, has_gpus, p), progress)
    trainable = tune.with_resources(tune_trial, lambda config: PlacementGroupFactory([config["resources"]]))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=-1, max_concurrent_trials=sweep.max_concurrent,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=f"{sweep.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}",
            storage_path=_tune_storage(sweep.results),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            verbose=sweep.verbose,
        ),
    )
    with _tune_output(sweep.verbose):
        tuner.fit()
    progress.show(force=True)
    for note in plan.notes:
        print(f"note: {note}", file=stream)
    return plan


@contextlib.contextmanager
def _tune_output(verbose: int):
    """Tune's output at ``verbose``; at 0, none at all.

    Tune's default output engine prints its experiment box at every verbosity, where a plan that grows as
    results arrive (num_samples=-1) shows as "Number of trials 9223372036854775807". Its legacy engine,
    chosen by RAY_AIR_NEW_OUTPUT=0 when Tune starts, prints nothing at verbose=0."""
    if verbose:
        yield
        return
    before = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["RAY_AIR_NEW_OUTPUT"]
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = before


def _absolute_paths(sweep: SweepConfig) -> SweepConfig:
    def absolute(path: str) -> str:
        return path if "://" in path else os.path.abspath(path)

    return dataclasses.replace(
        sweep,
        results=absolute(sweep.results),
        tasks=tuple(absolute(t) if t.endswith(".json") else t for t in sweep.tasks),
        data_dirs=tuple((absolute(t) if t.endswith(".json") else t, absolute(d)) for t, d in sweep.data_dirs),
    )


def alive_nodes() -> list[dict[str, float]]:
    """Resources of each live node of the connected cluster."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def _tune_storage(results: str) -> str:
    """Tune's own bookkeeping lives beside the results when they are shared storage, else in a temp dir."""
    if "://" in results:
        return results.rstrip("/") + "/_tune"
    return os.path.join(tempfile.gettempdir(), "frugalray-tune")


def _model_config_dict(model: str) -> dict:
    from frugalray.models import load_model_config

    return load_model_config(model).to_dict()


def _check_fit(demands: list[dict[str, float]], nodes: list[dict[str, float]], wait_s: float) -> None:
    """Fail before scheduling when no node can hold a trial (after asking the autoscaler, if allowed)."""
    missing = [d for d in demands if not fits(d, nodes)]
    if not missing:
        return
    if wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=missing)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            time.sleep(5)
            nodes = alive_nodes()
            if all(fits(d, nodes) for d in missing):
                return
    shown = [{k: v for k, v in n.items() if k in ("CPU", "GPU")} for n in nodes]
    raise FrugalrayError(
        f"No node of the cluster fits a trial: trials need {missing}, nodes have {shown}. Lower "
        f"resources.cpus_per_trial or the GPU share, add nodes, or set autoscale_wait_s for an autoscaling cluster"
    )


SUMMARY_SQL = """
SELECT * EXCLUDE (stage_order) FROM (
    SELECT CASE stage WHEN 'single' THEN 0 WHEN 'strategies' THEN 1 WHEN 'lora' THEN 2 ELSE 3 END AS stage_order,
           stage, strategy, strategy_n AS n, n_kept_layers AS layers,
           list_aggr(kept_layers, 'string_agg', ',') AS kept_layers, lora, epochs, count(*) AS seeds,
           round(avg(f1), 4) AS f1, round(stddev_samp(f1), 4) AS f1_std, round(avg(train_seconds), 2) AS train_s,
           round(avg(latency_ms), 1) AS latency_ms, round(avg(model_mib), 1) AS mib
    FROM trials
    WHERE sweep = ? AND task = ? AND status = 'ok'
    GROUP BY ALL
)
ORDER BY stage_order, layers, strategy, n
"""


# Configurations whose latest row failed: a failure that a later run of the same config hash fixed is not one.
FAILED_SQL = """
SELECT count(*) FROM (
    SELECT status FROM trials WHERE sweep = ? AND task = ?
    QUALIFY row_number() OVER (PARTITION BY config_hash ORDER BY finished_at DESC NULLS LAST) = 1
) WHERE status <> 'ok'
"""


def summary(plan: StudyPlan, stream=sys.stdout) -> None:
    """Per task: every strategy's mean F1 over seeds, training seconds, latency and size."""
    import duckdb

    from frugalray.tables import render

    trials = plan.store.table()
    connection = duckdb.connect()
    connection.register("trials", trials)
    for task in plan.sweep.tasks:
        name = plan.names[task]
        table = connection.sql(SUMMARY_SQL, params=[plan.sweep.name, name]).to_arrow_table()
        failed = connection.sql(FAILED_SQL, params=[plan.sweep.name, name]).fetchall()[0][0]
        print(f"\n== {name} ({plan.sweep.model}, {len(plan.sweep.seeds)} seed(s)); failed trials: {failed}",
              file=stream)
        print(render(table), file=stream)


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty name; give comma-separated names, e.g. a,b")
    return names


def _non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value")
    return text.strip()


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of seeds, e.g. 0,1,2") from None
    if not all(0 <= seed < 2**32 for seed in seeds):  # numpy's seed range
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are integers from 0 to 2**32 - 1")
    return seeds


def _learning_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not (math.isfinite(rate) and rate > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number, e.g. 5e-5")
    return rate


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return count


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, e.g. 900")
    return seconds


def _task_folder(text: str) -> tuple[str, str]:
    task, sep, folder = (part.strip() for part in text.partition("="))
    if not (sep and task and folder):
        raise argparse.ArgumentTypeError(f"{text!r} is not TASK=FOLDER, e.g. ftb_pos=/data/ftb/pos")
    return task, folder


def main(defaults: dict, argv: list[str] | None = None, runner: str = DEFAULT_RUNNER) -> StudyPlan:
    """Entry point of sweep files: the file's settings, overridden from the command line.

    >>> main(SWEEP, ["--seeds", "0,1", "--data-dir", "ftb_pos=/data/ftb/pos"])  # doctest: +SKIP
    """
    parser = argparse.ArgumentParser(description="Run (or resume) a frugalray sweep.")
    parser.add_argument("--tasks", type=_names, help="comma-separated subset of tasks")
    parser.add_argument("--seeds", type=_seeds, help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--epochs", type=_count)
    parser.add_argument("--lr", type=_learning_rate, help="full fine-tuning learning rate")
    parser.add_argument("--lora-lr", type=_learning_rate, help="LoRA learning rate")
    parser.add_argument("--data-dir", type=_task_folder, action="append", default=[], metavar="TASK=FOLDER")
    parser.add_argument("--results", type=_non_empty, help="results location (folder, s3://, gs://)")
    parser.add_argument("--name", type=_non_empty, help="sweep name")
    parser.add_argument("--stages", type=_names, help="comma-separated subset of: " + ", ".join(STAGE_ORDER))
    parser.add_argument("--max-concurrent", type=_count)
    parser.add_argument("--autoscale-wait", type=_seconds, help="seconds to wait for autoscaled nodes")
    parser.add_argument("--verbose", type=int, choices=range(4), help="Ray Tune's own output (default 0: none)")
    args = parser.parse_args(argv)
    values = dict(defaults)
    overrides = {field_name: getattr(args, key) for key, field_name in
                 (("epochs", "epochs"), ("lr", "learning_rate"), ("lora_lr", "lora_learning_rate"))
                 if getattr(args, key) is not None}
    if overrides:
        training = values.get("training", {})
        values["training"] = {**(dataclasses.asdict(training) if dataclasses.is_dataclass(training) else training),
                              **overrides}
    for key in ("tasks", "seeds", "stages"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    tasks = list(values.get("tasks", SweepConfig.tasks))  # the class attribute holds the field's default
    data_dirs = dict(values.get("data_dirs", {}))
    if args.tasks:  # a subset of the file's tasks: the file's folders of the others do not apply
        data_dirs = {task: folder for task, folder in data_dirs.items() if task in tasks}
    for task, folder in args.data_dir:
        if task not in tasks:
            parser.error(f"--data-dir {task}={folder}: this sweep does not run task {task!r}; "
                         f"its tasks: {', '.join(tasks)}")
        data_dirs[task] = folder
    values["data_dirs"] = data_dirs
    for key, name in (("results", "results"), ("name", "name"), ("max_concurrent", "max_concurrent"),
                      ("autoscale_wait", "autoscale_wait_s"), ("verbose", "verbose")):
        if getattr(args, key) is not None:
            values[name] = getattr(args, key)
    try:
        sweep = SweepConfig.from_dict(values, source="sweep file")
        plan = run_sweep(sweep, runner=runner)
    except FrugalrayError as error:
        print(f"frugalray: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    summary(plan)
    print(f"\nResults: {sweep.results}  (frugalray results {sweep.results} --view budget)")
    if sweep.report:
        write_sweep_report(sweep)
    return plan


def write_sweep_report(sweep: SweepConfig) -> None:
    """The HTML report of a finished sweep; a report that cannot be written never fails the sweep."""
    from frugalray.reference import STUDY, load_reference
    from frugalray.report import write_report
    from frugalray.results import ResultsStore

    try:
        reference = load_reference([STUDY], dict(sweep.reference_tasks))
        path = write_report(ResultsStore(sweep.results), sweep.report, reference=reference,
                            title=f"frugalray: sweep {sweep.name} ({sweep.model})")
        print(f"Report: {path}")
    except Exception as error:  # the results are safe; only the report is missing
        print(f"frugalray: the report was not written: {type(error).__name__}: {error}", file=sys.stderr)
