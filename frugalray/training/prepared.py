"""A trial prepared, not yet trained: its data read, its layers resolved and its configuration hash computed.

Preparing checks every input of a trial in a second or two, so that bad input fails before a model loads.

>>> prepare_trial(TrialConfig(task="demo_pos", strategy="first", n=2)).kept_layers  # doctest: +SKIP
(0, 1)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

from frugalray.config import TrialConfig
from frugalray.data.spec import TaskData
from frugalray.data.tasks import load_task
from frugalray.strategies import kept_layers
from frugalray.training.identity import config_hash

__all__ = ["PreparedTrial", "layer_count", "prepare_trial"]


@dataclass(frozen=True)
class PreparedTrial:
    """A validated trial: data read, layer count known, kept layers resolved, hash computed."""

    config: TrialConfig
    task: TaskData
    num_layers: int
    kept_layers: tuple[int, ...]
    config_hash: str


@functools.cache
def layer_count(model: str) -> int:
    """Layers of a model, read from its config once per process."""
    from frugalray.model.loading import load_model_config
    from frugalray.model.surgery import num_layers

    return num_layers(load_model_config(model))


@functools.cache
def lora_defaults(model: str) -> tuple[str, ...]:
    """The LoRA target modules of a model's architecture (``frugalray.model.lora.default_targets``), read from
    its config once per process."""
    from frugalray.model.loading import load_model_config
    from frugalray.model.lora import default_targets

    return default_targets(load_model_config(model))


def prepare_trial(config: TrialConfig, task: TaskData | None = None) -> PreparedTrial:
    """Validate a config without training: raises FrugalrayError on any bad input. LoRA without target modules
    gets its architecture's, so that the row and the hash name the modules that train."""
    task = task or load_task(config.task, config.data_dir)
    count = layer_count(config.model)
    if config.lora and not config.lora.target_modules:
        config = replace(config, lora=replace(config.lora, target_modules=lora_defaults(config.model)))
    kept = kept_layers(config.strategy, count, n=config.n, layers=config.layers, scores=config.scores)
    return PreparedTrial(config, task, count, kept, config_hash(config, kept, task.fingerprint))
