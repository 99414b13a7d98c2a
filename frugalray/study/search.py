"""Layer-mask search with Optuna (its public ask/tell API), beyond the hand-made strategies. No Ray here.

Each search trial is an ordinary frugalray trial (same resources, results rows, configuration hash); the
cluster runs them as it runs a sweep's (``frugalray.cluster.runs.run_search``). One boolean per layer
says whether it is kept; the constraint (min/max kept layers, or exactly N) is built into the search
space, so every sampled mask is valid. A mask whose configuration already has a result (earlier searches,
the study's strategies, a duplicate sample) is told to Optuna from the store and never retrained. The
Optuna study lives in a storage (SQLite by default) that survives a driver restart and opens in
``optuna-dashboard`` as it is.

>>> search = MaskSearch(SearchConfig(task="demo_pos", model="minilm", max_layers=3), store)  # doctest: +SKIP
>>> search.next().config.layers  # doctest: +SKIP
(0, 1, 2)
"""

from __future__ import annotations

import math

from frugalray._registry import FrugalrayError
from frugalray.study.planned import DONE, Planned
from frugalray.config import OBJECTIVES, SearchConfig, TrialConfig
from frugalray.data.tasks import load_task
from frugalray.results.fronts import read_fronts, write_front  # noqa: F401 (part of this module's API)
from frugalray.results.schema import TrialResult
from frugalray.results.store import ResultsStore
from frugalray.training.identity import recorded_hash
from frugalray.training.trial import layer_count, prepare_trial

__all__ = ["MaskSearch", "SearchConfig", "mask_params", "mask_space", "open_study", "pareto_front", "read_fronts",
           "write_front"]


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
    from frugalray import __version__

    return {
        "task": config.task, "model": config.model, "objective": config.objective,
        "constraint": {"min_layers": config.min_layers, "max_layers": config.max_layers, "exactly": config.exactly},
        "training": config.training.to_dict(), "lora": config.lora.to_dict() if config.lora else None,
        "seed": config.seed, "data_dir": config.data_dir, "frugalray_version": __version__,
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
        storage = optuna.storages.RDBStorage(url)
    except Exception as error:
        raise FrugalrayError(f"Optuna storage {url!r} cannot be opened or written: {error}") from None
    columns, directions = OBJECTIVES[config.objective]
    sampler = (optuna.samplers.TPESampler(seed=config.sampler_seed) if len(columns) == 1
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


class MaskSearch:
    """Hands out masks Optuna asks for, ``budget`` new trainings at most; never trains a mask twice.

    Masks with a stored result are told to Optuna at once; a mask asked for while it trains waits for that
    run (``parked``). ``next()`` gives a trial to run, None (wait for running ones) or ``DONE``."""

    def __init__(self, config: SearchConfig, store: ResultsStore, prior: list[tuple[int, ...]] = ()):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.config, self.store = config, store
        self.num_layers = layer_count(config.model)
        self.low, self.high = config.bounds(self.num_layers)
        self.task = load_task(config.task, config.data_dir)
        self.study, self.storage = open_study(config, store)
        self.columns = OBJECTIVES[config.objective][0]
        self.space = mask_space(self.num_layers, self.low, self.high)
        self.space_size = sum(math.comb(self.num_layers, n) for n in range(self.low, self.high + 1))
        self.known: dict[str, dict] = {}  # config hash -> stored successful row
        for row in store.table().to_pylist():
            if row["status"] == "ok":
                self.known.setdefault(recorded_hash(row), row)
        # Stored results of this exact space (same task, data, model, settings, seed) are never retrained;
        # with warm_start they are also handed to Optuna first.
        stored = sorted({tuple(r["kept_layers"]) for r in self.known.values() if self.low <= r["n_kept_layers"] <= self.high})
        self.known_masks = {kept for kept in stored if self.planned(kept).config_hash in self.known}
        for kept in (sorted(self.known_masks) if config.warm_start else []) + list(prior):
            self.study.enqueue_trial(mask_params(kept, self.num_layers), skip_if_exists=True)
        self.running: dict[str, tuple[object, tuple[int, ...]]] = {}  # config hash -> (Optuna trial, mask)
        self.parked: dict[str, list] = {}  # config hash -> Optuna trials waiting for that run
        self.handed_out = 0
        self.told_from_store = 0
        self.outcomes = {"done": 0, "failed": 0}

    def planned(self, kept: tuple[int, ...]) -> Planned:
        config = TrialConfig(task=self.config.task, model=self.config.model, strategy="mask", layers=kept,
                             lora=self.config.lora, training=self.config.training, seed=self.config.seed,
                             data_dir=self.config.data_dir, sweep=self.config.name, stage="search")
        prepared = prepare_trial(config, self.task)
        return Planned(config, prepared.config_hash, prepared.kept_layers, self.config.task, "search",
                       self.task.fingerprint)

    def next(self, max_known_in_a_row: int = 50):
        """The next mask to train, None to wait for the running ones, or DONE."""
        if self.handed_out >= self.config.budget:
            return DONE if not self.running else None
        for _ in range(max_known_in_a_row):
            if len(self.known_masks) + len(self.running) >= self.space_size:
                break  # every mask of the space is trained or training
            trial = self.study.ask()
            kept = tuple(self.space(trial)["layers"])
            trial.set_user_attr("kept_layers", list(kept))  # forced layers are not params
            planned = self.planned(kept)
            if planned.config_hash in self.known:  # trained before: tell Optuna, ask again
                self.study.tell(trial, self._values(self.known[planned.config_hash]))
                self.known_masks.add(kept)
                self.told_from_store += 1
            elif planned.config_hash in self.running:  # wait for that run
                self.parked.setdefault(planned.config_hash, []).append(trial)
            else:
                self.running[planned.config_hash] = (trial, kept)
                self.handed_out += 1
                return planned
        # Only known or running masks come back: the space is exhausted (or nearly): wait, or stop.
        return None if self.running else DONE

    def finish(self, planned: Planned, result: TrialResult) -> None:
        from optuna.trial import TrialState

        trial, kept = self.running.pop(planned.config_hash)
        values = self._values(result) if result.status == "ok" else None
        self.outcomes["done" if values is not None else "failed"] += 1
        if values is not None:
            self.known[planned.config_hash] = result.to_row()
            self.known_masks.add(kept)
        for waiting in [trial] + self.parked.pop(planned.config_hash, []):
            if values is None:
                self.study.tell(waiting, state=TrialState.FAIL)
            else:
                self.study.tell(waiting, values)

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Progress, as a sweep's plan gives it: new masks planned (the budget), trained, failed."""
        return {(self.config.task, "search"): {"planned": self.config.budget, **self.outcomes}}

    def _values(self, row):
        values = [float(row[column]) for column in self.columns]
        return values[0] if len(values) == 1 else values

    def front(self) -> list[dict]:
        return pareto_front(self.study, self.columns, self.num_layers)


def pareto_front(study, columns, num_layers: int) -> list[dict]:
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
