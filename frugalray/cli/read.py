"""The commands that read: ``results``, ``report``, ``export`` (``importance`` and ``bench-latency`` measure
models: ``frugalray.cli.measure``; the listings ``tasks``, ``strategies`` and ``stages``:
``frugalray.cli.listings``). None of them imports torch or Ray unless it needs a model.
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import tyro

from frugalray._registry import FrugalrayError

Location = Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="LOCATION")]
Repeated = Annotated[tuple[str, ...], tyro.conf.UseAppendAction]  # --where a=1 --where 'b<=3'
Format = Literal["table", "csv", "markdown"]


def _reference(store, reference: tuple[str, ...], reference_task: tuple[tuple[str, str], ...],
               no_reference: bool) -> list[dict]:
    """Reference records; tasks are paired with study datasets as the store's sweeps recorded, then as given."""
    from frugalray.results.metadata import reference_tasks
    from frugalray.results.reference import STUDY, load_reference

    if no_reference:
        return []
    return load_reference(list(reference) or [STUDY], reference_tasks(store) | dict(reference_task))


def results(
    location: Location,
    where: Repeated = (),
    sql: str | None = None,
    columns: tuple[str, ...] = (),
    format: Format = "table",
    view: str | None = None,
    budget: tuple[int, ...] = (),
    fronts: bool = False,
    check: bool = False,
    repair: bool = False,
    reference: Repeated = (),
    reference_task: tuple[tuple[str, str], ...] = (),
    no_reference: bool = False,
) -> int:
    """Query a results store: rows, SQL, the study's tables (views), search fronts, or the store's health.

    Example: frugalray results results/quick --view budget --where task=demo_pos

    Args:
        location: Results location: a folder, s3://bucket/prefix or gs://...
        where: Filters, e.g. task=demo_pos 'n_kept_layers<=3' (all must hold).
        sql: DuckDB SQL over the view 'trials'.
        columns: Columns to show.
        format: Output format.
        view: A ready table: budget (4.4), best_worst (4.2), lora (4.6), balanced (4.8/4.9), baselines,
            strategies, payoff (the frugality table), recovery (students at each layer set); seeds give mean ±
            std [95% CI].
        budget: With --view budget: the layer budgets to show (default: all).
        fronts: Show the Pareto fronts of layer-mask searches.
        check: The store's health: files, rows, unreadable files, staging leftovers, configurations trained
            twice; exit 1 when something needs attention.
        repair: Move unreadable files to <store>/quarantine/ and remove stale staging files.
        reference: Reference CSV files or folders to show beside our numbers (default: the reference study's).
        reference_task: Pair our tasks with reference datasets, e.g. demo_pos=FTB_POS (added to the pairs the
            store's sweeps recorded).
        no_reference: Show our numbers only.
    """
    from frugalray.results.store import ResultsStore
    from frugalray.results.tables import render

    store, shown = ResultsStore(location), list(columns) or None
    if fronts:
        return _print_fronts(store, format)
    if check or repair:
        return _health(store, repair)
    if view:
        if sql:
            raise FrugalrayError("--view and --sql do not combine; filter a view with --where")
        return _print_view(store, view, list(where), list(budget) or None, shown, format,
                           _reference(store, reference, reference_task, no_reference))
    print(render(store.query(where=list(where), sql=sql), shown, format))
    return 0


def _print_fronts(store, format: Format) -> int:
    from frugalray.results.fronts import read_fronts
    from frugalray.results.tables import render

    tables = read_fronts(store)
    if not tables:
        raise FrugalrayError(f"No search fronts in {store.location!r}; run `frugalray search` first")
    for front in tables:
        print(f"== {front.column('search')[0]} ({front.column('objective')[0]})")
        print(render(front.drop_columns(["search", "objective"]), fmt=format))
    return 0


def _health(store, repair: bool) -> int:
    from frugalray.results.health import check_store, repair_store

    if repair:
        print("\n".join(repair_store(store)))
    health = check_store(store)
    print(health.text())
    return 0 if health.healthy else 1


def _print_view(store, view: str, where: list[str], budgets, shown, format: Format, reference: list[dict]) -> int:
    from frugalray.results.tables import render, with_uncertainty
    from frugalray.results.views import compute_view

    computed = compute_view(store, view, where=where, budgets=budgets, reference=reference)
    table = computed.table if format == "csv" else with_uncertainty(computed.table)
    if table.num_columns:
        print(render(table, shown, format))
    for note in computed.notes:
        print(f"# {note}", file=sys.stderr)
    return 0


