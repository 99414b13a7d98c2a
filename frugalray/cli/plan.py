"""``frugalray plan FILE``: a sweep's trials and cost, before it runs (no Ray, no training)."""

from __future__ import annotations

from typing import Annotated

import tyro

from frugalray._registry import FrugalrayError

# The plan's own options, taken out of the command line before the sweep's options are parsed.
OPTIONS = {"--gpu": "H100", "--utilisation": None, "--peak-tflops": None, "--store": None}


def plan(file: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="FILE")]) -> int:
    """What a sweep file will run and cost, started nowhere: the trials of each stage and task (staged ones
    estimated), each trial's GPU share, and GPU-hours and CPU-hours on a named card. Every sweep option can be
    given after FILE, as for frugalray sweep FILE; the plan's own options:

      --gpu NAME            the card the trials run on: H100 (default), H200, A100, L4, L40S
      --utilisation U       the share of the card's peak a trial reaches (default 0.3)
      --peak-tflops T       the card's dense bf16 peak, for a card not listed
      --store LOC           a results store whose rows give the measured cost of trials already run
      --task-size TASK=TRAIN,DEV,TEST,WORDS   a task's size where its data is not here (repeatable)

    Example: frugalray plan sweeps/all.py --gpu H100 --tasks wikiner allocine

    Args:
        file: A sweep file (sweeps/all.py): a Python file with SWEEP = dict(...).
    """
    return 0  # main() runs plan itself: the sweep file's settings are the defaults of the options


def plan_main(defaults: dict, argv: list[str], prog: str) -> int:
    from frugalray.cli.run import sweep_settings
    from frugalray.cluster.cost import DEFAULT_UTILISATION, card
    from frugalray.cluster.dry_run import dry_run

    own, sizes, rest = dict(OPTIONS), {}, []
    arguments = iter(argv)
    for argument in arguments:
        name, _, value = argument.partition("=") if argument.startswith("--") else (argument, "", "")
        if name in OWN_NAMES:
            value = value or next(arguments, None)
            if value is None:
                raise FrugalrayError(f"{name} needs a value")
            if name == "--task-size":
                sizes.update(_task_size(value))
            else:
                own[name] = value
        else:
            rest.append(argument)
    sweep = sweep_settings(defaults, rest, prog, "What a sweep will run and cost, before it runs.")
    utilisation = _number("--utilisation", own["--utilisation"]) if own["--utilisation"] else DEFAULT_UTILISATION
    peak = _number("--peak-tflops", own["--peak-tflops"]) if own["--peak-tflops"] else None
    report = dry_run(sweep, card(own["--gpu"], utilisation, peak), own["--store"], sizes)
    print(report.render())
    return 0


OWN_NAMES = (*OPTIONS, "--task-size")


def _number(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FrugalrayError(f"{name} takes a number, got {value!r}") from None


def _task_size(value: str) -> dict:
    task, _, numbers = value.partition("=")
    parts = numbers.split(",")
    if not task or len(parts) != 4:
        raise FrugalrayError(f"--task-size {value!r}: give TASK=TRAIN,DEV,TEST,WORDS, e.g. ftb_ner=9881,1235,1235,28")
    try:
        train, dev, test = (int(p) for p in parts[:3])
        words = float(parts[3])
    except ValueError:
        raise FrugalrayError(f"--task-size {value!r}: TRAIN, DEV and TEST are counts, WORDS a number") from None
    return {task: (train, dev, test, words)}
