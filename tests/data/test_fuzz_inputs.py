"""Odd input files, generated: reading them gives sane examples or a FrugalrayError, never another exception.

Files are mostly well formed, with a few odd lines, byte-order marks, Windows line ends or Latin-1 bytes
mixed in, so that both outcomes are exercised (``--hypothesis-show-statistics`` counts them). Examples are
derandomized by the hypothesis profile in conftest.py: every run tries the same files.
"""

import codecs
import csv
import dataclasses
import io
import json

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from frugalray import FrugalrayError  # noqa: E402
from frugalray.data.readers import read_conll, read_text_classification  # noqa: E402
from frugalray.data.spec import TaskSpec  # noqa: E402
from frugalray.data.tasks import load_task  # noqa: E402

# tmp_path is shared by a test's examples; each example rewrites the file it reads.
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any text without line breaks (the generators decide where lines end): tabs, odd spaces, NUL, non-ASCII.
cell = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12)
# A CoNLL column: no whitespace or control characters (it stays one column), no '#' (not a comment).
column = st.text(st.characters(blacklist_categories=("Cs", "Z", "C"), blacklist_characters="#"), min_size=1,
                 max_size=8)
tag = st.sampled_from(["O", "B-PER", "I-PER", "B-LOC", "NOUN", "DET", "été"])
newline = st.sampled_from(["\n", "\r\n"])


def mostly(common, rare, one_in: int = 4):
    """``rare`` one time in ``one_in``, else ``common`` (st.one_of would pick each half of the time)."""
    return st.sampled_from(range(one_in)).flatmap(lambda k: rare if k == 0 else common)


# Mostly clean files; else one Latin-1 'é' (0xe9) or another byte that is not UTF-8, somewhere.
bad_bytes = mostly(st.none(), st.tuples(st.integers(0, 400), st.sampled_from([b"\xe9", b"\xff", b"\xc3", b"caf\xe9"])))


def _encode(lines: list[str], newline: str, bom: bool, bad_bytes: tuple[int, bytes] | None) -> bytes:
    data = newline.join(lines).encode("utf-8")
    if bad_bytes is not None:
        at, junk = bad_bytes
        at = min(at, len(data))
        while at < len(data) and (data[at] & 0xC0) == 0x80:  # between UTF-8 characters, not inside one
            at += 1
        data = data[:at] + junk + data[at:]
    return (codecs.BOM_UTF8 if bom else b"") + data


def _lines(file_bytes: bytes) -> list[str]:
    """The file's lines as the readers see them (BOM dropped, universal newlines)."""
    text = file_bytes.removeprefix(codecs.BOM_UTF8).decode("utf-8")
    return io.StringIO(text, newline=None).read().split("\n")


def _with_one_odd(good: list, odd, at: int) -> list:
    return good if odd is None else good[:at] + [odd] + good[at:]


@st.composite
def conll_files(draw):
    """(lines, token_column, tag_column, separator, comment_prefix): a layout and lines mostly in it."""
    count = draw(st.integers(2, 4))
    token_column, tag_column = draw(st.permutations(range(count)))[:2]
    token_column = draw(st.sampled_from([token_column, token_column - count]))  # counted from the end too
    tag_column = draw(st.sampled_from([tag_column, tag_column - count]))
    if draw(st.sampled_from(range(10))) == 0:  # a layout that may not fit the lines at all
        token_column, tag_column = draw(st.integers(-3, 3)), draw(st.integers(-3, 3))
    separator = draw(st.sampled_from([None, "\t", " "]))
    comment_prefix = draw(st.sampled_from([None, "#"]))

    def row(columns: list[str], word: str, label: str, between: str) -> str:
        columns = list(columns)
        columns[token_column % count], columns[tag_column % count] = word, label
        return between.join(columns)

    def rows(word, label):
        between = st.just(separator) if separator else st.sampled_from([" ", "\t", "  \t"])
        return st.builds(row, st.lists(column, min_size=count, max_size=count), word, label, between)

    good = mostly(rows(column, tag), st.sampled_from(["", "  ", "-DOCSTART- -X- O O"]))
    odd = mostly(st.none(), st.one_of(
        st.sampled_from(["-DOCSTART-", "# sent_id = 1", "#", "\t", "Paris", "Paris\t\tO", "\tO", "a b c d e f"]),
        st.lists(cell, min_size=1, max_size=5).map(" ".join),
        st.lists(cell, min_size=1, max_size=5).map("\t".join),
        st.builds(lambda text, n: (text or "x") * n, cell, st.integers(1, 5000)),  # a huge line
    ), one_in=2)
    first = draw(rows(st.just("Marie"), st.just("B-PER")))
    lines = [first, *_with_one_odd(draw(st.lists(good, max_size=25)), draw(odd), draw(st.integers(0, 25)))]
    return lines, token_column, tag_column, separator, comment_prefix


