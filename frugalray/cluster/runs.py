"""A sweep and a layer-mask search, run on Ray: each builds its planner and hands it to the driver.

Re-running the same sweep resumes it: trials whose configuration already has a row are skipped, and a
finished sweep returns without starting Ray. A search continues its Optuna study.

>>> run_sweep(SweepConfig(tasks=("demo_pos",), model="minilm", seeds=(0,), results="results"))  # doctest: +SKIP
>>> run_search(SearchConfig(task="demo_pos", model="minilm", budget=20, max_layers=3))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import os
import sys

from frugalray.cluster.driver import DEFAULT_RUNNER, run_planner
from frugalray.cluster.placement import CpuPlacer, placer_for
from frugalray.cluster.progress import Progress
from frugalray.cluster.resources import check_fit, estimate_memory_gib
from frugalray.cluster.session import ensure_ray
from frugalray.config import OBJECTIVES, ResourceRule, SearchConfig, SweepConfig
from frugalray.results.metadata import record_run
from frugalray.results.fronts import write_front
from frugalray.results.store import ResultsStore
from frugalray.study.plan import StudyPlan
from frugalray.study.planned import Planned
from frugalray.training.prepared import layer_count


# Trials of a sweep that may wait for resources at once (Tune's floor for a grid search): its whole demand
# reaches the autoscaler, and idle nodes take trials while others run (``driver._tune_settings``).
SWEEP_PENDING = 200


def trial_estimate(model: str):
    """The resident training memory (GiB) of a planned trial of ``model``: a function of the planned trial."""
    from frugalray.model.loading import load_model_config

    model_config = load_model_config(model).to_dict()

    def estimate(planned: Planned) -> float:
        config = planned.config
        return estimate_memory_gib(model_config, len(planned.kept_layers), config.training.batch_size,
                                   config.training.max_length, lora=config.lora is not None,
                                   lora_r=config.lora.r if config.lora else 8)

    return estimate


def trial_placer(rule: ResourceRule, model: str, stream):
    """How the trials of a sweep or search are placed (``frugalray.cluster.placement``); Ray is up."""
    return placer_for(rule, trial_estimate(model), say=lambda line: print(line, file=stream, flush=True))


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def run_sweep(sweep: SweepConfig, *, runner: str = DEFAULT_RUNNER, ray_init: dict | None = None,
              connect=None, stream=None) -> StudyPlan:
    """Run (or resume) a sweep to the end; returns the plan, whose store holds every row.

    When Ray is not yet initialized: ``ray.init(**ray_init)`` if given, else ``connect()``, else
    ``connect_or_start_ray()`` (the cluster named by RAY_ADDRESS, or a private local Ray). Progress goes to
    ``stream`` (default: the standard output at the time of the call)."""
    stream = stream or sys.stdout
    sweep = dataclasses.replace(  # Ray workers run in their own folders: relative paths would move
        sweep, results=_absolute(sweep.results),
        tasks=tuple(_absolute(t) if t.endswith(".json") else t for t in sweep.tasks),
        data_dirs=tuple((_absolute(t) if t.endswith(".json") else t, _absolute(d)) for t, d in sweep.data_dirs),
    )
    store = ResultsStore(sweep.results).check_writable()  # an unreachable location fails before anything runs
    # Later readers (frugalray report, results --view) pair tasks with the study as this sweep does.
    record_run(store, "sweeps", sweep.name, sweep.to_dict(), reference_tasks=dict(sweep.reference_tasks))
    plan = StudyPlan(sweep, store)
    plan.expand()
    if plan.finished():  # a finished sweep: nothing to schedule, no cluster needed
        print(f"frugalray: sweep '{sweep.name}' is complete in {sweep.results}; nothing to run", file=stream)
        return plan
    ensure_ray(ray_init, connect)
    placer = trial_placer(sweep.resources, sweep.model, stream)
    placer.check(plan.queue)  # a trial no card of the cluster holds fails here, before anything runs
    if isinstance(placer, CpuPlacer):  # GPU trials wait for the GPU workers their demand makes the autoscaler start
        check_fit([placer(p).resources for p in plan.queue], sweep.autoscale_wait_s)
    run_planner(plan, name=sweep.name, results=sweep.results, demand=placer, runner=runner, retries=sweep.retries,
                max_failures=sweep.max_failures, max_concurrent=sweep.max_concurrent, verbose=sweep.verbose,
                callbacks=[Progress(plan.counts, stream=stream, live=False if sweep.verbose else None)],
                max_pending=SWEEP_PENDING)
    for note in plan.notes:
        print(f"note: {note}", file=stream)
    return plan


def run_search(config: SearchConfig, *, runner: str = DEFAULT_RUNNER, ray_init: dict | None = None,
               connect=None, stream=None, executor=None) -> dict:
    """Train up to ``budget`` new masks; returns the study (the last one, with halving per kept-layer count),
    the Pareto front, the rows of its masks and how many masks the store told.

    ``executor`` replaces Ray Tune's run (``driver.run_planner``, same signature), e.g. a virtual clock that
    replays a recorded table (``frugalray.cluster.simulated.VirtualRun``): Ray is then not started.

    With ``halving`` and a front objective (f1_vs_layers, f1_vs_latency), one single-objective search per
    kept-layer count: a rung then compares masks of one depth only, where a deeper mask would otherwise win
    every rung and the front's shallow end would never train to the end. The front is the best mask of each
    depth that trained to the end, less the dominated ones."""
    from frugalray.cluster.halving import halving_scheduler
    from frugalray.model.importance import proxy_prior, proxy_scores
    from frugalray.study.search import MaskSearch

    stream = stream or sys.stdout
    config = dataclasses.replace(config, results=_absolute(config.results),  # workers run in folders of their own
                                 task=_absolute(config.task) if config.task.endswith(".json") else config.task,
                                 data_dir=_absolute(config.data_dir) if config.data_dir else None)
    store = ResultsStore(config.results).check_writable()
    record_run(store, "searches", config.name, config.to_dict())
    low, high = config.bounds(layer_count(config.model))
    scores = proxy_scores(config.task, config.model, config.data_dir) if config.prior == "proxy" else None
    per_depth = config.halving and len(OBJECTIVES[config.objective][0]) > 1
    parts = _depth_searches(config, low, high) if per_depth else [config]
    searches = [MaskSearch(part, store, proxy_prior(scores, *part.bounds(layer_count(config.model)),
                                                    part.prior_masks) if scores else [])
                for part in parts]  # bad settings and tasks fail here, before a Ray starts
    schedulers = [halving_scheduler(s.config, s.max_steps) if s.config.halving else None for s in searches]
    if executor is None:
        ensure_ray(ray_init, connect)
        demand = trial_placer(config.resources, config.model, stream)
    else:
        demand = None
    for search, scheduler in zip(searches, schedulers):
        _run_one(search, scheduler, runner, demand, stream, executor)
    front = _front(config, searches)
    write_front(store, config.name, config.objective, front)
    told = sum(s.told_from_store for s in searches)
    print(f"search '{config.name}': {sum(len(s.study.trials) for s in searches)} Optuna trials, {told} told from "
          f"stored results, {sum(s.outcomes['stopped'] for s in searches)} stopped early, Pareto front: "
          f"{len(front)} mask(s)", file=stream)
    return {"study": searches[-1].study, "front": front, "told_from_store": told, "searches": searches}


def _depth_searches(config: SearchConfig, low: int, high: int) -> list[SearchConfig]:
    """One single-objective search per kept-layer count, the budget shared out (what a depth cannot use,
    having fewer masks, goes to the next)."""
    import math

    count, parts, left = layer_count(config.model), [], config.budget
    for n in range(high, low - 1, -1):
        share = min(math.comb(count, n), math.ceil(left / (n - low + 1)))
        if share:
            parts.append(dataclasses.replace(config, objective="f1", exactly=n, budget=share,
                                             name=f"{config.name}-n{n}"))
        left -= share
    return parts


def _run_one(search, scheduler, runner: str, demand, stream, executor=None) -> None:
    config = search.config
    if executor is not None:
        executor(search, name=config.name, results=config.results, demand=lambda planned: {"CPU": 1},
                 runner=runner, max_concurrent=config.max_concurrent, scheduler=scheduler,
                 rung_score=config.rung_score)
        return
    largest = search.planned(tuple(range(search.high)))  # the largest mask the space allows
    demand.check([largest])
    if isinstance(demand, CpuPlacer):
        check_fit([demand(largest).resources])
    run_planner(search, name=config.name, results=config.results, demand=demand, runner=runner,
                max_concurrent=config.max_concurrent, callbacks=[Progress(search.counts, stream=stream)],
                scheduler=scheduler, rung_score=config.rung_score)


def _front(config: SearchConfig, searches) -> list[dict]:
    """The searches' Pareto front on the objective's columns; per-depth searches each give their best."""
    from frugalray.study.masks import non_dominated

    if len(searches) == 1 and searches[0].config.objective == config.objective:
        return searches[0].front()
    columns, directions = OBJECTIVES[config.objective]
    best = [row for search in searches for row in search.best_rows()]
    return non_dominated(best, columns, directions)
