"""frugalray: which encoder layers can a task do without, at what cost, for how much speed.

The public names below load on first use, so that reading results (``frugalray results``, ``report``)
does not pay for importing torch.
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "FrugalrayError": "frugalray._registry",
    "LoraSettings": "frugalray.lora",
    "ResultsStore": "frugalray.results",
    "STRATEGIES": "frugalray.strategies",
    "balanced_epochs": "frugalray.strategies",
    "kept_layers": "frugalray.strategies",
    "TASKS": "frugalray.tasks",
    "TaskSpec": "frugalray.tasks",
    "load_task": "frugalray.tasks",
    "register_task": "frugalray.tasks",
    "TrainingSettings": "frugalray.config",
    "TrialConfig": "frugalray.trial",
    "__version__": "frugalray.trial",
    "execute_trial": "frugalray.trial",
    "prepare_trial": "frugalray.trial",
    "run_trial": "frugalray.trial",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'frugalray' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
