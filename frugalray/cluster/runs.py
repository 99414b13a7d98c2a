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

from frugalray.cluster.driver import DEFAULT_RUNNER, check_fit, cluster_has_gpus, run_planner
from frugalray.cluster.progress import Progress
from frugalray.cluster.resources import estimate_memory_gib
from frugalray.cluster.session import ensure_ray
from frugalray.config import ResourceRule, SearchConfig, SweepConfig
from frugalray.results.metadata import record_run
from frugalray.results.store import ResultsStore
from frugalray.study.plan import StudyPlan
from frugalray.study.planned import Planned
from frugalray.training.trial import layer_count


def trial_demand(rule: ResourceRule, model: str, has_gpus: bool):
    """The Ray resources of a planned trial, from its memory estimate: a function of the planned trial."""
    from frugalray.model.loading import load_model_config

    model_config = load_model_config(model).to_dict()

    def demand(planned: Planned) -> dict[str, float]:
        config = planned.config
        estimate = estimate_memory_gib(model_config, len(planned.kept_layers), config.training.batch_size,
                                       config.training.max_length, lora=config.lora is not None,
                                       lora_r=config.lora.r if config.lora else 8)
        return rule.for_trial(estimate, has_gpus)

    return demand


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
    demand = trial_demand(sweep.resources, sweep.model, cluster_has_gpus())
    check_fit([demand(p) for p in plan.queue], sweep.autoscale_wait_s)
    run_planner(plan, name=sweep.name, results=sweep.results, demand=demand, runner=runner, retries=sweep.retries,
                max_failures=sweep.max_failures, max_concurrent=sweep.max_concurrent, verbose=sweep.verbose,
                callbacks=[Progress(plan.counts, stream=stream, live=False if sweep.verbose else None)])
    for note in plan.notes:
        print(f"note: {note}", file=stream)
    return plan


def run_search(config: SearchConfig, *, runner: str = DEFAULT_RUNNER, ray_init: dict | None = None,
               connect=None, stream=None) -> dict:
    """Train up to ``budget`` new masks; returns the study, its Pareto front and how many masks the store told."""
    stream = stream or sys.stdout
    from frugalray.model.importance import proxy_prior, proxy_scores
    from frugalray.study.search import MaskSearch, write_front

    config = dataclasses.replace(config, results=_absolute(config.results))
    store = ResultsStore(config.results).check_writable()
    record_run(store, "searches", config.name, config.to_dict())
    prior = []
    if config.prior == "proxy":
        low, high = config.bounds(layer_count(config.model))
        prior = proxy_prior(proxy_scores(config.task, config.model, config.data_dir), low, high)
    search = MaskSearch(config, store, prior)
    ensure_ray(ray_init, connect)
    demand = trial_demand(config.resources, config.model, cluster_has_gpus())
    check_fit([demand(search.planned(tuple(range(search.high))))])  # the largest mask the space allows
    run_planner(search, name=config.name, results=config.results, demand=demand, runner=runner,
                max_concurrent=config.max_concurrent, callbacks=[Progress(search.counts, stream=stream)])
    front = search.front()
    write_front(store, config.name, config.objective, front)
    print(f"search '{config.name}': {len(search.study.trials)} Optuna trials, {search.told_from_store} told from "
          f"stored results, Pareto front: {len(front)} mask(s)", file=stream)
    return {"study": search.study, "front": front, "told_from_store": search.told_from_store}

