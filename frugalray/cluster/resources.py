"""What one trial asks of the cluster: CPUs, and a GPU fraction sized from its memory estimate.

The estimate counts what training keeps resident: weights, gradients and AdamW's two moments for
trainable parameters, plus activations for the kept layers, plus the CUDA context. It is a sizing rule,
not a promise: the trial also caps its own allocator at the granted fraction, so a bad guess fails that
trial (and is retried) instead of its neighbours.

>>> from frugalray.config import ResourceRule
>>> rule = ResourceRule(gpu_memory_gib=80)
>>> rule.gpu_fraction(estimate_memory_gib(BERT_BASE, kept_layers=6, batch_size=16, seq_len=256, lora=False))
0.1
"""

from __future__ import annotations

import time

from frugalray._registry import FrugalrayError

# camembert-base / bert-base sizes, for examples and defaults
BERT_BASE = {"vocab_size": 32005, "hidden_size": 768, "intermediate_size": 3072, "max_position_embeddings": 514,
             "num_attention_heads": 12}


def _sizes(model_config: dict) -> tuple[int, int, int, int, int]:
    hidden = model_config.get("hidden_size") or model_config.get("dim") or model_config.get("emb_dim")
    inner = model_config.get("intermediate_size") or model_config.get("hidden_dim") or 4 * hidden
    heads = model_config.get("num_attention_heads") or model_config.get("n_heads") or 12
    positions = model_config.get("max_position_embeddings", 512)
    return int(model_config["vocab_size"]), int(hidden), int(inner), int(positions), int(heads)


def parameter_estimate(model_config: dict, kept_layers: int) -> tuple[int, int]:
    """(embedding parameters, parameters of the kept encoder layers) from a config dict."""
    vocab, hidden, inner, positions, _ = _sizes(model_config)
    embeddings = (vocab + positions + 2) * hidden
    per_layer = 4 * hidden * hidden + 2 * hidden * inner + 9 * hidden + inner  # attention, FFN, norms, biases
    return embeddings, kept_layers * per_layer


def estimate_memory_gib(model_config: dict, kept_layers: int, batch_size: int, seq_len: int, lora: bool,
                        lora_r: int = 8, bytes_per_value: int = 4, context_gib: float = 0.6) -> float:
    """Resident training memory of one trial, in GiB."""
    embeddings, layers = parameter_estimate(model_config, kept_layers)
    _, hidden, inner, _, heads = _sizes(model_config)
    weights = (embeddings + layers) * bytes_per_value
    if lora:  # adapters on query/value: two r x hidden matrices each, per layer, plus a trainable head
        trainable = kept_layers * 2 * 2 * lora_r * hidden + hidden * hidden
    else:
        trainable = embeddings + layers
    optimizer = trainable * 3 * 4  # gradients + AdamW's two moments, kept in fp32
    tokens = batch_size * seq_len
    # per layer: ~8 hidden-sized and 2 inner-sized tensors per token, plus attention scores
    activations = kept_layers * (tokens * (8 * hidden + 2 * inner) + batch_size * heads * seq_len * seq_len * 2)
    activations *= bytes_per_value
    return context_gib + (weights + optimizer + activations) / 2**30


def fits(demand: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    """Whether some node has the total resources one trial needs."""
    return any(all(node.get(key, 0) >= amount for key, amount in demand.items()) for node in nodes)


def alive_nodes() -> list[dict[str, float]]:
    """Resources of each live node of the connected cluster."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def check_fit(demands: list[dict[str, float]], wait_s: float = 0, *, nodes=alive_nodes, clock=time.monotonic,
              sleep=time.sleep, poll_s: float = 5) -> None:
    """Fail before scheduling when no node can hold a trial (after asking the autoscaler, if allowed).

    ``nodes()`` gives the live nodes' resources; ``clock`` and ``sleep`` time the wait (a test's own)."""
    found = nodes()
    missing = [d for d in {tuple(sorted(d.items())): d for d in demands}.values() if not fits(d, found)]
    if not missing:
        return
    if wait_s > 0:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=missing)
        deadline = clock() + wait_s
        while clock() < deadline:
            sleep(poll_s)
            found = nodes()
            if all(fits(d, found) for d in missing):
                return
    shown = [{k: v for k, v in n.items() if k in ("CPU", "GPU")} for n in found]
    raise FrugalrayError(
        f"No node of the cluster fits a trial: trials need {missing}, nodes have {shown}. Lower "
        f"resources.cpus_per_trial or the GPU share, add nodes, or set autoscale_wait_s for an autoscaling cluster"
    )
