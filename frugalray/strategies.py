"""Pruning strategies: pure functions from a layer count (and scores) to the kept layer indices, and the
names of a sweep's stages. The vocabulary every layer of frugalray shares; it imports nothing of frugalray
but ``_registry``. Every strategy takes the layer count ``L`` first and returns a sorted tuple of 0-indexed
layers. No torch here: a strategy can be checked, listed and deduplicated without loading a model.

>>> kept_layers("drop_middle", 12, n=4)
(0, 1, 2, 3, 8, 9, 10, 11)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from frugalray._registry import FrugalrayError, Registry

# (a sweep's settings, layer count) -> the N values its strategies stage runs for a strategy
SweepValues = Callable[[Any, int], list]
# A sweep's stages, in the order they run; what each plans is in frugalray.study.stages.
STAGE_NAMES = ("single", "strategies", "lora", "balanced", "recover")


@dataclass(frozen=True)
class Strategy:
    """A registered strategy and what the rest of frugalray needs to know of it."""

    name: str
    fn: Callable[..., tuple[int, ...]]
    param: str | None  # "n", "layers" or None: which argument the strategy takes
    family: str  # strategies compared together, drawn in one colour
    scores_from: str | None = None  # what its scores are: "single_layer" (trained), "proxy", "block_proxy"
    sweep_values: SweepValues | None = None  # the N values the sweep's strategies stage runs (None: not run there)
    doc: str = ""

    @property
    def needs_scores(self) -> bool:
        return self.scores_from is not None

    def label(self, n: int | None) -> str:
        """How a table names one trial of it: ``best_3``, ``even``."""
        return self.name if n is None else f"{self.name}_{n}"


STRATEGIES: Registry[Strategy] = Registry("strategy")


def strategy(name: str, param: str | None, family: str, scores_from: str | None = None,
             sweep_values: SweepValues | None = None):
    def decorate(fn):
        STRATEGIES.add(name, Strategy(name, fn, param, family, scores_from, sweep_values, (fn.__doc__ or "").strip()))
        return fn

    return decorate


def _below(values, num_layers: int, even: bool = False) -> list[int]:
    return [n for n in values if 1 <= n < num_layers and not (even and n % 2)]


DROP_EVERY = (4, 3)  # the alternate family's lighter sparsity levels: drop every 4th, every 3rd layer


def _alternate(*values):
    return lambda sweep, num_layers: [n for n in values if n is None or n <= num_layers] if sweep.alternate else []


def _check_n(name: str, n: int | None, low: int, high: int, num_layers: int) -> int:
    if n is None:
        raise FrugalrayError(f"Strategy '{name}' needs N (an integer from {low} to {high})")
    if not isinstance(n, int) or isinstance(n, bool):
        raise FrugalrayError(f"Strategy '{name}': N must be an integer, got {n!r}")
    if not low <= n <= high:
        raise FrugalrayError(
            f"Strategy '{name}': N={n} does not fit a model with {num_layers} layers; "
            f"valid N: {low}..{high}"
        )
    return n


def validate_layers(layers: Sequence[int], num_layers: int, what: str = "kept layers") -> tuple[int, ...]:
    """Check an explicit layer list: non-empty, in range, no duplicates. Returns it sorted."""
    layers = list(layers)
    if not layers:
        raise FrugalrayError(f"The {what} list is empty; give at least one index in 0..{num_layers - 1}")
    for index in layers:
        if not isinstance(index, int) or isinstance(index, bool):
            raise FrugalrayError(f"The {what} list has {index!r}, which is not an integer layer index")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise FrugalrayError(
            f"The {what} {bad} are out of range for a model with {num_layers} layers "
            f"(valid: 0..{num_layers - 1})"
        )
    duplicated = sorted({i for i in layers if layers.count(i) > 1})
    if duplicated:
        raise FrugalrayError(f"The {what} list repeats layer(s) {duplicated}; each layer may appear once")
    return tuple(sorted(layers))


def _ranked(scores: Mapping[int, float] | Sequence[float] | None, num_layers: int, name: str) -> list[int]:
    """Layers from best to worst score (a number, or a tuple compared element by element: the
    single(k) scores are (dev F1, -dev eval loss)); remaining ties go to the lower index."""
    if scores is None:
        raise FrugalrayError(f"Strategy '{name}' needs per-layer scores (the single(k) results of the same task "
                             f"and model, or a proxy importance); none were given")
    table = dict(enumerate(scores)) if isinstance(scores, Sequence) else dict(scores)
    missing = [k for k in range(num_layers) if k not in table]
    if missing:
        raise FrugalrayError(f"Strategy '{name}' needs a score for every layer 0..{num_layers - 1}; missing: {missing}")
    return sorted(range(num_layers), key=lambda k: (_descending(table[k]), k))


def _descending(score) -> tuple[float, ...]:
    """Sort key, best first, of a score or of a (score, tie-break, ...) tuple where higher is better."""
    values = score if isinstance(score, (tuple, list)) else (score,)
    return tuple(-float(v) for v in values)


@strategy("full", None, "full model")
def full(num_layers: int) -> tuple[int, ...]:
    """All layers: the baseline."""
    return tuple(range(num_layers))


@strategy("single", "n", "single layer")
def single(num_layers: int, k: int | None = None) -> tuple[int, ...]:
    """Only layer k: gives the per-layer score used to rank layers."""
    k = _check_n("single", k, 0, num_layers - 1, num_layers)
    return (k,)


@strategy("first", "n", "first / last",
          sweep_values=lambda sweep, layers: _below(sweep.first_last or range(1, layers), layers))
def first(num_layers: int, n: int | None = None) -> tuple[int, ...]:
    """The first N layers: 0..N-1."""
    n = _check_n("first", n, 1, num_layers, num_layers)
    return tuple(range(n))


@strategy("last", "n", "first / last",
          sweep_values=lambda sweep, layers: _below(sweep.first_last or range(1, layers), layers))
def last(num_layers: int, n: int | None = None) -> tuple[int, ...]:
    """The last N layers: L-N..L-1."""
    n = _check_n("last", n, 1, num_layers, num_layers)
    return tuple(range(num_layers - n, num_layers))


@strategy("best", "n", "best / drop_worst", scores_from="single_layer",
          sweep_values=lambda sweep, layers: _below(sweep.best, layers))
def best(num_layers: int, n: int | None = None, scores=None) -> tuple[int, ...]:
    """The N layers with the highest single-layer score."""
    n = _check_n("best", n, 1, num_layers, num_layers)
    return tuple(sorted(_ranked(scores, num_layers, "best")[:n]))


@strategy("drop_worst", "n", "best / drop_worst", scores_from="single_layer",
          sweep_values=lambda sweep, layers: _below(sweep.drop_worst, layers))
def drop_worst(num_layers: int, n: int | None = None, scores=None) -> tuple[int, ...]:
    """All but the N layers with the lowest single-layer score."""
    return _all_but_lowest("drop_worst", num_layers, n, scores)


@strategy("drop_proxy", "n", "importance proxy", scores_from="proxy")
def drop_proxy(num_layers: int, n: int | None = None, scores=None) -> tuple[int, ...]:
    """All but the N least important layers by a proxy computed from the pretrained model (no training)."""
    return _all_but_lowest("drop_proxy", num_layers, n, scores)


@strategy("drop_block", "n", "importance proxy", scores_from="block_proxy",
          sweep_values=lambda sweep, layers: _below(sweep.drop_block, layers))
def drop_block(num_layers: int, n: int | None = None, scores=None) -> tuple[int, ...]:
    """All but the contiguous block of N layers whose input and output are closest (angular distance,
    Gromov et al. 2024); scores[l][N-1] is the distance of the block starting at l."""
    n = _check_n("drop_block", n, 1, num_layers - 1, num_layers)
    if scores is None or len(scores) != num_layers:
        raise FrugalrayError(f"Strategy 'drop_block' needs the block distances of all {num_layers} start layers "
                             f"(frugalray importance computes them); got {None if scores is None else len(scores)}")
    start = lowest_block(scores, n)
    return tuple(k for k in range(num_layers) if not start <= k < start + n)


def lowest_block(scores, size: int) -> int:
    """The start of the block of ``size`` layers with the smallest angular distance (ties: the earlier one);
    ``scores[l][size - 1]`` is the distance of the block starting at l.

    >>> lowest_block(((0.3, 0.5), (0.1, 0.4), (0.2,)), 2)
    1
    """
    starts = [start for start, row in enumerate(scores) if isinstance(row, (tuple, list)) and len(row) >= size]
    if not starts:
        raise FrugalrayError(f"Strategy 'drop_block': no block distance of size {size} was given")
    return min(starts, key=lambda start: (float(scores[start][size - 1]), start))


def _all_but_lowest(name: str, num_layers: int, n: int | None, scores) -> tuple[int, ...]:
    n = _check_n(name, n, 1, num_layers - 1, num_layers)
    return tuple(sorted(_ranked(scores, num_layers, name)[: num_layers - n]))


@strategy("even", None, "alternate", sweep_values=_alternate(None))
def even(num_layers: int) -> tuple[int, ...]:
    """Layers 0, 2, 4, ... (alternate family)."""
    return tuple(range(0, num_layers, 2))


@strategy("odd", None, "alternate", sweep_values=lambda sweep, layers: [None] if sweep.alternate and layers >= 2 else [])
def odd(num_layers: int) -> tuple[int, ...]:
    """Layers 1, 3, 5, ... (alternate family)."""
    if num_layers < 2:
        raise FrugalrayError("Strategy 'odd' needs a model with at least 2 layers")
    return tuple(range(1, num_layers, 2))


@strategy("drop_every", "n", "alternate", sweep_values=_alternate(*DROP_EVERY))
def drop_every(num_layers: int, n: int | None = None) -> tuple[int, ...]:
    """Drop every N-th layer (N-1, 2N-1, ...): lighter sparsity in the alternate family."""
    n = _check_n("drop_every", n, 2, num_layers, num_layers)
    return tuple(i for i in range(num_layers) if i % n != n - 1)


@strategy("drop_middle", "n", "symmetric", sweep_values=lambda sweep, layers: _below(sweep.drop_middle, layers))
def drop_middle(num_layers: int, n: int | None = None) -> tuple[int, ...]:
    """All but the N central layers (L=12, N=2: drop 5,6; N=4: drop 4..7)."""
    n = _check_n("drop_middle", n, 1, num_layers - 1, num_layers)
    start = (num_layers - n) // 2
    return tuple(i for i in range(num_layers) if not start <= i < start + n)


@strategy("drop_ends", "n", "symmetric",
          sweep_values=lambda sweep, layers: _below(sweep.drop_ends, layers, even=True))
def drop_ends(num_layers: int, n: int | None = None) -> tuple[int, ...]:
    """All but N/2 layers at each end (L=12, N=4: drop 0,1,10,11). N must be even."""
    n = _check_n("drop_ends", n, 2, num_layers - 1, num_layers)
    if n % 2:
        raise FrugalrayError(f"Strategy 'drop_ends': N={n} must be even (N/2 layers go at each end)")
    half = n // 2
    return tuple(range(half, num_layers - half))


@strategy("mask", "layers", "searched mask")
def mask(num_layers: int, layers: Sequence[int] | None = None) -> tuple[int, ...]:
    """An explicit list of layers to keep."""
    if layers is None:
        raise FrugalrayError("Strategy 'mask' needs an explicit list of layers to keep, e.g. 0,2,5")
    return validate_layers(layers, num_layers)


def kept_layers(name: str, num_layers: int, *, n: int | None = None, layers: Sequence[int] | None = None,
                scores=None) -> tuple[int, ...]:
    """Resolve a strategy by name for a model with ``num_layers`` layers.

    ``n`` is N for first/last/best/drop_* and k for single.

    >>> kept_layers("best", 4, n=2, scores=[0.5, 0.9, 0.1, 0.7])
    (1, 3)
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise FrugalrayError(f"A model needs at least one layer; got num_layers={num_layers!r}")
    spec = STRATEGIES.get(name)
    if spec.param is None:
        if n is not None or layers is not None:
            raise FrugalrayError(f"Strategy '{name}' takes no parameter (got n={n}, layers={layers})")
        return spec.fn(num_layers)
    if spec.param == "layers":
        return spec.fn(num_layers, layers=layers)
    if layers is not None:
        raise FrugalrayError(f"Strategy '{name}' takes N, not an explicit layer list")
    if spec.needs_scores:
        return spec.fn(num_layers, n, scores=scores)
    return spec.fn(num_layers, n)


def alternate_family(num_layers: int) -> list[tuple[str, int | None]]:
    """The alternate family as (strategy, N) pairs: even, odd, then drop every 4th, 3rd... layer."""
    family: list[tuple[str, int | None]] = [("even", None)]
    if num_layers >= 2:
        family.append(("odd", None))
    family += [("drop_every", n) for n in DROP_EVERY if n <= num_layers]
    return family


def balanced_epochs(baseline_seconds: float, pruned_seconds: float, epochs: int) -> int:
    """Epochs that give a pruned model the baseline's training time budget.

    Both times are measured training seconds over the same ``epochs``.

    >>> balanced_epochs(154.418, 91.048, 3)
    5
    """
    if baseline_seconds <= 0 or pruned_seconds <= 0:
        raise FrugalrayError(
            f"Balanced epochs need positive training times; got baseline={baseline_seconds}, "
            f"pruned={pruned_seconds}"
        )
    if epochs < 1:
        raise FrugalrayError(f"Balanced epochs need the number of measured epochs >= 1; got {epochs}")
    return max(1, round(baseline_seconds * epochs / pruned_seconds))
