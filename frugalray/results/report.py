"""A self-contained HTML report of a results store: the study's figures and tables, per task.

    frugalray report results/quick --out report/              # report/index.html + report/figures/*.png
    frugalray report results/quick --out report/ --embed      # one HTML file, figures inlined

Per task: the single-layer profile (the study's fig. 4.1), first/last-N curves, best/drop_worst curves,
the symmetric and alternate curves (figs 4.2-4.7), quality against kept layers and against latency with
the Pareto front, the LoRA comparison, and the tables of ``frugalray.results.views`` (the frugality table
``payoff`` among them), with the reference study's numbers beside ours where rows match. Error bars are
one standard deviation over seeds. The latency axis plots the store's isolated grid (``<results>/latency/``)
when it covers every layer set of a task, else the trials' own latencies; its label says which, and on
what batch. Nothing is fetched from the network: no CSS, script or font outside the folder.

>>> write_report(ResultsStore("results/quick"), "report")   # doctest: +SKIP
PosixPath('report/index.html')
"""

from __future__ import annotations

import base64
import html
import io
import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from frugalray._registry import FrugalrayError
from frugalray.results.store import ResultsStore
from frugalray.results.tables import with_uncertainty
from frugalray.results.recovery_view import recommendation
from frugalray.results.views import VIEWS, View, aggregate, at_base, compute_view
from frugalray.study.strategies import STRATEGIES

# One colour per strategy family (``Strategy.family``), the same in every figure.
FAMILIES = {
    "full model": "#000000", "single layer": "#7f7f7f", "first / last": "#1f77b4", "best / drop_worst": "#2ca02c",
    "symmetric": "#ff7f0e", "alternate": "#9467bd", "importance proxy": "#8c564b", "searched mask": "#d62728",
}
STUDY_STYLE = dict(marker="D", facecolors="white", edgecolors="#444444", linewidths=1.5, s=40, zorder=4)
TABLE_VIEWS = ("baselines", "payoff", "budget", "best_worst", "lora", "balanced", "recovery")


