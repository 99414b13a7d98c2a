"""The study's tables as views over a results store, seeds aggregated (mean, std, 95% CI).

    frugalray results results/ --view budget               # best strategy per layer budget (table 4.4)
    frugalray results results/ --view best_worst           # best(N) and drop_worst(N) (table 4.2)
    frugalray results results/ --view lora                 # LoRA vs full fine-tuning (table 4.6)
    frugalray results results/ --view balanced             # balanced training time (tables 4.8/4.9)

Every view starts from one aggregation (DuckDB over the Parquet files, reading only the columns it needs):
successful rows, one per (configuration hash, strategy, N) (the latest when a trial was re-run), grouped by
task, model, settings, strategy, N and kept layers. Seeds give ``f1`` (mean), ``f1_std`` and the 95%
Student-t interval ``f1_ci_low``/``f1_ci_high``.

Latencies say how they were measured (``latency_kind``: alone or beside other trials, and the batch shape);
energy sits beside time (``train_kwh``; ``f1_per_kj``, test F1 per kJ of training, beside ``f1_per_s``, per
training second). The classic views read the trained models (variant fp32); ``payoff`` compares every
form a store holds (``frugalray.results.payoff``).

Comparisons are made at each task's *base* settings: the epochs, learning rate, batch size and sequence
length of most of its full-model, full fine-tuning runs. Layer sets are chosen on dev F1 (test F1 when a
row has none) and reported on test F1, so choosing never looks at the test set.

>>> view = compute_view(ResultsStore("results/quick"), "budget")   # doctest: +SKIP
>>> view.table.column_names[:4]                                     # doctest: +SKIP
['task', 'model', 'budget', 'strategy']
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pyarrow as pa

from frugalray._registry import FrugalrayError, Registry
from frugalray.results.reference import describe, find
from frugalray.results.aggregate import BASE, aggregate
from frugalray.results.store import ResultsStore
from frugalray.study.strategies import STRATEGIES, balanced_epochs

SELECT_BY = "dev_f1"


@dataclass
class View:
    name: str
    table: pa.Table
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _ViewSpec:
    fn: Callable
    doc: str
    variants: bool  # sees int8/ONNX variant rows too (the others see trained models only)


VIEWS: Registry[_ViewSpec] = Registry("view")


def view(name: str, variants: bool = False):
    def decorate(fn):
        VIEWS.add(name, _ViewSpec(fn, (fn.__doc__ or "").strip().splitlines()[0], variants))
        return fn

    return decorate


# -- helpers on aggregated rows -------------------------------------------------------------------
def _score(row: dict) -> float:
    value = row.get(SELECT_BY)
    return row["f1"] if value is None else value


def _full(row: dict) -> bool:
    return row["n_kept_layers"] == row["num_layers"]


def _base_settings(rows: list[dict]) -> dict[tuple[str, str], tuple]:
    """Per (task, model): the settings of most full-model full fine-tuning runs (else of most runs)."""
    out = {}
    for key in {(r["task"], r["model"]) for r in rows}:
        mine = [r for r in rows if (r["task"], r["model"]) == key and not r["lora"]]
        pool = [r for r in mine if _full(r)] or mine or [r for r in rows if (r["task"], r["model"]) == key]
        counts = Counter()
        for r in pool:
            counts[tuple(r[s] for s in BASE)] += r["seeds"]
        out[key] = max(counts, key=lambda k: (counts[k], k[0] or 0))
    return out


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
        method += f"(T={row['distill_temperature']:g},a={row['distill_alpha']:g},b={row['distill_beta']:g})"
    elif method == "partial":
        method += f"(k={row['partial_layers']})"
    return f"{init}+{method}" + ("+lora" if row["lora"] else "")


def _at_base(row: dict, base: dict, ignore: tuple[str, ...] = (), any_recovery: bool = False) -> bool:
    """Whether a row was trained with its task's base settings (LoRA rows have their own learning rate) and,
    unless ``any_recovery``, recovered as the study did (the recovery view compares the other recoveries)."""
    if not any_recovery and not study_recovery(row):
        return False
    for name, value in zip(BASE, base[(row["task"], row["model"])]):
        if name in ignore or (name == "learning_rate" and row["lora"]):
            continue
        if row[name] != value:
            return False
    return True


def _label(row: dict) -> str:
    return STRATEGIES.get(row["strategy"]).label(row["strategy_n"]) if row["strategy"] in STRATEGIES else row["strategy"]


def _stats(row: dict, prefix: str = "") -> dict:
    return {f"{prefix}f1": row["f1"], f"{prefix}f1_std": row["f1_std"], f"{prefix}f1_ci_low": row["f1_ci_low"],
            f"{prefix}f1_ci_high": row["f1_ci_high"]}


def _ratio(a, b):
    return a / b if a is not None and b else None


def _delta(a, b):
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


def _cost(row: dict) -> dict:
    """Time and energy of training, and test F1 per training second and per kJ."""
    kj = row.get("train_kwh") and row["train_kwh"] * 3600
    return {"train_seconds": row["train_seconds"], "train_kwh": row.get("train_kwh"),
            "f1_per_s": _ratio(row["f1"], row["train_seconds"]), "f1_per_kj": _ratio(row["f1"], kj)}


def _study(reference: list[dict], row: dict, **match) -> dict | None:
    """The study row at ``row``'s relative depth (see ``frugalray.results.reference``)."""
    return find(reference, row["task"], kept=row["n_kept_layers"], num_layers=row["num_layers"], **match)


