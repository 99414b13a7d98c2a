"""Cheap layer importance: rank layers from the pretrained model alone, in seconds, instead of L trainings.

The proxy is 1 - cos(layer input, layer output) averaged over a task's tokens (He et al. 2024; ShortGPT's
block influence): a layer that barely changes its input matters little. It backs the ``drop_proxy``
strategy and the search's prior, and ``spearman`` says how well it agrees with the trained ranking.

>>> proxy_prior((0.1, 0.5, 0.3), low=1, high=2)
[(1,), (1, 2)]
"""

from __future__ import annotations

from frugalray.data.tasks import load_task


def proxy_scores(task: str, model: str, data_dir: str | None = None, examples: int = 64,
                 batch_size: int = 16) -> tuple[float, ...]:
    """Per-layer importance from the pretrained model alone (1 - cos(input, output)) on the task's train text."""
    import torch
    from transformers import AutoModel

    from frugalray.data.encoding import collate, encode_examples
    from frugalray.model.loading import load_tokenizer, resolve_model
    from frugalray.model.surgery import layer_importance

    data = load_task(task, data_dir)
    tokenizer = load_tokenizer(model)
    label2id = {label: i for i, label in enumerate(data.labels)}
    encoded = encode_examples(data.train[:examples], tokenizer, label2id, max_length=128)
    pad = tokenizer.pad_token_id or 0
    batches = [collate(encoded[i : i + batch_size], pad) for i in range(0, len(encoded), batch_size)]
    with torch.inference_mode():
        encoder = AutoModel.from_pretrained(resolve_model(model))
        return tuple(layer_importance(encoder, batches))


def proxy_prior(scores: tuple[float, ...], low: int, high: int) -> list[tuple[int, ...]]:
    """Masks keeping the n most important layers by proxy, for every n the constraint allows."""
    ranked = sorted(range(len(scores)), key=lambda k: (-scores[k], k))
    return [tuple(sorted(ranked[:n])) for n in range(low, high + 1)]


def spearman(proxy: tuple[float, ...], trained: tuple[float, ...]) -> float:
    """Rank agreement of the proxy importance with the trained single-layer scores."""
    from scipy.stats import spearmanr

    return float(spearmanr(proxy, trained).statistic)
