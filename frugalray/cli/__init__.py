"""The command line, built from the settings dataclasses (``tyro``): every option is a settings field, with
its help text and its default; nested settings are dotted (``--training.epochs 5``).

    frugalray trial --task demo_pos --strategy first --n 2 --training.epochs 3 --results results/
    frugalray sweep sweeps/quick.py --training.epochs 5 --seeds 0,1,2
    frugalray search --task demo_pos --budget 20 --max-layers 3 --objective f1_vs_layers --results results/
    frugalray results results/ --view budget
    frugalray results results/ --check
    frugalray report results/ --out report/

``python sweeps/quick.py ...`` and ``ray submit cluster.yaml sweeps/all.py ...`` take the same options as
``frugalray sweep FILE`` (``sweep_main``).
"""

from __future__ import annotations

import sys
from typing import Annotated

import tyro

from frugalray._registry import FrugalrayError
from frugalray.cli.options import REGISTRY
from frugalray.cli.run import search_main, sweep_main  # noqa: F401 (what sweep and search files call)

__all__ = ["main", "search_main", "sweep_main"]


def _commands() -> dict:
    from frugalray.cli import listings, measure, plan, read, run
    from frugalray.cluster import launcher_config

    return {
        "trial": run.trial, "sweep": sweep, "search": run.search, "results": read.results, "report": read.report,
        "export": read.export, "importance": measure.importance, "bench-latency": measure.bench_latency,
        "tasks": listings.tasks, "strategies": listings.strategies, "stages": listings.stages,
        "models": listings.models,
        "cluster-check": launcher_config.cluster_check, "plan": plan.plan,
    }


def sweep(file: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="FILE")]) -> int:
    """Run (or resume) the sweep a sweep file defines; every setting can be overridden after FILE
    (frugalray sweep FILE --help lists them, with the file's values as defaults).

    Example: frugalray sweep sweeps/quick.py --tasks demo_pos --seeds 0 --training.epochs 1

    Args:
        file: A sweep file (sweeps/quick.py, sweeps/all.py): a Python file with SWEEP = dict(...).
    """
    return 0  # main() runs sweep files itself: their settings are the defaults of the options


def main(argv: list[str] | None = None) -> int:
    from frugalray.cli.options import CONFIG
    from frugalray.cli.run import load_settings_file

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(argv) >= 2 and argv[0] == "sweep" and not argv[1].startswith("-"):
            sweep_main(load_settings_file(argv[1], "SWEEP"), argv[2:], prog=f"frugalray sweep {argv[1]}")
            return 0
        if len(argv) >= 2 and argv[0] == "plan" and not argv[1].startswith("-"):
            from frugalray.cli.plan import plan_main

            return plan_main(load_settings_file(argv[1], "SWEEP"), argv[2:], prog=f"frugalray plan {argv[1]}")
        with REGISTRY:
            return tyro.extras.subcommand_cli_from_dict(_commands(), args=argv, prog="frugalray", config=CONFIG,
                                                        description=__doc__.split("\n\n")[0])
    except FrugalrayError as error:
        print(f"frugalray: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # tyro's usage errors and --help
        return exit_.code if isinstance(exit_.code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
