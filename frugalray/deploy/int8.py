"""Dynamic int8 that keeps quality: which groups of Linear layers stay fp32, chosen on dev.

Dynamic int8 of every Linear layer can cost a pruned encoder more than a point of F1 (a few layers carry
activations that int8 represents badly: often a feed-forward output, or the task head). The choice here is
greedy and made on the task's dev set, never its test set: start from every Linear layer in int8; while dev
F1 is more than ``tolerance`` below the fp32 model's, return to fp32 the group (``frugalray.model.quantize.
int8_groups``: a layer's attention, feed-forward input or output, the head) whose return raises dev F1 most;
stop when within the tolerance, when no group helps, or at ``max_groups``. Every step is recorded in the
export's manifest (``int8_choice``), and the groups (``int8_fp32_groups``) are applied whenever the export is
loaded, timed (``frugalray bench-latency --model EXPORT``) or evaluated.

>>> groups, steps = choose_fp32_groups(model, dev_f1)   # doctest: +SKIP
>>> groups
['layer.2.output']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

CHOICES = ("auto", "none")  # or a comma-separated list of groups


def choose_fp32_groups(model, score: Callable[[object], float], tolerance: float = 0.005,
                       max_groups: int | None = None) -> tuple[list[str], list[dict]]:
    """The groups to keep fp32 (greedy on ``score``, the dev F1 of a model) and the steps that chose them."""
    from frugalray.model.quantize import dynamic_int8, int8_groups

    reference = score(model)
    kept: list[str] = []
    current = score(dynamic_int8(model, kept))
    steps = [{"fp32_groups": [], "dev_f1": current, "fp32_dev_f1": reference}]
    candidates = int8_groups(model)
    while reference - current > tolerance and candidates and (max_groups is None or len(kept) < max_groups):
        tried = {group: score(dynamic_int8(model, kept + [group])) for group in candidates}
        best = max(candidates, key=lambda group: tried[group])  # ties: the earlier group
        if tried[best] <= current:
            break
        kept.append(best)
        candidates.remove(best)
        current = tried[best]
        steps.append({"fp32_groups": list(kept), "dev_f1": current, "fp32_dev_f1": reference})
    return kept, steps


def parse_choice(text: str) -> str | list[str]:
    """``auto``, ``none`` (every Linear layer int8) or the groups to keep fp32, comma-separated."""
    text = text.strip()
    if text in CHOICES:
        return text
    groups = [g.strip() for g in text.split(",") if g.strip()]
    if not groups:
        from frugalray._registry import FrugalrayError

        raise FrugalrayError(f"--int8-fp32 {text!r}: give auto, none, or groups such as classifier,layer.2.output")
    return groups


def record_choice(folder: Path, groups: list[str], steps: list[dict]) -> None:
    """Write the groups (and how they were chosen) into the export's manifest, atomically."""
    from frugalray.model.saved import MANIFEST

    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text()) | {"int8_fp32_groups": groups, "int8_choice": steps}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(partial, path)
