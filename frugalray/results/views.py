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

import pyarrow as pa

from frugalray._registry import FrugalrayError
from frugalray.results import nodes_view, payoff, recovery_view  # noqa: F401 (their views register with the rest)
from frugalray.results.aggregate import BASE, aggregate
from frugalray.results.rows import (VIEWS, View, at_base, at_base_settings, base_settings, cost, delta, full_model,
                                    is_full, label, latency_kind, ratio, score, stats, study_match, study_row_name,
                                    view)
from frugalray.results.store import ResultsStore
from frugalray.strategies import balanced_epochs

@view("strategies")
def strategies(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """Every strategy and N at the task's base settings, full fine-tuning (the curves of figs 4.1-4.7)."""
    out = []
    for r in at_base(rows, reference):
        study = r["study"]
        out.append({
            "task": r["task"], "model": r["model"], "strategy": label(r), "kept_layers": r["kept_layers"],
            "n_kept_layers": r["n_kept_layers"], "seeds": r["seeds"], **stats(r), "degenerate": r["degenerate"],
            "dev_f1": r["dev_f1"], **cost(r), "latency_ms": r["latency_ms"], "latency_kind": latency_kind(r),
            "model_mib": r["model_mib"],
            "study_f1": study["f1"] if study else None, "study_row": study_row_name(study),
        })
    return out


@view("budget")
def budget(rows: list[dict], base: dict, reference: list[dict], budgets: list[int] | None = None, **_) -> list[dict]:
    """Per task and layer budget B: the best strategy keeping at most B layers (the study's table 4.4)."""
    out = []
    pool = [r for r in rows if not r["lora"] and at_base_settings(r, base)]
    for task, model in sorted({(r["task"], r["model"]) for r in pool}):
        mine = [r for r in pool if (r["task"], r["model"]) == (task, model)]
        full = full_model(mine)
        layers = mine[0]["num_layers"]
        sizes = budgets or sorted({r["n_kept_layers"] for r in mine if r["n_kept_layers"] < layers})
        for size in sizes:
            candidates = [r for r in mine if r["n_kept_layers"] <= size and not is_full(r)]
            if not candidates:
                continue
            best = max(candidates, key=lambda r: (score(r), -r["n_kept_layers"]))
            study = study_match(reference, best, strategy=best["strategy"])
            out.append({
                "task": task, "model": model, "budget": size, "strategy": label(best),
                "kept_layers": best["kept_layers"], "n_kept_layers": best["n_kept_layers"], "seeds": best["seeds"],
                **stats(best), "degenerate": best["degenerate"], "majority_f1": best["majority_f1"],
                "f1_vs_full": delta(best["f1"], full and full["f1"]),
                "train_speedup": ratio(full and full["train_seconds"], best["train_seconds"]),
                "latency_speedup": ratio(full and full["latency_ms"], best["latency_ms"]),
                "latency_kind": latency_kind(best), "model_mib": best["model_mib"], "train_kwh": best["train_kwh"],
                "f1_per_kj": cost(best)["f1_per_kj"], "study_f1": study["f1"] if study else None,
                "study_row": study_row_name(study),
            })
    return out


@view("best_worst")
def best_worst(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """best(N) and drop_worst(N), ranked by the task's single-layer scores (the study's table 4.2)."""
    out = []
    chosen = [r for r in rows if r["strategy"] in ("best", "drop_worst") and not r["lora"] and at_base_settings(r, base)]
    for r in sorted(chosen, key=lambda r: (r["task"], r["model"], r["strategy"] != "best", r["strategy_n"])):
        study = study_match(reference, r, strategy=r["strategy"])
        out.append({
            "task": r["task"], "model": r["model"], "strategy": label(r), "kept_layers": r["kept_layers"],
            "seeds": r["seeds"], **stats(r), "degenerate": r["degenerate"], "precision": r["precision"],
            "recall": r["recall"], "study_f1": study["f1"] if study else None, "study_row": study_row_name(study),
        })
    return out


@view("lora")
def lora(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """LoRA vs full fine-tuning of the same layer sets (the study's table 4.6)."""
    out = []
    for r in rows:
        if not r["lora"] or not at_base_settings(r, base):
            continue
        full_ft = [f for f in rows if not f["lora"] and f["kept_layers"] == r["kept_layers"] and at_base_settings(f, base)
                   and (f["task"], f["model"]) == (r["task"], r["model"])]
        f = max(full_ft, key=lambda f: f["seeds"]) if full_ft else None
        study_lora, study_full = study_match(reference, r, lora=True), study_match(reference, r, lora=False)
        out.append({
            "task": r["task"], "model": r["model"], "kept_layers": r["kept_layers"],
            "n_kept_layers": r["n_kept_layers"], "lora_lr": r["learning_rate"], "train_head": r["lora_train_head"],
            "seeds": r["seeds"], **stats(r, "lora_"), "lora_degenerate": r["degenerate"],
            **stats(f or {k: None for k in stats(r)}, "full_"), "full_seeds": f and f["seeds"],
            "lora_vs_full": delta(r["f1"], f and f["f1"]),
            "lora_train_seconds": r["train_seconds"], "full_train_seconds": f and f["train_seconds"],
            "trainable_params": r["trainable_params"], "model_mib": r["model_mib"],
            "study_lora_f1": study_lora["f1"] if study_lora else None, "study_lora_row": study_row_name(study_lora),
            "study_full_f1": study_full["f1"] if study_full else None, "study_full_row": study_row_name(study_full),
        })
    return sorted(out, key=lambda r: (r["task"], r["model"], -r["n_kept_layers"]))


@view("balanced")
def balanced(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """Pruned models trained for the full model's time budget (the study's tables 4.8 and 4.9)."""
    out = []
    for r in rows:
        if r["lora"] or is_full(r) or not at_base_settings(r, base, ignore=("epochs",)) or at_base_settings(r, base):
            continue  # balanced rows: full fine-tuning of a pruned model at the base settings but other epochs
        same = [f for f in rows if not f["lora"] and at_base_settings(f, base) and (f["task"], f["model"]) == (r["task"], r["model"])]
        full = full_model(same)
        pruned = next((f for f in same if f["kept_layers"] == r["kept_layers"]), None)
        base_epochs = base[(r["task"], r["model"])][0]
        expected = None
        if full and pruned and full["train_seconds"] and pruned["train_seconds"]:
            expected = balanced_epochs(full["train_seconds"], pruned["train_seconds"], base_epochs)
        study = study_match(reference, r, need="adjusted_epochs")
        out.append({
            "task": r["task"], "model": r["model"], "kept_layers": r["kept_layers"], "seeds": r["seeds"],
            "full_train_seconds": full and full["train_seconds"],
            "pruned_train_seconds": pruned and pruned["train_seconds"], "base_epochs": base_epochs,
            "balanced_epochs": expected, "epochs": r["epochs"],
            **stats(pruned or {k: None for k in stats(r)}, "base_"), **stats(r, "balanced_"),
            "gain": delta(r["f1"], pruned and pruned["f1"]),
            "balanced_train_seconds": r["train_seconds"],
            "time_vs_full": ratio(r["train_seconds"], full and full["train_seconds"]),
            "study_epochs": study["adjusted_epochs"] if study else None,
            "study_base_f1": study["f1"] if study else None,
            "study_balanced_f1": study["f1_adjusted"] if study else None, "study_row": study_row_name(study),
        })
    return sorted(out, key=lambda r: (r["task"], r["model"], -len(r["kept_layers"])))


@view("baselines")
def baselines(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """The full model per task, fully fine-tuned and with LoRA."""
    out = []
    for r in rows:
        if not is_full(r) or not at_base_settings(r, base):
            continue
        study = study_match(reference, r, lora=r["lora"])
        out.append({
            "task": r["task"], "model": r["model"], "lora": r["lora"], "learning_rate": r["learning_rate"],
            "seeds": r["seeds"], **stats(r), "degenerate": r["degenerate"], "majority_f1": r["majority_f1"],
            "epochs": r["epochs"], "early_stopping_patience": r["early_stopping_patience"],
            "accuracy": r["accuracy"], **cost(r), "latency_ms": r["latency_ms"], "latency_kind": latency_kind(r),
            "model_mib": r["model_mib"], "study_f1": study["f1"] if study else None,
            "study_row": study_row_name(study),
        })
    return out


def compute_view(source: ResultsStore | pa.Table, name: str, where: list[str] | None = None,
                 reference: list[dict] | None = None, budgets: list[int] | None = None,
                 aggregated: pa.Table | None = None) -> View:
    """Compute view ``name`` (see ``VIEWS``); study columns appear only when some row matched."""
    spec = VIEWS.get(name)
    if spec.raw:
        if not isinstance(source, ResultsStore):
            raise FrugalrayError(f"View '{name}' reads a store's rows: give it a store")
        out = spec.fn(source, where)
        return View(name, pa.Table.from_pylist(out), [] if out else [f"View '{name}' has no rows"])
    table = aggregated if aggregated is not None else aggregate(source, where)
    every = table.to_pylist()
    rows = [r for r in every if r.get("variant", "fp32") == "fp32"]  # trained models (variants: payoff only)
    if not rows:
        raise FrugalrayError(f"View '{name}': no successful trials{' match ' + str(where) if where else ''}")
    base = base_settings(rows)
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

