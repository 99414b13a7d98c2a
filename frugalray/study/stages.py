"""The stages of a sweep, registered by name: which trials a stage plans for one task, and which of that
task's stages it waits for. Adding a stage is one registered function here; the plan, the sweep's
progress, ``SweepConfig`` and the command line read the registry. No torch, no Ray.

Per task (each trial for every seed):
  1. ``single``: full + single(k) for every layer k (the full model trained to convergence on dev when the
     sweep sets ``full_model_epochs``);
  2. ``strategies``: every registered strategy the sweep gives N values for (first/last, the alternate
     family, drop_middle/drop_ends, and best/drop_worst ranked by the task's own stage-1 scores);
  3. ``lora``: LoRA on the selection rule (best with <= 6 layers, best with 2 and with 3) and on the full model;
  4. ``balanced``: the same selection retrained for the full model's training time;
  5. ``recover``: students of the fine-tuned full model on the selection and the first half of the layers:
     pruned after fine-tuning, distilled, or partially fine-tuned (``frugalray.config.RecoverySettings``).

>>> [stage.name for stage in STAGES.entries()]
['single', 'strategies', 'lora', 'balanced', 'recover']
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Callable

from frugalray._registry import FrugalrayError, Registry
from frugalray.config import SweepConfig
from frugalray.study.scores import SCORE_COLUMN, ranking_notes, scores_from_rows
from frugalray.strategies import STAGE_NAMES, STRATEGIES, balanced_epochs

Spec = tuple[str, dict]  # (strategy name, further TrialConfig values), planned once per seed


@dataclass
class StageInputs:
    """What a stage sees of one task: the sweep, the model's layer count, and that task's successful rows."""

    sweep: SweepConfig
    task: str
    num_layers: int
    rows: Callable[[tuple[str, ...]], list[dict]]  # successful rows of these stages of this task
    note: Callable[[str], None]  # say something the user must know (a skipped part, a tied ranking)
    proxy: Callable[[str], tuple]  # a proxy's scores for this task's model ("proxy", "block_proxy")


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]  # stages of the same task whose results it plans from
    plan: Callable[[StageInputs], list[Spec]]
    doc: str


STAGES: Registry[Stage] = Registry("stage")


def stage(name: str, needs: tuple[str, ...] = ()):
    if name not in STAGE_NAMES:  # the names are vocabulary that config and results check against
        raise FrugalrayError(f"Stage {name!r} is not in frugalray.strategies.STAGE_NAMES {STAGE_NAMES}")

    def decorate(fn):
        STAGES.add(name, Stage(name, needs, fn, (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return decorate


@stage("single")
def single(inputs: StageInputs) -> list[Spec]:
    """The full model and every layer alone: the baseline and the per-layer scores."""
    sweep = inputs.sweep
    teacher = {"save_model": True} if "recover" in sweep.stages else {}  # students start or learn from it
    full = ("full", teacher | {"training": sweep.full_training})  # trained to convergence with full_model_epochs
    return [full] + [("single", {"n": k}) for k in range(inputs.num_layers)]


@stage("strategies", needs=("single",))
def strategies(inputs: StageInputs) -> list[Spec]:
    """Every strategy the sweep gives N values for; best/drop_worst rank layers by this task's single(k) dev F1."""
    scores: dict[str, tuple | None] = {}
    specs: list[Spec] = []
    for strategy in STRATEGIES.entries():
        values = strategy.sweep_values(inputs.sweep, inputs.num_layers) if strategy.sweep_values else []
        source = strategy.scores_from
        if values and source and source not in scores:
            scores[source] = layer_scores(inputs) if source == "single_layer" else inputs.proxy(source)
        if source and scores.get(source) is None:
            continue
        extra = {"scores": scores[source]} if source else {}
        specs += [(strategy.name, extra | ({"n": n} if n is not None else {})) for n in values]
    return specs


@stage("lora", needs=("strategies",))
def lora(inputs: StageInputs) -> list[Spec]:
    """LoRA on the full model (unless lora_full is off) and on the selection (best with <= lora_max_layers, best
    with each lora_sizes)."""
    settings = inputs.sweep.lora
    full = [("full", {"lora": settings})] if inputs.sweep.lora_full else []
    return full + [("mask", {"layers": kept, "lora": settings}) for kept in selection(inputs)]


@stage("balanced", needs=("strategies",))
def balanced(inputs: StageInputs) -> list[Spec]:
    """The selection retrained for the full model's training time: round(T_full * n / T_pruned) epochs."""
    rows = inputs.rows(("single", "strategies"))
    full = [r["train_seconds"] for r in rows if r["n_kept_layers"] == inputs.num_layers]
    if not full:
        inputs.note("balanced stage skipped: no successful full-model run")
        return []
    baseline, training = statistics.mean(full), inputs.sweep.training
    specs = []
    for kept in selection(inputs):
        seconds = statistics.mean(r["train_seconds"] for r in rows if tuple(r["kept_layers"]) == kept)
        epochs = balanced_epochs(baseline, seconds, training.epochs)
        specs.append(("mask", {"layers": kept, "training": dataclasses.replace(training, epochs=epochs)}))
    return specs


@stage("recover", needs=("strategies",))
def recover(inputs: StageInputs) -> list[Spec]:
    """Students recovering from pruning: every init x method asked for, on the selection and the first half."""
    sweep = inputs.sweep
    sets = selection(inputs) if sweep.recover_layers == "selection" else []
    half = tuple(range(max(1, inputs.num_layers // 2)))
    sets += [half] if half not in sets else []
    combos = [(init, method) for init in sweep.recover_inits for method in sweep.recover_methods
              if (init, method) != ("pretrained", "finetune")]  # the study's own recovery ran in the strategies stage
    recovery = sweep.teacher_recovery
    return [("mask", {"layers": kept, "recovery": dataclasses.replace(recovery, init=init, method=method)})
            for kept in sets for init, method in combos]


def layer_scores(inputs: StageInputs) -> tuple[tuple[float, float], ...] | None:
    """Per layer (dev F1, -dev eval loss) from this task's single(k) rows; None (and a note) when incomplete."""
    rows = [r for r in inputs.rows(("single",)) if r["strategy"] == "single"]
    try:
        scores = scores_from_rows(rows, inputs.num_layers)
    except FrugalrayError as error:
        inputs.note(f"best/drop_worst skipped: {error}")
        return None
    for note in ranking_notes(rows):
        inputs.note(f"best/drop_worst: {note}")
    return tuple(scores[k] for k in range(inputs.num_layers))


def selection(inputs: StageInputs) -> list[tuple[int, ...]]:
    """The study's selection: best layer set (mean dev F1) with <= lora_max_layers, and best with each lora_sizes."""
    by_layers: dict[tuple[int, ...], list[float]] = {}
    for row in inputs.rows(("strategies",)):
        if row[SCORE_COLUMN] is not None:
            by_layers.setdefault(tuple(row["kept_layers"]), []).append(row[SCORE_COLUMN])
    means = {kept: statistics.mean(values) for kept, values in by_layers.items()}
    sweep = inputs.sweep
    rules = [lambda n: n <= sweep.lora_max_layers] + [lambda n, s=s: n == s for s in sweep.lora_sizes]
    chosen: list[tuple[int, ...]] = []
    for rule in rules:
        candidates = [k for k in means if rule(len(k))]
        if candidates:
            best = max(candidates, key=lambda k: (means[k], -len(k)))
            if best not in chosen:
                chosen.append(best)
    return chosen
