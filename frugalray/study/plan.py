"""The plan of one sweep: the trials of every stage (``frugalray.study.stages``), grown from results,
per task. No Ray here.

A task's stage starts as soon as the stages it needs are done for that task, whatever the other tasks
are doing. Results are the plan's memory: a trial whose configuration hash already has a row is never
run again, so running the same sweep twice resumes it. Strategies that give the same layer set share one
training run; each gets its own row (``reused_from`` names the trained one).

>>> plan = StudyPlan(SweepConfig(tasks=("demo_pos",), model="minilm"), ResultsStore("results"))  # doctest: +SKIP
>>> plan.expand()[0].config.strategy  # doctest: +SKIP
'full'
"""

from __future__ import annotations

import sys
from frugalray.config import SweepConfig, TrialConfig
from frugalray.data.spec import TaskData
from frugalray.data.tasks import load_task, resolve_task
from frugalray.results.store import ResultsStore
from frugalray.results.schema import TrialResult, is_trained
from frugalray.study.planned import DONE, Planned
from frugalray.study.stages import STAGES, StageInputs
from frugalray.training.identity import lacks_weights, recorded_hash
from frugalray.training.columns import base_row
from frugalray.training.prepared import layer_count, prepare_trial


def check_tasks(sweep: SweepConfig) -> SweepConfig:
    """The sweep, once every task name resolves (a registered task or a task file); an unknown name is an
    error with a did-you-mean, before any data is read."""
    for task in sweep.tasks:
        resolve_task(task)
    return sweep


