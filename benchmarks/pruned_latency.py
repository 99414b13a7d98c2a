"""Inference payoff of pruning: MiniLM (6 layers) full vs its first 3 and first 2 layers, against the ideal.

    python benchmarks/pruned_latency.py [--batch-size 32] [--seq-len 128] [--repeats 20] [--device cpu]

The three models are loaded side by side in a process started for the measurement (pinned threads) and timed
in alternating rounds on the same random batch (``frugalray.model.latency.bench_latency``). The ideal speedup is the ratio of forward FLOPs (encoder layers
plus embeddings and pooler, from the config). Target: each pruned model reaches at least 90% of its ideal
speedup at batch 32 x 128 tokens.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device")
    parser.add_argument("--dtype", default="fp32")
    args = parser.parse_args()

    from frugalray.model.latency import bench_latency

    rows = bench_latency("minilm", [3, 2], batch_sizes=(args.batch_size,), seq_lens=(args.seq_len,),
                         device=args.device, variants=(args.dtype,), repeats=args.repeats)
    rows = [row for row in rows if row["variant"] == args.dtype]  # the grid adds the full fp32 reference
    for row in rows:  # pruned against full in the same precision
        row["speedup"] = rows[0]["latency_ms"] / row["latency_ms"]
        row["fraction_of_ideal"] = row["speedup"] / row["ideal_speedup"]
    print(f"{rows[0]['hardware']}; {rows[0]['device']} {args.dtype}; torch {rows[0]['torch_version']} "
          f"({rows[0]['threads']} threads); batch {args.batch_size} x {args.seq_len} tokens, "
          f"median of {args.repeats} alternating rounds")
    print(f"{'variant':8} {'layers':>6} {'ms':>8} {'seq/s':>8} {'speedup':>8} {'ideal':>6} {'of ideal':>9}")
    for row in rows:
        print(f"{row['layer_set']:8} {row['n_kept_layers']:6d} {row['latency_ms']:8.1f} {row['sequences_per_second']:8.1f} "
              f"{row['speedup']:8.2f} {row['ideal_speedup']:6.2f} {row['fraction_of_ideal']:9.1%}")
    worst = min(row["fraction_of_ideal"] for row in rows[1:])
    print(f"target: >= 90% of the ideal speedup; worst variant {worst:.1%} -> {'met' if worst >= 0.9 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
