"""Per-layer scores from single(k) results: the ranking behind best(N) and drop_worst(N)."""

from __future__ import annotations

from frugalray._registry import FrugalrayError
from frugalray.results import ResultsStore
from frugalray.tasks import resolve_task

# Layers are ranked on dev F1, not test F1, so that choosing layers never looks at the test set.
SCORE_COLUMN = "dev_f1"


def scores_from_rows(rows: list[dict], num_layers: int | None = None) -> dict[int, float]:
    """Mean score per layer over successful single(k) rows (several seeds average).

    >>> scores_from_rows([{"kept_layers": [1], "dev_f1": 0.5, "status": "ok"},
    ...                   {"kept_layers": [1], "dev_f1": 0.7, "status": "ok"}])
    {1: 0.6}
    """
    sums: dict[int, list[float]] = {}
    for row in rows:
        if row["status"] == "ok" and row[SCORE_COLUMN] is not None and len(row["kept_layers"]) == 1:
            sums.setdefault(row["kept_layers"][0], []).append(row[SCORE_COLUMN])
    scores = {layer: round(sum(values) / len(values), 12) for layer, values in sorted(sums.items())}
    if num_layers is not None:
        missing = [k for k in range(num_layers) if k not in scores]
        if missing:
            raise FrugalrayError(
                f"Single-layer scores are missing for layer(s) {missing} of {num_layers}; run "
                f"--strategy single --n k for each first"
            )
    return scores


def single_layer_scores(store: ResultsStore, task: str, model: str) -> tuple[float, ...]:
    """Scores for every layer of ``model`` on ``task`` from the store's single(k) rows."""
    from frugalray.models import load_model_config
    from frugalray.surgery import num_layers

    count = num_layers(load_model_config(model))
    name = resolve_task(task).name
    rows = store.query(where=[f"task={name}", f"model={model}", "strategy=single", "lora=false"], require=False)
    try:
        scores = scores_from_rows(rows.to_pylist(), count)
    except FrugalrayError as error:
        raise FrugalrayError(f"best/drop_worst on task '{name}', model '{model}': {error}") from None
    return tuple(scores[k] for k in range(count))
