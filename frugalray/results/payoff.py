"""The frugality table: per task, the smallest and the fastest configuration that keeps >= 98%, 95% and 90%
of the full model's test F1, across every family the store holds (pruned, LoRA, int8, ONNX...).

    frugalray results results/ --view payoff

A configuration qualifies on dev F1, as every view chooses (its dev F1 is at least that share of the full
model's), and is reported on test F1 (``f1_kept``: its test F1 over the full model's). The full model is the
task's fully fine-tuned, unpruned fp32 model at its base settings; it always qualifies, so a share that
nothing smaller keeps names the full model. Speedups are against the full fp32 model: from the store's
isolated latency grid (``frugalray bench-latency --results STORE``) at batch 1 and 32 and the stated
``seq_len`` when the grid has the configuration, else from the trials' own latencies (one batch, measured
as ``speedup_source`` says). Size is ``model_mib`` (int8: packed weights; ONNX: the file); energy is the
training's and the evaluation's (kWh).

>>> compute_view(ResultsStore("results/"), "payoff").table.column_names[:4]   # doctest: +SKIP
['task', 'model', 'keeps', 'pick']
"""

from __future__ import annotations

from frugalray.results.grid_rows import grid_cells, grid_seq_len, read_grid
from frugalray.results.rows import (at_base_settings, full_model, is_full, label, ratio, score, latency_kind,
                                     recovery_label, study_recovery, view)

SHARES = (0.98, 0.95, 0.90)


def family(row: dict) -> str:
    """pruned, LoRA, int8, onnx, onnx-int8, full, or how a student recovered (``finetuned+distill(T=2,...)``)
    when it did not recover as the study did."""
    if not study_recovery(row):
        return recovery_label(row)
    if row.get("variant", "fp32") != "fp32":
        return row["variant"] + (" + pruned" if not is_full(row) else "") + (" + LoRA" if row["lora"] else "")
    if row["lora"]:
        return "LoRA" + ("" if is_full(row) else " + pruned")
    return "full" if is_full(row) else "pruned"


def speedups(row: dict, full: dict, grid: list[dict], seq_len: int | None) -> dict:
    """Speedup of ``row`` against the full model at batch 1 and 32, and where the numbers come from."""
    cells = grid_cells(grid, row["model"], row["kept_layers"], row.get("variant", "fp32")) if seq_len else {}
    one, many = cells.get((1, seq_len)), cells.get((32, seq_len))
    if one or many:
        return {"speedup_b1": one and one["speedup"], "speedup_b32": many and many["speedup"], "seq_len": seq_len,
                "speedup_source": "isolated grid"}
    faster = ratio(full.get("latency_ms"), row.get("latency_ms"))
    same = (row.get("latency_batch_size"), row.get("latency_seq_len")) == (full.get("latency_batch_size"),
                                                                           full.get("latency_seq_len"))
    source = f"trials: {latency_kind(row)}" + ("" if same else f"; full model: {latency_kind(full)}")
    return {"speedup_b1": None, "speedup_b32": faster,
            "seq_len": row.get("latency_seq_len"), "speedup_source": source if faster is not None else None}


@view("payoff", variants=True)
def payoff(rows: list[dict], base: dict, reference: list[dict], store=None, **_) -> list[dict]:
    """Per task: the smallest and the fastest configuration keeping >= 98/95/90% of the full model's test F1."""
    grid = read_grid(store) if store is not None else []
    out = []
    for task, model in sorted({(r["task"], r["model"]) for r in rows}):
        if (task, model) not in base:
            continue
        mine = [r for r in rows if (r["task"], r["model"]) == (task, model) and at_base_settings(r, base)]
        fulls = [r for r in mine if is_full(r) and not r["lora"] and r.get("variant", "fp32") == "fp32"]
        if not fulls:
            continue
        full = full_model(fulls)
        seq_len = grid_seq_len(grid, model)
        measured = [(r, speedups(r, full, grid, seq_len)) for r in mine]
        for share in SHARES:
            keep = [(r, s) for r, s in measured if score(r) >= share * score(full)]
            smallest = min(keep, key=lambda p: (p[0]["model_mib"] if p[0]["model_mib"] is not None else float("inf"),
                                                -score(p[0])))
            timed = [p for p in keep if p[1]["speedup_b32"] is not None or p[1]["speedup_b1"] is not None]
            fastest = max(timed, key=lambda p: (p[1]["speedup_b32"] or p[1]["speedup_b1"], score(p[0]))) if timed else None
            for pick, chosen in (("smallest", smallest), ("fastest", fastest)):
                if chosen is not None:
                    out.append(_row(task, model, share, pick, *chosen, full))
    return out


def _row(task: str, model: str, share: float, pick: str, r: dict, speed: dict, full: dict) -> dict:
    return {
        "task": task, "model": model, "keeps": f">= {share:.0%}", "pick": pick, "family": family(r),
        "configuration": label(r), "kept_layers": r["kept_layers"], "n_kept_layers": r["n_kept_layers"],
        "variant": r.get("variant", "fp32"), "seeds": r["seeds"], "f1": r["f1"], "f1_kept": ratio(r["f1"], full["f1"]),
        "dev_f1": r["dev_f1"], **speed, "model_mib": r["model_mib"], "size_vs_full": ratio(r["model_mib"], full["model_mib"]),
        "train_kwh": r.get("train_kwh"), "eval_kwh": r.get("eval_kwh"),
    }
