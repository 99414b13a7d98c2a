"""Where a trial's time goes: each phase of ``frugalray.training.trial.run_trial`` timed, trial after trial
in one process (as a Ray worker runs them), so the first trial's one-off costs show beside the later ones'.

    python benchmarks/trial_profile.py                                  # demo_pos, MiniLM, quick-start settings
    python benchmarks/trial_profile.py --task wnut16 --epochs 3 --batch-size 16 --max-length 256 --lr 5e-5

Phases: encoding the task (``encoded_task``: tokenizer load and tokenisation, kept for the next trial of
the process), building the model (loading the pretrained encoder, pruning, LoRA), training steps, scoring
dev and test, the latency probe, the energy meter's start and stop, and what is left (Python, row building).
Prints seconds per phase for each trial, and each phase's share of the trial.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from contextlib import contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from frugalray import TrainingSettings, TrialConfig, execute_trial  # noqa: E402
from frugalray.config import RECIPE_HELP, RECIPES  # noqa: E402
from frugalray.training import energy, loop, trial  # noqa: E402

SPENT: dict[str, float] = {}


def _timed(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] = SPENT.get(name, 0.0) + time.perf_counter() - start
    return wrapper


def _timed_meter(fn):
    @contextmanager
    def meter(*args, **kwargs):
        start = time.perf_counter()
        with fn(*args, **kwargs) as reading:
            SPENT["energy meter (start)"] = SPENT.get("energy meter (start)", 0.0) + time.perf_counter() - start
            inner = time.perf_counter()
            yield reading
            stop = time.perf_counter()
        SPENT["energy meter (stop)"] = SPENT.get("energy meter (stop)", 0.0) + time.perf_counter() - stop
        SPENT["_metered"] = SPENT.get("_metered", 0.0) + stop - inner
    return meter


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="demo_pos")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--trials", type=int, default=4, help="trials in a row (first and later ones)")
    parser.add_argument("--layers", default="0,1,2", help="kept layers of each trial")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--no-energy", action="store_true", help="turn the energy meter off")
    parser.add_argument("--recipe", choices=list(RECIPES), default="default", help=RECIPE_HELP)
    args = parser.parse_args(argv)

    trial.encoded_task = _timed("encode task (tokenizer, tokenisation)", trial.encoded_task)
    trial._model = _timed("build model (load, prune, LoRA)", trial._model)
    loop.train = _timed("training steps", loop.train)
    trial._score = _timed("score dev and test", trial._score)
    loop.measure_latency = _timed("latency probe", loop.measure_latency)
    trial.measured_energy = _timed_meter(energy.measured_energy)
    settings = TrainingSettings(epochs=args.epochs, batch_size=args.batch_size, max_length=args.max_length,
                                learning_rate=args.lr, eval_batch_size=args.eval_batch_size, energy=not args.no_energy,
                                **RECIPES[args.recipe])
    layers = tuple(int(k) for k in args.layers.split(","))
    print(f"{args.task}, {args.model}, layers {layers}, {args.epochs} epochs, batch {args.batch_size}, "
          f"max length {args.max_length}; {args.trials} trials in one process")
    table = []
    for seed in range(args.trials):
        SPENT.clear()
        start = time.perf_counter()
        row = execute_trial(TrialConfig(task=args.task, model=args.model, strategy="mask", layers=layers,
                                        training=settings, seed=seed))
        total = time.perf_counter() - start
        if row["status"] != "ok":
            sys.exit(row["error"])
        SPENT.pop("_metered", None)
        SPENT["other (preparing, row, Python)"] = total - sum(SPENT.values())
        table.append((total, dict(SPENT)))
    phases = list(table[0][1])
    print("\n| phase | " + " | ".join(f"trial {i + 1} s" for i in range(len(table))) + " | share of a later trial |")
    print("|---|" + "---|" * (len(table) + 1))
    for phase in phases:
        later = sum(t[1].get(phase, 0.0) for t in table[1:]) / max(1, sum(t[0] for t in table[1:]))
        print(f"| {phase} | " + " | ".join(f"{t[1].get(phase, 0.0):.2f}" for t in table) + f" | {later:.0%} |")
    print("| **total** | " + " | ".join(f"{t[0]:.2f}" for t in table) + " | 100% |")


if __name__ == "__main__":
    sys.exit(main())
