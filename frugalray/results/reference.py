"""Published numbers to compare with: CSV files in the format of the reference study's tables.

A reference file has a ``dataset`` column and any of the columns in ``COLUMNS``; each row becomes one or
two records keyed by (task, strategy, N, kept layers, LoRA). The views look their rows up in these
records and show the study's value beside ours (``study_f1`` beside ``f1``...).

>>> records = load_reference([STUDY])                 # doctest: +SKIP
>>> find(records, task="ftb_pos", strategy="best", n=2)["f1"]  # doctest: +SKIP
0.949
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
_INTS = {"epochs", "adjusted_epochs", "lora"}
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
        if unknown or "dataset" not in header:
            problem = f"unknown column(s) {unknown}" if unknown else "no 'dataset' column"
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
    out = [record]
    if lora_f1 is not None or lora_seconds is not None:  # the baselines table holds the LoRA run too
        lora = {k: v for k, v in record.items() if k not in {"accuracy", "precision", "recall"}}
        out.append(lora | {"lora": True, "f1": lora_f1, "train_seconds": lora_seconds})
    return out


def find(records: list[dict], task: str, *, strategy: str | None = None, n: int | None = None,
         kept_layers: tuple[int, ...] | None = None, lora: bool = False, full: bool = False,
         need: str = "f1") -> dict | None:
    """The first record for ``task`` that matches and has a ``need`` value: by strategy and N when
    ``strategy`` is given, else by kept layers; ``full`` also accepts the study's full-model rows."""
    for record in records:
        if record["task"] != task or record["lora"] != lora or record.get(need) is None:
            continue
        if strategy is not None:
            if record["strategy"] == strategy and record["n"] == n:
                return record
        elif kept_layers is not None and record["kept_layers"] == tuple(kept_layers):
            return record
        elif full and record["strategy"] == "full" and record["kept_layers"] is None:
            return record
    return None
