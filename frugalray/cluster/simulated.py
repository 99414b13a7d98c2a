"""A search run on a virtual clock instead of Ray: the same planner (``MaskSearch``), the same Tune searcher
(``driver.PlannerSearcher``) and the same scheduler (``halving.Halving``, Ray Tune's ASHA), with the Tune
controller's loop replaced by events in the order of a clock that only the trials' recorded costs move.

What it is for: replaying a search against a table of recorded trials (``benchmarks/search_efficiency.py``)
so that a given sampler seed reprints the same figures. On Ray the order in which concurrent trials report
depends on wall-clock timing; here a trial's checkpoint at step s comes at its start + s x its recorded
seconds per step + the dev evaluations before it, ties broken by the order trials started, so the whole run
is a function of the table and the seed.

Each trial runs at once through ``execute_trial`` with the given runner (a replay of the table), its
checkpoint reports collected; the clock then hands them to the scheduler and the searcher one at a time, in
time order, as Tune would, and a trial the scheduler stops leaves the row it reported there. With
``resume``, a stopped mask the search promotes goes on from the step where it stopped (its earlier
checkpoints are not trained or scored again), as a search whose trials keep their state would.

``runs`` lists every trial run: its mask, status, the steps it trained in this run, where it resumed from,
when it started and ended on the clock, and its cost over time (training steps plus dev evaluations, in
steps of that mask) for counting the compute of trials still running at any moment.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
from types import SimpleNamespace

from ray.tune.search import Searcher
from ray.tune.schedulers import TrialScheduler

from frugalray.cluster.driver import PlannerSearcher, to_report
from frugalray.results.schema import TrialResult
from frugalray.results.store import ResultsStore
from frugalray.study.planned import Planned
from frugalray.training.prepared import prepare_trial
from frugalray.training.trial import execute_trial


@dataclasses.dataclass
class Timing:
    """A trial's cost on the clock: seconds per training step, and seconds per dev evaluation."""

    step_seconds: float
    dev_eval_seconds: float

    @property
    def eval_steps(self) -> float:
        """One dev evaluation, in training steps of the same trial."""
        return self.dev_eval_seconds / self.step_seconds if self.step_seconds else 0.0


def recorded_timing(row: TrialResult, planned: Planned) -> Timing:
    """A replayed trial's timing from its recorded row (``timing_of``, dev's share from the task's splits)."""
    return timing_of(row, dev_share(planned.config.task, planned.config.data_dir))


@functools.lru_cache(maxsize=16)
def dev_share(task: str, data_dir: str | None = None) -> float:
    """Dev's share of a task's dev and test examples (what scoring dev costs of a final evaluation)."""
    from frugalray.data.tasks import load_task

    loaded = load_task(task, data_dir)
    return len(loaded.dev) / max(1, len(loaded.dev) + len(loaded.test))


def timing_of(row, dev_share: float) -> Timing:
    """A trial's timing from its row: training seconds per step, and a dev evaluation's seconds (recorded per
    checkpoint where the row has ``checkpoint_eval_seconds``; otherwise the final evaluation's seconds, shared
    between dev and test by ``dev_share``, dev's share of their examples)."""
    step = (row.get("train_seconds") or 0.0) / max(1, row.get("train_steps") or 1)
    checkpoints = row.get("checkpoint_eval_seconds")
    if checkpoints:
        return Timing(step, sum(checkpoints) / len(checkpoints))
    return Timing(step, (row.get("eval_seconds") or 0.0) * dev_share)


def depth_timing(rows: list[dict], dev_share: float):
    """A timing by depth: each kept-layer count's median seconds per step and per dev evaluation over ``rows``
    (a recorded table), so that one trial recorded while the machine was busy does not move the clock."""
    import statistics

    by_depth: dict[int, list[Timing]] = {}
    for row in rows:
        if row["status"] == "ok" and row.get("train_steps"):
            by_depth.setdefault(len(row["kept_layers"]), []).append(timing_of(row, dev_share))
    medians = {depth: Timing(statistics.median(t.step_seconds for t in timings),
                             statistics.median(t.dev_eval_seconds for t in timings))
               for depth, timings in by_depth.items()}

    def timing(row, planned: Planned) -> Timing:
        return medians.get(len(planned.kept_layers)) or timing_of(row, dev_share)

    return timing


class VirtualRun:
    """Runs a planner like ``driver.run_planner`` (same signature), on a virtual clock with ``slots`` trials at
    once; afterwards ``runs`` holds every trial run (see the module's doc)."""

    def __init__(self, slots: int = 2, resume: bool = False, timing=recorded_timing):
        if slots < 1:
            raise ValueError(f"slots must be >= 1 (got {slots})")
        self.slots, self.resume, self.timing = slots, resume, timing
        self.runs: list[dict] = []

    def __call__(self, planner, *, name: str, results: str, demand, runner: str, max_concurrent=None,
                 callbacks=None, scheduler=None, rung_score: str = "dev_f1", **ignored) -> None:
        from frugalray.cluster.driver import _import

        run = _Clock(planner, PlannerSearcher(planner, {"results": results, "rung_score": rung_score}, demand),
                     scheduler, ResultsStore(results), _import(runner), rung_score, self)
        run.go()


