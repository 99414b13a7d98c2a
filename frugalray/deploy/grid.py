"""The latency grid measured in one process: which encoders to build (layer sets × precision/runtime), and
the alternating timing rounds. ``frugalray.deploy.latency.bench_latency`` runs it in a process of its own.

>>> rows = measure_grid("minilm", [3], [32], [128], ["fp32", "int8"], "cpu", 10, 3, 0, 4)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from frugalray._registry import FrugalrayError


# variant -> (runtime, precision)
VARIANTS = {"fp32": ("torch", "fp32"), "bf16": ("torch", "bf16"), "fp16": ("torch", "fp16"),
            "int8": ("torch", "int8"), "onnx": ("onnxruntime", "fp32"), "onnx-int8": ("onnxruntime", "int8")}
CPU_ONLY = ("int8", "onnx", "onnx-int8")


def forward_flops(config, kept: int, batch_size: int, seq_len: int) -> float:
    """Forward FLOPs of an encoder keeping ``kept`` layers, from its config (multiply-add = 2 FLOPs)."""
    h = getattr(config, "hidden_size", None) or getattr(config, "dim", None) or getattr(config, "emb_dim")
    i = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * h
    per_token_layer = 8 * h * h + 4 * h * i + 4 * seq_len * h
    embeddings = 7 * h  # three embeddings added, then layer-norm: a few operations per value
    tokens = batch_size * seq_len
    return tokens * (embeddings + kept * per_token_layer) + batch_size * 2 * h * h


def hardware(device) -> dict:
    """Where the timings were taken: the trial rows' hardware and versions, plus device, threads, runtime."""
    import importlib.metadata

    import torch

    from frugalray.training.environment import environment

    recorded = environment()
    try:
        onnxruntime = importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        onnxruntime = None
    return {
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "hardware": recorded["hardware"], "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_version": recorded["torch_version"],
        "transformers_version": recorded["transformers_version"], "onnxruntime_version": onnxruntime,
        "python_version": platform.python_version(),
    }


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class _Source:
    """What ``--model`` names: a model (alias, folder, hub id), or an exported trial and its base model."""

    model: str  # the base model, as rows name it
    export: str | None = None  # the exported folder
    export_kept: tuple[int, ...] | None = None
    export_variant: str | None = None
    export_int8_fp32: tuple[str, ...] = ()  # the export's int8 groups kept fp32


def _source(model: str) -> _Source:
    from frugalray.model.saved import MANIFEST

    manifest = Path(model) / MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        return _Source(recorded["base_model"], str(model), tuple(recorded["kept_layers"]), recorded.get("variant", "fp32"),
                       tuple(recorded.get("int8_fp32_groups") or ()))
    return _Source(model)


def _layer_sets(total: int, keep: list, source: _Source) -> list[tuple[str, tuple[int, ...]]]:
    out = [("full", tuple(range(total)))]
    if source.export:
        out.append(("export", source.export_kept))
    for spec in keep:
        if isinstance(spec, int):
            if not 1 <= spec < total:
                raise FrugalrayError(f"--keep {spec}: a model with {total} layers keeps 1..{total - 1} of them")
            out.append((f"first_{spec}", tuple(range(spec))))
        else:
            from frugalray.strategies import validate_layers

            kept = validate_layers(list(spec), total, "--keep layers")
            out.append(("mask " + ",".join(map(str, kept)), kept))
    return out


def check_request(model: str, keep: list, batch_sizes: list[int], seq_lens: list[int], variants: list[str],
                  device: str | None, repeats: int, warmup: int, seed: int, threads: int):
    """Refuse a request that cannot be measured; returns (source, base config, layer sets, variants)."""
    from frugalray.model.loading import load_model_config
    from frugalray.model.surgery import num_layers
    from frugalray.training.environment import check_device

    if not batch_sizes or not seq_lens or min(batch_sizes) < 1 or min(seq_lens) < 1 or repeats < 1 or threads < 1:
        raise FrugalrayError("batch sizes, sequence lengths, repeats and threads must be >= 1")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise FrugalrayError(f"Unknown precision '{unknown[0]}'. Available: {', '.join(VARIANTS)}")
    check_device(device)
    if device and device != "cpu" and any(v in CPU_ONLY for v in variants):
        raise FrugalrayError(f"Precisions {', '.join(CPU_ONLY)} run on CPU only (dynamic int8, ONNX Runtime's CPU "
                             f"provider); measure them with --device cpu")
    if any(VARIANTS[v][0] == "onnxruntime" for v in variants):
        from frugalray.deploy.onnx import require_onnx

        require_onnx("--precision onnx")
    source = _source(model)
    config = load_model_config(source.model)
    limit = getattr(config, "max_position_embeddings", None)
    kind = getattr(config, "model_type", "")
    if limit and ("roberta" in kind or kind in ("camembert", "mpnet")):
        limit -= 2  # RoBERTa's and MPNet's positions start after the padding index
    if limit and max(seq_lens) > limit:
        raise FrugalrayError(f"--seq-len {max(seq_lens)} is longer than model {source.model!r} accepts ({limit} tokens)")
    wanted = ["fp32"] + [v for v in variants if v != "fp32"]
    if source.export_variant and source.export_variant not in wanted:
        wanted.append(source.export_variant)  # an exported int8/ONNX trial is timed in its own form too
    return source, config, _layer_sets(num_layers(config), keep, source), wanted


@dataclass
class _Entry:
    layer_set: str
    kept: tuple[int, ...]
    variant: str
    run: Callable  # (input_ids, attention_mask) -> None


