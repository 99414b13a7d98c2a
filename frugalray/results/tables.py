"""Render result tables for people: terminal, CSV or Markdown."""

from __future__ import annotations

import csv
import io

import pyarrow as pa

from frugalray._registry import FrugalrayError

DEFAULT_COLUMNS = [
    "task", "model", "strategy", "strategy_n", "kept_layers", "lora", "variant", "epochs", "seed", "status",
    "f1", "accuracy", "train_seconds", "train_kwh", "model_mib", "latency_ms",
]
FORMATS = ("table", "csv", "markdown")


def _cell(value, exact: bool = False) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and exact:
        return repr(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"  # learning rates
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def with_uncertainty(table: pa.Table) -> pa.Table:
    """For people: each ``<p>f1`` with ``<p>f1_std`` and a 95% CI becomes one text column
    ``0.8406 ± 0.0100 [0.8158, 0.8654]`` (just the mean where there is one seed).

    >>> with_uncertainty(pa.table({"f1": [0.5], "f1_std": [0.1], "f1_ci_low": [0.3], "f1_ci_high": [0.7]})).to_pylist()
    [{'f1': '0.5000 ± 0.1000 [0.3000, 0.7000]'}]
    """
    for name in list(table.column_names):
        parts = [f"{name}_std", f"{name}_ci_low", f"{name}_ci_high"]
        if not all(p in table.column_names for p in parts):
            continue
        cells = []
        for row in table.select([name] + parts).to_pylist():
            mean, std, low, high = (row[c] for c in [name] + parts)
            if mean is None:
                cells.append(None)
            elif std is None or low is None:
                cells.append(f"{mean:.4f}")
            else:
                cells.append(f"{mean:.4f} ± {std:.4f} [{low:.4f}, {high:.4f}]")
        table = table.set_column(table.column_names.index(name), name, pa.array(cells, pa.string()))
        table = table.drop_columns(parts)
    return table


def render(table: pa.Table, columns: list[str] | None = None, fmt: str = "table", max_width: int = 60) -> str:
    """Format ``table`` (only ``columns`` when given, else the usual result columns that exist).

    >>> print(render(pa.table({"task": ["pos"], "f1": [0.97]})))
    task  f1
    ----  ------
    pos   0.9700
    """
    if fmt not in FORMATS:
        raise FrugalrayError(f"Unknown format '{fmt}'. Available: {', '.join(FORMATS)}")
    if columns is None:  # whole trial rows get the usual columns; any other table shows all of its own
        is_trials = "config_json" in table.column_names
        columns = [c for c in DEFAULT_COLUMNS if c in table.column_names] if is_trials else table.column_names
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise FrugalrayError(f"Unknown column(s) {missing}; available: {', '.join(table.column_names)}")
    rows = [[_cell(row[c], exact=fmt == "csv") for c in columns] for row in table.select(columns).to_pylist()]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    rows = [[cell if len(cell) <= max_width else cell[: max_width - 1] + "…" for cell in row] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max([len(c)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
