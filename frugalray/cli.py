"""Command line: ``frugalray trial``, ``frugalray results``, ``frugalray tasks``, ``frugalray strategies``.

    frugalray trial --task demo_pos --model minilm --strategy first --n 4 --epochs 3 --results results/
    frugalray results results/ --where task=demo_pos --where "n_kept_layers<=3"
    frugalray results results/ --sql "SELECT strategy, avg(f1) FROM trials GROUP BY strategy"
    frugalray results results/ --check
    frugalray search --task demo_pos --budget 20 --max-layers 3 --objective f1_vs_layers --results results/
    frugalray importance --task demo_pos --model minilm --results results/
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from frugalray._registry import FrugalrayError


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of layer indices, e.g. 0,2,5")


def _scores(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _seed(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        seed = -1
    if not 0 <= seed < 2**32:  # what numpy (and so transformers.set_seed) accepts
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: an integer from 0 to 2**32 - 1")
    return seed


def _task_pairs(text: str) -> tuple[str, str]:
    task, sep, dataset = text.partition("=")
    if not sep or not task or not dataset:
        raise argparse.ArgumentTypeError(f"{text!r} is not TASK=DATASET, e.g. demo_pos=FTB_POS")
    return task, dataset


def _reference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reference", action="append", default=None,
                        help="reference CSV file or folder to show beside our numbers (default: 'study', the "
                             "packaged tables of the reference study); repeatable")
    parser.add_argument("--reference-task", action="append", type=_task_pairs, default=[],
                        help="pair one of our tasks with a reference dataset, e.g. demo_pos=FTB_POS")
    parser.add_argument("--no-reference", action="store_true", help="show our numbers only")


def _load_reference(args) -> list[dict]:
    from frugalray.reference import STUDY, load_reference

    if args.no_reference:
        return []
    return load_reference(args.reference or [STUDY], dict(args.reference_task))


def _keep(text: str):
    if text.strip().isdigit():
        return int(text)
    return _layers(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frugalray", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    trial = commands.add_parser("trial", help="train, evaluate and record one pruned model")
    trial.add_argument("--task", required=True, help="registered task (frugalray tasks) or a task .json file")
    trial.add_argument("--model", default="minilm", help="alias, local folder or HF hub id (default: minilm)")
    trial.add_argument("--strategy", default="full", help="pruning strategy (frugalray strategies)")
    trial.add_argument("--n", type=int, help="N for first/last/best/drop_*/drop_every, k for single")
    trial.add_argument("--layers", type=_layers, help="layers to keep, for --strategy mask: 0,2,5")
    trial.add_argument("--scores", type=_scores,
                       help="per-layer scores for best/drop_worst; default: the store's single(k) results")
    trial.add_argument("--lora", action="store_true", help="fine-tune with LoRA instead of fully")
    trial.add_argument("--lora-config", help="LoRA settings JSON (r, alpha, dropout, target_modules, train_head)")
    trial.add_argument("--freeze-head", action="store_true", help="LoRA: keep the classification head frozen")
    trial.add_argument("--epochs", type=int, default=3)
    trial.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning learning rate")
    trial.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA learning rate")
    trial.add_argument("--batch-size", type=int, default=16)
    trial.add_argument("--max-length", type=int, default=256)
    trial.add_argument("--length-grouping", type=int, default=0, metavar="K",
                       help="sort each group of K batches by length (0: uniform shuffling, the default)")
    trial.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping (0: off)")
    trial.add_argument("--warmup-ratio", type=float, default=0.0, help="share of steps with LR warm-up")
    trial.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    trial.add_argument("--dtype", default="auto", help="auto, fp32 or bf16")
    trial.add_argument("--seed", type=_seed, default=0)
    trial.add_argument("--data-dir", help="folder with the task's files (FTB tasks need it)")
    trial.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    trial.add_argument("--save-model", action="store_true", help="keep the trained weights for frugalray export")
    trial.add_argument("--results", required=True, help="results location: folder, s3://..., gs://...")

    results = commands.add_parser("results", help="query a results store")
    results.add_argument("location", help="results location")
    results.add_argument("--where", action="append", default=[], help="filter, e.g. task=demo_pos or 'f1>=0.9'")
    results.add_argument("--sql", help="DuckDB SQL over the view 'trials'")
    results.add_argument("--columns", help="comma-separated columns to show")
    results.add_argument("--format", default="table", help="table, csv or markdown")

    results.add_argument("--fronts", action="store_true", help="show the Pareto fronts of layer-mask searches")
    results.add_argument("--view", help="a ready table: budget (4.4), best_worst (4.2), lora (4.6), balanced "
                                        "(4.8/4.9), baselines, strategies; seeds give mean ± std [95%% CI]")
    results.add_argument("--budget", type=_layers, help="--view budget: layer budgets, e.g. 2,3,6 (default: all)")
    results.add_argument("--check", action="store_true",
                         help="the store's health: files, rows, unreadable files, staging leftovers, configurations "
                              "trained twice; exit 1 when something needs attention")
    results.add_argument("--repair", action="store_true",
                         help="move unreadable files to <store>/quarantine/ and remove stale staging files")
    _reference_options(results)

    search = commands.add_parser("search", help="search layer masks with Optuna (through Ray Tune)")
    search.add_argument("--task", required=True)
    search.add_argument("--model", default="minilm")
    search.add_argument("--budget", type=int, default=20, help="new masks to train in this run")
    search.add_argument("--min-layers", type=int, default=1)
    search.add_argument("--max-layers", type=int, help="default: L-1")
    search.add_argument("--exactly", type=int, help="keep exactly N layers")
    search.add_argument("--objective", default="f1", help="f1, f1_vs_layers or f1_vs_latency")
    search.add_argument("--name", default="", help="study name (resume by giving the same one)")
    search.add_argument("--storage", help="Optuna storage URL (default: sqlite file in the results)")
    search.add_argument("--no-warm-start", action="store_true", help="do not tell Optuna the stored results")
    search.add_argument("--prior", default="proxy", help="proxy (masks by layer importance first) or none")
    search.add_argument("--epochs", type=int, default=3)
    search.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning learning rate")
    search.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA learning rate")
    search.add_argument("--batch-size", type=int, default=16)
    search.add_argument("--max-length", type=int, default=256)
    search.add_argument("--seed", type=_seed, default=0)
    search.add_argument("--data-dir")
    search.add_argument("--results", required=True)

    importance = commands.add_parser("importance", help="per-layer importance from the pretrained model alone")
    importance.add_argument("--task", required=True)
    importance.add_argument("--model", default="minilm")
    importance.add_argument("--data-dir")
    importance.add_argument("--results", help="compare with the trained single(k) ranking stored here")

    report = commands.add_parser("report", help="write an HTML report: the study's figures and tables per task")
    report.add_argument("location", help="results location")
    report.add_argument("--out", default="report", help="folder for index.html and figures/ (default: report)")
    report.add_argument("--embed", action="store_true", help="inline the figures: one self-contained HTML file")
    report.add_argument("--where", action="append", default=[], help="only these trials, e.g. task=demo_pos")
    report.add_argument("--title")
    _reference_options(report)

    export = commands.add_parser("export", help="write a trial's pruned model (LoRA merged) as a plain HF folder")
    export.add_argument("location", help="results location")
    export.add_argument("--trial", required=True, help="trial_id (or a unique prefix) of a trial run with --save-model")
    export.add_argument("--out", required=True,
                        help="folder to write; an earlier export there is replaced, any other non-empty folder "
                             "needs --force")
    export.add_argument("--force", action="store_true",
                        help="write into a non-empty folder that is not an earlier export (its other files are kept)")
    export.add_argument("--no-check", action="store_true", help="skip comparing the export's logits with the trained model")

    bench = commands.add_parser("bench-latency", help="inference latency and throughput, full vs pruned models")
    bench.add_argument("--model", default="minilm", help="alias, folder (an exported model too) or hub id")
    bench.add_argument("--keep", action="append", type=_keep, default=[],
                       help="a pruned variant: N (the first N layers) or layers 0,5; repeatable (default: 3 and 2)")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--seq-len", type=int, default=128)
    bench.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    bench.add_argument("--dtype", default="fp32", help="fp32, bf16 or fp16")
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--format", default="table", help="table, csv or markdown")
    bench.add_argument("--results", help="also store the rows under <results>/latency/")

    commands.add_parser("tasks", help="list registered tasks")
    commands.add_parser("strategies", help="list pruning strategies")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FrugalrayError as error:
        print(f"frugalray: error: {error}", file=sys.stderr)
        return 2


def _trial(args) -> int:
    from frugalray.lora import LoraSettings
    from frugalray.results import ResultsStore
    from frugalray.strategies import STRATEGIES
    from frugalray.tables import render
    from frugalray.config import TrainingSettings
    from frugalray.trial import TrialConfig, check_device, execute_trial, prepare_trial

    check_device(args.device)
    lora = None
    if args.lora or args.lora_config:
        lora = LoraSettings.from_json(args.lora_config) if args.lora_config else LoraSettings()
        if args.freeze_head:
            lora = LoraSettings(**{**lora.as_record(), "train_head": False})
    training = TrainingSettings(
        epochs=args.epochs, learning_rate=args.lr, lora_learning_rate=args.lora_lr, batch_size=args.batch_size,
        max_length=args.max_length, length_grouping=args.length_grouping, dtype=args.dtype,
        max_grad_norm=args.max_grad_norm, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
    )
    config = TrialConfig(
        task=args.task, model=args.model, strategy=args.strategy, n=args.n, layers=args.layers,
        scores=args.scores, lora=lora, training=training, seed=args.seed, data_dir=args.data_dir,
        save_model=args.save_model,
    )
    store = ResultsStore(args.results).check_writable()
    if STRATEGIES.get(args.strategy).needs_scores and args.scores is None:
        if args.strategy == "drop_proxy":  # importance from the pretrained model: no training needed
            from frugalray.importance import proxy_scores

            scores = proxy_scores(config.task, config.model, config.data_dir)
        else:
            from frugalray.scores import single_layer_scores

            scores = single_layer_scores(store, config.task, config.model)
        config = dataclasses.replace(config, scores=scores)
    prepared = prepare_trial(config)  # bad input fails here, before anything is written
    row = execute_trial(config, store, prepared=prepared, raise_input_errors=True, device=args.device)
    import pyarrow as pa

    from frugalray.results import SCHEMA

    print(render(pa.Table.from_pylist([row], schema=SCHEMA)))
    if row["status"] != "ok":
        print(f"frugalray: trial failed (recorded in {args.results}): {row['error']}", file=sys.stderr)
        return 1
    return 0


def _results(args) -> int:
    from frugalray.results import ResultsStore
    from frugalray.tables import render

    if args.fronts:
        from frugalray.search import read_fronts

        fronts = read_fronts(ResultsStore(args.location))
        if not fronts:
            raise FrugalrayError(f"No search fronts in {args.location!r}; run `frugalray search` first")
        for front in fronts:
            print(f"== {front.column('search')[0]} ({front.column('objective')[0]})")
            print(render(front.drop_columns(["search", "objective"]), fmt=args.format))
        return 0
    if args.check or args.repair:
        from frugalray.store_health import check_store, repair_store

        store = ResultsStore(args.location)
        if args.repair:
            print("\n".join(repair_store(store)))
        health = check_store(store)
        print(health.text())
        return 0 if health.healthy else 1
    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    if args.view:
        from frugalray.tables import with_uncertainty
        from frugalray.views import compute_view

        if args.sql:
            raise FrugalrayError("--view and --sql do not combine; filter a view with --where")
        view = compute_view(ResultsStore(args.location), args.view, where=args.where,
                            reference=_load_reference(args), budgets=list(args.budget) if args.budget else None)
        table = view.table if args.format == "csv" else with_uncertainty(view.table)
        if table.num_columns:
            print(render(table, columns, args.format))
        for note in view.notes:
            print(f"# {note}", file=sys.stderr)
        return 0
    table = ResultsStore(args.location).query(where=args.where, sql=args.sql)
    print(render(table, columns, args.format))
    return 0


def _search(args) -> int:
    from frugalray.search import SearchConfig, run_search
    from frugalray.sweep import connect_or_start_ray
    from frugalray.config import TrainingSettings

    training = TrainingSettings(epochs=args.epochs, learning_rate=args.lr, lora_learning_rate=args.lora_lr,
                                batch_size=args.batch_size, max_length=args.max_length)
    config = SearchConfig(
        task=args.task, model=args.model, name=args.name, budget=args.budget, min_layers=args.min_layers,
        max_layers=args.max_layers, exactly=args.exactly, objective=args.objective, seed=args.seed,
        training=training, data_dir=args.data_dir, results=args.results, storage=args.storage,
        warm_start=not args.no_warm_start, prior=args.prior,
    )
    outcome = run_search(config, connect=connect_or_start_ray)
    import pyarrow as pa

    from frugalray.tables import render

    print(render(pa.Table.from_pylist(outcome["front"])))
    return 0


def _importance(args) -> int:
    from frugalray.importance import proxy_scores, spearman
    from frugalray.tables import render

    import pyarrow as pa

    scores = proxy_scores(args.task, args.model, args.data_dir)
    rows = [{"layer": k, "proxy_importance": s} for k, s in enumerate(scores)]
    trained = None
    if args.results:
        from frugalray.results import ResultsStore
        from frugalray.scores import single_layer_scores

        trained = single_layer_scores(ResultsStore(args.results), args.task, args.model)
        for row, score in zip(rows, trained):
            row["trained_single_dev_f1"] = score
    print(render(pa.Table.from_pylist(rows)))
    if trained is not None:
        print(f"Spearman rank correlation, proxy vs trained single-layer scores: {spearman(scores, trained):+.3f}")
    return 0


def _report(args) -> int:
    from frugalray.report import write_report
    from frugalray.results import ResultsStore

    path = write_report(ResultsStore(args.location), args.out, reference=_load_reference(args), where=args.where,
                        embed=args.embed, title=args.title)
    print(f"Report written to {path}")
    return 0


def _export(args) -> int:
    from frugalray.export import export_trial
    from frugalray.results import ResultsStore

    done = export_trial(ResultsStore(args.location), args.trial, args.out, check=not args.no_check, force=args.force)
    check = ("" if done["max_logit_difference"] is None
             else f"; max logit difference vs the trained model {done['max_logit_difference']:.1e}")
    print(f"Exported trial {done['trial_id']} (kept layers {done['kept_layers']}, {done['parameters']:,} parameters"
          f"{', LoRA merged' if done['lora_merged'] else ''}) to {done['out']}{check}")
    return 0


def _bench_latency(args) -> int:
    import pyarrow as pa

    from frugalray.latency import bench_latency
    from frugalray.tables import render
    from frugalray.trial import check_device

    check_device(args.device)

    rows = bench_latency(args.model, args.keep or [3, 2], batch_size=args.batch_size, seq_len=args.seq_len,
                         device=args.device, dtype=args.dtype, repeats=args.repeats)
    table = pa.Table.from_pylist(rows)
    columns = ["variant", "n_kept_layers", "latency_ms", "latency_p90_ms", "sequences_per_second", "speedup",
               "ideal_speedup", "fraction_of_ideal"]
    print(render(table, columns, args.format))
    first = rows[0]
    print(f"# {first['device']}, {first['dtype']}, batch {first['batch_size']} x {first['seq_len']} tokens; "
          f"{first['hardware']}; torch {first['torch_version']} ({first['torch_threads']} threads), "
          f"transformers {first['transformers_version']}", file=sys.stderr)
    if args.results:
        from datetime import datetime, timezone

        from frugalray.results import ResultsStore

        store = ResultsStore(args.results)
        path = store.write_table(table, "latency", f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.parquet")
        print(f"# stored in {path}", file=sys.stderr)
    return 0


def _tasks(args) -> int:
    from frugalray.tasks import TASKS

    for name in TASKS:
        spec = TASKS.get(name)
        print(f"{name:16} {spec.head:8} {spec.metric:14} {spec.description}")
    return 0


def _strategies(args) -> int:
    from frugalray.strategies import STRATEGIES

    for name in STRATEGIES:
        spec = STRATEGIES.get(name)
        param = f"--{spec.param}" if spec.param else ""
        print(f"{name:12} {param:9} {spec.doc}")
    return 0


COMMANDS = {"trial": _trial, "results": _results, "search": _search, "importance": _importance, "report": _report, "export": _export, "bench-latency": _bench_latency,
            "tasks": _tasks, "strategies": _strategies}

if __name__ == "__main__":
    sys.exit(main())
