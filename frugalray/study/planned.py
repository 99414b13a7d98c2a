"""A planned trial, as a planner (a sweep's ``StudyPlan``, a ``MaskSearch``) hands it to the cluster.

A planner has ``next()`` (a ``Planned`` trial, None to wait for running ones, or ``DONE``) and
``finish(planned, result)``; ``frugalray.cluster.driver`` runs any planner on Ray Tune.
"""

from __future__ import annotations

from dataclasses import dataclass

from frugalray.config import TrialConfig

DONE = "done"  # what next() returns once nothing is left to plan and nothing runs


@dataclass
class Planned:
    config: TrialConfig
    config_hash: str  # the driver's; the worker checks that it prepares the same trial
    kept_layers: tuple[int, ...]
    task: str  # the task as the planner names it (a registered name or a task file)
    stage: str
    task_fingerprint: str
    full_fidelity: bool = False  # trains to the end whatever an early-stopping scheduler says
