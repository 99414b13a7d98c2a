"""LoRA through peft, applied after pruning.

The study's settings are the defaults (r 8, alpha 32, dropout 0.1, query/value). Two settings decide
whether LoRA works on token tasks and are explicit and recorded: ``train_head`` (PEFT trains the
classification head only when told to; a frozen random head tags everything 'O') and the LoRA learning
rate (``TrainingSettings.lora_learning_rate``, about 10x the full fine-tuning one).

>>> LoraSettings.from_json("lora.json")  # doctest: +SKIP
LoraSettings(r=8, alpha=32, dropout=0.1, target_modules=('query', 'value'), train_head=True)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from frugalray._config import check_fields, from_dict, read_json
from frugalray._registry import FrugalrayError

# peft calls a transformers method that transformers 5 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class LoraSettings:
    r: int = field(default=8, metadata={"help": "Rank of the LoRA update matrices."})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (lora_alpha)."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA branch."})
    target_modules: tuple[str, ...] = field(
        default=("query", "value"), metadata={"help": "Names of the linear layers that get adapters."}
    )
    train_head: bool = field(
        default=True,
        metadata={"help": "Train the classification head (False reproduces the study's collapse)."},
    )

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.r < 1:
            raise FrugalrayError(f"LoRA r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise FrugalrayError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise FrugalrayError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise FrugalrayError("LoRA target_modules is empty; name at least one linear layer, e.g. query")

    @classmethod
    def from_dict(cls, values: dict, source: str = "LoRA settings") -> "LoraSettings":
        return from_dict(cls, values, source)

    @classmethod
    def from_json(cls, path: str | Path) -> "LoraSettings":
        values = read_json(path, "LoRA settings")
        # Accept peft's own key names too, so a peft adapter_config.json-style file works.
        renames = {"lora_alpha": "alpha", "lora_dropout": "dropout"}
        values = {renames.get(k, k): v for k, v in values.items()}
        return cls.from_dict(values, source=str(path))

    def as_record(self) -> dict:
        return asdict(self) | {"target_modules": list(self.target_modules)}


def head_modules(model: nn.Module) -> list[str]:
    """Names of the task head: the model's direct children other than the encoder (and dropout)."""
    base = model.base_model_prefix
    return [
        name for name, child in model.named_children()
        if name != base and any(True for _ in child.parameters())
    ]


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap a (pruned) model with LoRA adapters; the head trains unless ``train_head`` is False."""
    from peft import LoraConfig, get_peft_model

    linear_names = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
    missing = [t for t in settings.target_modules if t not in linear_names]
    if missing:
        raise FrugalrayError(
            f"LoRA target module(s) {missing} are not in {type(model).__name__}; its linear layers are: "
            f"{', '.join(linear_names)}"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        # No task_type: head training is decided here, explicitly, not by PEFT's per-task defaults.
        modules_to_save=head_modules(model) if settings.train_head else None,
    )
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """The plain model with LoRA weights merged in (a no-op for a model without adapters)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
