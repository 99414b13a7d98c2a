"""Layer-mask search with Optuna, run through Ray Tune's OptunaSearch: beyond the hand-made strategies.

Each search trial is an ordinary frugalray trial (same resources, results rows, configuration hash).
One boolean per layer says whether it is kept; the constraint (min/max kept layers, or exactly N) is
built into the search space, so every sampled mask is valid. A mask whose configuration already has a
result (earlier searches, the study's strategies, a duplicate sample) is told to Optuna from the store
and never retrained; the Optuna study lives in a storage (SQLite by default) that survives a driver
restart and opens in ``optuna-dashboard`` as it is.

>>> run_search(SearchConfig(task="demo_pos", model="minilm", budget=20, max_layers=3))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ray.tune.search.optuna import OptunaSearch

from frugalray._config import check_fields, from_dict
from frugalray._registry import FrugalrayError, did_you_mean
from frugalray.lora import LoraSettings
from frugalray.ray_session import ensure_ray
from frugalray.resources import ResourceRule
from frugalray.results import ResultsStore
from frugalray.sweep import DEFAULT_RUNNER, _from_report, _model_config_dict, _tune_storage, alive_nodes, tune_trial
from frugalray.importance import proxy_prior, proxy_scores
from frugalray.tasks import load_task
from frugalray.config import TrainingSettings
from frugalray.trial import TrialConfig, layer_count, prepare_trial, recorded_hash

# objective name -> (result columns, Optuna directions). Quality is dev F1: choosing layers never sees test.
OBJECTIVES = {
    "f1": (("dev_f1",), ("maximize",)),
    "f1_vs_layers": (("dev_f1", "n_kept_layers"), ("maximize", "minimize")),
    "f1_vs_latency": (("dev_f1", "latency_ms"), ("maximize", "minimize")),
}
PRIORS = ("none", "proxy")


@dataclass(frozen=True)
class SearchConfig:
    task: str = field(metadata={"help": "Task to search layer masks for."})
    model: str = field(default="minilm", metadata={"help": "Model alias, folder or hub id."})
    name: str = field(default="", metadata={"help": "Study name (default: search-<task>-<objective>)."})
    budget: int = field(default=20, metadata={"help": "New masks to train in this run."})
    min_layers: int = field(default=1, metadata={"help": "Fewest layers a mask keeps."})
    max_layers: int | None = field(default=None, metadata={"help": "Most layers a mask keeps (default: L-1)."})
    exactly: int | None = field(default=None, metadata={"help": "Keep exactly N layers (overrides min/max)."})
    objective: str = field(default="f1", metadata={"help": "f1, f1_vs_layers or f1_vs_latency."})
    seed: int = field(default=0, metadata={"help": "Training seed of every search trial."})
    sampler_seed: int = field(default=0, metadata={"help": "Seed of Optuna's sampler."})
    training: TrainingSettings = field(default_factory=TrainingSettings)
    lora: LoraSettings | None = None
    data_dir: str | None = None
    results: str = field(default="results", metadata={"help": "Results location."})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL (default: SQLite file)."})
    warm_start: bool = field(default=True, metadata={"help": "Tell Optuna every stored result of this space."})
    prior: str = field(default="proxy", metadata={"help": "'proxy': first try masks ranked by layer importance."})
    resources: ResourceRule = field(default_factory=ResourceRule)
    max_concurrent: int | None = None

    def __post_init__(self) -> None:
        for key, kind in (("training", TrainingSettings), ("lora", LoraSettings), ("resources", ResourceRule)):
            if isinstance(getattr(self, key), dict):
                object.__setattr__(self, key, kind.from_dict(getattr(self, key), f"search: {key}"))
        check_fields(self)
        if self.objective not in OBJECTIVES:
            raise FrugalrayError(did_you_mean("objective", self.objective, list(OBJECTIVES)))
        if self.prior not in PRIORS:
            raise FrugalrayError(did_you_mean("prior", self.prior, list(PRIORS)))
        if not isinstance(self.budget, int) or self.budget < 1:
            raise FrugalrayError(f"The search budget must be a positive number of trials, got {self.budget!r}")
        if not self.name:
            object.__setattr__(self, "name", f"search-{Path(self.task).stem}-{self.objective}")

    @classmethod
    def from_dict(cls, values: dict, source: str = "search") -> "SearchConfig":
        return from_dict(cls, values, source)

    def bounds(self, num_layers: int) -> tuple[int, int]:
        """(fewest, most) kept layers; an unsatisfiable constraint is an error."""
        if self.exactly is not None:
            low = high = self.exactly
        else:
            low, high = self.min_layers, self.max_layers if self.max_layers is not None else num_layers - 1
        if not 1 <= low <= high <= num_layers:
            raise FrugalrayError(
                f"No mask satisfies the constraint: keep {low}..{high} layers of a {num_layers}-layer model "
                f"(need 1 <= min <= max <= {num_layers})"
            )
        return low, high


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


class MaskSearch(OptunaSearch):
    """OptunaSearch that never trains a mask twice: known masks are told from the store."""

    def __init__(self, *args, to_config, known: dict[str, dict], known_masks: set, space_size: int, columns,
                 extra: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_config, self.known, self.columns, self.extra = to_config, known, columns, extra
        self.known_masks, self.space_size = known_masks, space_size
        self.inflight: dict[str, tuple[str, tuple[int, ...]]] = {}  # Tune trial id -> (config hash, mask)
        self.parked: dict[str, list] = {}  # config hash -> Optuna trials waiting for that run
        self.told_from_store = 0
        self.max_known_in_a_row = 50

    def suggest(self, trial_id: str):
        from ray.tune.search import Searcher

        for _ in range(self.max_known_in_a_row):
            if len(self.known_masks) + len(self.inflight) >= self.space_size:
                break  # every mask of the space is trained or training
            params = super().suggest(trial_id)
            kept = tuple(params["layers"])
            self._ot_trials[trial_id].set_user_attr("kept_layers", list(kept))  # forced layers are not params
            config, config_hash = self.to_config(kept)
            if config_hash in self.known:  # trained before: tell Optuna, ask again
                self._ot_study.tell(self._ot_trials.pop(trial_id), self._values(self.known[config_hash]))
                self.known_masks.add(kept)
                self.told_from_store += 1
            elif any(config_hash == running for running, _ in self.inflight.values()):  # wait for that run
                self.parked.setdefault(config_hash, []).append(self._ot_trials.pop(trial_id))
            else:
                self.inflight[trial_id] = (config_hash, kept)
                return {"trial": config.to_dict(), **self.extra}
        # Only known or running masks come back: the space is exhausted (or nearly): wait, or stop.
        return None if self.inflight else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # one result per trial, at its end: nothing intermediate to prune on

    def save(self, checkpoint_path: str) -> None:  # the Optuna storage and the results store are the state
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        config_hash, kept = self.inflight.pop(trial_id)
        row = _from_report(result) if result and "row_json" in result else None
        values = self._values(row) if row and row["status"] == "ok" else None
        if values is not None:
            self.known[config_hash] = row
            self.known_masks.add(kept)
        self._ot_study.tell(self._ot_trials.pop(trial_id), values, state=None if values else _failed())
        for waiting in self.parked.pop(config_hash, []):
            self._ot_study.tell(waiting, values, state=None if values else _failed())

    def _values(self, row: dict):
        values = [float(row[column]) for column in self.columns]
        return values[0] if len(values) == 1 else values


def _failed():
    from optuna.trial import TrialState

    return TrialState.FAIL


def open_study(config: SearchConfig, store: ResultsStore):
    """Create or load the Optuna study; trials left RUNNING by a killed driver are marked failed."""
    import optuna
    from optuna.trial import TrialState

    url = config.storage or _default_storage(store)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as error:
        raise FrugalrayError(f"Optuna storage {url!r} cannot be opened or written: {error}") from None
    directions = list(OBJECTIVES[config.objective][1])
    study = optuna.create_study(study_name=config.name, storage=storage, directions=directions, load_if_exists=True)
    for stale in study.get_trials(deepcopy=False, states=[TrialState.RUNNING]):
        storage.set_trial_state_values(stale._trial_id, TrialState.FAIL)
    return study, storage


def _default_storage(store: ResultsStore) -> str:
    if not store.local:
        raise FrugalrayError("A remote results location needs an explicit Optuna storage (storage=...: an RDB URL)")
    return f"sqlite:///{store.root}/optuna.db"


def run_search(config: SearchConfig, *, runner: str = DEFAULT_RUNNER, ray_init: dict | None = None,
               connect=None, stream=sys.stdout) -> dict:
    """Run ``budget`` new search trials; returns a summary with the study and its best masks."""
    import optuna
    from ray import tune
    from ray.tune import PlacementGroupFactory

    from frugalray.resources import estimate_memory_gib

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from frugalray.sweep import _check_fit

    store = ResultsStore(config.results if "://" in config.results else os.path.abspath(config.results))
    store.check_writable()
    num_layers = layer_count(config.model)
    low, high = config.bounds(num_layers)
    task = load_task(config.task, config.data_dir)
    study, storage = open_study(config, store)
    columns = OBJECTIVES[config.objective][0]

    def to_config(kept: tuple[int, ...]):
        trial = TrialConfig(task=config.task, model=config.model, strategy="mask", layers=kept, lora=config.lora,
                            training=config.training, seed=config.seed, data_dir=config.data_dir,
                            sweep=config.name, stage="search")
        return trial, prepare_trial(trial, task).config_hash

    known = {}
    for row in store.table().to_pylist():
        if row["status"] == "ok":
            known.setdefault(recorded_hash(row), row)
    # Stored results of this exact space (same task, data, model, settings, seed) are never retrained;
    # with warm_start they are also handed to Optuna first.
    stored_masks = {tuple(r["kept_layers"]) for r in known.values() if low <= r["n_kept_layers"] <= high}
    known_masks = {kept for kept in stored_masks if to_config(kept)[1] in known}
    if config.warm_start:
        for kept in sorted(known_masks):
            study.enqueue_trial(mask_params(kept, num_layers), skip_if_exists=True)
    if config.prior == "proxy":
        for kept in proxy_prior(proxy_scores(config.task, config.model, config.data_dir), low, high):
            study.enqueue_trial(mask_params(kept, num_layers), skip_if_exists=True)

    ensure_ray(ray_init, connect)
    nodes = alive_nodes()
    has_gpus = any(node.get("GPU", 0) > 0 for node in nodes)
    estimate = estimate_memory_gib(_model_config_dict(config.model), high, config.training.batch_size,
                                   config.training.max_length, lora=config.lora is not None)
    demand = config.resources.for_trial(estimate, has_gpus)
    _check_fit([demand], nodes, 0)

    searcher = MaskSearch(
        space=mask_space(num_layers, low, high), metric=list(columns) if len(columns) > 1 else columns[0],
        mode=["max", "min"] if len(columns) > 1 else "max", study_name=config.name, storage=storage,
        sampler=optuna.samplers.TPESampler(seed=config.sampler_seed) if len(columns) == 1
        else optuna.samplers.NSGAIISampler(seed=config.sampler_seed),
        to_config=to_config, known=known, known_masks=set(known_masks),
        space_size=sum(math.comb(num_layers, n) for n in range(low, high + 1)), columns=columns,
        extra={"results": store.root if store.local else config.results, "retries": 0, "runner": runner},
    )
    trainable = tune.with_resources(tune_trial, PlacementGroupFactory([demand]))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=config.budget,
                                    max_concurrent_trials=config.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=config.name, storage_path=_tune_storage(config.results), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    tuner.fit()
    study = optuna.load_study(study_name=config.name, storage=storage)
    front = pareto_front(study, columns, num_layers)
    write_front(store, config.name, config.objective, front)
    print(f"search '{config.name}': {len(study.trials)} Optuna trials, {searcher.told_from_store} told from "
          f"stored results, Pareto front: {len(front)} mask(s)", file=stream)
    return {"study": study, "front": front, "told_from_store": searcher.told_from_store}


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


def write_front(store: ResultsStore, name: str, objective: str, front: list[dict]) -> None:
    """The Pareto front beside the trials: fronts/<name>.parquet, written atomically."""
    import pyarrow as pa

    store.write_table(pa.Table.from_pylist([{"search": name, "objective": objective, **row} for row in front]),
                      "fronts", f"{name}.parquet")


def read_fronts(store: ResultsStore):
    import pyarrow.parquet as pq

    return [pq.read_table(path, filesystem=store.fs) for path in store.files("fronts")]
