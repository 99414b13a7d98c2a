"""Inference latency of an encoder against smaller versions of it (pruned, int8, ONNX Runtime), over a grid
of batch sizes × sequence lengths, measured in a process of its own, with the ideal speedup.

    frugalray bench-latency --model minilm --keep 3 --batch-size 1 32 --seq-len 128 --precision fp32 int8 onnx
    frugalray bench-latency --model exported/ --results results/

Layer sets: the same pretrained encoder with layers physically removed (``--keep 3``: the first 3;
``--keep 0/5``: those layers); an exported trial (``frugalray export``; its manifest names the base model and
the kept layers) is timed with its own weights, against its base model in full. Precision and runtime:
fp32, bf16, fp16 (torch), int8 (torch dynamic int8 of the Linear layers, CPU), onnx and onnx-int8 (ONNX
Runtime on CPU, the latter with onnxruntime's dynamic int8). Every variant runs random token ids of each
shape after a warm-up; rounds alternate between the variants of a shape, so that a slower moment of the
machine is shared by all of them, and the median is reported with its speedup against the full fp32 torch
model of the same shape and the ideal speedup: the ratio of forward FLOPs, counted from the config (per
token and layer 8h² + 4h·i + 4·s·h, plus the embeddings; the pooler adds 2h² per sequence). Precision
does not change the ideal: it counts what layers are kept.

Isolated: the grid runs in a child process started for it, with ``threads`` torch threads and the same
OMP/MKL thread counts set in its environment, so nothing of the caller runs beside it (``isolated=False``
measures in the calling process). Rows record shape, kept layers, precision, runtime, threads, device,
hardware and library versions; ``frugalray bench-latency --results STORE`` keeps them in ``STORE/latency/``,
where the report and the payoff view find them.

>>> rows = bench_latency("minilm", keep=[3], batch_sizes=(1, 32), seq_lens=(128,), variants=("fp32", "int8"))  # doctest: +SKIP
>>> [(r["batch_size"], r["layer_set"], r["variant"], round(r["speedup"], 2)) for r in rows][:2]         # doctest: +SKIP
[(1, 'full', 'fp32', 1.0), (1, 'full', 'int8', 1.6)]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from frugalray._registry import FrugalrayError

def default_threads() -> int:
    """Physical cores this process may use (torch's own default counts physical cores too)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        import psutil

        return max(1, min(usable, psutil.cpu_count(logical=False) or usable))
    except ImportError:
        return usable


def bench_latency(model: str = "minilm", keep: list | None = None, *, batch_sizes=(32,), seq_lens=(128,),
                  variants=("fp32",), device: str | None = None, repeats: int = 10, warmup: int = 3, seed: int = 0,
                  threads: int | None = None, isolated: bool = True) -> list[dict]:
    """One row per (batch size, sequence length, layer set, variant), full fp32 first in each shape: median
    and p90 latency, throughput, speedup against the full fp32 model and the ideal speedup."""
    request = dict(model=model, keep=[k if isinstance(k, int) else list(k) for k in keep or []],
                   batch_sizes=list(batch_sizes), seq_lens=list(seq_lens), variants=list(variants), device=device,
                   repeats=repeats, warmup=warmup, seed=seed, threads=threads or default_threads())
    from frugalray.deploy.grid import check_request

    check_request(**request)  # bad input fails here, before a process starts
    if not isolated:
        from frugalray.deploy.grid import measure_grid

        return _label(measure_grid(**request), False)
    return _label(_in_child(request), True)


def _label(rows: list[dict], isolated: bool) -> list[dict]:
    for row in rows:
        row["isolated"] = isolated
    return rows


def _in_child(request: dict) -> list[dict]:
    """Run ``measure_grid(**request)`` in a fresh Python process with pinned thread counts."""
    threads = str(request["threads"])
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryDirectory(prefix="frugalray-latency-") as scratch:
        asked, answer = Path(scratch) / "request.json", Path(scratch) / "rows.json"
        asked.write_text(json.dumps(request))
        done = subprocess.run([sys.executable, "-m", "frugalray.deploy.latency", str(asked), str(answer)], env=env,
                              capture_output=True, text=True)
        if not answer.is_file():
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise FrugalrayError(f"The latency measurement process failed (exit {done.returncode}):\n{tail}")
        result = json.loads(answer.read_text())
    if "error" in result:
        raise FrugalrayError(result["error"])
    for row in result["rows"]:
        row["measured_at"] = datetime.fromisoformat(row["measured_at"])
    return result["rows"]


def _child(asked: str, answer: str) -> None:
    import torch

    from frugalray.deploy.grid import measure_grid
    from frugalray.training.environment import running

    request = json.loads(Path(asked).read_text())
    torch.set_num_threads(request["threads"])
    try:
        with running("latency"):
            rows = measure_grid(**request)
        result = {"rows": [row | {"measured_at": row["measured_at"].isoformat()} for row in rows]}
    except FrugalrayError as error:
        result = {"error": str(error)}
    Path(answer).write_text(json.dumps(result))


if __name__ == "__main__":
    _child(*sys.argv[1:3])
