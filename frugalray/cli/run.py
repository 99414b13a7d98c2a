"""The commands that train: ``trial``, ``sweep`` (a sweep file) and ``search``.

Sweep and search files (``sweeps/*.py``) call ``sweep_main(SWEEP)`` / ``search_main(SEARCH)``: the file's
settings are the defaults, and every field can be overridden on the command line, the same options as
``frugalray sweep FILE`` and ``frugalray search`` take.
"""

from __future__ import annotations

import dataclasses
import runpy
import sys
from pathlib import Path
from typing import Annotated

import tyro

from frugalray._registry import FrugalrayError
from frugalray.cli.options import cli_view, from_view, parse, to_view
from frugalray.config import LoraSettings, SearchConfig, SweepConfig, TrialConfig

TrialView = cli_view(TrialConfig, hide=("sweep", "stage"), types={"scores": tuple[float, ...] | None})
SweepView = cli_view(SweepConfig)
SearchView = cli_view(SearchConfig)


def trial(
    config: Annotated[TrialView, tyro.conf.arg(name="")],
    results: str,
    lora_config: str | None = None,
    device: str | None = None,
) -> int:
    """Train, evaluate and record one pruned model (best/drop_worst rank layers by the store's single(k) rows).

    Example: frugalray trial --task demo_pos --strategy first --n 2 --training.epochs 1 --results results/

    Args:
        results: Results location: a folder, s3://bucket/prefix or gs://...
        lora_config: LoRA settings JSON (frugalray's keys, or peft's adapter_config.json); turns LoRA on.
        device: cpu, cuda, cuda:1... (default: cuda when present).
    """
    import pyarrow as pa

    from frugalray.results.schema import SCHEMA
    from frugalray.results.store import ResultsStore
    from frugalray.results.tables import render
    from frugalray.strategies import STRATEGIES
    from frugalray.training.environment import check_device
    from frugalray.training.trial import execute_trial, prepare_trial

    check_device(device)
    config = from_view(config)
    if lora_config:
        config = dataclasses.replace(config, lora=LoraSettings.from_json(lora_config))
    store = ResultsStore(results).check_writable()
    if STRATEGIES.get(config.strategy).needs_scores and config.scores is None:
        config = dataclasses.replace(config, scores=_layer_scores(config, store))
    prepared = prepare_trial(config)  # bad input fails here, before anything is written
    result = execute_trial(config, store, prepared=prepared, raise_input_errors=True, device=device, alone=True)
    print(render(pa.Table.from_pylist([result.to_row()], schema=SCHEMA)))
    if result.status != "ok":
        print(f"frugalray: trial failed (recorded in {results}): {result.error}", file=sys.stderr)
        return 1
    return 0


def _layer_scores(config: TrialConfig, store) -> tuple:
    from frugalray.model import importance
    from frugalray.study.scores import single_layer_scores
    from frugalray.strategies import STRATEGIES

    source = STRATEGIES.get(config.strategy).scores_from
    if source == "single_layer":
        return single_layer_scores(store, config.task, config.model)
    return importance.proxy_of(source, config.task, config.model, config.data_dir)  # no training needed


def load_settings_file(path: str, name: str) -> dict:
    """The ``name`` dict of a sweep or search file (``SWEEP = dict(...)``)."""
    if not Path(path).is_file():
        raise FrugalrayError(f"Sweep file {path!r} does not exist (give a file such as sweeps/quick.py)")
    values = runpy.run_path(path, run_name="frugalray_settings").get(name)
    if not isinstance(values, dict):
        raise FrugalrayError(f"{path}: defines no {name} = dict(...) of settings")
    return values


def sweep_settings(defaults: dict, argv: list[str] | None, prog: str, description: str) -> SweepConfig:
    """A sweep file's settings (``defaults``) overridden from the command line, its tasks checked."""
    from frugalray.study.plan import check_tasks

    base = to_view(SweepView, SweepConfig.from_dict(defaults, source="sweep file"))
    options = parse(SweepView, argv, prog, base, description=description)
    if options.data_dirs == base.data_dirs:  # the file's folders, for the tasks this run keeps
        options = dataclasses.replace(options, data_dirs=tuple(p for p in base.data_dirs if p[0] in options.tasks))
    return check_tasks(from_view(options))  # a misspelt task fails here, before Ray starts


def sweep_main(defaults: dict, argv: list[str] | None = None, runner: str | None = None,
               prog: str = "python SWEEP_FILE"):
    """Run (or resume) a sweep: ``defaults`` (a sweep file's SWEEP) overridden from the command line."""
    from frugalray.cluster.driver import DEFAULT_RUNNER
    from frugalray.cluster.runs import run_sweep
    from frugalray.results.summary import summary, write_sweep_report

    try:
        sweep = sweep_settings(defaults, argv, prog, "Run (or resume) a frugalray sweep.")
        plan = run_sweep(sweep, runner=runner or DEFAULT_RUNNER)
    except FrugalrayError as error:
        print(f"frugalray: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    summary(plan)
    print(f"\nResults: {sweep.results}  (frugalray results {sweep.results} --view budget)")
    if sweep.report:
        write_sweep_report(sweep)
    return plan


def search_main(defaults: dict, argv: list[str] | None = None, runner: str | None = None,
                prog: str = "python SEARCH_FILE") -> dict:
    """Run a layer-mask search: ``defaults`` (a search file's SEARCH) overridden from the command line."""
    try:
        config = from_view(parse(SearchView, argv, prog, to_view(SearchView, SearchConfig.from_dict(
            defaults, source="search file")), description="Search layer masks with Optuna."))
        return _search(config, runner)
    except FrugalrayError as error:
        print(f"frugalray: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def search(config: Annotated[SearchView, tyro.conf.arg(name="")]) -> int:
    """Search layer masks with Optuna: each mask an ordinary trial, none trained twice.

    Example: frugalray search --task demo_pos --budget 4 --max-layers 2 --training.epochs 1 --results results/
    """
    _search(from_view(config))
    return 0


def _search(config: SearchConfig, runner: str | None = None) -> dict:
    import pyarrow as pa

    from frugalray.cluster.driver import DEFAULT_RUNNER
    from frugalray.cluster.runs import run_search
    from frugalray.results.tables import render

    outcome = run_search(config, runner=runner or DEFAULT_RUNNER)
    print(render(pa.Table.from_pylist(outcome["front"])))
    return outcome
