"""The one aggregation every view starts from (DuckDB over the Parquet files, reading only the columns it
needs): successful rows, one per (configuration hash, strategy, N) (the latest when a trial was re-run),
grouped by task, model, settings, strategy, N and kept layers. Seeds give ``f1`` (mean), ``f1_std`` and the
95% Student-t interval ``f1_ci_low``/``f1_ci_high``.

>>> aggregate(ResultsStore("results/quick")).column_names[:3]  # doctest: +SKIP
['task', 'model', 'num_layers']
"""

from __future__ import annotations

import math

import pyarrow as pa

from frugalray.results.filters import where_clauses
from frugalray.results.store import ResultsStore

# The training recipe's fields group too: runs of two recipes are never seeds of one configuration, nor are runs
# with and without early stopping.
RECIPE = ["max_grad_norm", "length_group_batches", "warmup_ratio", "weight_decay", "lr_schedule", "dtype",
          "trim_vocabulary", "early_stopping_patience"]
# How a pruned model recovered groups too (null: rows written before these columns, the study's recovery), and
# how its teacher trained when not as the student did.
RECOVERY = ["init", "recovery", "distill_temperature", "distill_alpha", "distill_beta", "distill_hidden_map",
            "partial_layers", "teacher_epochs", "teacher_patience"]
# Rows written before a column existed trained as this value says (upgrade_training's values).
UPGRADED = {"variant": "'fp32'", "dtype": "'auto'", "trim_vocabulary": "false", "early_stopping_patience": "0"}
# A variant (int8, ONNX) of a trained model is a configuration of its own; rows older than variants are fp32.
GROUP = ["task", "model", "num_layers", "lora", "lora_train_head", "learning_rate", "epochs", "batch_size",
         "max_length", *RECIPE, *RECOVERY, "strategy", "strategy_n", "kept_layers", "variant"]
# compute_seconds: a trial's training plus, for a student of the fine-tuned full model, its share of the
# teacher's training (split over the students that share that teacher) and the teacher logits it computed.
MEAN = ["f1", "accuracy", "precision", "recall", "dev_f1", "train_seconds", "compute_seconds", "latency_ms",
        "model_mib", "train_kwh", "eval_kwh", "train_co2_kg", "eval_co2_kg"]
SAME = ["trainable_params", "total_params", "majority_f1",  # identical across seeds
        "latency_batch_size", "latency_seq_len", "energy_method"]  # the same measurement across seeds
EVERY = ["latency_isolated"]  # true when every seed's was
STD = ["f1", "train_seconds"]  # metrics that get a std column
# read too: to keep successful rows, the latest of each configuration, and the students' share of their teacher
READ = ["status", "config_hash", "finished_at", "n_kept_layers", "seed", "degenerate", "teacher_trial_id",
        "teacher_seconds", "teacher_logits_seconds"]
BASE = ("epochs", "learning_rate", "batch_size", "max_length", *RECIPE)


def aggregate(source: ResultsStore | pa.Table, where: list[str] | None = None) -> pa.Table:
    """One row per (task, model, settings, strategy, N, kept layers) with seeds aggregated."""
    import duckdb

    columns = sorted(set(GROUP + MEAN + SAME + EVERY + READ) - {"compute_seconds"})
    clauses, params = where_clauses(where or [])
    filters = " AND ".join(["status = 'ok'"] + clauses)
    means = ", ".join(f'avg("{m}") AS "{m}"' for m in MEAN)
    stds = ", ".join(f'stddev_samp("{m}") AS "{m}_std"' for m in STD)
    same = ", ".join(f'max("{m}") AS "{m}"' for m in SAME)
    every = ", ".join(f'bool_and("{m}") AS "{m}"' for m in EVERY)
    selected = ", ".join(f'coalesce("{c}", {UPGRADED[c]}) AS "{c}"' if c in UPGRADED else f'"{c}"' for c in columns)
    keys = ", ".join(f'"{c}"' for c in GROUP)
    # One row per training (a trial re-run by hand keeps its latest result), then seeds aggregated.
    sql = f"""
        WITH latest AS (
            SELECT {selected} FROM trials WHERE {filters}
            QUALIFY row_number() OVER (PARTITION BY config_hash, strategy, strategy_n ORDER BY finished_at DESC) = 1
        ), runs AS (
            SELECT *, train_seconds + coalesce(teacher_logits_seconds, 0) + coalesce(teacher_seconds / count(
                DISTINCT config_hash) OVER (PARTITION BY teacher_trial_id), 0) AS compute_seconds
            FROM latest
        )
        SELECT {keys}, any_value(n_kept_layers) AS n_kept_layers, count(*) AS seeds,
               count(*) FILTER (WHERE degenerate) AS degenerate, {means}, {stds}, {same}, {every}
        FROM runs GROUP BY {keys}
        ORDER BY task, model, lora, n_kept_layers, strategy, strategy_n, variant
    """
    connection = duckdb.connect()
    if isinstance(source, ResultsStore):
        source.register(connection, "trials")
    else:
        connection.register("trials", source)
    table = connection.sql(sql, params=params).to_arrow_table()
    return with_ci(table)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and the half-width of its 95% Student-t interval (nan for one value).

    >>> [round(x, 3) for x in mean_ci([0.30, 0.32, 0.34])]
    [0.32, 0.05]
    """
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, _half_width(len(values), std)


def _half_width(n: int, std: float) -> float:
    """Half-width of the 95% Student-t interval of a mean of ``n`` values with sample deviation ``std``."""
    from scipy.special import stdtrit  # Student-t quantile, without importing all of scipy.stats

    return float(stdtrit(n - 1, 0.975)) * std / math.sqrt(n)


def with_ci(table: pa.Table) -> pa.Table:
    """Add the 95% Student-t interval of the mean F1 (null with one seed)."""

    seeds = table.column("seeds").to_pylist()
    means, stds = table.column("f1").to_pylist(), table.column("f1_std").to_pylist()
    low, high = [], []
    for n, mean, std in zip(seeds, means, stds):
        if n < 2 or mean is None or std is None:
            low.append(None), high.append(None)
            continue
        half = _half_width(n, std)
        low.append(mean - half), high.append(mean + half)
    return table.append_column("f1_ci_low", pa.array(low, pa.float64())).append_column(
        "f1_ci_high", pa.array(high, pa.float64()))
