"""Live progress of a sweep or search, as a Ray Tune callback: trials done, running and failed per task and
stage, with an ETA from measured trial times; the full table at the end.

>>> run_planner(plan, ..., callbacks=[Progress(plan.counts)])  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from ray.tune import Callback

from frugalray.study.stages import STAGES

Counts = Callable[[], dict[tuple[str, str], dict[str, int]]]  # (task, stage) -> planned, done, failed


def _stage_order(stage: str) -> int:
    names = [s.name for s in STAGES.entries()]
    return names.index(stage) if stage in names else len(names)


class Progress(Callback):
    """Prints a one-line status at most every ``every_s`` seconds, and the table per (task, stage) at the end."""

    def __init__(self, counts: Counts, every_s: float = 5.0, stream=None):
        self.counts, self.every_s, self.stream = counts, every_s, stream or sys.stdout
        self.start = time.monotonic()
        self.running: dict[tuple[str, str], int] = {}
        self.started_at: dict[str, float] = {}
        self.durations: list[float] = []
        self.last = 0.0

    def __getstate__(self) -> dict:  # Tune saves its callbacks; an open stream does not pickle
        return {k: v for k, v in self.__dict__.items() if k != "stream"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, stream=sys.stdout)

    @staticmethod
    def _key(trial) -> tuple[str, str]:
        return trial.config["task"], trial.config["stage"]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        key = self._key(trial)
        self.running[key] = self.running.get(key, 0) + 1
        self.started_at[trial.trial_id] = time.monotonic()
        self.show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finished(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finished(trial)

    def on_experiment_end(self, trials, **info) -> None:
        self.show(force=True)

    def _finished(self, trial) -> None:
        key = self._key(trial)
        self.running[key] = max(0, self.running.get(key, 0) - 1)
        if trial.trial_id in self.started_at:
            self.durations.append(time.monotonic() - self.started_at.pop(trial.trial_id))
        self.show()

    def lines(self) -> list[str]:
        """One line per (task, stage): done/planned, running, failed."""
        out = []
        for (task, stage), c in sorted(self.counts().items(), key=lambda kv: (kv[0][0], _stage_order(kv[0][1]))):
            running = self.running.get((task, stage), 0)
            out.append(f"  {task:16} {stage:11} {c['done']:4}/{c['planned']:<4} done  {running:3} running  "
                       f"{c['failed']:3} failed")
        return out

    def eta(self) -> str:
        remaining = sum(c["planned"] - c["done"] - c["failed"] for c in self.counts().values())
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
        counts = self.counts()
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
