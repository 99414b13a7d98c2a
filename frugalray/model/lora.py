"""LoRA through peft, applied after pruning (settings: ``frugalray.config.LoraSettings``).

Without ``target_modules`` the adapters go where peft puts them by default for the architecture
(``config.model_type``): peft's own table, and frugalray's for the encoders it runs that peft's table lacks,
with peft's choice for BERT (the attention's query and value projections). ``frugalray.training.prepared``
resolves them before a trial runs, so its row and configuration hash name the modules that trained.

>>> default_targets(AutoConfig.from_pretrained("mpnet-folder"))  # doctest: +SKIP
('q', 'v')
>>> model = apply_lora(prune_layers(model, [0, 1]), LoraSettings())  # doctest: +SKIP
"""

from __future__ import annotations

import warnings

from torch import nn

from frugalray._registry import FrugalrayError
from frugalray.config import LoraSettings

# peft calls a transformers method that transformers 5 deprecates; nothing a user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

# Query and value projections of encoders peft's default table leaves out (peft 0.21), named as in transformers.
OWN_DEFAULTS = {"camembert": ("query", "value"), "distilbert": ("q_lin", "v_lin"), "flaubert": ("q_lin", "v_lin"),
                "mpnet": ("q", "v"), "xlm": ("q_lin", "v_lin")}


def default_targets(config) -> tuple[str, ...]:
    """The LoRA target modules peft would choose for ``config``'s architecture (its ``model_type``), else
    frugalray's (``OWN_DEFAULTS``); an architecture neither knows is an error naming its linear layers."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

    kind = getattr(config, "model_type", None)
    targets = PEFT_DEFAULTS.get(kind)
    if isinstance(targets, (list, tuple)):  # a few entries are patterns over module paths: not layer names
        return tuple(targets)
    if kind in OWN_DEFAULTS:
        return OWN_DEFAULTS[kind]
    raise FrugalrayError(
        f"LoRA has no default target modules for model type {kind!r} (neither peft's table nor frugalray's knows "
        f"it); name them with --lora.target-modules, from its linear layers: {', '.join(_linear_names_of(config))}")


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's Linear layers (what ``target_modules`` names)."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)})


def _linear_names_of(config) -> list[str]:
    import torch
    from transformers import AutoModel

    with torch.device("meta"):  # the modules only, no memory for the weights
        return linear_names(AutoModel.from_config(config))


def head_modules(model: nn.Module) -> list[str]:
    """Names of the task head: the model's direct children other than the encoder (and dropout)."""
    base = model.base_model_prefix
    return [
        name for name, child in model.named_children()
        if name != base and any(True for _ in child.parameters())
    ]


def apply_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap a (pruned) model with LoRA adapters, on ``settings.target_modules`` or, without them, on the
    architecture's defaults (``default_targets``); the head trains unless ``train_head`` is False."""
    from peft import LoraConfig, get_peft_model

    targets = settings.target_modules or default_targets(model.config)
    names = linear_names(model)
    missing = [t for t in targets if t not in names]
    if missing:
        raise FrugalrayError(
            f"LoRA target module(s) {missing} are not in {type(model).__name__}; its linear layers are: "
            f"{', '.join(names)}"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        # No task_type: head training is decided here, explicitly, not by PEFT's per-task defaults.
        modules_to_save=head_modules(model) if settings.train_head else None,
    )
    return get_peft_model(model, config)


def merged(model: nn.Module) -> nn.Module:
    """The plain model with LoRA weights merged in (a no-op for a model without adapters)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
