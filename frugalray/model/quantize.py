"""Dynamic int8 quantisation of a model's Linear layers (torch), and the size of the quantised model.

Dynamic int8 stores the weights of every ``nn.Linear`` as int8 and quantises activations per batch at run
time (``torch.ao.quantization.quantize_dynamic``); embeddings and LayerNorms stay fp32. It is the form
known to keep quality on NER (a public DistilBERT NER model: F1 0.940 → 0.938), where a naive static int8
(activations calibrated once) collapsed it (→ 0.103): frugalray offers dynamic int8 only, and always
re-evaluates the quantised model. It runs on CPU.

>>> small = dynamic_int8(model)                         # doctest: +SKIP
>>> round(quantized_mib(small) / parameter_mib(model), 2)  # doctest: +SKIP
0.3
"""

from __future__ import annotations

import warnings


def dynamic_int8(model, keep_fp32: tuple[str, ...] | list[str] = ()):
    """A copy of ``model`` (on CPU, in eval mode) with int8 weights in every Linear layer but those of the
    groups in ``keep_fp32`` (``int8_groups`` names them: ``classifier``, ``layer.2.output``...)."""
    import torch
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    spec = {name: default_dynamic_qconfig for name in linear if not in_groups(name, keep_fp32)}
    with warnings.catch_warnings():  # torch announces the move of torch.ao.quantization to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.cpu().eval(), spec, dtype=torch.qint8, inplace=False)


def int8_groups(model) -> list[str]:
    """The groups of Linear layers that can stay fp32, as dotted name fragments: per encoder layer its
    attention, its feed-forward input (``intermediate``) and output (``output``), then the task head and
    the pooler, where the model has them.

    >>> in_groups("bert.encoder.layer.0.output.dense", ["layer.0.output"]), in_groups("bert.encoder.layer.0.attention.output.dense", ["layer.0.output"])
    (True, False)
    """
    import re

    import torch

    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        match = re.search(r"(?:^|\.)(layer\.\d+\.(?:attention|intermediate|output))(?:\.|$)", name)
        group = match.group(1) if match else next((g for g in ("classifier", "pooler") if in_groups(name, [g])), None)
        if group and group not in found:
            found.append(group)
    return found


def group_shares(model) -> dict[str, float]:
    """Per group of ``int8_groups``: its share of the weights of all the model's Linear layers, which is its share
    of their multiply-adds per token (what keeping it fp32 costs in speed).

    >>> group_shares(model)["layer.0.output"]   # doctest: +SKIP
    0.111
    """
    import torch

    groups = int8_groups(model)
    sizes = dict.fromkeys(groups, 0)
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            total += module.weight.numel()
            for group in groups:
                if in_groups(name, [group]):
                    sizes[group] += module.weight.numel()
    return {group: size / total for group, size in sizes.items()}


def in_groups(name: str, groups) -> bool:
    """Whether module ``name`` belongs to one of ``groups`` (dotted fragments of module names)."""
    dotted = f".{name}."
    return any(f".{group}." in dotted for group in groups)


def quantized_mib(model) -> float:
    """Parameter bytes of a (dynamically quantised) model in MiB: its remaining float parameters plus the
    packed int8 weights and biases of its quantised Linear layers, which ``parameters()`` no longer lists."""
    import torch
    from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear

    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            for tensor in (module.weight(), module.bias()):
                if isinstance(tensor, torch.Tensor):
                    total += tensor.numel() * tensor.element_size()
    return total / 2**20
