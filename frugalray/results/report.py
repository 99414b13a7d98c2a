"""A self-contained HTML report of a results store: the study's figures and tables, per task.

    frugalray report results/quick --out report/              # report/index.html + report/figures/*.png
    frugalray report results/quick --out report/ --embed      # one HTML file, figures inlined

The page opens with a contents list; then one section per task (and model), made of blocks that each put a
figure beside the table it summarises: the full model, the single-layer profile (the study's fig. 4.1),
first/last-N, best/drop_worst (table 4.2), symmetric and alternate curves (figs 4.2-4.7), quality against
kept layers and latency with the Pareto front beside the best strategy per layer budget (table 4.4), LoRA
(table 4.6), balanced training time (tables 4.8/4.9), the frugality table (``payoff``: the smallest and fastest
configurations that keep 98/95/90% of the full model's quality) and every recovery of the pruned layer sets
with a recommendation (``recovery``). The latency axis plots the store's isolated grid
(``<results>/latency/``) when it covers every layer set of a task, else the trials' own latencies; its label
says which, and on what batch. The reference study's numbers stand beside ours
where a row is paired at the same fraction of layers kept, and each table names the study row
(``study_row``). Figure rules: ``frugalray.results.report_figures``; layout: ``report_page``. Nothing is
fetched from the network.

A block is a function of one task's data (``TASK_BLOCKS``): a new figure or table is one more function.

>>> write_report(ResultsStore("results/quick"), "report")   # doctest: +SKIP
PosixPath('report/index.html')
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pyarrow as pa

from frugalray._registry import FrugalrayError
from frugalray.results import report_figures as plots
from frugalray.results.report_page import Block, Figures, Section, anchor, atomic_write, page_html, table_html
from frugalray.results.store import ResultsStore
from frugalray.results.grid_rows import read_grid
from frugalray.results.recovery_view import recommendation, students
from frugalray.results.aggregate import aggregate
from frugalray.results.rows import View, at_base
from frugalray.results.views import compute_view
from frugalray.strategies import STRATEGIES

TABLE_VIEWS = ("baselines", "payoff", "budget", "best_worst", "lora", "balanced", "recovery")
# Columns of the strategy tables beside the curves (the strategies view has more).
CURVE_COLUMNS = ("strategy", "kept_layers", "seeds", "f1", "f1_std", "f1_ci_low", "f1_ci_high", "dev_f1",
                 "degenerate", "latency_ms", "study_f1", "study_row")


# Why a student of the fine-tuned full model can beat it: it has been trained for the teacher's epochs and then
# its own, so the fair comparison is a full model trained as long (benchmarks/recovery.py runs that control).
FINETUNED_START_NOTE = ("A student of the fine-tuned full model has trained for the full model's epochs and then its "
                        "own: where it beats the full model, compare it with a full model trained as many epochs "
                        "in all before crediting the pruning.")


@dataclass
class TaskData:
    """What the blocks of one (task, model) section draw from."""

    task: str
    model: str
    key: str
    rows: list[dict]  # aggregated full fine-tuning rows at the base settings, each with its "study" record
    lora: list[dict]  # rows of the lora view
    views: dict[str, pa.Table]  # each view's rows of this task and model (task and model columns dropped)
    figures: Figures
    grid: list[dict]  # the store's isolated latency measurements (frugalray bench-latency --results)
    advice: str | None = None  # the recovery to recommend, if students were trained
    students: list[dict] = field(default_factory=list)  # aggregated rows of the other recoveries, no LoRA

    def figure(self, figure, name: str, caption: str) -> str:
        return "" if figure is None else self.figures.html(figure, f"{self.key}-{name}", f"{self.task}: {caption}")

    def table(self, view: str, strategies: tuple[str, ...] | None = None) -> str:
        table = self.views.get(view)
        if table is None or not table.num_rows:
            return ""
        if strategies is not None:  # the strategies view's rows of ``strategies``, by the labels it gave them
            labels = {STRATEGIES.get(r["strategy"]).label(r["strategy_n"]) for r in self.rows
                      if r["strategy"] in strategies}
            table = table.filter(pa.array([label in labels for label in table.column("strategy").to_pylist()]))
            table = table.select([c for c in CURVE_COLUMNS if c in table.column_names])
        return table_html(table) if table.num_rows else ""


def _view_block(data: TaskData, name: str, title: str, view: str, figure=None, caption: str = "",
                strategies: tuple[str, ...] | None = None) -> Block | None:
    table = data.table(view, strategies)
    drawn = data.figure(figure, name, caption)
    if not table and not drawn:
        return None
    return Block(anchor(data.key, name), title, figure=drawn, table=table)


def baselines_block(data: TaskData) -> Block | None:
    return _view_block(data, "baselines", "Full model: full fine-tuning and LoRA", "baselines")


def profile_block(data: TaskData) -> Block | None:
    return _view_block(data, "single", "Single-layer profile (fig. 4.1)", "strategies", plots.single_profile(data.rows),
                       "test F1 keeping one layer k (fig. 4.1)", strategies=("single", "full"))


def first_last_block(data: TaskData) -> Block | None:
    names = ("first", "last")
    return _view_block(data, "first-last", "First and last N layers (figs 4.2-4.3)", "strategies",
                       plots.strategy_curves(data.rows, names, "First / last N"),
                       "test F1 of the first and last N layers, against the number of kept layers", strategies=names)


def best_worst_block(data: TaskData) -> Block | None:
    return _view_block(data, "best-worst", "Best N and all but the worst N (table 4.2)", "best_worst",
                       plots.strategy_curves(data.rows, ("best", "drop_worst"), "best / drop_worst N"),
                       "test F1 of the best N layers and of all but the worst N, ranked by single(k) dev F1")


def symmetric_block(data: TaskData) -> Block | None:
    names = ("drop_middle", "drop_ends", "even", "odd", "drop_every")
    return _view_block(data, "symmetric-alternate", "Symmetric and alternate layer sets (figs 4.4-4.7)", "strategies",
                       plots.strategy_curves(data.rows, names, "symmetric and alternate"),
                       "test F1 of symmetric and alternate layer sets", strategies=names)


def cost_block(data: TaskData) -> Block | None:
    from frugalray.results.grid_rows import latency_axis

    shown = latency_axis(data.rows, data.grid)[1]
    return _view_block(data, "pareto", "Quality against cost; best strategy per layer budget (table 4.4)", "budget",
                       plots.quality_vs_cost(data.rows, data.grid, data.students),
                       f"test F1 against kept layers and against {shown}; the red line is the Pareto front"
                       + ("; triangles: pruned models that recovered otherwise than the study (the recovery "
                          "table)" if data.students else ""))


def payoff_block(data: TaskData) -> Block | None:
    return _view_block(data, "payoff", "What a smaller model saves: the frugality table", "payoff")


def recovery_block(data: TaskData) -> Block | None:
    block = _view_block(data, "recovery", "Recovery beyond drop-and-fine-tune", "recovery")
    if block is not None and data.advice:
        block.notes = [*block.notes, f"Recommended: {data.advice}."]
    if block is not None and any(r.get("init") == "finetuned" for r in data.students):
        block.notes = [*block.notes, FINETUNED_START_NOTE]
    return block


def lora_block(data: TaskData) -> Block | None:
    return _view_block(data, "lora", "LoRA vs full fine-tuning (table 4.6)", "lora", plots.lora_bars(data.lora),
                       "LoRA against full fine-tuning of the same layers (table 4.6)")


def balanced_block(data: TaskData) -> Block | None:
    return _view_block(data, "balanced", "Balanced training time (tables 4.8/4.9)", "balanced")


# The blocks of a task's section, in order; each returns None when its trials are missing.
TASK_BLOCKS: list[tuple[str, Callable[[TaskData], Block | None]]] = [
    ("full model (no full-model trials)", baselines_block), ("single-layer profile (no single(k) trials)", profile_block),
    ("first / last N (no such trials)", first_last_block), ("best / drop_worst N (no such trials)", best_worst_block),
    ("symmetric and alternate (no such trials)", symmetric_block), ("quality vs cost (no pruned trials)", cost_block),
    ("LoRA comparison (no LoRA trials)", lora_block), ("balanced training (no balanced trials)", balanced_block),
    ("frugality table (no full model to compare with)", payoff_block),
    ("recovery (no students of the fine-tuned full model)", recovery_block),
]


def _about(aggregated: pa.Table, views: dict[str, View], reference: list[dict]) -> Section:
    rows = aggregated.to_pylist()
    seeds = sorted({r["seeds"] for r in rows})
    notes = [
        f"{len(rows)} configurations from {sum(r['seeds'] for r in rows)} successful trials, "
        f"{seeds[0] if len(seeds) == 1 else f'{seeds[0]} to {seeds[-1]}'} seed(s) each.",
        "Figures: means over seeds; error bars are the 95% Student-t interval of the mean, drawn only where a point "
        "has 2 seeds or more; n (seeds per point) is in each legend and in the tables' seeds column. Tables: mean "
        "± standard deviation [95% interval]. Layer sets are chosen on dev F1 and reported on test F1.",
    ]
    pairs = sorted({(r["task"], r["dataset"]) for r in reference if r["task"] != r["dataset"].lower()})
    if reference:
        notes.append("White diamonds and study_* columns: the reference study (" + ", ".join(sorted({
            f"{r['num_layers']}-layer model" for r in reference})) + ") at the same fraction of layers kept as our "
            "row, drawn at our layer count; study_row names the study row (dataset, strategy or layers, "
            "its layers kept of its layer count). Rows at a fraction the study did not run have none."
            + (" Tasks paired with study datasets: " + ", ".join(f"{t}={d}" for t, d in pairs) + "." if pairs else ""))
    notes += views["strategies"].notes
    return Section("about", "About these numbers", [], notes)


def write_report(store: ResultsStore, out: str | os.PathLike, *, reference: list[dict] | None = None,
                 where: list[str] | None = None, embed: bool = False, title: str | None = None) -> Path:
    """Write ``out/index.html`` (and ``out/figures/*.png`` unless ``embed``); returns the HTML path."""
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists())  # Path(".") always exists
    if not existing.is_dir():
        raise FrugalrayError(f"Report folder {str(out)!r} cannot be written: {str(existing)!r} is a file; give a "
                             f"folder for index.html and figures/ (a new one, or one to update)")
    aggregated = aggregate(store, where)
    if aggregated.num_rows == 0:
        raise FrugalrayError(f"No successful trials in {store.location!r}{' match ' + str(where) if where else ''}; "
                             f"nothing to report")
    reference = reference or []
    views = {name: compute_view(store, name, reference=reference, aggregated=aggregated)
             for name in ("strategies", *TABLE_VIEWS)}
    out.mkdir(parents=True, exist_ok=True)
    figures = Figures(out / "figures", embed)
    trained = [r for r in aggregated.to_pylist() if r["variant"] == "fp32"]  # int8/ONNX forms: the payoff table
    strategies = at_base(trained, reference)
    others = students(trained)
    grid = read_grid(store)
    advice = recommendation(views["recovery"].table.to_pylist()) if views["recovery"].table.num_columns else {}
    lora = views["lora"].table.to_pylist() if views["lora"].table.num_columns else []
    sections = [_about(aggregated, views, reference)]
    for task, model in sorted({(r["task"], r["model"]) for r in aggregated.select(["task", "model"]).to_pylist()}):
        mine = {name: _rows_of(view.table, task, model) for name, view in views.items()}
        data = TaskData(task, model, anchor(task, model), [r for r in strategies if (r["task"], r["model"]) == (task, model)],
                        [r for r in lora if (r["task"], r["model"]) == (task, model)], mine, figures, grid,
                        advice.get((task, model)), [r for r in others if (r["task"], r["model"]) == (task, model)])
        blocks, missing = [], []
        for absent, make in TASK_BLOCKS:
            block = make(data)
            if block is None:
                missing.append(absent)
            else:
                blocks.append(block)
        notes = [f"Not shown: {'; '.join(missing)}."] if missing else []
        sections.append(Section(anchor("task", task, model), f"{task} ({model})", blocks, notes))
    title = title or f"frugalray report: {store.location}"
    summary = f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {store.location}."
    path = out / "index.html"
    atomic_write(path, page_html(title, summary, sections).encode("utf-8"))
    return path


def _rows_of(table: pa.Table, task: str, model: str) -> pa.Table:
    if not table.num_columns:
        return table
    mask = [(r["task"], r["model"]) == (task, model) for r in table.select(["task", "model"]).to_pylist()]
    return table.filter(pa.array(mask, pa.bool_())).drop_columns(["task", "model"])
