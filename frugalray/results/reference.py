"""Published numbers to compare with: CSV files in the format of the reference study's tables.

A reference file has a ``dataset`` and a ``num_layers`` column (the layer count of the model its numbers
come from) and any of the columns in ``COLUMNS``; each row becomes one or two records keyed by (task,
strategy, N, kept layers, LoRA). The views look their rows up in these records and show the study's value
beside ours (``study_f1`` beside ``f1``...) with the study row it is (``study_row``).

Rows are paired by *relative depth*: a row of ours that keeps k of L layers is compared with a study row that
keeps k' of L' layers only when k / L == k' / L' (our best 3 of 6 layers with the study's best 6 of 12), and
with none otherwise: a 1-layer model is never put beside the study's 7-layer one because both are
"drop_worst 5".

>>> records = load_reference([STUDY])                                   # doctest: +SKIP
>>> find(records, task="ftb_pos", kept=3, num_layers=6, strategy="best")["f1"]  # doctest: +SKIP
0.976
>>> describe(_)                                                          # doctest: +SKIP
'FTB_POS best_6, study: 6/12 layers'
"""

from __future__ import annotations

import csv
import re
from importlib import resources
from pathlib import Path

from frugalray._registry import FrugalrayError

STUDY = "study"  # the packaged tables of the reference study (camembert-base, 12 layers)

# Known columns -> what they hold. A file may have any subset, plus ``dataset``.
COLUMNS = {
    "dataset": "task name in the study (WikiNER, FTB_NER, FTB_POS, Allocine) or a frugalray task",
    "num_layers": "layer count of the model the numbers come from (camembert-base: 12); required",
    "strategy": "full, best_N, del_worst_N / drop_worst_N, first_N, last_N ... (strategy and N)",
    "layers": "kept layer indices, comma-separated, 0-indexed",
    "lora": "1 for LoRA, 0 for full fine-tuning",
    "epochs": "training epochs",
    "accuracy": "test accuracy", "f1": "test F1", "precision": "test precision", "recall": "test recall",
    "f1_lora": "test F1 of the same model trained with LoRA",
    "model_size_mb": "model size in MiB",
    "train_time_s": "training seconds",
    "train_time_s_full": "training seconds, full fine-tuning",
    "train_time_s_lora": "training seconds with LoRA",
    "baseline_time_s": "training seconds of the full model (balanced training)",
    "pruned_time_s_3ep": "training seconds of the pruned model at the base epochs",
    "adjusted_epochs": "epochs giving the pruned model the full model's time",
    "f1_3ep": "test F1 at the base epochs", "f1_adjusted": "test F1 at the adjusted epochs",
    "train_time_s_adjusted": "training seconds at the adjusted epochs",
}
_FLOATS = {"accuracy", "f1", "precision", "recall", "f1_lora", "model_size_mb", "train_time_s", "train_time_s_full",
           "train_time_s_lora", "baseline_time_s", "pruned_time_s_3ep", "f1_3ep", "f1_adjusted",
           "train_time_s_adjusted"}
_INTS = {"epochs", "adjusted_epochs", "lora", "num_layers"}
# The study's file columns under the names of our result rows.
_RENAME = {"model_size_mb": "model_mib", "train_time_s": "train_seconds", "baseline_time_s": "full_train_seconds",
           "pruned_time_s_3ep": "train_seconds", "f1_3ep": "f1", "train_time_s_adjusted": "adjusted_train_seconds",
           "train_time_s_full": "train_seconds"}
_STRATEGY = re.compile(r"^(?P<name>[a-z_]+?)(?:_(?P<n>\d+))?$")
_ALIASES = {"del_worst": "drop_worst"}


def study_files() -> list[Path]:
    folder = resources.files("frugalray") / "data" / "reference"
    return sorted(Path(str(folder)).glob("*.csv"))


def load_reference(sources: list[str], task_names: dict[str, str] | None = None) -> list[dict]:
    """Records from CSV files or folders of them (``"study"``: the packaged study tables).

    ``task_names`` maps our task names to the file's dataset names (``{"demo_pos": "FTB_POS"}``);
    otherwise a dataset matches the task of the same lower-cased name.
    """
    dataset_to_task = {dataset.lower(): task for task, dataset in (task_names or {}).items()}
    records = []
    for source in sources:
        if source == STUDY:
            paths = study_files()
        else:
            path = Path(source)
            if not path.exists():
                raise FrugalrayError(f"Reference {source!r} does not exist; give a CSV file, a folder of them, "
                                     f"or '{STUDY}' for the packaged study tables")
            paths = sorted(path.glob("*.csv")) if path.is_dir() else [path]
            if not paths:
                raise FrugalrayError(f"Reference folder {source!r} has no *.csv files")
        for path in paths:
            records.extend(_read(path, dataset_to_task))
    return records


