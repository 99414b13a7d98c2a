"""frugalray: which encoder layers can a task do without, at what cost, for how much speed.

The public names below load on first use, so that reading results (``frugalray results``, ``report``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib

from frugalray._version import __version__

_PUBLIC = {
    "FrugalrayError": "frugalray._registry",
    "LoraSettings": "frugalray.config",
    "SearchConfig": "frugalray.config",
    "SweepConfig": "frugalray.config",
    "TrialResult": "frugalray.results.schema",
    "ResultsStore": "frugalray.results.store",
    "STRATEGIES": "frugalray.strategies",
    "balanced_epochs": "frugalray.strategies",
    "kept_layers": "frugalray.strategies",
    "TASKS": "frugalray.data.tasks",
    "TaskSpec": "frugalray.data.spec",
    "load_task": "frugalray.data.tasks",
    "register_task": "frugalray.data.tasks",
    "TrainingSettings": "frugalray.config",
    "TrialConfig": "frugalray.config",
    "execute_trial": "frugalray.training.trial",
    "prepare_trial": "frugalray.training.prepared",
    "run_trial": "frugalray.training.trial",
}
__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'frugalray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
