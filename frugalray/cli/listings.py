"""The listings of frugalray's vocabulary: ``tasks``, ``strategies``, ``stages`` and ``models`` (names for
--task, --strategy, --stages and --model), each with what it needs or takes."""

from __future__ import annotations


def tasks() -> int:
    """List the registered tasks (names for --task).

    Example: frugalray tasks
    """
    from frugalray.data.tasks import TASKS

    for name in TASKS:
        spec = TASKS.get(name)
        print(f"{name:16} {spec.head:8} {spec.metric:14} {spec.description}")
    return 0


def strategies() -> int:
    """List the pruning strategies and the option of `frugalray trial` each takes (--n, or --layers for mask).

    Example: frugalray strategies
    """
    from frugalray.strategies import STRATEGIES

    for spec in STRATEGIES.entries():
        param = f"--{spec.param}" if spec.param else ""
        print(f"{spec.name:12} {param:9} {spec.family:18} {spec.doc}")
    return 0


def stages() -> int:
    """List a sweep's stages (names for --stages) and what each waits for.

    Example: frugalray stages
    """
    from frugalray.study.stages import STAGES

    for stage in STAGES.entries():
        needs = ", ".join(stage.needs) or "-"
        print(f"{stage.name:12} needs {needs:12} {stage.doc}")
    return 0


def models() -> int:
    """List the registered models (names for --model): what each resolves to, its architecture and layer count
    where its config is on this machine, and whether it loads offline, else how to get it. Nothing is downloaded.

    Example: frugalray models
    """
    from frugalray.model.loading import model_catalog

    rows = [[row["name"], row["type"] or "?", f"{row['layers'] or '?'} layers", row["source"],
             row["here"] or f"not here: {row['get']}"] for row in model_catalog()]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    return 0
