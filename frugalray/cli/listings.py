"""The listings of frugalray's vocabulary: ``tasks``, ``strategies`` and ``stages`` (names for --task,
--strategy and --stages), each with what it needs or takes."""

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
