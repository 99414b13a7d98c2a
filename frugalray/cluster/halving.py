"""Early stopping for a mask search: Ray Tune's ASHAScheduler (asynchronous successive halving, Li et al.
2020) on a dev score, with rungs counted in training steps.

A search trial scores dev every ``grace_steps`` optimizer steps and reports it (``train_steps``, ``dev_f1``,
``dev_eval_loss``); the scheduler lets a trial go on past a rung (grace_steps x reduction_factor**k) only if its
rung score there (``SearchConfig.rung_score``: dev F1, dev loss, or dev F1 with ties broken by dev loss) is among
the best 1/reduction_factor of those that reached it so far. Rungs count steps, not reports, and the
first comes after warm-up: a linear warm-up's early scores say little. The top rung is the whole training.
A trial planned at full fidelity (a stopped mask the search promoted) is never stopped.

>>> halving_scheduler(SearchConfig(task="demo_pos", halving=True), max_steps=315)  # doctest: +SKIP
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from frugalray.config import SearchConfig
from frugalray.study.masks import grace_steps, rungs

TIME_ATTR, METRIC = "train_steps", "rung_score"  # every trial reports its rung score (``driver.to_report``)


class Halving(ASHAScheduler):
    """``ASHAScheduler`` on ``train_steps`` and ``rung_score``; trials whose config says ``full_fidelity`` go on."""

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if trial.config.get("full_fidelity"):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def __init__(self, **options):
        super().__init__(**options)
        self._rung_options = (options["grace_period"], options["reduction_factor"], options["max_t"])

    def rungs(self) -> list[int]:
        """The steps below the whole training where a trial may be stopped (ASHA's milestones): a search trial
        keeps its state there, to go on from if the search promotes it."""
        return rungs(*self._rung_options)


def halving_scheduler(config: SearchConfig, max_steps: int) -> Halving:
    """The scheduler of a halving search whose trials train ``max_steps`` steps."""
    return Halving(time_attr=TIME_ATTR, metric=METRIC, mode="max", grace_period=grace_steps(config, max_steps),
                   reduction_factor=config.reduction_factor, max_t=max_steps, brackets=1)
