"""The study's staged pipeline as a plan that grows from results, per task. No Ray here.

Stages, per task (each for every seed):
  1. ``single``: full + single(k) for every layer k;
  2. ``strategies``: first/last N, the alternate family, drop_middle/drop_ends, and best/drop_worst N
     ranked by the task's own stage-1 scores;
  3. ``lora``: LoRA on the selection rule (best with <= 6 layers, best with 2 and with 3) and on the full model;
  4. ``balanced``: the same selection retrained for the full model's training time.
A task's stage starts as soon as that task's inputs exist, whatever the other tasks are doing.

Results are the plan's memory: a trial whose configuration hash already has a row is never run again, so
running the same sweep twice resumes it. Strategies that give the same layer set share one training run;
each gets its own row (``reused_from`` names the trained one).
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from dataclasses import dataclass, field

from frugalray._config import check_fields, from_dict
from frugalray._registry import FrugalrayError
from frugalray.lora import LoraSettings
from frugalray.resources import ResourceRule
from frugalray.results import ResultsStore
from frugalray.scores import SCORE_COLUMN, ranking_notes, scores_from_rows
from frugalray.strategies import alternate_family, balanced_epochs
from frugalray.tasks import TaskData, load_task, resolve_task
from frugalray.config import TrainingSettings
from frugalray.trial import TrialConfig, base_row, layer_count, prepare_trial, recorded_hash

STAGES = ("single", "strategies", "lora", "balanced")
NEEDS = {"single": None, "strategies": "single", "lora": "strategies", "balanced": "strategies"}


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep file sets. Unknown keys fail (``from_dict``)."""

    name: str = field(default="study", metadata={"help": "Sweep label, recorded in every row."})
    tasks: tuple[str, ...] = field(default=("wikiner", "ftb_ner", "ftb_pos", "allocine"))
    model: str = field(default="camembert-base", metadata={"help": "Alias, folder or hub id."})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "Each trial runs once per seed."})
    training: TrainingSettings = field(default_factory=TrainingSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data_dirs: tuple[tuple[str, str], ...] = field(default=(), metadata={"help": "(task, folder) pairs."})
    results: str = field(default="results", metadata={"help": "Folder or s3:// gs:// URI all nodes reach."})
    stages: tuple[str, ...] = field(default=STAGES)
    first_last: tuple[int, ...] | None = field(default=None, metadata={"help": "N for first/last; None: 1..L-1."})
    alternate: bool = field(default=True, metadata={"help": "Run the alternate family (even, odd, drop_every)."})
    drop_middle: tuple[int, ...] = (2, 4, 6, 8, 10)
    drop_ends: tuple[int, ...] = (2, 4, 6, 8, 10)
    best: tuple[int, ...] = (2, 3, 4, 5, 6)
    drop_worst: tuple[int, ...] = (1, 2, 3, 4, 5)
    lora_max_layers: int = field(default=6, metadata={"help": "Selection: best strategy with at most this many."})
    lora_sizes: tuple[int, ...] = field(default=(2, 3), metadata={"help": "Selection: best with exactly N layers."})
    save_models: tuple[str, ...] = field(
        default=(), metadata={"help": "Stages whose trials keep their weights for export, e.g. ('lora', 'balanced')."}
    )
    report: str | None = field(default=None, metadata={"help": "Folder for the HTML report written at the end."})
    reference_tasks: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"help": "(task, study dataset) pairs shown side by side in the report."}
    )
    resources: ResourceRule = field(default_factory=ResourceRule)
    retries: int = field(default=1, metadata={"help": "Extra attempts for a trial that raises (e.g. CUDA OOM)."})
    max_failures: int = field(default=3, metadata={"help": "Reschedules of a trial whose worker or node died."})
    max_concurrent: int | None = field(default=None, metadata={"help": "Cap on trials running at once."})
    autoscale_wait_s: float = field(default=0, metadata={"help": "Wait this long for the autoscaler to add nodes."})
    verbose: int = field(
        default=0, metadata={"help": "Ray Tune's own output: 0 none (frugalray's progress only), 1 status, 2 trials."}
    )

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("tasks", "seeds", "stages", "drop_middle", "drop_ends", "best", "drop_worst", "lora_sizes",
                     "save_models"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("data_dirs", "reference_tasks"):
            if isinstance(getattr(self, name), dict):
                object.__setattr__(self, name, tuple(sorted(getattr(self, name).items())))
        if self.first_last is not None:
            object.__setattr__(self, "first_last", tuple(self.first_last))
        if not self.tasks:
            raise FrugalrayError("A sweep needs at least one task")
        for task in self.tasks:
            resolve_task(task)  # unknown names fail here, before anything is scheduled
        for name in ("stages", "save_models"):
            unknown = [s for s in getattr(self, name) if s not in STAGES]
            if unknown:
                raise FrugalrayError(f"{name}: unknown stage(s) {unknown}. Available: {', '.join(STAGES)}")
        if not self.seeds:
            raise FrugalrayError("A sweep needs at least one seed")
        if self.retries < 0 or self.max_failures < 0:
            raise FrugalrayError("retries and max_failures must be >= 0")
        if self.verbose not in (0, 1, 2, 3):
            raise FrugalrayError(f"verbose must be 0, 1, 2 or 3 (Ray Tune's verbosity), got {self.verbose!r}")
        tasks_of_dirs = {task for task, _ in self.data_dirs}
        stray = sorted(tasks_of_dirs - set(self.tasks))
        if stray:
            raise FrugalrayError(f"data_dirs names task(s) {stray} that the sweep does not run: {list(self.tasks)}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "sweep") -> "SweepConfig":
        values = dict(values)
        for key, kind in (("training", TrainingSettings), ("lora", LoraSettings), ("resources", ResourceRule)):
            if isinstance(values.get(key), dict):
                values[key] = kind.from_dict(values[key], f"{source}: {key}")
        return from_dict(cls, values, source)

    def data_dir(self, task: str) -> str | None:
        return dict(self.data_dirs).get(task)


@dataclass
class _Planned:
    config: TrialConfig
    config_hash: str
    kept_layers: tuple[int, ...]
    task: str
    stage: str


class StudyPlan:
    """The growing set of trials of one sweep, fed with result rows."""

    def __init__(self, sweep: SweepConfig, store: ResultsStore):
        self.sweep = sweep
        self.store = store
        self.data: dict[str, TaskData] = {
            task: load_task(task, sweep.data_dir(task)) for task in sweep.tasks
        }
        self.names = {task: data.name for task, data in self.data.items()}
        self.num_layers = layer_count(sweep.model)
        self.rows: dict[str, dict] = {}  # config_hash -> trained row (ok, or failed for good)
        self.reported: set[tuple] = set()  # (hash, strategy, n, stage) that have a row
        # Empty when the store has no trials yet; rows of an unreadable file are missing, so they run again.
        for row in store.table().to_pylist():
            if row["status"] == "ok":  # earlier failures are retried: resuming after a fix just works
                self._remember(row | {"config_hash": recorded_hash(row)})
        self.planned: dict[tuple[str, str], list[_Planned]] = {}  # (task, stage) -> trials
        self.queue: list[_Planned] = []  # to be run, in order
        self.waiting: dict[str, list[_Planned]] = {}  # hash -> other strategies waiting on that run
        self.notes: list[str] = []

    # -- results in -------------------------------------------------------------------------------
    def _remember(self, row: dict) -> None:
        if row.get("reused_from") is None and (row["status"] == "ok" or row["config_hash"] not in self.rows):
            self.rows[row["config_hash"]] = row
        self.reported.add(_report_key(row))

    def record(self, row: dict) -> list[dict]:
        """Take a finished trial's row; returns the alias rows written for strategies that shared it."""
        self._remember(row)
        written = []
        for waiting in self.waiting.pop(row["config_hash"], []):
            key = (row["config_hash"], waiting.config.strategy, waiting.config.n, waiting.stage)
            if key not in self.reported:  # a retrained run keeps the alias rows the store still has
                written.append(self._write_alias(waiting, row))
        return written

    def _write_alias(self, planned: _Planned, trained: dict) -> dict:
        own = base_row(planned.config, prepare_trial(planned.config, self.data[planned.task]))
        keep = {k: own[k] for k in ("strategy", "strategy_n", "stage", "config_json", "config_version")}
        alias = trained | keep | {"reused_from": trained["trial_id"], "trial_id": trained["trial_id"] + "-" + planned.config.strategy}
        self.store.append(alias)
        self.reported.add(_report_key(alias))
        return alias

    # -- trials out -------------------------------------------------------------------------------
    def expand(self) -> list[_Planned]:
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

    def _plan(self, task: str, stage: str, config: TrialConfig) -> list[_Planned]:
        prepared = prepare_trial(config, self.data[task])
        planned = _Planned(config, prepared.config_hash, prepared.kept_layers, task, stage)
        self.planned[(task, stage)].append(planned)
        key = (prepared.config_hash, config.strategy, config.n, stage)
        if prepared.config_hash in self.rows:  # trained before: report it under this strategy if not yet
            if key not in self.reported:
                self._write_alias(planned, self.rows[prepared.config_hash])
            return []
        if prepared.config_hash in self.waiting:  # queued or running under another strategy: share that run
            self.waiting[prepared.config_hash].append(planned)
            return []
        self.waiting[prepared.config_hash] = []
        return [planned]

    def pop(self) -> _Planned | None:
        return self.queue.pop(0) if self.queue else None

    def stage_done(self, task: str, stage: str) -> bool:
        planned = self.planned.get((task, stage))
        return planned is not None and all(p.config_hash in self.rows for p in planned)

    def finished(self) -> bool:
        self.expand()
        return not self.queue and all(
            self.stage_done(task, stage) or ((task, stage) not in self.planned and not self._could_run(task, stage))
            for task in self.sweep.tasks for stage in self.sweep.stages
        )

    def _could_run(self, task: str, stage: str) -> bool:
        """A stage never starts when the stage it needs is not in this sweep's stages."""
        need = NEEDS[stage]
        return need is None or need in self.sweep.stages

    def _inputs_ready(self, task: str, stage: str) -> bool:
        need = NEEDS[stage]
        if need is None:
            return True
        return need in self.sweep.stages and self.stage_done(task, need)

    # -- the stages -----------------------------------------------------------------------------------
    def _config(self, task: str, stage: str, seed: int, strategy: str, **values) -> TrialConfig:
        training = values.pop("training", self.sweep.training)
        return TrialConfig(task=task, model=self.sweep.model, strategy=strategy, training=training, seed=seed,
                           data_dir=self.sweep.data_dir(task), sweep=self.sweep.name, stage=stage,
                           save_model=stage in self.sweep.save_models, **values)

    def _stage_configs(self, task: str, stage: str) -> list[TrialConfig]:
        layers = self.num_layers
        specs: list[tuple[str, dict]] = []
        if stage == "single":
            specs = [("full", {})] + [("single", {"n": k}) for k in range(layers)]
        elif stage == "strategies":
            sizes = self.sweep.first_last or tuple(range(1, layers))
            specs += [(name, {"n": n}) for name in ("first", "last") for n in sizes if 1 <= n < layers]
            if self.sweep.alternate:
                specs += [(name, {"n": n} if n else {}) for name, n in alternate_family(layers)]
            specs += [("drop_middle", {"n": n}) for n in self.sweep.drop_middle if n < layers]
            specs += [("drop_ends", {"n": n}) for n in self.sweep.drop_ends if n < layers and n % 2 == 0]
            scores = self._scores(task)
            if scores is not None:
                specs += [("best", {"n": n, "scores": scores}) for n in self.sweep.best if n < layers]
                specs += [("drop_worst", {"n": n, "scores": scores}) for n in self.sweep.drop_worst if n < layers]
        elif stage == "lora":
            specs = [("full", {"lora": self.sweep.lora})]
            specs += [("mask", {"layers": kept, "lora": self.sweep.lora}) for kept in self.selection(task)]
        elif stage == "balanced":
            specs = [("mask", {"layers": kept, "training": training}) for kept, training in self._balanced(task)]
        return [self._config(task, stage, seed, name, **values) for seed in self.sweep.seeds for name, values in specs]

    def _task_rows(self, task: str, stages: tuple[str, ...]) -> list[dict]:
        hashes = {p.config_hash for s in stages for p in self.planned.get((task, s), [])}
        return [self.rows[h] for h in hashes if h in self.rows and self.rows[h]["status"] == "ok"]

    def _scores(self, task: str) -> tuple[tuple[float, float], ...] | None:
        rows = [r for r in self._task_rows(task, ("single",)) if r["strategy"] == "single"]
        try:
            scores = scores_from_rows(rows, self.num_layers)
        except FrugalrayError as error:
            self.note(f"{task}: best/drop_worst skipped: {error}")
            return None
        for note in ranking_notes(rows):
            self.note(f"{task}: best/drop_worst: {note}")
        return tuple(scores[k] for k in range(self.num_layers))

    def note(self, text: str) -> None:
        """Say it now (the log) and keep it for the end-of-sweep summary."""
        self.notes.append(text)
        print(f"frugalray: note: {text}", file=sys.stderr, flush=True)

    def selection(self, task: str) -> list[tuple[int, ...]]:
        """The study's LoRA selection: best layer set with <= lora_max_layers, and best with each lora_sizes."""
        by_layers: dict[tuple[int, ...], list[float]] = {}
        for row in self._task_rows(task, ("strategies",)):
            if row[SCORE_COLUMN] is not None:
                by_layers.setdefault(tuple(row["kept_layers"]), []).append(row[SCORE_COLUMN])
        means = {kept: statistics.mean(values) for kept, values in by_layers.items()}
        chosen = []
        rules = [lambda n: n <= self.sweep.lora_max_layers] + [lambda n, s=s: n == s for s in self.sweep.lora_sizes]
        for rule in rules:
            candidates = [k for k in means if rule(len(k))]
            if candidates:
                best = max(candidates, key=lambda k: (means[k], -len(k)))
                if best not in chosen:
                    chosen.append(best)
        return chosen

    def _balanced(self, task: str) -> list[tuple[tuple[int, ...], TrainingSettings]]:
        rows = self._task_rows(task, ("single", "strategies"))
        full = [r["train_seconds"] for r in rows if r["n_kept_layers"] == self.num_layers]
        if not full:
            self.note(f"{task}: balanced stage skipped: no successful full-model run")
            return []
        baseline = statistics.mean(full)
        out = []
        for kept in self.selection(task):
            times = [r["train_seconds"] for r in rows if tuple(r["kept_layers"]) == kept]
            epochs = balanced_epochs(baseline, statistics.mean(times), self.sweep.training.epochs)
            out.append((kept, dataclasses.replace(self.sweep.training, epochs=epochs)))
        return out

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