@FUZZ
@given(conll=conll_files(), newline=newline, bom=st.booleans(), bad=bad_bytes)
def test_conll_reads_sanely_or_fails_clearly(tmp_path, conll, newline, bom, bad):
    lines, token_column, tag_column, separator, comment_prefix = conll
    path = tmp_path / "fuzz.conll"
    data = _encode(lines, newline, bom, bad)
    path.write_bytes(data)
    try:
        sentences = read_conll(path, token_column, tag_column, separator, comment_prefix)
    except FrugalrayError as error:
        event("refused")  # --hypothesis-show-statistics: how many files were read and how many refused
        assert str(path) in str(error)
        assert ("not UTF-8" in str(error)) == (bad is not None)
        return
    event("read")
    assert bad is None, "a file with bytes that are not UTF-8 was read"
    file_lines = _lines(data)
    content = [line for line in file_lines if line.strip() and not line.startswith("-DOCSTART-")
               and not (comment_prefix and line.startswith(comment_prefix))]
    assert sum(len(s.words) for s in sentences) == len(content)  # a word per token line, none lost or invented
    assert (sentences[0].words[0], sentences[0].labels[0]) == ("Marie", "B-PER")  # no BOM in the first word
    for sentence in sentences:
        assert sentence.words and len(sentence.words) == len(sentence.labels)
        assert all(w and w == w.strip() for w in sentence.words + sentence.labels)
        name, _, line = sentence.origin.rpartition(":")
        assert name == str(path) and file_lines[int(line) - 1].strip()  # starts on a token line of the file


json_scalar = st.none() | st.booleans() | st.integers() | st.floats() | cell
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(cell, inner, max_size=3), max_leaves=6)
label = cell | st.integers()
jsonl_row = st.builds(lambda text, label, extra, ascii: json.dumps({"text": text, "label": label, **extra},
                                                                   ensure_ascii=ascii),
                      cell, label, st.dictionaries(cell, json_value, max_size=2), st.booleans())
jsonl_odd = mostly(st.none(), st.one_of(
    st.sampled_from(["", "  ", "{", "[1, 2]", '{"text": "a"}', "NaN", '{"text": "x", "label": NaN}',
                     '{"text": "x", "label": 1.5}', '{"text": null, "label": "x"}', "[" * 5000]),
    st.builds(lambda text, label: json.dumps({"text": text, "label": label}), json_value, json_value),
    json_value.map(json.dumps),
    cell,
), one_in=2)


def _check_rows(rows, path, texts=None):
    assert texts is None or [row.text for row in rows] == texts
    for row in rows:
        assert isinstance(row.labels, str) and row.origin.startswith(f"{path}:")


@FUZZ
@given(rows=st.lists(jsonl_row, max_size=10), odd=jsonl_odd, at=st.integers(0, 10), newline=newline,
       bom=st.booleans(), bad=bad_bytes)
def test_jsonl_reads_sanely_or_fails_clearly(tmp_path, rows, odd, at, newline, bom, bad):
    path = tmp_path / "fuzz.jsonl"
    lines = _with_one_odd(rows, odd, at)
    path.write_bytes(_encode(lines, newline, bom, bad))
    examples = _read_or_refused(path, bad)
    if examples is not None:
        _check_rows(examples, path, [json.loads(line)["text"] for line in lines if line.strip()])


csv_value = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=12)
csv_odd = mostly(st.none(), st.one_of(
    st.sampled_from(['"', 'a,"b', '"a"b,c', "a;b", "", ",", ",,,,"]),
    st.builds(lambda text: f"{text},{'x' * 140_000}", cell),  # beyond the csv module's field size limit
    st.lists(cell, max_size=4).map(",".join),
), one_in=2)