def _read(path: Path, dataset_to_task: dict[str, str]) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        unknown = [c for c in header if c not in COLUMNS]
        missing = [c for c in ("dataset", "num_layers") if c not in header]
        if unknown or missing:
            problem = f"unknown column(s) {unknown}" if unknown else f"no {' or '.join(repr(c) for c in missing)} column"
            known = "; ".join(f"{name} ({meaning})" for name, meaning in COLUMNS.items())
            raise FrugalrayError(f"Reference file {path}:1: {problem}. Known columns: {known}")
        records = []
        for line, row in enumerate(reader, start=2):
            records.extend(_records(row, f"{path}:{line}", dataset_to_task))
    return records


def _records(row: dict, place: str, dataset_to_task: dict[str, str]) -> list[dict]:
    values: dict = {}
    for column, text in row.items():
        text = (text or "").strip()
        if column == "dataset" or text == "":
            continue
        try:
            if column in _FLOATS:
                values[column] = float(text)
            elif column in _INTS:
                values[column] = int(text)
            elif column == "layers":
                values[column] = tuple(sorted(int(part) for part in text.split(",")))
            else:
                values[column] = text
        except ValueError:
            kind = "a number" if column in _FLOATS | _INTS else "comma-separated layer indices"
            raise FrugalrayError(f"Reference {place}: column {column!r} has {text!r}, which is not {kind}") from None
    dataset = (row.get("dataset") or "").strip()
    if not dataset:
        raise FrugalrayError(f"Reference {place}: the 'dataset' cell is empty")
    if values.get("num_layers", 0) < 1:
        raise FrugalrayError(f"Reference {place}: 'num_layers' must be the layer count of the study's model "
                             f"(e.g. 12), got {row.get('num_layers')!r}")
    record = {"task": dataset_to_task.get(dataset.lower(), dataset.lower()), "dataset": dataset, "place": place,
              "strategy": None, "n": None, "kept_layers": values.pop("layers", None),
              "lora": bool(values.pop("lora", 0))}
    if "strategy" in values:
        match = _STRATEGY.match(values.pop("strategy"))
        if not match:
            raise FrugalrayError(f"Reference {place}: strategy {row['strategy']!r} is not NAME or NAME_N")
        record["strategy"] = _ALIASES.get(match["name"], match["name"])
        record["n"] = int(match["n"]) if match["n"] else None
    lora_f1, lora_seconds = values.pop("f1_lora", None), values.pop("train_time_s_lora", None)
    record |= {_RENAME.get(k, k): v for k, v in values.items()}
    record["n_kept"] = _kept_count(record, place)
    out = [record]
    if lora_f1 is not None or lora_seconds is not None:  # the baselines table holds the LoRA run too
        lora = {k: v for k, v in record.items() if k not in {"accuracy", "precision", "recall"}}
        out.append(lora | {"lora": True, "f1": lora_f1, "train_seconds": lora_seconds})
    return out


def _kept_count(record: dict, place: str) -> int | None:
    """How many of its ``num_layers`` layers a study row keeps (None: the row names no layer set)."""
    from frugalray.strategies import STRATEGIES, kept_layers

    if record["kept_layers"] is not None:
        return len(record["kept_layers"])
    if record["strategy"] is None:
        return None
    if record["strategy"] not in STRATEGIES:
        return None  # a strategy frugalray does not know: shown nowhere rather than paired wrongly
    layers = record["num_layers"]
    try:
        scores = [0.0] * layers if STRATEGIES.get(record["strategy"]).needs_scores else None
        return len(kept_layers(record["strategy"], layers, n=record["n"], scores=scores))
    except FrugalrayError as error:
        raise FrugalrayError(f"Reference {place}: {error}") from None


def same_depth(kept: int, num_layers: int, record: dict) -> bool:
    """Whether a row keeping ``kept`` of ``num_layers`` layers keeps the same fraction as ``record``."""
    return record.get("n_kept") is not None and kept * record["num_layers"] == record["n_kept"] * num_layers


def find(records: list[dict], task: str, *, kept: int, num_layers: int, lora: bool = False,
         strategy: str | None = None, need: str = "f1") -> dict | None:
    """The first record for ``task`` at the same relative depth (``kept`` of ``num_layers`` layers), with the
    same LoRA setting and a ``need`` value; with ``strategy``, of that strategy too (the full model's rows
    match a full model whatever their strategy)."""
    for record in records:
        if record["task"] != task or record["lora"] != lora or record.get(need) is None:
            continue
        if not same_depth(kept, num_layers, record):
            continue
        if strategy is None or record["strategy"] == strategy or kept == num_layers:
            return record
    return None


def describe(record: dict) -> str:
    """Which study row a number is: dataset, strategy and N or layers, and its depth.

    >>> describe({"dataset": "FTB_POS", "strategy": "best", "n": 6, "kept_layers": (0, 1, 2, 3, 4, 8),
    ...           "lora": False, "num_layers": 12, "n_kept": 6})
    'FTB_POS best_6, study: 6/12 layers'
    """
    if record["strategy"] is not None:
        name = record["strategy"] if record["n"] is None else f"{record['strategy']}_{record['n']}"
    else:
        name = "layers " + ",".join(map(str, record["kept_layers"]))
    lora = " LoRA" if record["lora"] else ""
    return f"{record['dataset']} {name}{lora}, study: {record['n_kept']}/{record['num_layers']} layers"
