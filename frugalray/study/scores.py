"""Per-layer scores from single(k) results: the ranking behind best(N) and drop_worst(N).

Layers are ranked on dev F1 (choosing layers never looks at the test set); layers whose dev F1 ties are
ranked by dev eval loss (lower first), and the ranking says so (``ranking_notes``): a ranking that rests
on tied or degenerate single-layer models is never passed off as a finding.
"""

from __future__ import annotations

import statistics

from frugalray._registry import FrugalrayError
from frugalray.results.store import ResultsStore
from frugalray.data.tasks import resolve_task

SCORE_COLUMN = "dev_f1"
TIE_BREAK_COLUMN = "dev_eval_loss"  # lower is better
TIE = 1e-9


def _single_rows(rows: list[dict]) -> dict[int, list[dict]]:
    by_layer: dict[int, list[dict]] = {}
    for row in rows:
        if row["status"] == "ok" and row[SCORE_COLUMN] is not None and len(row["kept_layers"]) == 1:
            by_layer.setdefault(row["kept_layers"][0], []).append(row)
    return dict(sorted(by_layer.items()))


def scores_from_rows(rows: list[dict], num_layers: int | None = None) -> dict[int, tuple[float, float]]:
    """Per layer (mean dev F1, minus mean dev eval loss) over successful single(k) rows: higher is better
    on both, so sorting on the pair breaks F1 ties by loss. Several seeds average.

    >>> scores_from_rows([{"kept_layers": [1], "dev_f1": 0.5, "dev_eval_loss": 1.0, "status": "ok"},
    ...                   {"kept_layers": [1], "dev_f1": 0.7, "dev_eval_loss": 0.5, "status": "ok"}])
    {1: (0.6, -0.75)}
    """
    scores = {}
    for layer, mine in _single_rows(rows).items():
        losses = [r.get(TIE_BREAK_COLUMN) for r in mine if r.get(TIE_BREAK_COLUMN) is not None]
        scores[layer] = (round(statistics.mean(r[SCORE_COLUMN] for r in mine), 12),
                         -round(statistics.mean(losses), 12) if losses else 0.0)
    if num_layers is not None:
        missing = [k for k in range(num_layers) if k not in scores]
        if missing:
            raise FrugalrayError(
                f"Single-layer scores are missing for layer(s) {missing} of {num_layers}; run "
                f"--strategy single --n k for each first"
            )
    return scores


def ranking_notes(rows: list[dict]) -> list[str]:
    """What a reader of a layer ranking must know: F1 ties broken by loss, degenerate single-layer models.

    >>> ranking_notes([{"kept_layers": [k], "dev_f1": 0.0, "dev_eval_loss": 1.0 + k, "status": "ok",
    ...                 "dev_degenerate": True} for k in (0, 1)])  # doctest: +NORMALIZE_WHITESPACE
    ['layers 0, 1 tie at dev F1 0.0000: ranked by dev eval loss instead',
     'layers 0, 1 alone are degenerate on dev (one class everywhere, or no better than the majority class): their order rests on dev eval loss']
    """
    by_layer = _single_rows(rows)
    means = {k: statistics.mean(r[SCORE_COLUMN] for r in mine) for k, mine in by_layer.items()}
    notes, seen = [], set()
    for layer, value in means.items():
        tied = [k for k, other in means.items() if abs(other - value) <= TIE]
        if len(tied) > 1 and tuple(tied) not in seen:
            seen.add(tuple(tied))
            notes.append(f"layers {', '.join(map(str, tied))} tie at dev F1 {value:.4f}: ranked by dev eval loss instead")
    degenerate = [k for k, mine in by_layer.items() if all(r.get("dev_degenerate") for r in mine)]
    if degenerate:
        notes.append(f"layer{'s' if len(degenerate) > 1 else ''} {', '.join(map(str, degenerate))} alone "
                     f"{'are' if len(degenerate) > 1 else 'is'} degenerate on dev (one class everywhere, or no "
                     f"better than the majority class): their order rests on dev eval loss")
    return notes


def single_layer_scores(store: ResultsStore, task: str, model: str) -> tuple[tuple[float, float], ...]:
    """Scores for every layer of ``model`` on ``task`` from the store's single(k) rows."""
    from frugalray.training.prepared import layer_count

    count = layer_count(model)
    name = resolve_task(task).name
    rows = store.query(where=[f"task={name}", f"model={model}", "strategy=single", "lora=false"], require=False)
    try:
        trained = [r for r in rows.to_pylist() if (r.get("variant") or "fp32") == "fp32"]  # not int8/ONNX forms
        scores = scores_from_rows(trained, count)
    except FrugalrayError as error:
        raise FrugalrayError(f"best/drop_worst on task '{name}', model '{model}': {error}") from None
    return tuple(scores[k] for k in range(count))