@FUZZ
@given(
    header=mostly(st.sampled_from([["text", "label"], ["label", "text", "extra"]]),
                  st.sampled_from([["text"], ["texte", "label"], ["text", "text", "label"]])),
    rows=st.lists(st.lists(csv_value, min_size=3, max_size=3), max_size=8),
    odd=csv_odd, at=st.integers(0, 8), tsv=st.booleans(), newline=newline, bom=st.booleans(), bad=bad_bytes,
)
def test_csv_reads_sanely_or_fails_clearly(tmp_path, header, rows, odd, at, tsv, newline, bom, bad):
    path = tmp_path / ("fuzz.tsv" if tsv else "fuzz.csv")
    delimiter = "\t" if tsv else ","
    rows = [row[:len(header)] for row in rows]
    records = [_csv_record(values, delimiter) for values in [header, *rows]]  # a record may span lines
    path.write_bytes(_encode(_with_one_odd(records, odd, at), newline, bom, bad))
    examples = _read_or_refused(path, bad)
    if examples is not None:
        _check_rows(examples, path, [dict(zip(header, row))["text"] for row in rows] if odd is None else None)


def _read_or_refused(path, bad):
    """The examples of a text-classification file, or None when it was refused with an error naming it."""
    try:
        examples = read_text_classification(path, "text", "label")
    except FrugalrayError as error:
        event("refused")
        assert str(path) in str(error)
        return None
    event("read")
    assert bad is None, "a file with bytes that are not UTF-8 was read"
    return examples


def _csv_record(values: list[str], delimiter: str) -> str:
    buffer = io.StringIO()  # the writer quotes a line break only when it is in its lineterminator
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerow(values)
    return buffer.getvalue().removesuffix("\n")


TASK_KEYS = [f.name for f in dataclasses.fields(TaskSpec)]
TASK = {"name": "fuzz", "head": "token", "metric": "pos", "format": "conll", "train": "train.conll"}
good_values = {
    "name": st.just("fuzz"), "head": st.sampled_from(["token", "sequence", "tokens"]),
    "metric": st.sampled_from(["pos", "classification", "f1"]),
    "format": st.sampled_from(["conll", "jsonl", "csv", "hf", "txt"]),
    "train": st.sampled_from(["train.conll", "train.jsonl", "missing.conll", "", "."]),
    "dev": st.sampled_from([None, "train.conll", "train.jsonl"]), "test": st.sampled_from([None, "train.conll"]),
    "token_column": st.integers(-3, 3), "tag_column": st.integers(-3, 3),
    "separator": st.sampled_from([None, "\t", " ", ""]), "comment_prefix": st.sampled_from([None, "#", ""]),
    "train_fraction": st.floats(-1, 2), "dev_fraction": st.floats(-1, 2), "test_fraction": st.floats(-1, 2),
    "split_seed": st.integers(), "licensed": st.booleans(), "data_dir": st.sampled_from([None, ".", "nowhere"]),
    "text_field": st.sampled_from(["text", "label", "review"]), "label_field": st.sampled_from(["label", "text"]),
    "dataset": st.none(), "dataset_config": st.none(), "description": cell,
    "package": st.sampled_from([None, "json", "no_such_package_xyz", "frugalray"]), "install": st.none() | cell,
}
odd_value = json_value | cell.map(lambda text: text * 30)  # long names: too long for a file name too
task_change = st.sampled_from(TASK_KEYS).flatmap(
    lambda key: st.tuples(st.just(key), mostly(good_values[key], odd_value)))
task_dict = st.builds(lambda changes, unknown: {**TASK, **dict(changes), **unknown},
                      st.lists(task_change, max_size=3),
                      mostly(st.just({}), st.fixed_dictionaries({}, optional={"tag_col": json_value, "Name": cell}),
                             one_in=6))


@FUZZ
@given(task=mostly(task_dict, json_value, one_in=6), bom=st.booleans(), bad=bad_bytes)
def test_task_files_load_sanely_or_fail_clearly(tmp_path, task, bom, bad):
    (tmp_path / "train.conll").write_text("".join(f"{d} DET\n{n} NOUN\n\n" for d, n in (
        ("Le", "chat"), ("Un", "chien"), ("La", "souris"), ("Une", "fille"), ("Le", "fils"))), encoding="utf-8")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n"
                                                  for i in range(12)), encoding="utf-8")
    path = tmp_path / "task.json"
    path.write_bytes(_encode([json.dumps(task, indent=1)], "\n", bom, bad))
    try:
        data = load_task(str(path))
    except FrugalrayError as error:
        event("refused")
        if bad is not None:
            assert f"{path}:" in str(error) and "not UTF-8" in str(error)
        return
    event("read")
    assert bad is None, "a file with bytes that are not UTF-8 was read"
    assert data.train and data.dev and data.test and all(isinstance(label, str) and label for label in data.labels)
    assert {label for example in data.train for label in example.labels} <= set(data.labels)
