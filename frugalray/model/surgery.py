"""Layer surgery: physically delete encoder layers from a Hugging Face model.

Removed layers leave the module list, ``config.num_hidden_layers`` drops to the kept count, and the
original indices of the kept layers are recorded in the config (``frugalray_kept_layers``), so that
``save_pretrained`` / ``from_pretrained`` round-trips the pruned model with no random re-init.

>>> model = prune_layers(model, [0, 2])                      # doctest: +SKIP
>>> model.config.num_hidden_layers, model.config.frugalray_kept_layers  # doctest: +SKIP
(2, [0, 2])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from frugalray._registry import FrugalrayError
from frugalray.model.loading import num_layers
from frugalray.strategies import validate_layers


def original_layers(config) -> list[int]:
    """Original (pre-pruning) indices of the model's layers: 0..L-1 for an unpruned model."""
    kept = getattr(config, "frugalray_kept_layers", None)
    return list(kept) if kept is not None else list(range(num_layers(config)))


def layer_lists(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (parent, attribute) of every per-layer ModuleList in the encoder.

    BERT, RoBERTa/CamemBERT, XLM-R keep one list (``encoder.layer``), DistilBERT ``transformer.layer``;
    FlauBERT/XLM keep four parallel lists (attentions, layer_norm1, ffns, layer_norm2). All are lists
    whose length is the layer count.
    """
    count = num_layers(model.config)
    base = getattr(model, "base_model", model)
    found = []
    for _, module in base.named_modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == count:
                found.append((module, name))
    if not found:
        raise FrugalrayError(
            f"{type(model).__name__}: no ModuleList of {count} layers found; frugalray prunes encoders "
            f"that keep their layers in a list (BERT, RoBERTa, CamemBERT, XLM-R, DistilBERT, FlauBERT...)"
        )
    return found


def prune_layers(model: nn.Module, kept: Sequence[int]) -> nn.Module:
    """Keep only layers ``kept`` (indices into the model's current layers), in place; returns the model.

    Pruning an already pruned model composes: the config records indices of the original model.
    """
    config = model.config
    current = num_layers(config)
    kept = validate_layers(kept, current)
    lists = layer_lists(model)  # found before the config changes the expected length
    for parent, name in lists:
        layers = getattr(parent, name)
        setattr(parent, name, nn.ModuleList([layers[i] for i in kept]))
    for parent, name in lists:
        for new_index, layer in enumerate(getattr(parent, name)):
            for module in layer.modules():
                for attribute in ("layer_idx", "layer_id"):  # caches index layers by position
                    if isinstance(getattr(module, attribute, None), int):
                        setattr(module, attribute, new_index)
    for module in getattr(model, "base_model", model).modules():
        for attribute in ("n_layers", "num_layers", "num_hidden_layers"):  # FlauBERT loops over self.n_layers
            if getattr(module, attribute, None) == current and not isinstance(module, nn.ModuleList):
                setattr(module, attribute, len(kept))
    before = original_layers(config)
    config.frugalray_kept_layers = [before[i] for i in kept]
    config.frugalray_original_num_layers = getattr(config, "frugalray_original_num_layers", current)
    config.num_hidden_layers = len(kept)  # DistilBERT/FlauBERT map this name onto n_layers
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == current:
        config.layer_types = [layer_types[i] for i in kept]
    return model


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def parameter_mib(model: nn.Module) -> float:
    """Model size as parameter bytes, in MiB (the study's 'model size')."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


@torch.inference_mode()
def layer_importance(model: nn.Module, batches, method: str = "cosine") -> list[float]:
    """Per-layer importance from the pretrained model alone: 1 - cos(layer input, layer output).

    A layer whose output equals its input (cosine 1) does nothing and scores 0. Averaged over
    non-padding tokens of ``batches`` (dicts with input_ids and attention_mask). ``method='block_influence'``
    is the same quantity (ShortGPT's name for it).
    """
    if method not in {"cosine", "block_influence"}:
        raise FrugalrayError(f"Unknown importance method '{method}'. Available: block_influence, cosine")
    model.eval()
    count = num_layers(model.config)
    totals = torch.zeros(count, dtype=torch.float64)
    tokens = 0
    for batch in batches:
        mask = batch["attention_mask"].bool()
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        hidden = out.hidden_states
        if len(hidden) != count + 1:
            raise FrugalrayError(f"Expected {count + 1} hidden states, got {len(hidden)}")
        for k in range(count):
            cosine = nn.functional.cosine_similarity(hidden[k], hidden[k + 1], dim=-1)
            totals[k] += (1 - cosine)[mask].double().sum()
        tokens += int(mask.sum())
    if tokens == 0:
        raise FrugalrayError("Layer importance needs at least one non-padding token")
    return (totals / tokens).tolist()


@torch.inference_mode()
def block_distances(model: nn.Module, batches) -> list[list[float]]:
    """Angular distance arccos(cos)/pi between the input of layer l and the output of layer l+n-1, averaged
    over non-padding tokens: ``distances[l][n - 1]`` for every block that fits (Gromov et al. 2024)."""
    model.eval()
    count = num_layers(model.config)
    totals = torch.zeros(count, count, dtype=torch.float64)
    tokens = 0
    for batch in batches:
        mask = batch["attention_mask"].bool()
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states
        for start in range(count):
            for size in range(1, count - start + 1):
                cosine = nn.functional.cosine_similarity(hidden[start], hidden[start + size], dim=-1)
                angle = torch.arccos(cosine.clamp(-1, 1)) / torch.pi
                totals[start, size - 1] += angle[mask].double().sum()
        tokens += int(mask.sum())
    if tokens == 0:
        raise FrugalrayError("Block distances need at least one non-padding token")
    return [(totals[start, : count - start] / tokens).tolist() for start in range(count)]