def family(strategy: str) -> tuple[str, str]:
    """(family name, colour) of a strategy."""
    name = STRATEGIES.get(strategy).family if strategy in STRATEGIES else "other"
    return name, FAMILIES.get(name, "#17becf")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both cost (x, lower is better) and quality (y, higher is better).

    >>> pareto_front([(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.7)])
    [(1, 0.5), (2, 0.7)]
    """
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


class _Figures:
    """Saves matplotlib figures as PNG files (or keeps them in memory to embed)."""

    def __init__(self, folder: Path, embed: bool):
        self.folder, self.embed = folder, embed
        self.written: list[Path] = []

    def add(self, figure, name: str, alt: str) -> str:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        data = buffer.getvalue()
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(data).decode()
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}.png"
            _atomic_write(path, data)
            self.written.append(path)
            src = f"{self.folder.name}/{path.name}"
        return f'<figure><img src="{src}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


def _atomic_write(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def _figure(width: float = 6.4, height: float = 4.0, columns: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(width * columns, height), layout="constrained")
    axes = figure.subplots(1, columns)
    return figure, (list(axes) if columns > 1 else [axes])


def _full_line(axis, rows: list[dict]) -> None:
    full = [r for r in rows if r["strategy"] == "full"]
    if full:
        axis.axhline(full[0]["f1"], color=FAMILIES["full model"], linestyle="--", linewidth=1,
                     label=f"full model ({full[0]['f1']:.3f})")


def _finish(axis, xlabel: str, title: str, integer_x: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_xlabel(xlabel)
    axis.set_ylabel("test F1")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if integer_x:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.legend(fontsize=8, loc="best")


def _curve(axis, rows: list[dict], x, label: str, colour: str, marker: str = "o", linestyle: str = "-") -> None:
    rows = sorted(rows, key=x)
    axis.errorbar([x(r) for r in rows], [r["f1"] for r in rows], yerr=[r["f1_std"] or 0 for r in rows],
                  color=colour, marker=marker, linestyle=linestyle, capsize=3, label=label)


def _study_points(axis, rows: list[dict], label: str = "reference study") -> None:
    """The study's value of the same strategy, at the study's own number of kept layers."""
    studies = [(r, r["study"]) for r in rows if r.get("study") and r["study"]["f1"] is not None]
    points = [(len(study["kept_layers"]) if study["kept_layers"] else r["n_kept_layers"], study["f1"])
              for r, study in studies]
    if points:
        axis.scatter(*zip(*points), label=label, **STUDY_STYLE)


def _by(rows: list[dict], *names: str) -> list[dict]:
    return [r for r in rows if r["strategy"] in names]


def _task_figures(figures: _Figures, key: str, rows: list[dict], lora_rows: list[dict], grid: list[dict]) -> list[str]:
    """The figures of one task; a figure whose trials are missing is left out (and said so). ``grid``: the
    store's isolated latency measurements, plotted instead of the trials' own when they cover every point."""
    blocks, missing = [], []
    singles = _by(rows, "single")
    if singles:
        figure, [axis] = _figure()
        singles = sorted(singles, key=lambda r: r["kept_layers"][0])
        axis.bar([r["kept_layers"][0] for r in singles], [r["f1"] for r in singles],
                 yerr=[r["f1_std"] or 0 for r in singles], color=FAMILIES["single layer"], capsize=3,
                 label="single(k): only layer k kept")
        _full_line(axis, rows)
        _finish(axis, "kept layer k (0-indexed)", "Single-layer profile")
        blocks.append(figures.add(figure, f"{key}-single", f"{key}: test F1 keeping one layer k (fig. 4.1)"))
    else:
        missing.append("single-layer profile (no single(k) trials)")

    curves = [("first / last N", ("first", "last"), f"{key}-first-last", "first and last N layers (figs 4.2-4.3)"),
              ("best / drop_worst N", ("best", "drop_worst"), f"{key}-best-worst",
               "best N layers and all but the worst N (table 4.2)"),
              ("symmetric and alternate", ("drop_middle", "drop_ends", "even", "odd", "drop_every"),
               f"{key}-symmetric-alternate", "symmetric and alternate layer sets (figs 4.4-4.7)")]
    for title, names, name, caption in curves:
        chosen = _by(rows, *names)
        if not chosen:
            missing.append(f"{title} (no such trials)")
            continue
        figure, [axis] = _figure()
        markers = iter("osv^D<>p")
        for strategy in names:
            mine = _by(chosen, strategy)
            if not mine:
                continue
            fam, colour = family(strategy)
            linestyle = "-" if strategy in ("first", "best", "drop_middle", "even") else "--"
            if strategy in ("even", "odd") or strategy == "drop_every":
                axis.scatter([r["n_kept_layers"] for r in mine], [r["f1"] for r in mine], color=colour,
                             marker=next(markers), label=strategy, zorder=3)
                for r in mine:
                    axis.annotate(STRATEGIES.get(r["strategy"]).label(r["strategy_n"]), (r["n_kept_layers"], r["f1"]), fontsize=7,
                                  textcoords="offset points", xytext=(4, 4))
            else:
                _curve(axis, mine, lambda r: r["n_kept_layers"], strategy, colour, next(markers), linestyle)
        _study_points(axis, chosen)
        _full_line(axis, rows)
        _finish(axis, "kept layers", title)
        blocks.append(figures.add(figure, name, f"{key}: test F1 of {caption}, against the number of kept layers"))

    pruned = [r for r in rows if r["strategy"] != "full"]
    if pruned:
        from frugalray.results.grid import latency_axis

        latencies, latency_label = latency_axis(rows, grid)  # says what was measured: grid or trials, batch shape
        figure, axes = _figure(5.2, 4.0, columns=2)
        for axis, values, label in ((axes[0], [r["n_kept_layers"] for r in rows], "kept layers"),
                                    (axes[1], latencies, latency_label)):
            points = [(x, r) for x, r in zip(values, rows) if x is not None]
            seen = set()
            for x, r in points:
                fam, colour = family(r["strategy"])
                axis.scatter(x, r["f1"], color=colour, s=22, alpha=0.8, label=None if fam in seen else fam, zorder=3)
                seen.add(fam)
            front = pareto_front([(x, r["f1"]) for x, r in points])
            if front:
                axis.step(*zip(*front), where="post", color="#d62728", linewidth=1.2, label="Pareto front", zorder=2)
            _finish(axis, label, "Quality vs " + ("kept layers" if label == "kept layers" else "latency"),
                    integer_x=label == "kept layers")
        blocks.append(figures.add(figure, f"{key}-pareto", f"{key}: test F1 against kept layers and against "
                                  f"{latency_label}; the line is the Pareto front"))
    if lora_rows:
        import numpy as np

        figure, [axis] = _figure()
        labels = [",".join(map(str, r["kept_layers"])) for r in lora_rows]
        x = np.arange(len(lora_rows))
        for offset, prefix, name, colour, edge in ((-0.2, "full_", "full fine-tuning", "#1f77b4", "#0b3d6b"),
                                                    (0.2, "lora_", "LoRA", "#ff7f0e", "#8a3b00")):
            values = [r[f"{prefix}f1"] if r[f"{prefix}f1"] is not None else 0 for r in lora_rows]
            axis.bar(x + offset, values, width=0.4, yerr=[r[f"{prefix}f1_std"] or 0 for r in lora_rows],
                     color=colour, capsize=3, label=name)
            study = [(i + offset, r.get(f"study_{prefix}f1")) for i, r in enumerate(lora_rows)
                     if r.get(f"study_{prefix}f1") is not None]
            if study:
                axis.scatter(*zip(*study), label=f"reference study, {name}", **(STUDY_STYLE | {"edgecolors": edge}))
        axis.set_xticks(x, labels, rotation=20, fontsize=8)
        _finish(axis, "kept layers", "LoRA vs full fine-tuning", integer_x=False)
        axis.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        blocks.append(figures.add(figure, f"{key}-lora", f"{key}: LoRA against full fine-tuning of the same layers (table 4.6)"))
    else:
        missing.append("LoRA comparison (no LoRA trials)")
    if missing:
        blocks.append("<p class=note>Not shown: " + html.escape("; ".join(missing)) + ".</p>")
    return blocks


def _html_table(table: pa.Table) -> str:
    from frugalray.results.tables import _cell

    shown = with_uncertainty(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.column_names)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>"
                   for row in shown.to_pylist())
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}h3{margin-top:1.5em}
figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%}
figcaption{font-size:.85em;color:#555;max-width:560px}
table{border-collapse:collapse;font-size:.8em;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.note{color:#777;font-size:.9em}
.scroll{overflow-x:auto}
"""


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
    views: dict[str, View] = {name: compute_view(store, name, reference=reference, aggregated=aggregated)
                              for name in ("strategies", *TABLE_VIEWS)}
    out.mkdir(parents=True, exist_ok=True)
    figures = _Figures(out / "figures", embed)
    title = title or f"frugalray report: {store.location}"
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class=note>{aggregated.num_rows} configurations from {int(pa.compute.sum(aggregated['seeds']).as_py())} "
             f"successful trials; generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Error bars and ± are one "
             f"standard deviation over seeds, brackets the 95% Student-t interval of the mean. Layer sets are chosen on "
             f"dev F1 and reported on test F1. White diamonds are the reference study's numbers "
             f"(camembert-base, 12 layers) where a row matches.</p>"]
    parts += [f"<p class=note>{html.escape(note)}</p>" for note in views["strategies"].notes]
    from frugalray.results.grid import read_grid

    grid = read_grid(store)
    trained = [r for r in aggregated.to_pylist() if r["variant"] == "fp32"]  # int8/ONNX forms: the payoff table
    strategies = at_base(trained, reference or [])
    lora = views["lora"].table.to_pylist() if views["lora"].table.num_columns else []
    keys = sorted({(r["task"], r["model"]) for r in aggregated.to_pylist()})
    advice = recommendation(views["recovery"].table.to_pylist()) if views["recovery"].table.num_columns else {}
    for task, model in keys:
        key = f"{task}-{model}".replace("/", "_").replace(os.sep, "_")
        parts.append(f"<h2>{html.escape(task)} <small>({html.escape(model)})</small></h2>")
        mine = [r for r in strategies if (r["task"], r["model"]) == (task, model)]
        mine_lora = [r for r in lora if (r["task"], r["model"]) == (task, model)]
        parts += _task_figures(figures, _safe(key), mine, mine_lora, grid)
        if (task, model) in advice:
            parts.append(f"<p><b>Recovery:</b> {html.escape(advice[(task, model)])}.</p>")
        for name in TABLE_VIEWS:
            table = views[name].table
            if not table.num_columns:
                continue
            mask = [(r["task"], r["model"]) == (task, model) for r in table.select(["task", "model"]).to_pylist()]
            part = table.filter(pa.array(mask)).drop_columns(["task", "model"])
            if part.num_rows:
                parts.append(f"<h3>{html.escape(name)}: {html.escape(VIEWS.get(name).doc)}</h3>")
                parts.append(f"<div class=scroll>{_html_table(part)}</div>")
    parts.append("</body></html>")
    path = out / "index.html"
    _atomic_write(path, "\n".join(parts).encode("utf-8"))
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
