"""Every setting of frugalray, as frozen dataclasses whose fields carry their help text and whose checks
run on creation: how a trial trains (``TrainingSettings``, ``LoraSettings``), what runs (``TrialConfig``,
``SweepConfig``, ``SearchConfig``) and what a trial asks of the cluster (``ResourceRule``).

No torch and no Ray here: reading or checking settings is instant. ``from_dict`` builds any of them from
plain data (sweep files, JSON, a row's ``config_json``), nested settings included, and refuses unknown keys
and values of the wrong type; the command line is built from the same fields (``frugalray.cli``).

>>> SweepConfig.from_dict({"tasks": ["demo_pos"], "training": {"epochs": 5}}).training.epochs
5
"""

from frugalray.config._fields import Settings, check_fields, from_dict, read_json
from frugalray.config.lora import LoraSettings
from frugalray.config.recovery import RecoverySettings
from frugalray.config.search import OBJECTIVES, PRIORS, RUNG_SCORES, SAMPLERS, SearchConfig
from frugalray.config.study import ResourceRule, SweepConfig, TrialConfig
from frugalray.config.training import DTYPES, LR_SCHEDULES, RECIPE_HELP, RECIPES, TRAINER_RECIPE, TrainingSettings, upgrade_training

__all__ = [
    "DTYPES", "LR_SCHEDULES", "OBJECTIVES", "PRIORS", "RECIPE_HELP", "RECIPES", "RUNG_SCORES", "SAMPLERS", "TRAINER_RECIPE",
    "LoraSettings", "RecoverySettings", "ResourceRule", "SearchConfig", "Settings",
    "SweepConfig", "TrainingSettings", "TrialConfig", "check_fields", "from_dict", "read_json", "upgrade_training",
]