class StudyPlan:
    """The growing set of trials of one sweep, fed with result rows."""

    def __init__(self, sweep: SweepConfig, store: ResultsStore):
        self.sweep = check_tasks(sweep)
        self.store = store
        self.data: dict[str, TaskData] = {task: self._load(task) for task in sweep.tasks}
        self.names = {task: data.name for task, data in self.data.items()}
        self.num_layers = layer_count(sweep.model)
        self.rows: dict[str, dict] = {}  # config_hash -> trained row (ok, or failed for good)
        self.reported: set[tuple] = set()  # (hash, strategy, n, stage) that have a row
        # Empty when the store has no trials yet; rows of an unreadable file are missing, so they run again.
        for row in store.table().to_pylist():
            if row["status"] == "ok":  # earlier failures are retried: resuming after a fix just works
                self._remember(row | {"config_hash": recorded_hash(row)})
        self.planned: dict[tuple[str, str], list[Planned]] = {}  # (task, stage) -> trials
        self.queue: list[Planned] = []  # to be run, in order
        self.waiting: dict[str, list[Planned]] = {}  # hash -> other strategies waiting on that run
        self.notes: list[str] = []
        self.running: set[str] = set()  # config hashes handed out by next() and not finished
        self.proxies: dict[tuple[str, str], tuple] = {}

    def _load(self, task: str) -> TaskData:
        return load_task(task, self.sweep.data_dir(task))

    # -- results in -------------------------------------------------------------------------------
    def _remember(self, row: dict) -> None:
        if is_trained(row) or (row["status"] != "ok" and row["config_hash"] not in self.rows):
            self.rows[row["config_hash"]] = row
        self.reported.add(_report_key(row))

    def record(self, row: TrialResult | dict) -> list[dict]:
        """Take a finished trial's row; returns the alias rows written for strategies that shared it."""
        row = row.to_row() if isinstance(row, TrialResult) else row
        self._remember(row)
        written = []
        for waiting in self.waiting.pop(row["config_hash"], []):
            key = (row["config_hash"], waiting.config.strategy, waiting.config.n, waiting.stage)
            if key not in self.reported:  # a retrained run keeps the alias rows the store still has
                written.append(self._write_alias(waiting, row))
        return written

    def _write_alias(self, planned: Planned, trained: dict) -> dict:
        own = base_row(planned.config, prepare_trial(planned.config, self.data[planned.task]))
        keep = {k: own[k] for k in ("strategy", "strategy_n", "stage", "config_json", "config_version")}
        alias = trained | keep | {"reused_from": trained["trial_id"], "trial_id": trained["trial_id"] + "-" + planned.config.strategy}
        self.store.append(alias)
        self.reported.add(_report_key(alias))
        return alias

    # -- trials out -------------------------------------------------------------------------------
    def expand(self) -> list[Planned]:
        """Plan every stage whose inputs now exist; returns the trials that must run (not already done)."""
        new = []
        for task in self.sweep.tasks:
            for stage in self.sweep.stages:
                if (task, stage) in self.planned or not self._inputs_ready(task, stage):
                    continue
                configs = self._stage_configs(task, stage)
                self.planned[(task, stage)] = []
                for config in configs:
                    new.extend(self._plan(task, stage, config))
        self.queue.extend(new)
        return new

    def _plan(self, task: str, stage: str, config: TrialConfig) -> list[Planned]:
        prepared = prepare_trial(config, self.data[task])
        planned = Planned(config, prepared.config_hash, prepared.kept_layers, task, stage, prepared.task.fingerprint)
        self.planned[(task, stage)].append(planned)
        key = (prepared.config_hash, config.strategy, config.n, stage)
        if lacks_weights(self.rows.get(prepared.config_hash), config):  # e.g. a teacher trained before recover ran
            del self.rows[prepared.config_hash]  # train it again, keeping them; its stage waits for that run
        if prepared.config_hash in self.rows:  # trained before: report it under this strategy if not yet
            if key not in self.reported:
                self._write_alias(planned, self.rows[prepared.config_hash])
            return []
        if prepared.config_hash in self.waiting:  # queued or running under another strategy: share that run
            self.waiting[prepared.config_hash].append(planned)
            return []
        self.waiting[prepared.config_hash] = []
        return [planned]

    def pop(self) -> Planned | None:
        return self.queue.pop(0) if self.queue else None

    # -- as a planner for the cluster (frugalray.study.planned) -----------------------------------------
    def next(self):
        """The next trial to run, None to wait for running ones (their results may plan more), or DONE."""
        self.expand()
        planned = self.pop()
        if planned is not None:
            self.running.add(planned.config_hash)
            return planned
        return DONE if not self.running and self.finished() else None

    def finish(self, planned: Planned, result: TrialResult) -> None:
        self.running.discard(planned.config_hash)
        self.record(result)

    def stage_done(self, task: str, stage: str) -> bool:
        planned = self.planned.get((task, stage))
        return planned is not None and all(p.config_hash in self.rows for p in planned)

    def finished(self) -> bool:
        self.expand()
        return not self.queue and all(
            self.stage_done(task, stage) or ((task, stage) not in self.planned and not self._could_run(stage))
            for task in self.sweep.tasks for stage in self.sweep.stages
        )

    def _could_run(self, stage: str) -> bool:
        """A stage never starts when a stage it needs (or one those need) is not in this sweep."""
        return all(need in self.sweep.stages and self._could_run(need) for need in STAGES.get(stage).needs)

    def _inputs_ready(self, task: str, stage: str) -> bool:
        return self._could_run(stage) and all(self.stage_done(task, need) for need in STAGES.get(stage).needs)

    # -- the stages -----------------------------------------------------------------------------------
    def _stage_configs(self, task: str, stage: str) -> list[TrialConfig]:
        inputs = StageInputs(self.sweep, task, self.num_layers, lambda stages: self._task_rows(task, stages),
                             lambda text: self.note(f"{task}: {text}"), lambda source: self._proxy(task, source))
        sweep = self.sweep
        return [
            TrialConfig(task=task, model=sweep.model, strategy=name, seed=seed, data_dir=sweep.data_dir(task),
                        sweep=sweep.name, stage=stage,
                        **({"training": sweep.training, "save_model": stage in sweep.save_models} | values))
            for seed in sweep.seeds for name, values in STAGES.get(stage).plan(inputs)
        ]

    def _proxy(self, task: str, source: str) -> tuple:
        """A proxy's scores, from the pretrained model alone (seconds; computed once per task and source)."""
        key = (task, source)
        if key not in self.proxies:
            from frugalray.model import importance

            self.proxies[key] = importance.proxy_of(source, task, self.sweep.model, self.sweep.data_dir(task))
        return self.proxies[key]

    def _task_rows(self, task: str, stages: tuple[str, ...]) -> list[dict]:
        hashes = {p.config_hash for s in stages for p in self.planned.get((task, s), [])}
        return [self.rows[h] for h in hashes if h in self.rows and self.rows[h]["status"] == "ok"]

    def note(self, text: str) -> None:
        """Say it now (the log) and keep it for the end-of-sweep summary."""
        self.notes.append(text)
        print(f"frugalray: note: {text}", file=sys.stderr, flush=True)

    # -- progress ------------------------------------------------------------------------------------
    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Per (task, stage): planned, done, failed trials (shared runs counted once per strategy)."""
        out = {}
        for key, planned in self.planned.items():
            rows = [self.rows.get(p.config_hash) for p in planned]
            out[key] = {
                "planned": len(planned),
                "done": sum(1 for r in rows if r is not None and r["status"] == "ok"),
                "failed": sum(1 for r in rows if r is not None and r["status"] != "ok"),
            }
        return out


def _report_key(row: dict) -> tuple:
    return (row["config_hash"], row["strategy"], row["strategy_n"], row["stage"])
