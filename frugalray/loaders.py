"""Readers for task data: CoNLL token files, JSONL/CSV/Parquet text classification, HF hub datasets.

Every example remembers where it came from (``file:line``) so that a bad label can be pointed at.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from frugalray._registry import FrugalrayError


@dataclass(frozen=True)
class Example:
    """One sentence (``words`` + per-word ``labels``) or one text with a single label."""

    labels: tuple[str, ...] | str
    origin: str  # "file:line" of the first line, or "dataset[split][row]"
    words: tuple[str, ...] | None = None
    text: str | None = None


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FrugalrayError(f"{what}: data file {str(path)!r} does not exist")
    if not path.is_file():
        raise FrugalrayError(f"{what}: {str(path)!r} is not a file")
    return path


def read_conll(
    path: str | Path,
    token_column: int = 0,
    tag_column: int = -1,
    separator: str | None = None,
    comment_prefix: str | None = None,
) -> list[Example]:
    """Read a CoNLL file: one token per line, columns split on ``separator`` (whitespace by default).

    Blank lines end a sentence; ``-DOCSTART-`` lines end a document and are skipped.

    >>> read_conll("tests/data/ner_train.conll")[0].words[:2]  # doctest: +SKIP
    ('Marie', 'Dupont')
    """
    path = _existing(path, "CoNLL reader")
    # The tag must sit in a column of its own: with tag_column=-1 a one-column line is malformed.
    needed = max(token_column, tag_column) + 1 if tag_column >= 0 else max(token_column + 2, -tag_column)
    examples: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def flush() -> None:
        if words:
            examples.append(Example(labels=tuple(tags), origin=f"{path}:{start}", words=tuple(words)))
        words.clear()
        tags.clear()

    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                flush()
                continue
            if line.startswith("-DOCSTART-"):
                flush()
                continue
            if comment_prefix and line.startswith(comment_prefix):
                continue
            columns = line.split(separator) if separator else line.split()
            if len(columns) < needed:
                raise FrugalrayError(
                    f"{path}:{number}: malformed CoNLL line {line!r}: {len(columns)} column(s), "
                    f"need at least {needed} (token column {token_column}, tag column {tag_column})"
                )
            if not words:
                start = number
            words.append(columns[token_column])
            tags.append(columns[tag_column])
    flush()
    if not examples:
        raise FrugalrayError(f"{path}: no sentences found (an empty CoNLL file?)")
    return examples


def read_text_classification(path: str | Path, text_field: str, label_field: str) -> list[Example]:
    """Read JSONL, CSV or Parquet rows with a text field and a label field."""
    path = _existing(path, "Text classification reader")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        rows = _jsonl_rows(path)
    elif suffix in {".csv", ".tsv"}:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            # DictReader row i is on line i + 2 (header on line 1) for files without multi-line fields.
            rows = [(f"{path}:{i + 2}", row) for i, row in enumerate(reader)]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = [(f"{path}[row {i}]", row) for i, row in enumerate(pq.read_table(path).to_pylist())]
    else:
        raise FrugalrayError(f"{path}: unknown text data format {suffix!r}; use .jsonl, .csv, .tsv or .parquet")
    examples = []
    for origin, row in rows:
        for field in (text_field, label_field):
            if field not in row or row[field] is None:
                raise FrugalrayError(
                    f"{origin}: missing field {field!r}; the row has {sorted(row)} "
                    f"(set text_field/label_field to the right names)"
                )
        examples.append(Example(labels=str(row[label_field]), origin=origin, text=str(row[text_field])))
    if not examples:
        raise FrugalrayError(f"{path}: no rows found")
    return examples


def _jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise FrugalrayError(f"{path}:{number}: not valid JSON ({error.msg}): {line.strip()[:80]!r}") from None
            if not isinstance(row, dict):
                raise FrugalrayError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((f"{path}:{number}", row))
    return rows


def read_hf(
    dataset: str,
    config: str | None,
    split: str,
    head: str,
    text_field: str,
    label_field: str,
) -> tuple[list[Example], str]:
    """Load one split of a Hugging Face hub dataset; returns examples and the dataset's fingerprint."""
    import datasets

    try:
        data = datasets.load_dataset(dataset, config, split=split)
    except Exception as error:  # the hub raises many types: offline, missing, gated...
        raise FrugalrayError(
            f"Could not load the Hugging Face dataset {dataset!r} (split {split!r}): "
            f"{type(error).__name__}: {str(error)[:300]}. Offline? Give the task local files instead "
            f"(data_dir=... or a task file)."
        ) from None
    for field in (text_field, label_field):
        if field not in data.column_names:
            raise FrugalrayError(
                f"Dataset {dataset!r} split {split!r} has no column {field!r}; columns: {data.column_names}"
            )
    names = _label_names(data.features[label_field])
    examples = []
    for i, row in enumerate(data):
        origin = f"{dataset}[{split}][{i}]"
        value = row[label_field]
        if head == "token":
            tags = tuple(names[v] if names else str(v) for v in value)
            examples.append(Example(labels=tags, origin=origin, words=tuple(row[text_field])))
        else:
            label = names[value] if names else str(value)
            examples.append(Example(labels=label, origin=origin, text=str(row[text_field])))
    return examples, f"{dataset}:{config}:{split}:{data._fingerprint}"


def _label_names(feature) -> list[str] | None:
    feature = getattr(feature, "feature", feature)  # Sequence(ClassLabel) for token tasks
    return list(feature.names) if hasattr(feature, "names") else None