def report(
    location: Location,
    out: str = "report",
    embed: bool = False,
    where: Repeated = (),
    title: str | None = None,
    reference: Repeated = (),
    reference_task: tuple[tuple[str, str], ...] = (),
    no_reference: bool = False,
) -> int:
    """Write an HTML report: the study's figures and tables per task.

    Example: frugalray report results/quick --out report/

    Args:
        location: Results location: a folder, s3://bucket/prefix or gs://...
        out: Folder for index.html and figures/.
        embed: Inline the figures: one self-contained HTML file.
        where: Only these trials, e.g. task=demo_pos.
        title: Title of the report (default: from the results).
        reference: Reference CSV files or folders to show beside our numbers (default: the reference study's).
        reference_task: Pair our tasks with reference datasets, e.g. demo_pos=FTB_POS (added to the pairs the
            store's sweeps recorded).
        no_reference: Show our numbers only.
    """
    from frugalray.results.report import write_report
    from frugalray.results.store import ResultsStore

    store = ResultsStore(location)
    path = write_report(store, out, reference=_reference(store, reference, reference_task, no_reference),
                        where=list(where), embed=embed, title=title)
    print(f"Report written to {path}")
    return 0


def export(location: Location, trial: str, out: str, force: bool = False, no_check: bool = False, int8: bool = False,
           onnx: bool = False, int8_fp32: str = "auto", int8_max_fp32_share: float | None = None) -> int:
    """Write a trial's pruned model (LoRA merged) as a plain Hugging Face folder, or a smaller form of it.

    Example: frugalray export results/quick --trial TRIAL_ID --out exported/ --int8

    TRIAL_ID: a trial_id (or a unique prefix) with saved weights, listed by
    frugalray results results/quick --where lora=true --columns trial_id,task,kept_layers,f1,model_path

    Args:
        location: Results location: a folder, s3://bucket/prefix or gs://...
        trial: trial_id (or a unique prefix) of a trial run with --save-model.
        out: Folder to write; an earlier export there is replaced, any other non-empty folder needs --force.
        force: Write into a non-empty folder that is not an earlier export (its other files are kept).
        no_check: Skip comparing the export's logits with the trained model.
        int8: Dynamic int8 of the Linear layers (torch; with --onnx, onnxruntime's). The variant is evaluated on
            the task's test and dev sets and stored as a row of its own (variant, source_trial_id).
        onnx: Also write an ONNX graph run by ONNX Runtime (pip install 'frugalray[onnx]'); evaluated likewise.
        int8_fp32: Torch int8: the groups of Linear layers that stay fp32: auto (chosen greedily on the dev set,
            until dev F1 is within half a point of fp32), agreement (chosen greedily on how well the int8
            model reproduces the fp32 model's predictions on dev and up to 2,000 training sentences, no label
            used: a group stays fp32 only if it brings back more than 1 point of that agreement F1), none (every Linear int8), or groups such as classifier,layer.2.output.
        int8_max_fp32_share: With auto or agreement: the largest share of the Linear layers' weights (so of their
            multiply-adds) the kept groups may have, e.g. 0.34: at most three of a 3-layer MiniLM's nine groups.
    """
    from frugalray.deploy.export import export_trial
    from frugalray.results.store import ResultsStore

    from frugalray.deploy.int8 import parse_choice

    done = export_trial(ResultsStore(location), trial, out, check=not no_check, force=force, int8=int8, onnx=onnx,
                        int8_fp32=parse_choice(int8_fp32), int8_max_fp32_share=int8_max_fp32_share)
    check = ("" if done["max_logit_difference"] is None
             else f"; max logit difference vs the trained model {done['max_logit_difference']:.1e}")
    print(f"Exported trial {done['trial_id']} (kept layers {done['kept_layers']}, {done['parameters']:,} parameters"
          f"{', LoRA merged' if done['lora_merged'] else ''}) to {done['out']}{check}")
    row = done["variant_row"]
    if row is not None and row["int8_fp32_groups"]:
        how = {"auto": " (chosen on dev F1)", "agreement": " (chosen on agreement with fp32)"}.get(int8_fp32, "")
        print(f"kept in fp32{how}: {', '.join(row['int8_fp32_groups'])}")
    if row is not None:
        print(f"{row['variant']}: test F1 {done['source_f1']:.4f} -> {row['f1']:.4f} ({row['f1'] - done['source_f1']:+.4f}), "
              f"dev F1 {row['dev_f1']:.4f}, {row['model_mib']:.3g} MiB; stored as trial {row['trial_id']}. Time it: "
              f"frugalray bench-latency --model {done['out']} --results {location}")
    return 0