def _row_name(study: dict | None) -> str | None:
    return describe(study) if study else None


# -- the views -----------------------------------------------------------------------------------
def at_base(rows: list[dict], reference: list[dict]) -> list[dict]:
    """Aggregated rows of full fine-tuning at their task's base settings, each with its study row (or None):
    what the strategy curves compare."""
    base = _base_settings(rows)
    return [r | {"study": _study(reference, r, strategy=r["strategy"])}
            for r in rows if not r["lora"] and _at_base(r, base)]


@view("strategies")
def strategies(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """Every strategy and N at the task's base settings, full fine-tuning (the curves of figs 4.1-4.7)."""
    out = []
    for r in at_base(rows, reference):
        study = r["study"]
        out.append({
            "task": r["task"], "model": r["model"], "strategy": _label(r), "kept_layers": r["kept_layers"],
            "n_kept_layers": r["n_kept_layers"], "seeds": r["seeds"], **_stats(r), "degenerate": r["degenerate"],
            "dev_f1": r["dev_f1"], **_cost(r), "latency_ms": r["latency_ms"], "latency_kind": latency_kind(r),
            "model_mib": r["model_mib"],
            "study_f1": study["f1"] if study else None, "study_row": _row_name(study),
        })
    return out


@view("budget")
def budget(rows: list[dict], base: dict, reference: list[dict], budgets: list[int] | None = None, **_) -> list[dict]:
    """Per task and layer budget B: the best strategy keeping at most B layers (the study's table 4.4)."""
    out = []
    pool = [r for r in rows if not r["lora"] and _at_base(r, base)]
    for task, model in sorted({(r["task"], r["model"]) for r in pool}):
        mine = [r for r in pool if (r["task"], r["model"]) == (task, model)]
        full = next((r for r in mine if _full(r)), None)
        layers = mine[0]["num_layers"]
        sizes = budgets or sorted({r["n_kept_layers"] for r in mine if r["n_kept_layers"] < layers})
        for size in sizes:
            candidates = [r for r in mine if r["n_kept_layers"] <= size and not _full(r)]
            if not candidates:
                continue
            best = max(candidates, key=lambda r: (_score(r), -r["n_kept_layers"]))
            study = _study(reference, best, strategy=best["strategy"])
            out.append({
                "task": task, "model": model, "budget": size, "strategy": _label(best),
                "kept_layers": best["kept_layers"], "n_kept_layers": best["n_kept_layers"], "seeds": best["seeds"],
                **_stats(best), "degenerate": best["degenerate"], "majority_f1": best["majority_f1"],
                "f1_vs_full": _delta(best["f1"], full and full["f1"]),
                "train_speedup": _ratio(full and full["train_seconds"], best["train_seconds"]),
                "latency_speedup": _ratio(full and full["latency_ms"], best["latency_ms"]),
                "latency_kind": latency_kind(best), "model_mib": best["model_mib"], "train_kwh": best["train_kwh"],
                "f1_per_kj": _cost(best)["f1_per_kj"], "study_f1": study["f1"] if study else None,
                "study_row": _row_name(study),
            })
    return out


@view("best_worst")
def best_worst(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """best(N) and drop_worst(N), ranked by the task's single-layer scores (the study's table 4.2)."""
    out = []
    chosen = [r for r in rows if r["strategy"] in ("best", "drop_worst") and not r["lora"] and _at_base(r, base)]
    for r in sorted(chosen, key=lambda r: (r["task"], r["model"], r["strategy"] != "best", r["strategy_n"])):
        study = _study(reference, r, strategy=r["strategy"])
        out.append({
            "task": r["task"], "model": r["model"], "strategy": _label(r), "kept_layers": r["kept_layers"],
            "seeds": r["seeds"], **_stats(r), "degenerate": r["degenerate"], "precision": r["precision"],
            "recall": r["recall"], "study_f1": study["f1"] if study else None, "study_row": _row_name(study),
        })
    return out


@view("lora")
def lora(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """LoRA vs full fine-tuning of the same layer sets (the study's table 4.6)."""
    out = []
    for r in rows:
        if not r["lora"] or not _at_base(r, base):
            continue
        full_ft = [f for f in rows if not f["lora"] and f["kept_layers"] == r["kept_layers"] and _at_base(f, base)
                   and (f["task"], f["model"]) == (r["task"], r["model"])]
        f = max(full_ft, key=lambda f: f["seeds"]) if full_ft else None
        study_lora, study_full = _study(reference, r, lora=True), _study(reference, r, lora=False)
        out.append({
            "task": r["task"], "model": r["model"], "kept_layers": r["kept_layers"],
            "n_kept_layers": r["n_kept_layers"], "lora_lr": r["learning_rate"], "train_head": r["lora_train_head"],
            "seeds": r["seeds"], **_stats(r, "lora_"), "lora_degenerate": r["degenerate"],
            **_stats(f or {k: None for k in _stats(r)}, "full_"), "full_seeds": f and f["seeds"],
            "lora_vs_full": _delta(r["f1"], f and f["f1"]),
            "lora_train_seconds": r["train_seconds"], "full_train_seconds": f and f["train_seconds"],
            "trainable_params": r["trainable_params"], "model_mib": r["model_mib"],
            "study_lora_f1": study_lora["f1"] if study_lora else None, "study_lora_row": _row_name(study_lora),
            "study_full_f1": study_full["f1"] if study_full else None, "study_full_row": _row_name(study_full),
        })
    return sorted(out, key=lambda r: (r["task"], r["model"], -r["n_kept_layers"]))


@view("balanced")
def balanced(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """Pruned models trained for the full model's time budget (the study's tables 4.8 and 4.9)."""
    out = []
    for r in rows:
        if r["lora"] or _full(r) or not _at_base(r, base, ignore=("epochs",)) or _at_base(r, base):
            continue  # balanced rows: full fine-tuning of a pruned model at the base settings but other epochs
        same = [f for f in rows if not f["lora"] and _at_base(f, base) and (f["task"], f["model"]) == (r["task"], r["model"])]
        full = next((f for f in same if _full(f)), None)
        pruned = next((f for f in same if f["kept_layers"] == r["kept_layers"]), None)
        base_epochs = base[(r["task"], r["model"])][0]
        expected = None
        if full and pruned and full["train_seconds"] and pruned["train_seconds"]:
            expected = balanced_epochs(full["train_seconds"], pruned["train_seconds"], base_epochs)
        study = _study(reference, r, need="adjusted_epochs")
        out.append({
            "task": r["task"], "model": r["model"], "kept_layers": r["kept_layers"], "seeds": r["seeds"],
            "full_train_seconds": full and full["train_seconds"],
            "pruned_train_seconds": pruned and pruned["train_seconds"], "base_epochs": base_epochs,
            "balanced_epochs": expected, "epochs": r["epochs"],
            **_stats(pruned or {k: None for k in _stats(r)}, "base_"), **_stats(r, "balanced_"),
            "gain": _delta(r["f1"], pruned and pruned["f1"]),
            "balanced_train_seconds": r["train_seconds"],
            "time_vs_full": _ratio(r["train_seconds"], full and full["train_seconds"]),
            "study_epochs": study["adjusted_epochs"] if study else None,
            "study_base_f1": study["f1"] if study else None,
            "study_balanced_f1": study["f1_adjusted"] if study else None, "study_row": _row_name(study),
        })
    return sorted(out, key=lambda r: (r["task"], r["model"], -len(r["kept_layers"])))


@view("baselines")
def baselines(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """The full model per task, fully fine-tuned and with LoRA."""
    out = []
    for r in rows:
        if not _full(r) or not _at_base(r, base):
            continue
        study = _study(reference, r, lora=r["lora"])
        out.append({
            "task": r["task"], "model": r["model"], "lora": r["lora"], "learning_rate": r["learning_rate"],
            "seeds": r["seeds"], **_stats(r), "degenerate": r["degenerate"], "majority_f1": r["majority_f1"],
            "accuracy": r["accuracy"], **_cost(r), "latency_ms": r["latency_ms"], "latency_kind": latency_kind(r),
            "model_mib": r["model_mib"], "study_f1": study["f1"] if study else None,
            "study_row": _row_name(study),
        })
    return out


def compute_view(source: ResultsStore | pa.Table, name: str, where: list[str] | None = None,
                 reference: list[dict] | None = None, budgets: list[int] | None = None,
                 aggregated: pa.Table | None = None) -> View:
    """Compute view ``name`` (see ``VIEWS``); study columns appear only when some row matched."""
    spec = VIEWS.get(name)
    table = aggregated if aggregated is not None else aggregate(source, where)
    every = table.to_pylist()
    rows = [r for r in every if r.get("variant", "fp32") == "fp32"]  # trained models (variants: payoff only)
    if not rows:
        raise FrugalrayError(f"View '{name}': no successful trials{' match ' + str(where) if where else ''}")
    base = _base_settings(rows)
    store = source if isinstance(source, ResultsStore) else None
    out = spec.fn(every if spec.variants else rows, base, reference or [], budgets=budgets, store=store)
    notes = [f"{task}/{model}: base settings " + ", ".join(f"{name}={value}" for name, value in zip(BASE, s))
             for (task, model), s in sorted(base.items())]
    degenerate = sum(1 for r in rows if r["degenerate"])
    if degenerate:
        notes.append(f"{degenerate} configuration(s) have degenerate seeds (one class predicted everywhere, or no "
                     f"better than the majority-class baseline): see the 'degenerate' column")
    if not out:
        notes.append(f"View '{name}' has no rows: {spec.doc[0].lower() + spec.doc[1:]} — none in these results")
        return View(name, pa.table({}), notes)
    study = [c for c in out[0] if c.startswith("study_")]
    matched = [c for c in study if any(r[c] is not None for r in out)]
    out = [{k: v for k, v in r.items() if not k.startswith("study_") or k in matched} for r in out]
    if reference and study:
        hits = sum(1 for r in out if any(r.get(c) is not None for c in matched))
        notes.append(f"reference: {hits} of {len(out)} rows matched a study row")
    return View(name, pa.Table.from_pylist(out), notes)


from frugalray.results import payoff as _payoff  # noqa: E402,F401  (registers the payoff view)
from frugalray.results import recovery_view  # noqa: E402,F401 (registers the recovery view)
