"""Render result tables for people: terminal, CSV or Markdown."""

from __future__ import annotations

import csv
import io

import pyarrow as pa

from frugalray._registry import FrugalrayError

DEFAULT_COLUMNS = [
    "task", "model", "strategy", "strategy_n", "kept_layers", "lora", "epochs", "seed", "status",
    "f1", "accuracy", "train_seconds", "model_mib", "latency_ms",
]
FORMATS = ("table", "csv", "markdown")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


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
    rows = [[_cell(row[c]) for c in columns] for row in table.select(columns).to_pylist()]
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
