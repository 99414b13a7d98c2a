"""LoRA settings: the study's defaults, and peft's own ``adapter_config.json`` read as frugalray settings.

Without ``target_modules`` the adapters go on the architecture's default modules (peft's choice by
``model_type``: ``frugalray.model.lora.default_targets``); a prepared trial names them, so rows and hashes
record the modules that trained (``query``/``value`` for BERT-like models, as the study set them by hand).

Two settings decide whether LoRA works on token tasks and are explicit and recorded: ``train_head`` (PEFT
trains the classification head only when told to; a frozen random head tags everything 'O') and the LoRA
learning rate (``TrainingSettings.lora_learning_rate``, about 10x the full fine-tuning one).

>>> LoraSettings(r=4).alpha
32

``from_json`` also reads peft's ``adapter_config.json``: its names are mapped, options that do not change
training are ignored, and options frugalray cannot honour (DoRA, trained biases...) are refused.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from frugalray._registry import FrugalrayError
from frugalray.config._fields import Settings, read_json

# Reading peft's adapter_config.json. PEFT_NAMES: its names for our settings. PEFT_INERT: keys that only
# describe the file, are checked on their own, or act only together with an option refused here. Every
# other key must hold its PEFT_NEUTRAL value (null, false or empty when not listed): any other trains
# differently from what frugalray does, and is refused.
PEFT_NAMES = {"r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "target_modules"}
PEFT_INERT = {"peft_type", "peft_version", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping",
              "task_type", "modules_to_save", "megatron_core", "qalora_group_size", "ensure_weight_tying"}
PEFT_NEUTRAL = {"bias": "none", "init_lora_weights": True}
PEFT_HEAD_TASKS = ("TOKEN_CLS", "SEQ_CLS")  # peft trains the classifier itself for these
HEAD_NAMES = ("classifier", "pre_classifier", "score", "sequence_summary")  # task heads of HF encoders


@dataclass(frozen=True)
class LoraSettings(Settings):
    """LoRA adapters (peft), applied after pruning: the study's settings are the defaults."""

    r: int = field(default=8, metadata={"help": "Rank of the LoRA update matrices."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (lora_alpha)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: tuple[str, ...] = field(default=(), metadata={
        "help": "Names of the linear layers that get adapters; none: the architecture's defaults (query, value for "
                "BERT and RoBERTa; q, v for MPNet: frugalray.model.lora.default_targets), resolved before the trial "
                "runs and recorded as such."})
    train_head: bool = field(
        default=True,
        metadata={"help": "Training of the classification head beside the adapters. On: the head trains (as peft "
                          "does for a token or sequence classification task). Off: the head stays as initialised, "
                          "which reproduces the study's LoRA collapse on token tasks."},
    )

    def check(self) -> None:
        if self.r < 1:
            raise FrugalrayError(f"LoRA r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise FrugalrayError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise FrugalrayError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if any(not name.strip() for name in self.target_modules):
            raise FrugalrayError(f"LoRA target_modules {list(self.target_modules)} has an empty name; name linear "
                                 f"layers, e.g. query, value")

    @classmethod
    def from_json(cls, path: str | Path) -> "LoraSettings":
        """Settings from a JSON file: frugalray's keys (``lora_alpha``/``lora_dropout`` work too) or peft's
        ``adapter_config.json`` (recognised by its ``peft_type``)."""
        values = read_json(path, "LoRA settings")
        if isinstance(values, dict) and "peft_type" in values:
            return cls.from_dict(_from_peft(values, str(path)), source=str(path))
        renames = {"lora_alpha": "alpha", "lora_dropout": "dropout"}
        values = {renames.get(k, k): v for k, v in values.items()} if isinstance(values, dict) else values
        return cls.from_dict(values, source=str(path))

    def as_record(self) -> dict:
        return asdict(self) | {"target_modules": list(self.target_modules)}


def _from_peft(values: dict, source: str) -> dict:
    """frugalray's settings from a peft LoraConfig's keys; a key that would train otherwise is an error."""
    if values["peft_type"] != "LORA":
        raise FrugalrayError(f"{source}: peft_type {values['peft_type']!r} is not LoRA; frugalray trains LoRA only")
    task_type = values.get("task_type")
    if task_type not in (None, *PEFT_HEAD_TASKS):
        raise FrugalrayError(f"{source}: task_type {task_type!r} is not a classification task; frugalray trains "
                             f"token and sequence classifiers: task_type {' or '.join(PEFT_HEAD_TASKS)} or null")
    if isinstance(values.get("target_modules"), str):
        raise FrugalrayError(f"{source}: target_modules {values['target_modules']!r} is a peft pattern matched against "
                             f"whole module paths; give the list of linear layer names, e.g. [\"query\", \"value\"]")
    saved = values.get("modules_to_save") or []
    others = [name for name in saved if name not in HEAD_NAMES]
    if others:
        raise FrugalrayError(f"{source}: modules_to_save {others}: frugalray trains the task head only "
                             f"({', '.join(HEAD_NAMES)}); remove the others")
    for key, value in values.items():
        if key in PEFT_NAMES or key in PEFT_INERT:
            continue
        if (value != PEFT_NEUTRAL[key]) if key in PEFT_NEUTRAL else bool(value):
            neutral = f"set it to {json.dumps(PEFT_NEUTRAL[key])} or remove it" if key in PEFT_NEUTRAL else "remove it"
            raise FrugalrayError(f"{source}: peft option {key}={json.dumps(value)} changes training in a way frugalray "
                                 f"does not (it trains plain LoRA: r, lora_alpha, lora_dropout, target_modules and "
                                 f"the task head); {neutral}")
    settings = {ours: values[theirs] for theirs, ours in PEFT_NAMES.items() if theirs in values}
    if settings.get("target_modules", ()) is None:  # peft's null: its defaults for the architecture, as ours ()
        del settings["target_modules"]
    # As peft does: the head trains when modules_to_save names it or the task type makes peft add it.
    return settings | {"train_head": bool(saved) or task_type in PEFT_HEAD_TASKS}
