"""Cheap layer importance: rank layers from the pretrained model alone, in seconds, instead of L trainings.

The layer proxy is 1 - cos(layer input, layer output) averaged over a task's tokens (He et al. 2024;
ShortGPT's block influence): a layer that barely changes its input matters little. It backs the
``drop_proxy`` strategy and the search's prior, and ``spearman`` says how well it agrees with the trained
ranking. The block proxy is the angular distance arccos(cos)/pi between the input of layer l and the
output of layer l+n-1 (Gromov et al. 2024), for every block size n: ``drop_block(N)`` drops the block of N
layers it ranks lowest.

>>> proxy_prior((0.1, 0.5, 0.3), low=1, high=2)
[(1,), (1, 2)]
"""

from __future__ import annotations

from frugalray.data.tasks import load_task
from frugalray.strategies import lowest_block


def _encoder_and_batches(task: str, model: str, data_dir: str | None, examples: int, batch_size: int):
    from transformers import AutoModel

    from frugalray.data.encoding import collate, encode_examples
    from frugalray.model.loading import load_tokenizer, resolve_model

    data = load_task(task, data_dir)
    tokenizer = load_tokenizer(model)
    label2id = {label: i for i, label in enumerate(data.labels)}
    encoded = encode_examples(data.train[:examples], tokenizer, label2id, max_length=128)
    pad = tokenizer.pad_token_id or 0
    batches = [collate(encoded[i : i + batch_size], pad) for i in range(0, len(encoded), batch_size)]
    return AutoModel.from_pretrained(resolve_model(model)), batches


def proxy_scores(task: str, model: str, data_dir: str | None = None, examples: int = 64,
                 batch_size: int = 16) -> tuple[float, ...]:
    """Per-layer importance from the pretrained model alone (1 - cos(input, output)) on the task's train text."""
    import torch

    from frugalray.model.surgery import layer_importance

    encoder, batches = _encoder_and_batches(task, model, data_dir, examples, batch_size)
    with torch.inference_mode():
        return tuple(layer_importance(encoder, batches))


def block_scores(task: str, model: str, data_dir: str | None = None, examples: int = 64,
                 batch_size: int = 16) -> tuple[tuple[float, ...], ...]:
    """Per start layer l, the angular distance of the blocks l..l+n-1 for n = 1, 2, ... (as far as the model
    goes), from the pretrained model alone: ``scores[l][n - 1]``. A small distance: the block changes little."""
    import torch

    from frugalray.model.surgery import block_distances

    encoder, batches = _encoder_and_batches(task, model, data_dir, examples, batch_size)
    with torch.inference_mode():
        return tuple(tuple(row) for row in block_distances(encoder, batches))


def importance_scores(task: str, model: str, data_dir: str | None = None, examples: int = 64,
                      batch_size: int = 16) -> tuple[tuple[float, ...], tuple[tuple[float, ...], ...]]:
    """``proxy_scores`` and ``block_scores`` together, the model loaded and the text encoded once."""
    import torch

    from frugalray.model.surgery import block_distances, layer_importance

    encoder, batches = _encoder_and_batches(task, model, data_dir, examples, batch_size)
    with torch.inference_mode():
        layers = tuple(layer_importance(encoder, batches))
        return layers, tuple(tuple(row) for row in block_distances(encoder, batches))


PROXIES = ("proxy", "block_proxy")  # the strategies' scores_from values a pretrained model alone gives


def proxy_of(source: str, task: str, model: str, data_dir: str | None = None) -> tuple:
    """A proxy's scores by the name a strategy gives them (``Strategy.scores_from``): ``proxy`` (per layer) or
    ``block_proxy`` (per block), from the pretrained model alone, in seconds."""
    if source not in PROXIES:
        raise ValueError(f"unknown proxy {source!r}; valid: {PROXIES}")
    return (proxy_scores if source == "proxy" else block_scores)(task, model, data_dir)


def proxy_prior(scores: tuple[float, ...], low: int, high: int, per_depth: int = 1) -> list[tuple[int, ...]]:
    """The ``per_depth`` masks of highest summed proxy importance for every n the constraint allows: first the
    best mask of each n (fewest layers first), then the second best of each, and so on."""
    orders = [proxy_order(scores, n, per_depth) for n in range(low, high + 1)]
    return [order[rank] for rank in range(per_depth) for order in orders if rank < len(order)]


def proxy_order(scores: tuple[float, ...], n: int, limit: int) -> list[tuple[int, ...]]:
    """The ``limit`` masks of ``n`` layers with the highest summed proxy importance, best first (ties: the
    lower layers). Every mask is ranked where there are at most 5,000; beyond, the best mask and those one
    swap (a kept layer for a dropped one) away from it.

    >>> proxy_order((0.1, 0.5, 0.3), 2, 3)
    [(1, 2), (0, 1), (0, 2)]
    """
    import itertools
    import math

    layers = range(len(scores))
    if math.comb(len(scores), n) <= 5000:
        candidates = list(itertools.combinations(layers, n))
    else:
        best = sorted(sorted(layers, key=lambda k: (-scores[k], k))[:n])
        candidates = [tuple(best)] + [tuple(sorted(set(best) - {out} | {into}))
                                      for out in best for into in layers if into not in best]
    return sorted(set(candidates), key=lambda mask: (-sum(scores[k] for k in mask), mask))[:limit]


def spearman(proxy: tuple[float, ...], trained: tuple[float, ...]) -> float:
    """Rank agreement of the proxy importance with the trained single-layer scores."""
    from scipy.stats import spearmanr

    return float(spearmanr(proxy, trained).statistic)


def block_table(blocks, trained: dict[tuple[int, ...], float] | None = None) -> list[dict]:
    """Per block size n: the block the angular-distance proxy would drop and, with ``trained`` (mean dev F1
    per kept-layer set), how that drop did against dropping the last n layers (the reverse-order baseline)
    and against the best contiguous block drop that was trained.

    >>> block_table(((0.3, 0.5), (0.1, 0.4), (0.2,)))[0]["proxy_drops"]
    '1'
    """
    count = len(blocks)
    rows = []
    for size in range(1, count):
        start = lowest_block(blocks, size)
        row = {"block_size": size, "proxy_drops": f"{start}" if size == 1 else f"{start}-{start + size - 1}",
               "angular_distance": blocks[start][size - 1]}
        if trained is not None:
            def kept(first: int) -> tuple[int, ...]:
                return tuple(k for k in range(count) if not first <= k < first + size)

            scored = {first: trained[kept(first)] for first in range(count - size + 1) if kept(first) in trained}
            best = max(scored, key=lambda first: scored[first]) if scored else None
            row |= {"proxy_dev_f1": scored.get(start), "drop_last_dev_f1": scored.get(count - size),
                    "best_block_drops": None if best is None else f"{best}-{best + size - 1}",
                    "best_block_dev_f1": None if best is None else scored[best]}
        rows.append(row)
    return rows


def block_agreement(rows: list[dict]) -> str | None:
    """One line: how often the proxy's drop did at least as well as dropping the last N, where both trained."""
    pairs = [(r["proxy_dev_f1"], r["drop_last_dev_f1"]) for r in rows
             if r.get("proxy_dev_f1") is not None and r.get("drop_last_dev_f1") is not None]
    if not pairs:
        return None
    wins = sum(proxy >= last for proxy, last in pairs)
    mean = sum(proxy - last for proxy, last in pairs) / len(pairs)
    return (f"drop_block (angular distance) vs dropping the last N: at least as good in {wins} of {len(pairs)} "
            f"block sizes, mean dev F1 difference {mean:+.4f}")
