"""What the views share: the registry they are declared in (``view``), and the helpers every view uses on
aggregated rows (a task's base settings, the full model, labels, seed statistics, ratios, costs, the study's
matching row). Each view module (``views``, ``payoff``, ``recovery_view``) imports these; none imports another.

>>> ratio(3.0, 2.0)
1.5
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from frugalray._registry import Registry
from frugalray.results.aggregate import BASE
from frugalray.results.reference import describe, find
from frugalray.strategies import STRATEGIES

SELECT_BY = "dev_f1"


@dataclass
class View:
    name: str
    table: pa.Table
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ViewSpec:
    fn: Callable
    doc: str
    variants: bool  # sees int8/ONNX variant rows too (the others see trained models only)
    raw: bool = False  # reads the store's rows (failed ones too), not the aggregated successful ones


VIEWS: Registry[ViewSpec] = Registry("view")


def view(name: str, variants: bool = False, raw: bool = False):
    def decorate(fn):
        VIEWS.add(name, ViewSpec(fn, (fn.__doc__ or "").strip().splitlines()[0], variants, raw))
        return fn

    return decorate


# -- helpers on aggregated rows -------------------------------------------------------------------
def score(row: dict) -> float:
    value = row.get(SELECT_BY)
    return row["f1"] if value is None else value


def is_full(row: dict) -> bool:
    return row["n_kept_layers"] == row["num_layers"]


def base_settings(rows: list[dict]) -> dict[tuple[str, str], tuple]:
    """Per (task, model): the settings of most full-model full fine-tuning runs trained for all their epochs
    (else of most runs: a sweep whose full model alone trained to convergence has the others' settings)."""
    out = {}
    for key in {(r["task"], r["model"]) for r in rows}:
        mine = [r for r in rows if (r["task"], r["model"]) == key and not r["lora"]]
        pool = ([r for r in mine if is_full(r) and not r["early_stopping_patience"]] or mine
                or [r for r in rows if (r["task"], r["model"]) == key])
        counts = Counter()
        for r in pool:
            counts[tuple(r[s] for s in BASE)] += r["seeds"]
        out[key] = max(counts, key=lambda k: (counts[k], k[0] or 0))
    return out


def converged(row: dict) -> bool:
    """Whether a row is the full model trained until dev stopped improving (early stopping, non-LoRA): the
    reference a study's students compare with (``SweepConfig.full_model_epochs``), whatever its epochs."""
    return is_full(row) and not row["lora"] and bool(row.get("early_stopping_patience"))


def full_model(rows: list[dict]) -> dict | None:
    """The full model among the full-model rows of one task and model at base settings: the one trained to
    convergence when there is one, else the one with the most seeds."""
    fulls = [r for r in rows if is_full(r) and not r["lora"]]
    return max(fulls, key=lambda r: (converged(r), r["seeds"])) if fulls else None


def study_recovery(row: dict) -> bool:
    """Whether a row recovered as the study did: the pretrained encoder's layers, fine-tuned on the labels."""
    return row.get("init") in (None, "pretrained") and row.get("recovery") in (None, "finetune")


def recovery_of(row: dict) -> tuple[str, str]:
    """(init, method) of a row; rows written before recovery settings existed recovered as the study did."""
    return row.get("init") or "pretrained", row.get("recovery") or "finetune"


def recovery_label(row: dict) -> str:
    """``finetuned+distill(T=2,a=0.5,b=0)``, ``pretrained+finetune+lora``, ``finetuned+partial(k=1)``."""
    init, method = recovery_of(row)
    if method == "distill":
        uniform = ",uniform" if row.get("distill_hidden_map") == "uniform" else ""  # TinyBERT's layer map
        method += f"(T={row['distill_temperature']:g},a={row['distill_alpha']:g},b={row['distill_beta']:g}{uniform})"
    elif method == "partial":
        method += f"(k={row['partial_layers']})"
    teacher = row.get("teacher_epochs")
    teacher = f"[teacher <={teacher} epochs, patience {row.get('teacher_patience') or 0}]" if teacher else ""
    return f"{init}+{method}" + ("+lora" if row["lora"] else "") + teacher


def at_base_settings(row: dict, base: dict, ignore: tuple[str, ...] = (), any_recovery: bool = False) -> bool:
    """Whether a row was trained with its task's base settings (LoRA rows have their own learning rate) and,
    unless ``any_recovery``, recovered as the study did (the recovery view compares the other recoveries)."""
    if not any_recovery and not study_recovery(row):
        return False
    if converged(row):  # the full model trained to convergence stands for the full model at these settings
        ignore = (*ignore, "epochs", "early_stopping_patience")
    for name, value in zip(BASE, base[(row["task"], row["model"])]):
        if name in ignore or (name == "learning_rate" and row["lora"]):
            continue
        if row[name] != value:
            return False
    return True


def label(row: dict) -> str:
    return STRATEGIES.get(row["strategy"]).label(row["strategy_n"]) if row["strategy"] in STRATEGIES else row["strategy"]


def stats(row: dict, prefix: str = "") -> dict:
    return {f"{prefix}f1": row["f1"], f"{prefix}f1_std": row["f1_std"], f"{prefix}f1_ci_low": row["f1_ci_low"],
            f"{prefix}f1_ci_high": row["f1_ci_high"]}


def ratio(a, b):
    return a / b if a is not None and b else None


def delta(a, b):
    return a - b if a is not None and b is not None else None


def latency_kind(row: dict) -> str | None:
    """How a row's latency_ms was measured: alone or beside other trials, and on what batch.

    >>> latency_kind({"latency_ms": 9.1, "latency_isolated": False, "latency_batch_size": 32, "latency_seq_len": 41})
    'in a sweep, batch 32x41'
    """
    if row.get("latency_ms") is None:
        return None
    where = {True: "isolated", False: "in a sweep"}.get(row.get("latency_isolated"), "isolation unrecorded")
    if row.get("latency_batch_size") is None:
        return f"{where}, batch unrecorded"
    return f"{where}, batch {row['latency_batch_size']}x{row['latency_seq_len']}"


def cost(row: dict) -> dict:
    """Time and energy of training, and test F1 per training second and per kJ."""
    kj = row.get("train_kwh") and row["train_kwh"] * 3600
    return {"train_seconds": row["train_seconds"], "train_kwh": row.get("train_kwh"),
            "f1_per_s": ratio(row["f1"], row["train_seconds"]), "f1_per_kj": ratio(row["f1"], kj)}


def study_match(reference: list[dict], row: dict, **match) -> dict | None:
    """The study row at ``row``'s relative depth (see ``frugalray.results.reference``)."""
    return find(reference, row["task"], kept=row["n_kept_layers"], num_layers=row["num_layers"], **match)


def study_row_name(study: dict | None) -> str | None:
    return describe(study) if study else None


# -- the views -----------------------------------------------------------------------------------
def at_base(rows: list[dict], reference: list[dict]) -> list[dict]:
    """Aggregated rows of full fine-tuning at their task's base settings, each with its study row (or None):
    what the strategy curves compare."""
    base = base_settings(rows)
    return [r | {"study": study_match(reference, r, strategy=r["strategy"])}
            for r in rows if not r["lora"] and at_base_settings(r, base)]
