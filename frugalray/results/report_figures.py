"""The report's figures (matplotlib, no pyplot): one function per figure, from aggregated rows.

Every figure follows the same rules, so that it can be trusted at first read:

- a legend never covers data: it sits below the axes, outside them (one legend per figure);
- an error bar is the 95% Student-t interval of the mean over seeds, drawn only where a point has at least
  two seeds; the number of seeds (``n``) is in the legend;
- axis labels say what the rows recorded (the latency's batch size and sequence length, the model's layer
  count), and say so when rows differ;
- the reference study's numbers are white diamonds, at our own layer count of the row they are paired
  with (same fraction of layers kept, see ``frugalray.results.reference``).

>>> figure = strategy_curves(rows, ("first", "last"), "First / last N")   # doctest: +SKIP
"""

from __future__ import annotations

from frugalray.results.rows import recovery_of, study_recovery
from frugalray.strategies import STRATEGIES

# One colour per strategy family (``Strategy.family``), the same in every figure.
FAMILIES = {
    "full model": "#000000", "single layer": "#7f7f7f", "first / last": "#1f77b4", "best / drop_worst": "#2ca02c",
    "symmetric": "#ff7f0e", "alternate": "#9467bd", "importance proxy": "#8c564b", "searched mask": "#d62728",
}
# One colour per way a pruned model recovered other than the study's (init + method, the recovery view's
# students), drawn as triangles beside the strategy families on the quality-vs-cost plots.
RECOVERY_FAMILIES = {
    ("finetuned", "finetune"): "#e377c2", ("finetuned", "distill"): "#bcbd22", ("finetuned", "partial"): "#393b79",
    ("pretrained", "distill"): "#17a589", ("pretrained", "partial"): "#ff9896",
}
STUDY_STYLE = dict(marker="D", facecolors="white", edgecolors="#444444", linewidths=1.5, s=40, zorder=4)
STUDY_LABEL = "reference study, same fraction of layers"
ERROR_STYLE = dict(fmt="none", capsize=3, linewidth=1, zorder=3)


def family(strategy: str) -> tuple[str, str]:
    """(family name, colour) of a strategy."""
    name = STRATEGIES.get(strategy).family if strategy in STRATEGIES else "other"
    return name, FAMILIES.get(name, "#17becf")


def point_family(row: dict) -> tuple[str, str, str]:
    """(family name, colour, marker) of a row on the quality-vs-cost plots: its strategy's family when it
    recovered as the study did, else how it recovered (``fine-tuned start + distill``)."""
    if study_recovery(row):
        return (*family(row["strategy"]), "o")
    init, method = recovery_of(row)
    return f"{'fine-tuned' if init == 'finetuned' else 'pretrained'} start + {method}", \
        RECOVERY_FAMILIES.get((init, method), "#17becf"), "^"


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


def seeds_text(rows: list[dict], key: str = "seeds") -> str:
    """``n=3`` or ``n=1-3``: the seeds behind some points.

    >>> seeds_text([{"seeds": 1}, {"seeds": 3}])
    'n=1–3'
    """
    counts = sorted({r[key] for r in rows if r.get(key)})
    if not counts:
        return "n=0"
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}–{counts[-1]}"


def layers_label(rows: list[dict]) -> str:
    """``kept layers (of 12)``, or the counts when models of several depths are shown."""
    counts = sorted({r["num_layers"] for r in rows if r.get("num_layers")})
    return f"kept layers (of {'/'.join(map(str, counts))})" if counts else "kept layers"


