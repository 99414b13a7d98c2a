"""Layer-mask search with Optuna (its public ask/tell API), beyond the hand-made strategies. No Ray here.

Each search trial is an ordinary frugalray trial (same resources, results rows, configuration hash); the
cluster runs them as it runs a sweep's (``frugalray.cluster.runs.run_search``). One boolean per layer
says whether it is kept; the constraint (min/max kept layers, or exactly N) is built into the search
space, so every sampled mask is valid (``frugalray.study.masks``). A mask whose configuration already has a
result (earlier searches, the study's strategies, a duplicate sample) is told to Optuna from the store and
never retrained. The Optuna study lives in a storage (SQLite by default) that survives a driver restart and
opens in ``optuna-dashboard`` as it is.

With halving, the scheduler stops unpromising masks at rungs (``frugalray.cluster.halving``). A stopped
mask is told to Optuna as PRUNED with the rung score it reached at each checkpoint, so neither Optuna's best
trials nor the fronts ever hold a partial result; its row is ``stopped``. Should the sampler ask for a
stopped mask again while its score at the rung where it stopped is now among the best 1/reduction_factor
there (asynchronous halving decides on the masks it has seen so far), it trains once more, to the end.

>>> search = MaskSearch(SearchConfig(task="demo_pos", model="minilm", max_layers=3), store)  # doctest: +SKIP
>>> search.next().config.layers  # doctest: +SKIP
(0, 1, 2)
"""

from __future__ import annotations

import math
import statistics

from frugalray.config import OBJECTIVES, SearchConfig, TrialConfig
from frugalray.data.tasks import load_task
from frugalray.results.schema import TrialResult, is_trained
from frugalray.results.store import ResultsStore
from frugalray.study.masks import grace_steps, mask_params, mask_space, open_study, pareto_front, rung_curve, rung_score
from frugalray.study.planned import DONE, Planned
from frugalray.training.identity import recorded_hash
from frugalray.training.prepared import layer_count, prepare_trial

__all__ = ["MaskSearch", "SearchConfig"]


