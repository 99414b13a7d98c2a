"""The latency grid a store keeps (``<results>/latency/*.parquet``, written by ``frugalray bench-latency
--results``), read back for the report and the payoff view, and the latency a figure plots, labelled with
what was measured.

>>> grid = read_grid(ResultsStore("results/"))                        # doctest: +SKIP
>>> grid_cells(grid, "minilm", [0, 1, 2], "int8")[(32, 128)]["speedup"]  # doctest: +SKIP
3.4
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
PREFERRED_SHAPE = (32, 128)


def read_grid(store) -> list[dict]:
    """Every latency row of the store; an unreadable file is skipped with a warning naming it."""
    import pyarrow.parquet as pq

    rows = []
    for path in store.files("latency"):
        try:
            table = pq.read_table(path, filesystem=store.fs)
        except Exception as error:  # one bad file never hides the others
            log.warning("Skipping latency file %s: %s", path, error)
            continue
        rows += [_upgrade(row) for row in table.to_pylist()]
    return rows


def _upgrade(row: dict) -> dict:
    """Rows written before the grid (one shape, torch only, ``variant`` naming the layer set) in today's terms:
    they were measured in the calling process, so not isolated."""
    if "layer_set" in row:
        return row
    dtype = row.get("dtype") or "fp32"
    return row | {"layer_set": row.get("variant"), "variant": dtype, "precision": dtype, "runtime": "torch",
                  "isolated": False, "source": None}


def grid_cells(grid: list[dict], model: str, kept_layers, variant: str = "fp32") -> dict[tuple[int, int], dict]:
    """The latest isolated measurement of (model, kept layers, variant) per (batch size, sequence length)."""
    cells: dict[tuple[int, int], dict] = {}
    for row in grid:
        if (row.get("isolated") and row["model"] == model and list(row["kept_layers"]) == list(kept_layers)
                and row["variant"] == variant):
            key = (row["batch_size"], row["seq_len"])
            if key not in cells or row["measured_at"] > cells[key]["measured_at"]:
                cells[key] = row
    return cells


def grid_seq_len(grid: list[dict], model: str) -> int | None:
    """The sequence length a table states for ``model``: 128 when measured, else the most measured one."""
    lengths = [row["seq_len"] for row in grid if row["model"] == model and row.get("isolated")]
    if not lengths:
        return None
    return PREFERRED_SHAPE[1] if PREFERRED_SHAPE[1] in lengths else max(set(lengths), key=lengths.count)


def latency_axis(rows: list[dict], grid: list[dict]) -> tuple[list[float | None], str]:
    """The latency to plot for each row and the axis label that says what it is: the isolated grid when it
    has every row's layer set at one shape (batch 32 x 128 preferred), else the trials' own measurements.

    >>> latency_axis([{"latency_ms": 5.0, "latency_isolated": False, "latency_batch_size": 32,
    ...                "latency_seq_len": 41}], [])[1]
    'latency in a sweep (ms per batch of 32 x 41 tokens)'
    """
    if rows and grid:
        cells = [grid_cells(grid, r["model"], r["kept_layers"], r.get("variant", "fp32")) for r in rows]
        shared = set.intersection(*(set(c) for c in cells))
        if shared:
            shape = PREFERRED_SHAPE if PREFERRED_SHAPE in shared else max(shared)
            return ([c[shape]["latency_ms"] for c in cells],
                    f"latency, isolated grid (ms per batch of {shape[0]} x {shape[1]} tokens, encoder)")
    shapes = sorted({(r.get("latency_batch_size"), r.get("latency_seq_len")) for r in rows if r.get("latency_ms")},
                    key=str)
    kinds = {r.get("latency_isolated") for r in rows if r.get("latency_ms")}
    where = ("isolated" if kinds == {True} else "in a sweep" if kinds == {False}
             else "isolation unrecorded" if kinds == {None} else "mixed isolation")
    shown = " or ".join(f"{b} x {s}" if b else "?" for b, s in shapes) or "?"
    return [r.get("latency_ms") for r in rows], f"latency {where} (ms per batch of {shown} tokens)"
