"""Live progress of a sweep or search, as a Ray Tune callback: per task, trials done out of those planned so
far, running and failed, an ETA from the measured trial times, and the best dev F1 so far with the strategy
that reached it.

On a terminal it is one ``rich`` progress bar per task, redrawn in place; elsewhere (CI logs, ``ray
submit``) a plain line at most every ``every_s`` seconds. The table per task and stage ends both.

>>> run_planner(plan, ..., callbacks=[Progress(plan.counts)])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable

from ray.tune import Callback

from frugalray.study.stages import STAGES

Counts = Callable[[], dict[tuple[str, str], dict[str, int]]]  # (task, stage) -> planned, done, failed


def _stage_order(stage: str) -> int:
    names = [s.name for s in STAGES.entries()]
    return names.index(stage) if stage in names else len(names)


def _minutes(seconds: float | None) -> str:
    return "ETA ?" if seconds is None else f"ETA {seconds / 60:.1f} min"


class Progress(Callback):
    """Per-task progress (a live bar on a terminal, plain lines elsewhere) and the table at the end.

    ``live``: None chooses from the stream (a terminal gets the bar); ``every_s``: the plain lines' pace;
    ``clock``: the seconds that trial times, the ETA and the pace are measured in (a test's own)."""

    def __init__(self, counts: Counts, every_s: float = 5.0, stream=None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.counts, self.every_s, self.stream, self.clock = counts, every_s, stream or sys.stdout, clock
        self.live = live if live is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = clock()
        self.running: dict[tuple[str, str], int] = {}
        self.started_at: dict[str, float] = {}
        self.durations: list[float] = []
        self.slots = 1  # the most trials seen running at once: how many run side by side
        self.best: dict[str, tuple[float, str]] = {}  # task -> (dev F1, strategy label)
        self.last: float | None = None  # when the last plain line was printed
        self._bars = None  # rich.progress.Progress while live
        self._bar_ids: dict[str, int] = {}

    def __getstate__(self) -> dict:  # Tune saves its callbacks; an open stream or a live display does not pickle
        return {k: v for k, v in self.__dict__.items() if k not in ("stream", "_bars", "_bar_ids")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, stream=sys.stdout, _bars=None, _bar_ids={})

    @staticmethod
    def _key(trial) -> tuple[str, str]:
        return trial.config["task"], trial.config["stage"]

    # -- Tune's events ------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        key = self._key(trial)
        self.running[key] = self.running.get(key, 0) + 1
        self.slots = max(self.slots, sum(self.running.values()))
        self.started_at[trial.trial_id] = self.clock()
        self.show()

    def on_step_end(self, iteration, trials, **info) -> None:
        """Running trials as Tune holds them (its start events can come before a trial's actor runs it)."""
        running: dict[tuple[str, str], int] = {}
        for trial in trials:
            if trial.status == "RUNNING":
                running[self._key(trial)] = running.get(self._key(trial), 0) + 1
        if running != self.running:
            self.running = running
            self.slots = max(self.slots, sum(running.values()))
            self.show()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.record(trial.config["task"], getattr(trial, "last_result", None) or {})
        self._finished(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finished(trial)

    def on_experiment_end(self, trials, **info) -> None:
        self.show(force=True)

    def _finished(self, trial) -> None:
        key = self._key(trial)
        self.running[key] = max(0, self.running.get(key, 0) - 1)
        if trial.trial_id in self.started_at:
            self.durations.append(self.clock() - self.started_at.pop(trial.trial_id))
        self.show()

    def record(self, task: str, result: dict) -> None:
        """Keep the task's best dev F1 (test F1 when a row has none) from a trial's reported result."""
        try:
            row = json.loads(result["row_json"]) if result.get("row_json") else {}
        except ValueError:
            row = {}
        if row.get("status", "ok") != "ok":
            return
        score = row.get("dev_f1") if row.get("dev_f1") is not None else result.get("dev_f1", result.get("f1"))
        if score is None:
            return
        strategy = row.get("strategy") or "?"
        label = strategy if row.get("strategy_n") is None else f"{strategy}_{row['strategy_n']}"
        label += " + LoRA" if row.get("lora") else ""
        if task not in self.best or score > self.best[task][0]:
            self.best[task] = (float(score), label)

    # -- what is shown --------------------------------------------------------------------------------
    def tasks(self) -> dict[str, dict[str, int]]:
        """Per task, over its stages: planned, done, failed, running."""
        out: dict[str, dict[str, int]] = {}
        for (task, stage), c in self.counts().items():
            mine = out.setdefault(task, {"planned": 0, "done": 0, "failed": 0, "running": 0})
            for name in ("planned", "done", "failed"):
                mine[name] += c[name]
            mine["running"] += self.running.get((task, stage), 0)
        return dict(sorted(out.items()))

    def eta_seconds(self, remaining: int) -> float | None:
        """Seconds for ``remaining`` trials at the measured mean trial time, ``slots`` at a time."""
        if not self.durations:
            return None
        return remaining * (sum(self.durations) / len(self.durations)) / self.slots

    def eta(self) -> str:
        remaining = sum(c["planned"] - c["done"] - c["failed"] for c in self.counts().values())
        seconds = self.eta_seconds(remaining)
        return "?" if seconds is None or not remaining else f"{seconds / 60:.1f} min"

    def status(self, task: str, c: dict[str, int]) -> str:
        """``2 running, 0 failed, ETA 1.5 min, best dev F1 0.8123 (best_3)``."""
        remaining = c["planned"] - c["done"] - c["failed"]
        parts = [f"{c['running']} running", f"{c['failed']} failed",
                 "finished" if not remaining else _minutes(self.eta_seconds(remaining))]
        if task in self.best:
            parts.append(f"best dev F1 {self.best[task][0]:.4f} ({self.best[task][1]})")
        return ", ".join(parts)

    def lines(self) -> list[str]:
        """One line per (task, stage): done/planned, running, failed."""
        out = []
        for (task, stage), c in sorted(self.counts().items(), key=lambda kv: (kv[0][0], _stage_order(kv[0][1]))):
            running = self.running.get((task, stage), 0)
            out.append(f"  {task:16} {stage:11} {c['done']:4}/{c['planned']:<4} done  {running:3} running  "
                       f"{c['failed']:3} failed")
        return out

    def show(self, force: bool = False) -> None:
        """Redraw the bars (live), or print a plain line at most every ``every_s``; the table when ``force``."""
        if self.live:
            self._draw()
            if force:
                self._close()
        else:
            now = self.clock()
            if not force and self.last is not None and now - self.last < self.every_s:
                return
            self.last = now
            tasks = self.tasks()
            done, failed = sum(c["done"] for c in tasks.values()), sum(c["failed"] for c in tasks.values())
            planned, running = sum(c["planned"] for c in tasks.values()), sum(c["running"] for c in tasks.values())
            per_task = "; ".join(f"{task} {c['done'] + c['failed']}/{c['planned']}: {self.status(task, c)}"
                                 for task, c in tasks.items())
            print(f"[frugalray {now - self.start:5.0f}s] {done}/{planned} done, {running} running, {failed} failed, "
                  f"ETA {self.eta()} | {per_task}", file=self.stream, flush=True)
        if force:
            print("\n".join(self.lines()), file=self.stream, flush=True)

    def _draw(self) -> None:
        if self._bars is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn

            console = Console(file=self.stream, force_terminal=True)
            self._bars = Bars(TextColumn("{task.description:16}"), BarColumn(), MofNCompleteColumn(),
                              TextColumn("{task.fields[status]}"), console=console, refresh_per_second=4)
            self._bars.start()
        for task, c in self.tasks().items():
            if task not in self._bar_ids:
                self._bar_ids[task] = self._bars.add_task(task, total=c["planned"], status="")
            self._bars.update(self._bar_ids[task], total=c["planned"], completed=c["done"] + c["failed"],
                              status=self.status(task, c))
        self._bars.refresh()

    def _close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars, self._bar_ids = None, {}
