"""LoRA through peft, applied after pruning (settings: ``frugalray.config.LoraSettings``).

>>> model = apply_lora(prune_layers(model, [0, 1]), LoraSettings())  # doctest: +SKIP
"""

from __future__ import annotations

import warnings

from torch import nn

from frugalray._registry import FrugalrayError
from frugalray.config import LoraSettings

# peft calls a transformers method that transformers 5 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


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