class MaskSearch:
    """Hands out masks Optuna asks for, ``budget`` new trainings at most; never trains a mask twice (but a
    stopped one that earns it, once more to the end).

    Masks with a stored result are told to Optuna at once; a mask asked for while it trains waits for that
    run (``parked``). ``next()`` gives a trial to run, None (wait for running ones) or ``DONE``;
    ``progress()`` takes a running trial's dev F1 at a checkpoint, ``finish()`` its row."""

    def __init__(self, config: SearchConfig, store: ResultsStore, prior: list[tuple[int, ...]] = ()):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.config, self.store = config, store
        self.num_layers = layer_count(config.model)
        self.low, self.high = config.bounds(self.num_layers)
        self.task = load_task(config.task, config.data_dir)
        self.max_steps = config.training.planned_steps(len(self.task.train))  # a whole training: the top rung
        # with halving, dev is scored at every rung (and between them): rungs are multiples of the first
        self.eval_every_steps = grace_steps(config, self.max_steps) if config.halving else 0
        self.study, self.storage = open_study(config, store)
        self.columns = OBJECTIVES[config.objective][0]
        self.space = mask_space(self.num_layers, self.low, self.high)
        self.space_size = sum(math.comb(self.num_layers, n) for n in range(self.low, self.high + 1))
        self.known: dict[str, dict] = {}  # config hash -> stored trained row
        self.stopped: dict[str, dict] = {}  # config hash -> the latest stopped row, for masks never trained to the end
        for row in store.table().to_pylist():
            if is_trained(row):
                self.known.setdefault(recorded_hash(row), row)
            elif row["status"] == "stopped":
                self.stopped[row["config_hash"]] = row
        self.stopped = {h: r for h, r in self.stopped.items() if h not in self.known}
        # Stored results of this exact space (same task, data, model, settings, seed) are never retrained;
        # with warm_start they are also handed to Optuna first.
        stored = sorted({tuple(r["kept_layers"]) for r in self.known.values() if self.low <= r["n_kept_layers"] <= self.high})
        self.known_masks = {kept for kept in stored if self.planned(kept).config_hash in self.known}
        for kept in (sorted(self.known_masks) if config.warm_start else []) + list(prior):
            self.study.enqueue_trial(mask_params(kept, self.num_layers), skip_if_exists=True)
        self.running: dict[str, tuple[object, tuple[int, ...]]] = {}  # config hash -> (Optuna trial, mask)
        self.parked: dict[str, list] = {}  # config hash -> Optuna trials waiting for that run
        self.promoted: set[str] = set()  # stopped masks handed out again, to train to the end
        self.failed: dict[str, tuple[int, ...]] = {}  # hash -> mask whose run failed in this run (retried by the next)
        self.reported: dict[int, set[int]] = {}  # Optuna trial number -> checkpoint steps reported to it
        self.handed_out = 0
        self.told_from_store = 0
        self.outcomes = {"done": 0, "failed": 0, "stopped": 0}

    def planned(self, kept: tuple[int, ...], full_fidelity: bool = False) -> Planned:
        training = self.config.training
        if self.eval_every_steps:
            import dataclasses

            training = dataclasses.replace(training, eval_every_steps=self.eval_every_steps)  # not in the hash
        config = TrialConfig(task=self.config.task, model=self.config.model, strategy="mask", layers=kept,
                             lora=self.config.lora, training=training, seed=self.config.seed,
                             data_dir=self.config.data_dir, sweep=self.config.name, stage="search")
        prepared = prepare_trial(config, self.task)
        return Planned(config, prepared.config_hash, prepared.kept_layers, self.config.task, "search",
                       self.task.fingerprint, full_fidelity)

    def next(self, max_known_in_a_row: int = 50, resample_after: int = 10):
        """The next mask to train, None to wait for the running ones, or DONE.

        A sampler that keeps proposing masks already tried (TPE does, in a small space) is handed a random
        untried mask after ``resample_after`` such proposals in a row."""
        if self.handed_out >= self.config.budget:
            return DONE if not self.running else None
        for asked in range(max_known_in_a_row):
            if len(self._settled()) >= self.space_size:
                break  # asking again could only bring back a mask already settled
            if asked and asked % resample_after == 0:
                untried = self._untried()
                if untried is not None:
                    self.study.enqueue_trial(mask_params(untried, self.num_layers))
            trial = self.study.ask()
            kept = tuple(self.space(trial)["layers"])
            trial.set_user_attr("kept_layers", list(kept))  # forced layers are not params
            planned = self._handle(trial, kept)
            if planned is not None:
                return planned
        # Only known or running masks come back: the space is exhausted (or nearly): wait, or stop.
        return None if self.running else DONE

    def _handle(self, trial, kept: tuple[int, ...]) -> Planned | None:
        """Tell Optuna what is known of ``kept`` (None), or hand it out to train."""
        from optuna.trial import TrialState

        planned = self.planned(kept)
        if planned.config_hash in self.known:  # trained before: tell Optuna, ask again
            self.study.tell(trial, self._values(self.known[planned.config_hash]))
            self.known_masks.add(kept)
            self.told_from_store += 1
        elif planned.config_hash in self.running:  # wait for that run
            self.parked.setdefault(planned.config_hash, []).append(trial)
        elif planned.config_hash in self.failed:  # failed in this run: retried by the next run, not now
            self.study.tell(trial, state=TrialState.FAIL)
        elif planned.config_hash in self.stopped and not self._earns_promotion(planned.config_hash):
            self._tell_stopped(trial, self.stopped[planned.config_hash])
        else:
            if planned.config_hash in self.stopped:
                self.promoted.add(planned.config_hash)
                planned = self.planned(kept, full_fidelity=True)
            self.running[planned.config_hash] = (trial, kept)
            self.handed_out += 1
            return planned
        return None

    def _settled(self) -> set[tuple[int, ...]]:
        """The masks with nothing left to do in this run: trained, training, failed, or stopped early with no
        claim to be trained to the end (see ``_earns_promotion``)."""
        return (self.known_masks | {kept for _, kept in self.running.values()} | set(self.failed.values())
                | {tuple(r["kept_layers"]) for h, r in self.stopped.items() if not self._earns_promotion(h)})

    def _untried(self) -> tuple[int, ...] | None:
        """A random mask of the space not yet settled (``_settled``): never tried, or stopped and now among
        the best at its rung (None: no such)."""
        import itertools
        import random

        tried = self._settled()
        rng = random.Random(self.config.sampler_seed * 100_003 + self.handed_out)
        if self.space_size <= 50_000:
            every = [m for n in range(self.low, self.high + 1) for m in itertools.combinations(range(self.num_layers), n)]
            untried = [m for m in every if m not in tried]
            return rng.choice(untried) if untried else None
        for _ in range(1000):
            mask = tuple(sorted(rng.sample(range(self.num_layers), rng.randint(self.low, self.high))))
            if mask not in tried:
                return mask
        return None

    def progress(self, planned: Planned, step: int, score: float) -> None:
        """A running mask's rung score at a checkpoint (as its worker reported it), told to its Optuna trial as
        an intermediate value (TPE ranks stopped masks by it; the dashboard draws it)."""
        entry = self.running.get(planned.config_hash)
        if entry is not None:
            entry[0].report(score, step)
            self.reported.setdefault(entry[0].number, set()).add(step)

    def finish(self, planned: Planned, result: TrialResult) -> None:
        from optuna.trial import TrialState

        trial, kept = self.running.pop(planned.config_hash)
        waiting = [trial] + self.parked.pop(planned.config_hash, [])
        if result.status == "ok":
            self.outcomes["done"] += 1
            self.known[planned.config_hash] = result.to_row()
            self.stopped.pop(planned.config_hash, None)
            self.known_masks.add(kept)
            for each in waiting:
                self.study.tell(each, self._values(result))
        elif result.status == "stopped":
            self.outcomes["stopped"] += 1
            self.stopped[planned.config_hash] = result.to_row()
            for each in waiting:
                self._tell_stopped(each, result.to_row())
        else:
            self.outcomes["failed"] += 1
            self.failed[planned.config_hash] = kept
            for each in waiting:
                self.study.tell(each, state=TrialState.FAIL)

    def _tell_stopped(self, trial, row: dict) -> None:
        """Tell Optuna a stopped mask: PRUNED, with the rung score of each checkpoint it reached."""
        from optuna.trial import TrialState

        reported = self.reported.pop(trial.number, set())
        for step, value in rung_curve(row, self.config.rung_score).items():
            if step not in reported:
                trial.report(value, step)
        self.study.tell(trial, state=TrialState.PRUNED)

    def _earns_promotion(self, config_hash: str) -> bool:
        """Whether a stopped mask, asked for again, scores (its rung score) among the best 1/reduction_factor of
        every mask of this search that reached the step where it stopped (once only)."""
        if config_hash in self.promoted:
            return False
        row, score = self.stopped[config_hash], self.config.rung_score
        step = row["train_steps"]
        value = rung_curve(row, score).get(step, rung_score(score, row["dev_f1"], row.get("dev_eval_loss")))
        peers = [rung_curve(r, score).get(step) for r in [*self.known.values(), *self.stopped.values()]]
        peers = [v for v in peers if v is not None]
        if len(peers) < self.config.reduction_factor:
            return False
        cutoff = statistics.quantiles(peers, n=self.config.reduction_factor, method="inclusive")[-1]
        return value >= cutoff

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """Progress, as a sweep's plan gives it: new masks planned (the budget), trained, failed, stopped."""
        done = self.outcomes
        return {(self.config.task, "search"): {"planned": self.config.budget, "done": done["done"] + done["stopped"],
                                               "failed": done["failed"]}}

    def _values(self, row):
        values = [float(row[column]) for column in self.columns]
        return values[0] if len(values) == 1 else values

    def front(self) -> list[dict]:
        return pareto_front(self.study, self.columns)

    def best_rows(self) -> list[dict]:
        """The front's masks as rows: kept layers, the objective's columns, the Optuna trial, and the rest of
        the row (n_kept_layers and latency_ms among them), for combining searches' fronts."""
        rows = {tuple(r["kept_layers"]): r for r in self.known.values()}
        return [rows[tuple(entry["kept_layers"])] | entry for entry in self.front() if tuple(entry["kept_layers"]) in rows]
