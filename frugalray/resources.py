"""What one trial asks of the cluster: CPUs, and a GPU fraction sized from its memory estimate.

The estimate counts what training keeps resident: weights, gradients and AdamW's two moments for
trainable parameters, plus activations for the kept layers, plus the CUDA context. It is a sizing rule,
not a promise: the trial also caps its own allocator at the granted fraction, so a bad guess fails that
trial (and is retried) instead of its neighbours.

>>> rule = ResourceRule(gpu_memory_gib=80)
>>> rule.gpu_fraction(estimate_memory_gib(BERT_BASE, kept_layers=6, batch_size=16, seq_len=256, lora=False))
0.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from frugalray._config import check_fields, from_dict
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


@dataclass(frozen=True)
class ResourceRule:
    """How a trial's resources follow from its config. Override any field, or fix the fraction."""

    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs each trial reserves."})
    gpu_memory_gib: float = field(default=80.0, metadata={"help": "Memory of one GPU of the cluster."})
    safety: float = field(default=1.5, metadata={"help": "Multiplier on the memory estimate."})
    step: float = field(default=0.05, metadata={"help": "Fractions round up to a multiple of this."})
    min_fraction: float = field(default=0.1, metadata={"help": "Smallest GPU share a trial gets."})
    fixed_fraction: float | None = field(default=None, metadata={"help": "Use this GPU share for every trial."})
    use_gpus: bool = field(default=True, metadata={"help": "Schedule on GPUs when the cluster has some."})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.cpus_per_trial <= 0:
            raise FrugalrayError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.fixed_fraction is not None and not 0 < self.fixed_fraction <= 1:
            raise FrugalrayError(f"fixed_fraction must be in (0, 1], got {self.fixed_fraction}")
        if not 0 < self.step <= 1 or not 0 < self.min_fraction <= 1:
            raise FrugalrayError("step and min_fraction must be in (0, 1]")

    @classmethod
    def from_dict(cls, values: dict, source: str = "resources") -> "ResourceRule":
        return from_dict(cls, values, source)

    def gpu_fraction(self, estimate_gib: float) -> float:
        if self.fixed_fraction is not None:
            return self.fixed_fraction
        share = estimate_gib * self.safety / self.gpu_memory_gib
        if share > 1:
            return float(math.ceil(share))  # a trial larger than one GPU takes whole GPUs
        return round(max(self.min_fraction, math.ceil(share / self.step - 1e-9) * self.step), 4)

    def for_trial(self, estimate_gib: float, cluster_has_gpus: bool) -> dict[str, float]:
        """Ray resource request of one trial: CPU only when there is no GPU."""
        if not (cluster_has_gpus and self.use_gpus):
            return {"CPU": self.cpus_per_trial}
        return {"CPU": self.cpus_per_trial, "GPU": self.gpu_fraction(estimate_gib)}


def fits(demand: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    """Whether some node has the total resources one trial needs."""
    return any(all(node.get(key, 0) >= amount for key, amount in demand.items()) for node in nodes)
