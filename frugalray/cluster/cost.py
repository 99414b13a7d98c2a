"""What a sweep will cost before it runs: its trials, stage by stage, and GPU-hours from a stated model.

A planned trial's training costs about ``6 x P x T`` floating-point operations, P the parameters of its kept
layers (embeddings are a lookup) and T the tokens it trains on (every epoch's); LoRA spares the weights'
gradients: ``4 x P x T``. Evaluating dev after every epoch and test once adds ``2 x P x T_eval``; a student
distilled from the full model runs the teacher forward too (``2 x P_full x T``). GPU time is those operations
over the card's dense bf16 peak times a utilisation: a small encoder at batch 16 keeps a large card far from
its peak, which is why utilisation is an explicit, printed setting. Packing fractional shares on one card
shares its throughput: the GPU-hours of a sweep are the sum of its trials' whatever the packing.

Trials whose configuration already has a row in the store count their measured seconds instead.

>>> training_flops(BERT_BASE_LAYER_PARAMS * 6, tokens=1_000_000, epochs=3, lora=False) / 1e15
0.765490176
"""

from __future__ import annotations

from dataclasses import dataclass

from frugalray._registry import FrugalrayError, did_you_mean

# Dense bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity).
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "L40S": 362.0}
DEFAULT_UTILISATION = 0.3  # of that peak, for a base-size encoder at batch 16 and <= 256 tokens
SUBWORDS_PER_WORD = 1.4  # subword tokens per word of a word-split corpus, plus the two special tokens per sentence
BERT_BASE_LAYER_PARAMS = 7_087_872  # one layer of hidden 768, feed-forward 3072


def layer_params(model_config: dict) -> int:
    """Parameters of one encoder layer (attention, feed-forward, norms and biases) from a config dict."""
    from frugalray.cluster.resources import parameter_estimate

    return parameter_estimate(model_config, 1)[1]


def training_flops(kept_params: int, tokens: float, epochs: float, lora: bool, eval_tokens: float = 0.0,
                   teacher_params: int = 0) -> float:
    """Operations of one trial: training (6 or, with LoRA, 4 per parameter and token), the dev/test passes
    (2 per parameter and token) and a distillation teacher's forward passes (2 per teacher parameter)."""
    per_token = 4 if lora else 6
    return (per_token * kept_params * tokens * epochs + 2 * kept_params * eval_tokens
            + 2 * teacher_params * tokens * epochs)


@dataclass(frozen=True)
class Card:
    name: str
    peak_tflops: float
    utilisation: float

    def hours(self, flops: float) -> float:
        return flops / (self.peak_tflops * 1e12 * self.utilisation) / 3600


def card(name: str, utilisation: float = DEFAULT_UTILISATION, peak_tflops: float | None = None) -> Card:
    """A GPU of the cost model, by name (or any name with ``peak_tflops``)."""
    if not 0 < utilisation <= 1:
        raise FrugalrayError(f"--utilisation must be in (0, 1], got {utilisation}")
    if peak_tflops is None:
        if name not in GPU_PEAK_TFLOPS:
            raise FrugalrayError(did_you_mean("GPU", name, list(GPU_PEAK_TFLOPS))
                                 + "; or give its dense bf16 peak with --peak-tflops")
        peak_tflops = GPU_PEAK_TFLOPS[name]
    if peak_tflops <= 0:
        raise FrugalrayError(f"--peak-tflops must be > 0, got {peak_tflops}")
    return Card(name, peak_tflops, utilisation)
