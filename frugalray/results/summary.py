"""What a sweep prints when it ends: per task, every strategy's mean F1 over seeds with its cost, the
majority-class baseline, degenerate results and failures; and the HTML report, when the sweep asks for one.

>>> summary(plan)  # doctest: +SKIP
"""

from __future__ import annotations

import sys

SUMMARY_SQL = """
SELECT * EXCLUDE (stage_order) FROM (
    SELECT list_position(?, stage) AS stage_order,
           stage, strategy, strategy_n AS n, n_kept_layers AS layers,
           list_aggr(kept_layers, 'string_agg', ',') AS kept_layers, lora, epochs, count(*) AS seeds,
           round(avg(f1), 4) AS f1, round(stddev_samp(f1), 4) AS f1_std,
           count(*) FILTER (WHERE degenerate) AS degenerate, round(avg(train_seconds), 2) AS train_s,
           round(avg(latency_ms), 1) AS latency_ms, round(avg(model_mib), 1) AS mib
    FROM trials
    WHERE sweep = ? AND task = ? AND status = 'ok'
    GROUP BY ALL
)
ORDER BY stage_order, layers, strategy, n
"""

# Configurations whose latest row failed: a failure that a later run of the same config hash fixed is not one.
FAILED_SQL = """
SELECT count(*) FROM (
    SELECT status FROM trials WHERE sweep = ? AND task = ?
    QUALIFY row_number() OVER (PARTITION BY config_hash ORDER BY finished_at DESC NULLS LAST) = 1
) WHERE status = 'failed'
"""

BASELINE_SQL = "SELECT max(majority_f1), max(dev_majority_f1) FROM trials WHERE sweep = ? AND task = ?"


def summary(plan, stream=None) -> None:
    """Per task of ``plan``'s sweep: its strategies' mean test F1, cost, degenerate seeds and failures
    (to ``stream``, default: the standard output at the time of the call)."""
    stream = stream or sys.stdout
    import duckdb

    from frugalray.results.tables import render
    from frugalray.strategies import STAGE_NAMES

    stages = list(STAGE_NAMES)
    connection = duckdb.connect()
    plan.store.register(connection, "trials")
    for task in plan.sweep.tasks:
        name, keys = plan.names[task], [plan.sweep.name, plan.names[task]]
        table = connection.sql(SUMMARY_SQL, params=[stages, *keys]).to_arrow_table()
        failed = connection.sql(FAILED_SQL, params=keys).fetchall()[0][0]
        test_baseline, dev_baseline = connection.sql(BASELINE_SQL, params=keys).fetchall()[0]
        baseline = "" if test_baseline is None else (
            f"; majority-class baseline F1 {test_baseline:.4f} test, {dev_baseline:.4f} dev")
        print(f"\n== {name} ({plan.sweep.model}, {len(plan.sweep.seeds)} seed(s)); failed trials: {failed}{baseline}",
              file=stream)
        print(render(table), file=stream)
        degenerate = sum(table.column("degenerate").to_pylist()) if table.num_rows else 0
        if degenerate:
            print(f"# {degenerate} result(s) are degenerate: one class predicted everywhere, or no better than the "
                  f"majority-class baseline", file=stream)


def write_sweep_report(sweep) -> None:
    """The HTML report of a finished sweep; a report that cannot be written never fails the sweep."""
    from frugalray.results.metadata import reference_tasks
    from frugalray.results.reference import STUDY, load_reference
    from frugalray.results.report import write_report
    from frugalray.results.store import ResultsStore

    try:
        store = ResultsStore(sweep.results)
        reference = load_reference([STUDY], reference_tasks(store) | dict(sweep.reference_tasks))
        path = write_report(store, sweep.report, reference=reference,
                            title=f"frugalray: sweep {sweep.name} ({sweep.model})")
        print(f"Report: {path}")
    except Exception as error:  # the results are safe; only the report is missing
        print(f"frugalray: the report was not written: {type(error).__name__}: {error}", file=sys.stderr)
