"""Readers for task data: CoNLL token files, JSONL/CSV/Parquet text classification, HF hub datasets.

Every example remembers where it came from (``file:line``) so that a bad label can be pointed at. Files are
UTF-8 (a leading byte-order mark is fine); other bytes are an error naming the line, never a silent misread.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from frugalray._files import is_file, is_folder, read_text
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
    if not is_file(path):
        raise FrugalrayError(f"{what}: {str(path)!r} is a folder, not a file" if is_folder(path)
                             else f"{what}: data file {str(path)!r} does not exist")
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

    >>> read_conll("tests/fixtures/ner_train.conll")[0].words[:2]  # doctest: +SKIP
    ('Marie', 'Dupont')
    """
    path = _existing(path, "CoNLL reader")
    examples: list[Example] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0

    def flush() -> None:
        if words:
            examples.append(Example(labels=tuple(tags), origin=f"{path}:{start}", words=tuple(words)))
        words.clear()
        tags.clear()

    # newline=None: \n, \r\n and \r all end a line, as when the file is opened as text
    lines = io.StringIO(read_text(path, "CoNLL reader"), newline=None)
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n")
        if not line.strip():
            flush()
            continue
        if line.startswith("-DOCSTART-"):
            flush()
            continue
        if comment_prefix and line.startswith(comment_prefix):
            continue
        columns = line.split(separator) if separator else line.split()
        word, tag = _token_and_tag(columns, token_column, tag_column)
        if word is None:
            raise FrugalrayError(
                f"{path}:{number}: malformed CoNLL line {line[:120]!r}: {len(columns)} column(s); need a "
                f"token in column {token_column} and a tag in column {tag_column}, two different non-empty "
                f"columns{'' if separator else ' split on whitespace'}"
            )
        if not words:
            start = number
        words.append(word)
        tags.append(tag)
    flush()
    if not examples:
        raise FrugalrayError(f"{path}: no sentences found (an empty CoNLL file?)")
    return examples


def _token_and_tag(columns: list[str], token_column: int, tag_column: int) -> tuple[str | None, str | None]:
    """The line's word and tag; (None, None) when it lacks either or both are the same column."""
    count = len(columns)
    if not (-count <= token_column < count and -count <= tag_column < count):
        return None, None
    if token_column % count == tag_column % count:  # tag_column=-1 on a one-column line
        return None, None
    word, tag = columns[token_column].strip(), columns[tag_column].strip()
    return (word, tag) if word and tag else (None, None)


def read_text_classification(path: str | Path, text_field: str, label_field: str) -> list[Example]:
    """Read JSONL, CSV or Parquet rows with a text field and a label field.

    >>> read_text_classification("tests/fixtures/sentiment.jsonl", "text", "label")[0].labels  # doctest: +SKIP
    'positive'
    """
    path = _existing(path, "Text classification reader")
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json"}:
        rows = _jsonl_rows(path)
    elif suffix in {".csv", ".tsv"}:
        rows = _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise FrugalrayError(f"{path}: unknown text data format {suffix!r}; use .jsonl, .csv, .tsv or .parquet")
    examples = []
    for origin, row in rows:
        for field in (text_field, label_field):
            if field not in row or row[field] is None:
                raise FrugalrayError(
                    f"{origin}: missing field {field!r}; the row has {sorted(map(str, row))} "
                    f"(set text_field/label_field to the right names)"
                )
        text, label = row[text_field], row[label_field]
        if not isinstance(text, str):
            raise FrugalrayError(f"{origin}: field {text_field!r} must be text, got {_shown(text)}")
        # str(1.0) and str(1) would be two labels, str([...]) a label nobody meant: labels are text or integers
        if isinstance(label, float) or not isinstance(label, (str, int)):
            raise FrugalrayError(f"{origin}: label field {label_field!r} must be text or an integer, "
                                 f"got {_shown(label)}")
        examples.append(Example(labels=str(label), origin=origin, text=text))
    if not examples:
        raise FrugalrayError(f"{path}: no rows found")
    return examples


def _shown(value) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    rows = []
    for number, line in enumerate(io.StringIO(read_text(path, "JSONL reader"), newline=None), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise FrugalrayError(f"{path}:{number}: not valid JSON ({error.msg}): {line.strip()[:80]!r}") from None
        except RecursionError:
            raise FrugalrayError(f"{path}:{number}: JSON nested too deeply") from None
        if not isinstance(row, dict):
            raise FrugalrayError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
        rows.append((f"{path}:{number}", row))
    return rows


def _csv_rows(path: Path, delimiter: str) -> list[tuple[str, dict]]:
    # newline="": the csv module sees line ends itself, so a quoted field may span lines
    reader = csv.DictReader(io.StringIO(read_text(path, "CSV reader"), newline=""), delimiter=delimiter)
    lines = reader.reader  # its line_num is the (last) line of the row read, or of the one that failed
    kind = "TSV" if delimiter == "\t" else "CSV"
    rows = []
    try:
        header = [name for name in reader.fieldnames or [] if name]
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise FrugalrayError(f"{path}:1: column(s) {twice} appear more than once in the header")
        for row in reader:
            origin = f"{path}:{lines.line_num}"
            if None in row:  # more fields than the header: an unquoted delimiter shifted the columns
                raise FrugalrayError(f"{origin}: {len(reader.fieldnames) + len(row[None])} fields, the header has "
                                     f"{len(reader.fieldnames)}; quote a field that contains {delimiter!r}")
            rows.append((origin, row))
    except csv.Error as error:
        raise FrugalrayError(f"{path}:{lines.line_num}: not valid {kind} ({error})") from None
    return rows


def _parquet_rows(path: Path) -> list[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise FrugalrayError(f"{path}: not a readable Parquet file ({error})") from None
    return [(f"{path}[row {i}]", row) for i, row in enumerate(table.to_pylist())]


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
