"""The Pareto fronts of layer-mask searches, stored beside the trials as ``fronts/<search>.parquet``.

A front's columns are typed like the trials' (``kept_layers`` list<int32>, ``n_kept_layers`` int32,
``dev_f1`` and ``latency_ms`` double: ``SCHEMA``), whatever the Python values were, and fronts written by
older versions (``n_kept_layers`` as double) read back the same. Torch- and Ray-free: ``frugalray results
LOCATION --fronts`` reads them quickly.

>>> write_front(store, "s", "f1_vs_layers", [{"kept_layers": [0, 2], "dev_f1": 0.9, "n_kept_layers": 2,
...                                          "optuna_trial": 4}])  # doctest: +SKIP
>>> read_fronts(store)[0].schema.field("n_kept_layers").type      # doctest: +SKIP
DataType(int32)
"""

from __future__ import annotations

import logging

import pyarrow as pa

from frugalray.config import OBJECTIVES
from frugalray.results.schema import SCHEMA
from frugalray.results.store import ResultsStore

log = logging.getLogger(__name__)


def front_schema(objective: str) -> pa.Schema:
    """search, objective, kept_layers, the objective's columns (typed as in the trials), optuna_trial."""
    columns = OBJECTIVES[objective][0]
    return pa.schema([pa.field("search", pa.string()), pa.field("objective", pa.string()), SCHEMA.field("kept_layers"),
                      *[SCHEMA.field(c) for c in columns], pa.field("optuna_trial", pa.int64())])


def write_front(store: ResultsStore, name: str, objective: str, front: list[dict]) -> str:
    """The Pareto front beside the trials: fronts/<name>.parquet, written atomically; returns its path."""
    schema = front_schema(objective)
    rows = [{"search": name, "objective": objective, **row} for row in front]
    table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema} for row in rows], schema=schema)
    return store.write_table(table, "fronts", f"{name}.parquet")


def read_fronts(store: ResultsStore) -> list[pa.Table]:
    """Every stored front, typed by ``front_schema``; a file that cannot be read is skipped with a warning."""
    import pyarrow.parquet as pq

    fronts = []
    for path in store.files("fronts"):
        try:
            table = pq.read_table(path, filesystem=store.fs)
            objective = table.column("objective")[0].as_py() if table.num_rows else None
            if objective in OBJECTIVES:
                schema = front_schema(objective)
                table = table.select(schema.names).cast(schema)
            fronts.append(table)
        except Exception as error:  # one bad file never hides the others
            log.warning("Skipping front %s: %s: %s", path, type(error).__name__, error)
    return fronts
