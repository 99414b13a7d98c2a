"""The commands that measure models: ``importance`` (layer and block importance from the pretrained model, and
their agreement with trained results) and ``bench-latency`` (an isolated latency grid)."""

from __future__ import annotations

import sys
from typing import Literal

Format = Literal["table", "csv", "markdown"]


def importance(task: str, model: str = "minilm", data_dir: str | None = None, results: str | None = None) -> int:
    """Layer and block importance from the pretrained model alone, and their agreement with trained results.

    Example: frugalray importance --task demo_pos --model minilm

    Args:
        task: Registered task name or a task JSON file.
        model: Alias, local folder or HF hub id.
        data_dir: Where the task's files are (overrides).
        results: Compare with the trained results stored here (single(k) ranking, dropped blocks).
    """
    import pyarrow as pa

    from frugalray.model.importance import block_agreement, block_table, importance_scores, spearman
    from frugalray.results.store import ResultsStore
    from frugalray.results.tables import render

    scores, block_distances = importance_scores(task, model, data_dir)
    rows = [{"layer": k, "proxy_importance": s} for k, s in enumerate(scores)]
    trained = None
    if results:
        from frugalray.study.scores import single_layer_scores

        trained = [f1 for f1, _ in single_layer_scores(ResultsStore(results), task, model)]
        for row, score in zip(rows, trained):
            row["trained_single_dev_f1"] = score
    print(render(pa.Table.from_pylist(rows)))
    if trained is not None:
        print(f"Spearman rank correlation, proxy vs trained single-layer scores: {spearman(scores, trained):+.3f}")
    by_layers = _trained_layer_sets(ResultsStore(results), task, model) if results else None
    blocks = block_table(block_distances, by_layers)
    print("\nBlocks: the contiguous block the angular-distance proxy would drop, per size (drop_block)")
    print(render(pa.Table.from_pylist(blocks)))
    agreement = block_agreement(blocks)
    if agreement:
        print(agreement)
    return 0


def _trained_layer_sets(store, task: str, model: str) -> dict[tuple[int, ...], float]:
    """Mean dev F1 per kept-layer set of ``task`` and ``model``, full fine-tuning at the task's base settings."""
    from frugalray.data.tasks import resolve_task
    from frugalray.results.aggregate import aggregate
    from frugalray.results.rows import at_base

    name = resolve_task(task).name
    rows = at_base(aggregate(store, [f"task={name}", f"model={model}"]).to_pylist(), [])
    return {tuple(r["kept_layers"]): r["dev_f1"] for r in rows if r["dev_f1"] is not None}


def bench_latency(
    model: str = "minilm",
    keep: tuple[str, ...] = ("3", "2"),
    batch_size: tuple[int, ...] = (32,),
    seq_len: tuple[int, ...] = (128,),
    precision: tuple[str, ...] = ("fp32",),
    device: str | None = None,
    repeats: int = 10,
    threads: int | None = None,
    in_process: bool = False,
    format: Format = "table",
    results: str | None = None,
) -> int:
    """Inference latency over a grid (batch sizes x lengths x layer sets x precisions), measured alone.

    Example: frugalray bench-latency --model minilm --keep 3 0/5 --batch-size 1 8 --seq-len 64 --precision fp32 int8 --repeats 3

    Args:
        model: Alias, folder or hub id, or a folder written by frugalray export (timed against its base model).
        keep: Pruned variants: N (the first N layers) or kept layers joined by '/', e.g. 0/5.
        batch_size: Sequences per batch (several: a grid).
        seq_len: Tokens per sequence (several: a grid).
        precision: fp32, bf16, fp16 (torch), int8 (torch dynamic int8, CPU), onnx, onnx-int8 (ONNX Runtime, CPU;
            pip install 'frugalray[onnx]'). The full fp32 model is always measured: speedups are against it.
        device: cpu, cuda, cuda:1... (default: cuda when present, cpu when the grid has int8 or ONNX precisions).
        repeats: Timed rounds (median shown).
        threads: Threads of the measuring process (torch, OMP, MKL); default: the physical cores.
        in_process: Measure in this process instead of a child started for it (not isolated).
        format: Output format.
        results: Also store the rows under <results>/latency/ (the report and --view payoff use them).
    """
    import pyarrow as pa

    from frugalray.deploy.latency import bench_latency as measure
    from frugalray.results.tables import render

    variants = [int(k) if k.isdigit() else tuple(int(i) for i in k.split("/")) for k in keep]
    rows = measure(model, variants, batch_sizes=batch_size, seq_lens=seq_len, variants=precision, device=device,
                   repeats=repeats, threads=threads, isolated=not in_process)
    table = pa.Table.from_pylist(rows)
    shown = ["batch_size", "seq_len", "layer_set", "variant", "n_kept_layers", "latency_ms", "latency_p90_ms",
             "sequences_per_second", "speedup", "ideal_speedup", "fraction_of_ideal"]
    print(render(table, shown, format))
    first = rows[0]
    print(f"# {first['device']}, {'isolated process' if first['isolated'] else 'in process'}, "
          f"{first['threads']} threads; speedup: against the full fp32 model of the same shape; ideal: its FLOPs "
          f"over the variant's; {first['hardware']}; torch {first['torch_version']}, transformers "
          f"{first['transformers_version']}, onnxruntime {first['onnxruntime_version'] or '-'}", file=sys.stderr)
    if results:
        from datetime import datetime, timezone

        from frugalray.results.store import ResultsStore

        path = ResultsStore(results).write_table(table, "latency", f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.parquet")
        print(f"# stored in {path}", file=sys.stderr)
    return 0
