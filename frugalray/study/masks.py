"""The search space of layer masks and the Optuna study that explores it.

One boolean per layer says whether it is kept; the constraint (min/max kept layers, or exactly N) is built
into the space, so every sampled mask is valid. The study records what its values mean (task, model,
objective, constraint, training) and refuses to be continued with other settings.

>>> mask_params((0, 2), 3)
{'keep_0': True, 'keep_1': False, 'keep_2': True}
"""

from __future__ import annotations

import math

from frugalray._registry import FrugalrayError, did_you_mean
from frugalray.config import OBJECTIVES, RUNG_SCORES, SearchConfig
from frugalray.results.store import ResultsStore

__all__ = ["grace_steps", "mask_params", "mask_space", "non_dominated", "open_study", "pareto_front", "rung_curve",
           "rung_score", "rungs", "study_attributes"]


def mask_space(num_layers: int, low: int, high: int):
    """Optuna define-by-run space: keep_k per layer, with layers forced in or out to respect the bounds."""

    def space(trial) -> dict:
        kept = []
        for k in range(num_layers):
            remaining = num_layers - k
            if len(kept) + remaining <= low:
                keep = True  # every layer left is needed to reach the minimum
            elif len(kept) >= high:
                keep = False  # the maximum is reached
            else:
                keep = trial.suggest_categorical(f"keep_{k}", [True, False])
            if keep:
                kept.append(k)
        return {"layers": kept}

    return space


def mask_params(kept: tuple[int, ...], num_layers: int) -> dict[str, bool]:
    return {f"keep_{k}": k in kept for k in range(num_layers)}


def study_attributes(config: SearchConfig) -> dict:
    """What a search's Optuna study records of itself (``study.user_attrs``): the settings that define what
    its values mean, so that ``optuna-dashboard`` or ``optuna.load_study`` tell it without frugalray."""
    from frugalray._version import __version__

    return {
        "task": config.task, "model": config.model, "objective": config.objective,
        "constraint": {"min_layers": config.min_layers, "max_layers": config.max_layers, "exactly": config.exactly},
        "training": config.training.to_dict(), "lora": config.lora.to_dict() if config.lora else None,
        "seed": config.seed, "data_dir": config.data_dir, "frugalray_version": __version__,
        "sampler": config.sampler, "startup_trials": config.startup_trials,
        "halving": {"on": config.halving, "grace_steps": config.grace_steps, "reduction_factor": config.reduction_factor,
                    "rung_score": config.rung_score},
    }


# Settings a study is bound to: resuming it with others would mix values that mean different things.
_BINDING = ("task", "model", "objective", "constraint", "training", "lora", "seed")