def _entries(source: _Source, layer_sets, variants: list[str], target, threads: int, scratch: Path) -> list[_Entry]:
    import torch
    from transformers import AutoModel
    from transformers.utils import logging

    from frugalray.model.loading import resolve_model
    from frugalray.model.surgery import num_layers, prune_layers

    logging.disable_progress_bar()
    logging.set_verbosity_error()  # an exported classifier loaded as a bare encoder leaves its head unused
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out = []
    for label, kept in layer_sets:
        def load(dtype=torch.float32, label=label, kept=kept):
            if label == "export":
                return AutoModel.from_pretrained(source.export, dtype=dtype).eval()
            encoder = AutoModel.from_pretrained(resolve_model(source.model), dtype=dtype)
            if len(kept) < num_layers(encoder.config):
                prune_layers(encoder, kept)
            return encoder.eval()

        onnx_file = None
        for variant in variants:
            runtime, precision = VARIANTS[variant]
            if runtime == "torch" and precision != "int8":
                out.append(_Entry(label, kept, variant, _torch_runner(load(dtypes[precision]).to(target))))
            elif runtime == "torch":
                from frugalray.model.quantize import dynamic_int8

                groups = source.export_int8_fp32 if label == "export" else ()
                out.append(_Entry(label, kept, variant, _torch_runner(dynamic_int8(load(), groups))))
            else:
                from frugalray.deploy.onnx import export_onnx, quantize_onnx, session

                if onnx_file is None:
                    onnx_file = export_onnx(load(), scratch / f"{len(out)}.onnx", output="last_hidden_state")
                path = onnx_file if precision == "fp32" else quantize_onnx(onnx_file, scratch / f"{len(out)}.int8.onnx")
                out.append(_Entry(label, kept, variant, _onnx_runner(session(path, threads))))
    return out


def _torch_runner(encoder) -> Callable:
    import torch

    def run(ids, mask):
        with torch.inference_mode():
            encoder(input_ids=ids, attention_mask=mask)

    return run


def _onnx_runner(onnx_session) -> Callable:
    cache: dict = {}

    def run(ids, mask):
        key = (id(ids), id(mask))  # the same tensors every round: convert them once
        if key not in cache:
            cache.clear()
            cache[key] = {"input_ids": ids.cpu().numpy(), "attention_mask": mask.cpu().numpy()}
        onnx_session.run(["last_hidden_state"], cache[key])

    return run


def default_device(variants, cuda: bool) -> str:
    """The grid's device when none is named: CUDA where present, unless a precision runs on the CPU only (one
    device for the whole grid, so that every speedup compares like with like).

    >>> default_device(["fp32", "int8"], cuda=True), default_device(["fp32", "bf16"], cuda=True)
    ('cpu', 'cuda')
    """
    return "cuda" if cuda and not any(v in CPU_ONLY for v in variants) else "cpu"


def measure_grid(model: str, keep: list, batch_sizes: list[int], seq_lens: list[int], variants: list[str],
                 device: str | None, repeats: int, warmup: int, seed: int, threads: int) -> list[dict]:
    """Time every (layer set × variant) on every (batch size × sequence length), in this process."""
    import torch

    source, config, layer_sets, wanted = check_request(model, keep, batch_sizes, seq_lens, variants, device,
                                                       repeats, warmup, seed, threads)
    target = torch.device(device or default_device(wanted, torch.cuda.is_available()))
    environment = hardware(target)
    rows = []
    with tempfile.TemporaryDirectory(prefix="frugalray-onnx-") as scratch:
        entries = _entries(source, layer_sets, wanted, target, threads, Path(scratch))
        generator = torch.Generator().manual_seed(seed)
        for batch_size in batch_sizes:
            for seq_len in seq_lens:
                ids = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=generator).to(target)
                mask = torch.ones_like(ids)
                times = _alternating_rounds(entries, ids, mask, target, repeats, warmup)
                rows += _rows(source, config, entries, times, batch_size, seq_len, repeats, environment)
    return rows


def _alternating_rounds(entries: list[_Entry], ids, mask, target, repeats: int, warmup: int) -> list[list[float]]:
    """Seconds per call of each entry; rounds alternate between entries so that a busier moment of the
    machine is shared by all of them instead of landing on one."""
    import torch

    def sync():
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    times: list[list[float]] = [[] for _ in entries]
    for attempt in range(warmup + repeats):
        for position, entry in enumerate(entries):
            sync()
            start = time.perf_counter()
            entry.run(ids, mask)
            sync()
            if attempt >= warmup:
                times[position].append(time.perf_counter() - start)
    return times


def _rows(source: _Source, config, entries, times, batch_size, seq_len, repeats, environment) -> list[dict]:
    rows, total = [], len(entries[0].kept)
    for entry, measured in zip(entries, times):
        median = statistics.median(measured)
        runtime, precision = VARIANTS[entry.variant]
        rows.append({
            "model": source.model, "source": source.export if entry.layer_set == "export" else None,
            "layer_set": entry.layer_set, "kept_layers": list(entry.kept), "n_kept_layers": len(entry.kept),
            "num_layers": total,
            "variant": entry.variant, "precision": precision, "runtime": runtime,
            "batch_size": batch_size, "seq_len": seq_len, "repeats": repeats,
            "latency_ms": median * 1000,
            "latency_p90_ms": sorted(measured)[int(0.9 * (len(measured) - 1))] * 1000,
            "sequences_per_second": batch_size / median, "tokens_per_second": batch_size * seq_len / median,
            "gflops": forward_flops(config, len(entry.kept), batch_size, seq_len) / 1e9,
            **environment, "measured_at": now(),
        })
    full = rows[0]  # the full model in fp32 torch comes first
    for row in rows:
        row["speedup"] = full["latency_ms"] / row["latency_ms"]
        row["ideal_speedup"] = full["gflops"] / row["gflops"]
        row["fraction_of_ideal"] = row["speedup"] / row["ideal_speedup"]
    return rows
