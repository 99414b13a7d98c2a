"""``--where`` filters: ``column<op>value`` texts turned into DuckDB clauses with typed parameters.

>>> where_clauses(["task=demo_pos", "n_kept_layers<=3"])
(['"task" = ?', '"n_kept_layers" <= ?'], ['demo_pos', 3])
"""

from __future__ import annotations

import re

import pyarrow as pa

from frugalray._registry import FrugalrayError, did_you_mean
from frugalray.results.schema import COLUMNS, SCHEMA

_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")


def where_clauses(filters: list[str]) -> tuple[list[str], list]:
    clauses, params = [], []
    for text in filters:
        match = _FILTER.match(text)
        if not match:
            raise FrugalrayError(f"Filter {text!r} is not 'column<op>value' with op one of = != < <= > >=")
        column, op, value = match.groups()
        if column not in COLUMNS:
            raise FrugalrayError(did_you_mean("column", column, COLUMNS))
        kind = SCHEMA.field(column).type
        if pa.types.is_list(kind):
            raise FrugalrayError(f"Filter on list column {column!r} is not supported; use --sql with list_contains")
        clauses.append(f'"{column}" {op} ?')
        params.append(_typed(value, kind, column))
    return clauses, params


def _typed(value: str, kind: pa.DataType, column: str):
    try:
        if pa.types.is_integer(kind):
            return int(value)
        if pa.types.is_floating(kind):
            return float(value)
        if pa.types.is_boolean(kind):
            if value.lower() not in {"true", "false", "1", "0"}:
                raise ValueError(value)
            return value.lower() in {"true", "1"}
    except ValueError:
        raise FrugalrayError(f"Filter on {column!r}: {value!r} is not a valid {kind}") from None
    return value