def _figure(width: float = 6.4, height: float = 4.2, rows: int = 1):
    """A figure of ``rows`` axes stacked, as wide as the page's figure column (no text shrinks to fit)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    figure = Figure(figsize=(width, height * rows), layout="constrained")
    axes = figure.subplots(rows, 1)
    return figure, (list(axes) if rows > 1 else [axes])


def _finish(figure, axes, xlabel: str | list[str], title: str | list[str], integer_x: bool = True,
            ylabel: str = "test F1") -> None:
    """Labels, grid and one legend for the whole figure, below the axes (outside them: it covers no data)."""
    from matplotlib.ticker import MaxNLocator

    xlabels = xlabel if isinstance(xlabel, list) else [xlabel] * len(axes)
    titles = title if isinstance(title, list) else [title] * len(axes)
    handles: dict[str, object] = {}
    for axis, x, t in zip(axes, xlabels, titles):
        axis.set_xlabel(x)
        axis.set_ylabel(ylabel)
        axis.set_title(t, fontsize=10)
        axis.grid(alpha=0.3)
        if integer_x:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        for handle, label in zip(*axis.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(list(handles.values()), list(handles), loc="outside lower center", fontsize=8,
                      ncol=min(3, len(handles)), frameon=False)


def _intervals(axis, xs: list[float], rows: list[dict], colour: str, prefix: str = "") -> None:
    """95% CI error bars at ``xs``, only for the rows with at least two seeds."""
    chosen = [(x, r) for x, r in zip(xs, rows) if _seeds(r, prefix) >= 2 and r.get(f"{prefix}f1_ci_low") is not None]
    if chosen:
        x, rs = zip(*chosen)
        means = [r[f"{prefix}f1"] for r in rs]
        low = [m - r[f"{prefix}f1_ci_low"] for m, r in zip(means, rs)]
        high = [r[f"{prefix}f1_ci_high"] - m for m, r in zip(means, rs)]
        axis.errorbar(x, means, yerr=[low, high], color=colour, **ERROR_STYLE)


def _seeds(row: dict, prefix: str = "") -> int:
    """Seeds behind ``prefix``f1 (the LoRA view's full_f1 has its own count, ``full_seeds``)."""
    value = row.get(f"{prefix}seeds")
    return (row.get("seeds") if value is None and prefix != "full_" else value) or 0


def _full_line(axis, rows: list[dict]) -> None:
    full = [r for r in rows if r["strategy"] == "full"]
    if full:
        axis.axhline(full[0]["f1"], color=FAMILIES["full model"], linestyle="--", linewidth=1,
                     label=f"full model ({full[0]['f1']:.3f}, {seeds_text(full[:1])})")


def _study_points(axis, rows: list[dict], x=lambda r: r["n_kept_layers"]) -> None:
    """The study's value paired with each row (same fraction of layers), at the row's own x."""
    points = [(x(r), r["study"]["f1"]) for r in rows if r.get("study") and r["study"].get("f1") is not None]
    if points:
        axis.scatter(*zip(*points), label=STUDY_LABEL, **STUDY_STYLE)


def single_profile(rows: list[dict]):
    """Test F1 keeping one layer k (the study's fig. 4.1); None without single(k) rows."""
    singles = sorted((r for r in rows if r["strategy"] == "single"), key=lambda r: r["kept_layers"][0])
    if not singles:
        return None
    figure, [axis] = _figure()
    xs = [r["kept_layers"][0] for r in singles]
    axis.bar(xs, [r["f1"] for r in singles], color=FAMILIES["single layer"],
             label=f"single(k): only layer k kept ({seeds_text(singles)})")
    _intervals(axis, xs, singles, "#333333")
    _full_line(axis, rows)
    _finish(figure, [axis], f"kept layer k (0-indexed, of {singles[0]['num_layers']})", "Single-layer profile")
    return figure


def strategy_curves(rows: list[dict], names: tuple[str, ...], title: str):
    """Test F1 against kept layers, one curve per strategy of ``names``; None when there is none."""
    chosen = [r for r in rows if r["strategy"] in names]
    if not chosen:
        return None
    figure, [axis] = _figure()
    markers = iter("osv^D<>p")
    for strategy in names:
        mine = sorted((r for r in chosen if r["strategy"] == strategy), key=lambda r: r["n_kept_layers"])
        if not mine:
            continue
        _, colour = family(strategy)
        xs, ys = [r["n_kept_layers"] for r in mine], [r["f1"] for r in mine]
        label = f"{strategy} ({seeds_text(mine)})"
        if STRATEGIES.get(strategy).param is None or strategy == "drop_every":  # a few points, not a curve
            axis.scatter(xs, ys, color=colour, marker=next(markers), label=label, zorder=3)
        else:
            linestyle = "-" if strategy in ("first", "best", "drop_middle") else "--"
            axis.plot(xs, ys, color=colour, marker=next(markers), linestyle=linestyle, label=label, zorder=3)
        _intervals(axis, xs, mine, colour)
    _study_points(axis, chosen)
    _full_line(axis, rows)
    _finish(figure, [axis], layers_label(chosen), title)
    return figure


def quality_vs_cost(rows: list[dict], grid: list[dict] | None = None, students: list[dict] | None = None):
    """Test F1 against kept layers and against latency, with the Pareto front over every point; None without
    pruned rows. ``students`` (rows of other recoveries) are drawn as families of their own. The latency is the
    store's isolated grid when it covers every row, else the trials' own (the label says)."""
    from frugalray.results.grid_rows import latency_axis

    rows = [*rows, *(students or [])]
    if not any(r["strategy"] != "full" for r in rows):
        return None
    figure, axes = _figure(height=3.6, rows=2)
    latencies, latency_text = latency_axis(rows, grid or [])
    labels = [layers_label(rows), latency_text]
    for axis, values in zip(axes, ([r["n_kept_layers"] for r in rows], latencies)):
        points = [(x, r) for x, r in zip(values, rows) if x is not None]
        families: dict[str, tuple[str, str, list]] = {}
        for x, r in points:
            name, colour, marker = point_family(r)
            families.setdefault(name, (colour, marker, []))[2].append((x, r["f1"]))
        for name, (colour, marker, mine) in families.items():
            axis.scatter(*zip(*mine), color=colour, marker=marker, s=22 if marker == "o" else 30, alpha=0.8,
                         label=name, zorder=3)
        front = pareto_front([(x, r["f1"]) for x, r in points])
        if front:
            axis.step(*zip(*front), where="post", color="#d62728", linewidth=1.2, label="Pareto front", zorder=2)
    n = seeds_text(rows)
    _finish(figure, axes, labels, [f"Quality vs kept layers (means, {n})", f"Quality vs latency (means, {n})"],
            integer_x=False)
    return figure


def lora_bars(lora_rows: list[dict]):
    """LoRA against full fine-tuning of the same layers (the study's table 4.6); None without LoRA rows."""
    if not lora_rows:
        return None
    import numpy as np

    figure, [axis] = _figure()
    x = np.arange(len(lora_rows))
    for offset, prefix, name, colour, edge in ((-0.2, "full_", "full fine-tuning", "#1f77b4", "#0b3d6b"),
                                                (0.2, "lora_", "LoRA", "#ff7f0e", "#8a3b00")):
        present = [(i, r) for i, r in enumerate(lora_rows) if r[f"{prefix}f1"] is not None]
        if present:
            xs = [i + offset for i, _ in present]
            seeds = [{"seeds": _seeds(r, prefix)} for _, r in present]
            axis.bar(xs, [r[f"{prefix}f1"] for _, r in present], width=0.4, color=colour,
                     label=f"{name} ({seeds_text(seeds)})")
            _intervals(axis, xs, [r for _, r in present], edge, prefix)
        study = [(i + offset, r[f"study_{prefix}f1"]) for i, r in enumerate(lora_rows)
                 if r.get(f"study_{prefix}f1") is not None]
        if study:
            axis.scatter(*zip(*study), label=f"{STUDY_LABEL}, {name}", **(STUDY_STYLE | {"edgecolors": edge}))
    axis.set_xticks(x, [",".join(map(str, r["kept_layers"])) for r in lora_rows], rotation=20, fontsize=8)
    _finish(figure, [axis], "kept layers", "LoRA vs full fine-tuning", integer_x=False)
    return figure
