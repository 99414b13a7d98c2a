"""frugalray: which encoder layers can a task do without, at what cost, for how much speed."""

from frugalray._registry import FrugalrayError
from frugalray.lora import LoraSettings
from frugalray.results import ResultsStore
from frugalray.strategies import STRATEGIES, balanced_epochs, kept_layers
from frugalray.tasks import TASKS, TaskSpec, load_task, register_task
from frugalray.training import TrainingSettings
from frugalray.trial import TrialConfig, __version__, execute_trial, prepare_trial, run_trial

__all__ = [
    "FrugalrayError", "LoraSettings", "ResultsStore", "STRATEGIES", "TASKS", "TaskSpec", "TrainingSettings",
    "TrialConfig", "__version__", "balanced_epochs", "execute_trial", "kept_layers", "load_task",
    "prepare_trial", "register_task", "run_trial",
]
