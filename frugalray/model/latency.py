"""Inference latency and throughput of a full encoder against pruned versions of it, with the ideal.

    frugalray bench-latency --model minilm --keep 3 --keep 2 --batch-size 32 --seq-len 128
    frugalray bench-latency --model exported/ --device cuda --dtype bf16 --results results/

Each variant is the same pretrained encoder with layers physically removed (``--keep 3``: the first 3;
``--keep 0,5``: those layers), run on random token ids of the given shape after a warm-up. The ideal
speedup is the ratio of forward FLOPs, counted from the config: per token and layer, 8h² (Q, K, V, output
projections) + 4h·i (feed-forward) + 4·s·h (attention scores and their weighted sum), plus the embedding
layer-norm; the pooler adds 2h² per sequence. Rows record hardware, threads and library versions.

>>> rows = bench_latency("minilm", keep=[3, 2], batch_size=32, seq_len=128)   # doctest: +SKIP
>>> rows[1]["speedup"], rows[1]["ideal_speedup"]                             # doctest: +SKIP
(1.93, 1.99)
"""

from __future__ import annotations

import platform
import statistics
import time
from datetime import datetime, timezone

from frugalray._registry import FrugalrayError


def forward_flops(config, kept: int, batch_size: int, seq_len: int) -> float:
    """Forward FLOPs of an encoder keeping ``kept`` layers, from its config (multiply-add = 2 FLOPs)."""
    h = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or getattr(config, "emb_dim")
    i = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * h
    per_token_layer = 8 * h * h + 4 * h * i + 4 * seq_len * h
    embeddings = 7 * h  # three embeddings added, then layer-norm: a few operations per value
    tokens = batch_size * seq_len
    return tokens * (embeddings + kept * per_token_layer) + batch_size * 2 * h * h


def hardware(device) -> dict:
    """Where the timings were taken: the trial rows' hardware and versions, plus device and threads."""
    import torch

    from frugalray.training.trial import environment

    recorded = environment()
    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "hardware": recorded["hardware"],
        "torch_threads": torch.get_num_threads(),
        "torch_version": recorded["torch_version"],
        "transformers_version": recorded["transformers_version"],
        "python_version": platform.python_version(),
    }


def _variants(total: int, keep: list) -> list[tuple[str, tuple[int, ...]]]:
    out = [("full", tuple(range(total)))]
    for spec in keep:
        if isinstance(spec, int):
            if not 1 <= spec < total:
                raise FrugalrayError(f"--keep {spec}: a model with {total} layers keeps 1..{total - 1} of them")
            out.append((f"first_{spec}", tuple(range(spec))))
        else:
            from frugalray.study.strategies import validate_layers

            kept = validate_layers(list(spec), total, "--keep layers")
            out.append(("mask " + ",".join(map(str, kept)), kept))
    return out


def bench_latency(model: str = "minilm", keep: list | None = None, *, batch_size: int = 32, seq_len: int = 128,
                  device: str | None = None, dtype: str = "fp32", repeats: int = 10, warmup: int = 3,
                  seed: int = 0) -> list[dict]:
    """One row per variant (full first): median/p90 latency, throughput, speedup, ideal speedup."""
    import torch

    from frugalray.model.loading import load_model_config, resolve_model
    from frugalray.model.surgery import num_layers, prune_layers

    if batch_size < 1 or seq_len < 1 or repeats < 1:
        raise FrugalrayError("batch size, sequence length and repeats must be >= 1")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if target.type == "cuda" and not torch.cuda.is_available():
        raise FrugalrayError(f"Device {device!r} was asked for but torch sees no CUDA GPU")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in dtypes:
        raise FrugalrayError(f"Unknown dtype '{dtype}'. Available: {', '.join(dtypes)}")
    config = load_model_config(model)
    total = num_layers(config)
    limit = getattr(config, "max_position_embeddings", None)
    kind = getattr(config, "model_type", "")
    if limit and ("roberta" in kind or kind == "camembert"):
        limit -= 2  # RoBERTa positions start after the padding index
    if limit and seq_len > limit:
        raise FrugalrayError(f"--seq-len {seq_len} is longer than model {model!r} accepts ({limit} tokens)")
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=generator).to(target)
    mask = torch.ones_like(ids)
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    encoders = []
    for name, kept in _variants(total, keep or []):
        encoder = AutoModel.from_pretrained(resolve_model(model), dtype=dtypes[dtype])
        if len(kept) < total:
            prune_layers(encoder, kept)
        encoders.append((name, kept, encoder.to(target).eval()))
    # Rounds alternate between the variants, so that a slower or busier moment of the machine is shared
    # by all of them instead of landing on one.
    times: list[list[float]] = [[] for _ in encoders]
    with torch.inference_mode():
        for attempt in range(warmup + repeats):
            for position, (_, _, encoder) in enumerate(encoders):
                if target.type == "cuda":
                    torch.cuda.synchronize(target)
                start = time.perf_counter()
                encoder(input_ids=ids, attention_mask=mask)
                if target.type == "cuda":
                    torch.cuda.synchronize(target)
                if attempt >= warmup:
                    times[position].append(time.perf_counter() - start)
    rows, environment = [], hardware(target)
    for (name, kept, _), measured in zip(encoders, times):
        median = statistics.median(measured)
        rows.append({
            "model": model, "variant": name, "kept_layers": list(kept), "n_kept_layers": len(kept),
            "batch_size": batch_size, "seq_len": seq_len, "dtype": dtype, "repeats": repeats,
            "latency_ms": median * 1000, "latency_p90_ms": sorted(measured)[int(0.9 * (len(measured) - 1))] * 1000,
            "sequences_per_second": batch_size / median, "tokens_per_second": batch_size * seq_len / median,
            "gflops": forward_flops(config, len(kept), batch_size, seq_len) / 1e9,
            **environment, "measured_at": datetime.now(timezone.utc),
        })
    full = rows[0]
    for row in rows:
        row["speedup"] = full["latency_ms"] / row["latency_ms"]
        row["ideal_speedup"] = full["gflops"] / row["gflops"]
        row["fraction_of_ideal"] = row["speedup"] / row["ideal_speedup"]
    return rows
