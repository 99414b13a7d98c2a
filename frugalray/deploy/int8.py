"""Dynamic int8 that keeps quality: which groups of Linear layers stay fp32, chosen without the test set.

Dynamic int8 of every Linear layer can cost a pruned encoder more than a point of F1 (a few layers carry
activations that int8 represents badly: often a feed-forward output, or the task head). The choice here is
greedy: start from every Linear layer in int8; while the score is more than ``tolerance`` below the fp32
model's, return to fp32 the group (``frugalray.model.quantize.int8_groups``: a layer's attention,
feed-forward input or output, the head) whose return raises the score most; stop when within the tolerance,
when no group helps, or at ``max_groups``. Two scores (``--int8-fp32``):

- ``auto``: dev F1 against the gold labels (tolerance half a point). On a small dev set (WNUT-16: 239
  tweets) a loss of a point or two hides in its noise.
- ``agreement``: how well the int8 model reproduces the fp32 model's own predictions (the task's metric,
  with the fp32 predictions as the reference labels), on dev and up to 2,000 training sentences: no label is
  used, so the training sentences add evidence, and what is measured is the conversion's damage itself.
  A group returns to fp32 only if it brings back more than 1 point of agreement F1 (each fp32 group costs
  speed; agreement rarely reaches fp32's own, as int8 moves a few borderline predictions everywhere), and
  the choice stops within 1 point of full agreement.

A budget (``max_fp32_share``, ``--int8-max-fp32-share``) caps what the kept groups may cost: their share of the
Linear layers' weights, so of their multiply-adds (``frugalray.model.quantize.group_shares``; in MiniLM each
attention or feed-forward group of a layer is the same size, the head almost nothing). Only groups that fit
in what is left are tried, so the choice trades the last fraction of a point for the speed int8 was for.

Every step is recorded in the export's manifest (``int8_choice``), and the groups (``int8_fp32_groups``) are
applied whenever the export is loaded, timed (``frugalray bench-latency --model EXPORT``) or evaluated.

>>> groups, steps = choose_fp32_groups(model, dev_f1)   # doctest: +SKIP
>>> groups
['layer.2.output']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

CHOICES = ("auto", "agreement", "none")  # or a comma-separated list of groups
TOLERANCE = {"auto": 0.005, "agreement": 0.01}
MIN_GAIN = {"auto": 0.0, "agreement": 0.01}  # what a group must bring back to stay fp32


def choose_fp32_groups(model, score: Callable[[object], float], tolerance: float = 0.005,
                       max_groups: int | None = None, name: str = "dev_f1",
                       min_gain: float = 0.0, max_fp32_share: float | None = None) -> tuple[list[str], list[dict]]:
    """The groups to keep fp32 (greedy on ``score``, e.g. the dev F1 of a model) and the steps that chose them,
    each with its score and the fp32 model's (keys ``name`` and ``fp32_<name>``) and the kept groups' share of
    the Linear weights (``fp32_share``). A group is kept only if it raises the score by more than ``min_gain``
    and, with ``max_fp32_share``, only if the kept groups' share stays within it."""
    from frugalray.model.quantize import dynamic_int8, group_shares

    reference = score(model)
    shares = group_shares(model)
    kept: list[str] = []
    current = score(dynamic_int8(model, kept))
    steps = [{"fp32_groups": [], name: current, f"fp32_{name}": reference, "fp32_share": 0.0}]
    candidates = list(shares)
    while reference - current > tolerance and candidates and (max_groups is None or len(kept) < max_groups):
        spent = sum(shares[group] for group in kept)
        if max_fp32_share is not None:
            candidates = [group for group in candidates if spent + shares[group] <= max_fp32_share + 1e-9]
            if not candidates:
                break
        tried = {group: score(dynamic_int8(model, kept + [group])) for group in candidates}
        best = max(candidates, key=lambda group: tried[group])  # ties: the earlier group
        if tried[best] - current <= min_gain:
            break
        kept.append(best)
        candidates.remove(best)
        current = tried[best]
        steps.append({"fp32_groups": list(kept), name: current, f"fp32_{name}": reference,
                      "fp32_share": round(spent + shares[best], 6)})
    return kept, steps


def parse_choice(text: str) -> str | list[str]:
    """``auto``, ``agreement``, ``none`` (every Linear layer int8) or the groups to keep fp32, comma-separated."""
    text = text.strip()
    if text in CHOICES:
        return text
    groups = [g.strip() for g in text.split(",") if g.strip()]
    if not groups:
        from frugalray._registry import FrugalrayError

        raise FrugalrayError(f"--int8-fp32 {text!r}: give auto, agreement, none, or groups such as classifier,layer.2.output")
    return groups


def record_choice(folder: Path, groups: list[str], steps: list[dict]) -> None:
    """Write the groups (and how they were chosen) into the export's manifest, atomically."""
    from frugalray.model.saved import MANIFEST

    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text()) | {"int8_fp32_groups": groups, "int8_choice": steps}
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(partial, path)
