"""The recovery view: at each kept-layer set that has students of the fine-tuned full model, every way the
pruned model recovered (the study's drop-and-fine-tune, LoRA, pruned after fine-tuning, distilled,
partially fine-tuned), with its F1 against the full model's and its total compute.

Compute counts what the result cost: the trial's training, plus for a student of the fine-tuned full model
its share of the teacher's training (split over the students that share it) and any teacher logits it
computed. Choices are made on dev F1 and reported on test F1.

    frugalray results results/quick --view recovery
"""

from __future__ import annotations

from frugalray.results.rows import (at_base_settings, base_settings, full_model, ratio, stats, recovery_label,
                                     study_recovery, view)

TARGET = 0.99  # the share of the full model's quality a recovery must keep


@view("recovery")
def recovery(rows: list[dict], base: dict, reference: list[dict], **_) -> list[dict]:
    """Every recovery of the pruned layer sets that have students of the fine-tuned full model."""
    out = []
    for task, model in sorted({(r["task"], r["model"]) for r in rows}):
        mine = [r for r in rows if (r["task"], r["model"]) == (task, model) and at_base_settings(r, base, any_recovery=True)]
        full = full_model([r for r in mine if study_recovery(r)])
        students = {tuple(r["kept_layers"]) for r in mine if not study_recovery(r)}
        for kept in sorted(students, key=lambda k: (len(k), k)):
            for r in sorted((r for r in mine if tuple(r["kept_layers"]) == kept), key=lambda r: -(r["dev_f1"] or 0)):
                out.append({
                    "task": task, "model": model, "kept_layers": list(kept), "n_kept_layers": len(kept),
                    "recovery": recovery_label(r), "seeds": r["seeds"], "full_seeds": full and full["seeds"],
                    "full_epochs": full and full["epochs"],
                    "full_patience": full and full["early_stopping_patience"],
                    **stats(r), "degenerate": r["degenerate"],
                    "dev_f1": r["dev_f1"], "f1_vs_full": ratio(r["f1"], full and full["f1"]),
                    "dev_f1_vs_full": ratio(r["dev_f1"], full and full["dev_f1"]),
                    "train_seconds": r["train_seconds"], "compute_seconds": r["compute_seconds"],
                    "compute_vs_full": ratio(r["compute_seconds"], full and full["compute_seconds"]),
                    "latency_ms": r["latency_ms"],
                })
    return out


def students(rows: list[dict]) -> list[dict]:
    """Aggregated rows that recovered otherwise than the study did, without LoRA, at their task's base settings:
    the recovery families the report's quality-vs-cost plots draw beside the strategies."""
    base = base_settings(rows)
    return [r for r in rows if not r["lora"] and not study_recovery(r) and at_base_settings(r, base, any_recovery=True)]


def recommendation(rows: list[dict], target: float = TARGET) -> dict[tuple[str, str], str]:
    """Per (task, model) of recovery-view rows: the cheapest recovery that keeps ``target`` of the full
    model's dev F1 (fewest layers, then least compute), or what comes closest when none does. Only rows
    measured over as many seeds as the full model compete: one lucky seed does not make a recommendation."""
    said = {}
    for key in sorted({(r["task"], r["model"]) for r in rows}):
        scored = [r for r in rows if (r["task"], r["model"]) == key and r["dev_f1_vs_full"] is not None]
        mine = [r for r in scored if r["seeds"] >= (r.get("full_seeds") or 0)]
        if not mine:
            if scored:
                said[key] = (f"no recovery has been measured over the full model's {scored[0]['full_seeds']} seeds "
                             f"yet (most: {max(r['seeds'] for r in scored)}); run the missing seeds to compare")
            continue
        n = mine[0]["full_seeds"] or min(r["seeds"] for r in mine)
        seeds = f"over {n} seed{'s' if n != 1 else ''}"
        good = [r for r in mine if r["dev_f1_vs_full"] >= target]
        if good:
            best = min(good, key=lambda r: (r["n_kept_layers"], r["compute_seconds"] or 0))
            said[key] = (f"cheapest recovery keeping {target:.0%} of the full model's dev F1 {seeds}: "
                         f"{best['recovery']} on layers {best['kept_layers']} (test F1 {best['f1']:.4f}, "
                         f"{best['f1_vs_full']:.1%} of the full model's; compute {best['compute_vs_full']:.2f}x "
                         f"the full model's)")
        else:
            best = max(mine, key=lambda r: r["dev_f1_vs_full"])
            said[key] = (f"no recovery keeps {target:.0%} of the full model's dev F1 {seeds}; closest: "
                         f"{best['recovery']} on layers {best['kept_layers']} with {best['dev_f1_vs_full']:.1%} "
                         f"(test F1 {best['f1']:.4f})")
    return said