class _Clock:
    def __init__(self, planner, searcher, scheduler, store, runner, rung, owner: VirtualRun):
        self.planner, self.searcher, self.scheduler, self.store = planner, searcher, scheduler, store
        self.runner, self.rung, self.owner = runner, rung, owner
        self.events: list = []  # (time, sequence, trial id, report or None for the end)
        self.sequence = itertools.count()
        self.trials: dict[str, dict] = {}
        self.now, self.finished = 0.0, False

    def go(self) -> None:
        self._fill()
        while self.events:
            time, _, trial_id, report = heapq.heappop(self.events)
            if trial_id not in self.trials:
                continue  # stopped earlier: its later events never happen
            self.now = time
            self._deliver(trial_id, report)
            self._fill()

    def _fill(self) -> None:
        while not self.finished and len(self.trials) < self.owner.slots:
            trial_id = f"virtual_{len(self.owner.runs) + len(self.trials):05d}"
            config = self.searcher.suggest(trial_id)
            if config is Searcher.FINISHED:
                self.finished = True
            elif config is None:
                if not self.trials:
                    raise RuntimeError("the planner waits for running trials, but none is running")
                return
            else:
                self._start(trial_id, config)

    def _start(self, trial_id: str, config: dict) -> None:
        planned: Planned = self.searcher.running[trial_id]
        reports: list[TrialResult] = []
        prepared = prepare_trial(planned.config, getattr(self.planner, "task", None))  # the search's loaded task
        result = execute_trial(planned.config, None, prepared=prepared, append=False, runner=self.runner,
                               report=reports.append)
        result = result.replace(config_hash=planned.config_hash)
        timing = self.owner.timing(result, planned) if result.status == "ok" else Timing(0.0, 0.0)
        start_step = self._resumed_from(planned)
        trial = SimpleNamespace(trial_id=trial_id, config=config)
        if self.scheduler is not None:
            self.scheduler.on_trial_add(None, trial)
        clock, cost, done, timeline = self.now, 0.0, start_step, [(self.now, 0.0)]
        for report in reports:
            step = report["train_steps"]
            if step <= start_step:
                continue
            clock += (step - done) * timing.step_seconds + timing.dev_eval_seconds
            cost += (step - done) + timing.eval_steps
            done = step
            timeline.append((clock, cost))
            heapq.heappush(self.events, (clock, next(self.sequence), trial_id, report))
        if result.status == "ok":
            steps = result["train_steps"]
            clock += (steps - done) * timing.step_seconds + timing.dev_eval_seconds
            cost += (steps - done) + timing.eval_steps  # its final dev score, as every finished trial's
            timeline.append((clock, cost))
        heapq.heappush(self.events, (clock, next(self.sequence), trial_id, None))
        self.trials[trial_id] = {"trial": trial, "planned": planned, "result": result, "timeline": timeline,
                                 "start": self.now, "resumed_from": start_step}

    def _resumed_from(self, planned: Planned) -> int:
        """The step a promoted mask goes on from (0: from the start)."""
        if not (self.owner.resume and planned.full_fidelity):
            return 0
        stopped = self.planner.stopped.get(planned.config_hash)
        return int(stopped["train_steps"]) if stopped else 0

    def _deliver(self, trial_id: str, report: TrialResult | None) -> None:
        """One report, handled as Tune's controller does: the scheduler decides; the searcher hears the result
        unless the trial stops there; a stopped or finished trial completes with it."""
        entry = self.trials[trial_id]
        trial, final = entry["trial"], report is None
        if final:
            self.store.append(entry["result"])  # as the worker does, before its last report
        row = entry["result"] if final else report
        message = to_report(row, self.rung)
        action = (self.scheduler.on_trial_result(None, trial, message) if self.scheduler is not None
                  else TrialScheduler.CONTINUE)
        if action != TrialScheduler.STOP:
            self.searcher.on_trial_result(trial_id, message)
        if action == TrialScheduler.STOP or final:
            if self.scheduler is not None:
                self.scheduler.on_trial_complete(None, trial, message)
            self.searcher.on_trial_complete(trial_id, message)  # a stopped trial's row is stored there
            self._close(trial_id, row, row.status if final else "stopped")

    def _close(self, trial_id: str, row: TrialResult, status: str) -> None:
        entry = self.trials.pop(trial_id)
        timeline = [(t, c) for t, c in entry["timeline"] if t <= self.now]
        steps = int(row.get("train_steps") or 0) - entry["resumed_from"] if status != "failed" else 0
        self.owner.runs.append({
            "kept_layers": list(entry["planned"].kept_layers), "status": status, "train_steps": steps,
            "resumed_from": entry["resumed_from"], "dev_f1": row.get("dev_f1"), "start": entry["start"],
            "end": self.now, "timeline": [[round(t, 6), round(c, 6)] for t, c in timeline]})