def open_study(config: SearchConfig, store: ResultsStore):
    """Create or load the Optuna study, named metrics and attributes included; trials left RUNNING by a
    killed driver are marked failed. A study created with other settings (task, model, objective, constraint,
    training, LoRA, seed) is refused: its values would not be comparable."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    from frugalray.study._samplers import NSGAIISampler

    url = config.storage or _default_storage(store)
    try:
        storage = optuna.storages.InMemoryStorage() if url == "memory" else optuna.storages.RDBStorage(url)
    except Exception as error:
        raise FrugalrayError(f"Optuna storage {url!r} cannot be opened or written: {error}") from None
    columns, directions = OBJECTIVES[config.objective]
    sampler = (optuna.samplers.RandomSampler(seed=config.sampler_seed) if config.sampler == "random"
               else optuna.samplers.TPESampler(seed=config.sampler_seed, n_startup_trials=config.startup_trials)
               if len(columns) == 1
               else NSGAIISampler(seed=config.sampler_seed))
    study = optuna.create_study(study_name=config.name, storage=storage, directions=list(directions),
                                sampler=sampler, load_if_exists=True)
    attributes = study_attributes(config)
    differ = [name for name in _BINDING if name in study.user_attrs and study.user_attrs[name] != attributes[name]]
    if differ:
        shown = "; ".join(f"{name}: {study.user_attrs[name]!r} there, {attributes[name]!r} here" for name in differ)
        raise FrugalrayError(f"Optuna study {config.name!r} in {url} was created with other settings ({shown}); "
                             f"give this search another name (--name) or the same settings")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable in practice since 3.2
        study.set_metric_names(list(columns))
    for name, value in attributes.items():
        study.set_user_attr(name, value)
    for stale in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        study.tell(stale.number, state=TrialState.FAIL)
    return study, storage


def _default_storage(store: ResultsStore) -> str:
    if not store.local:
        raise FrugalrayError("A remote results location needs an explicit Optuna storage (storage=...: an RDB URL)")
    return f"sqlite:///{store.root}/optuna.db"


def pareto_front(study, columns) -> list[dict]:
    """Non-dominated completed trials (the best one for a single objective), with their masks."""
    from optuna.trial import TrialState

    best = study.best_trials if len(columns) > 1 else (
        [study.best_trial] if study.get_trials(deepcopy=False, states=[TrialState.COMPLETE]) else [])
    front = []
    for trial in best:
        kept = trial.user_attrs["kept_layers"]
        values = trial.values if len(columns) > 1 else [trial.value]
        front.append({"kept_layers": kept, **{c: float(v) for c, v in zip(columns, values)},
                      "optuna_trial": trial.number})
    return sorted(front, key=lambda row: [-row[columns[0]]] + [row[c] for c in columns[1:]])


def non_dominated(rows: list[dict], columns, directions) -> list[dict]:
    """The rows no other row beats or equals on every column while beating it on one (``directions``:
    "maximize" or "minimize" per column), best first on the first column.

    >>> non_dominated([{"f": 0.9, "n": 3}, {"f": 0.8, "n": 2}, {"f": 0.7, "n": 3}], ("f", "n"), ("maximize", "minimize"))
    [{'f': 0.9, 'n': 3}, {'f': 0.8, 'n': 2}]
    """
    signs = [1 if d == "maximize" else -1 for d in directions]
    keys = [[sign * float(row[c]) for c, sign in zip(columns, signs)] for row in rows]

    def beaten(i: int) -> bool:
        return any(all(a >= b for a, b in zip(other, keys[i])) and other != keys[i] for other in keys)

    front = [row for i, row in enumerate(rows) if not beaten(i)]
    return sorted(front, key=lambda row: [-sign * float(row[c]) for c, sign in zip(columns, signs)])


def grace_steps(config: SearchConfig, max_steps: int) -> int:
    """The first rung, in optimizer steps: the configured one, or the whole training / reduction_factor**2;
    never before warm-up ends, and before the end of training (or there is nothing to stop)."""
    warmup = math.ceil(config.training.warmup_ratio * max_steps)
    grace = config.grace_steps or max(1, max_steps // config.reduction_factor**2)
    if config.grace_steps is None:
        grace = max(grace, warmup)
    if grace < warmup:
        raise FrugalrayError(f"grace_steps={grace}: the first rung must come after the {warmup} warm-up steps "
                             f"(warmup_ratio {config.training.warmup_ratio} of {max_steps} steps)")
    if grace >= max_steps:
        raise FrugalrayError(f"grace_steps={grace}: a trial trains {max_steps} steps in all ({config.training.epochs} "
                             f"epochs); give a first rung before that, or search without halving")
    return grace


def rungs(grace_steps: int, reduction_factor: int, max_steps: int) -> list[int]:
    """The steps at which halving decides (the end of training excluded).

    >>> rungs(grace_steps=35, reduction_factor=3, max_steps=315)
    [35, 105]
    """
    out, step = [], grace_steps
    while step < max_steps:
        out.append(step)
        step *= reduction_factor
    return out


TIE_BREAK = 1e-9  # dev_f1_then_loss: a dev loss (<< 1e3) shifts the score by less than any dev F1 difference


def rung_score(name: str, dev_f1: float, dev_loss: float | None) -> float:
    """What halving compares at a rung (higher goes on): dev F1, minus dev loss, or dev F1 with ties broken by
    the lower dev loss. A missing or non-finite loss ranks last.

    >>> rung_score("dev_loss", 0.0, 1.5), rung_score("dev_f1_then_loss", 0.5, 2.0) < rung_score("dev_f1_then_loss", 0.5, 1.0)
    (-1.5, True)
    """
    loss = dev_loss if dev_loss is not None and math.isfinite(dev_loss) else 1e3
    if name == "dev_f1":
        return dev_f1
    if name == "dev_loss":
        return -loss
    if name == "dev_f1_then_loss":
        return dev_f1 - TIE_BREAK * min(loss, 1e3)
    raise FrugalrayError(did_you_mean("rung_score", name, list(RUNG_SCORES)))


def rung_curve(row: dict, name: str) -> dict[int, float]:
    """A row's rung score at each of its dev checkpoints (``checkpoint_steps``), by step."""
    losses = row.get("checkpoint_dev_loss") or [None] * len(row.get("checkpoint_steps") or [])
    return {step: rung_score(name, f1, loss)
            for step, f1, loss in zip(row.get("checkpoint_steps") or [], row.get("checkpoint_dev_f1") or [], losses)}
