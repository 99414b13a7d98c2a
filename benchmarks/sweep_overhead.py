"""Orchestration overhead: K short trials through a Ray Tune sweep vs the same trials in one process.

    python benchmarks/sweep_overhead.py [--seeds 3] [--layers 4]

The trials are real but short: a tiny random 4-layer encoder (hidden 32) trained for one epoch on the
shipped POS corpus, stage 1 of the pipeline (full + single(k)) for each seed. The sweep runs one trial at
a time (each takes both cores), like the in-process loop, so the difference is orchestration. Prints both
wall times, their ratio, the per-trial overhead, and the time to re-run the finished sweep.
Targets: overhead <= 2 s per trial; re-run < 10 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

RERUN = """
import sys, time
start = time.perf_counter()
from frugalray.config import SweepConfig
from frugalray.cluster.runs import run_sweep
run_sweep(SweepConfig.from_dict(eval(sys.argv[1])))
print(f"RERUN {time.perf_counter() - start:.2f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    from frugalray import ResultsStore
    from frugalray.study.plan import StudyPlan, SweepConfig
    from frugalray.testing import conll_words, tiny_model_dir
    from frugalray.data.tasks import DEMO_DIR
    from frugalray.training.trial import execute_trial

    work = tempfile.mkdtemp(prefix="frugalray-bench-")
    model = str(tiny_model_dir(os.path.join(work, "model"), conll_words(*DEMO_DIR.glob("pos_*.conll")),
                               num_layers=args.layers))
    settings = dict(name="overhead", tasks=["demo_pos"], model=model, seeds=list(range(args.seeds)),
                    stages=["single"], training=dict(epochs=1, batch_size=16, max_length=64),
                    resources=dict(cpus_per_trial=2))

    # 1. In one process, one after another.
    sequential = SweepConfig.from_dict(settings | {"results": os.path.join(work, "sequential")})
    plan = StudyPlan(sequential, ResultsStore(sequential.results))
    plan.expand()
    configs = [p.config for p in plan.queue]
    start = time.perf_counter()
    for config in configs:
        row = execute_trial(config, plan.store)
        assert row["status"] == "ok", row["error"]
    sequential_s = time.perf_counter() - start

    # 2. Through the sweep (Ray Tune), Ray started by the sweep script as a user would.
    sweep_settings = settings | {"results": os.path.join(work, "sweep")}
    code = ("import sys, time; start = time.perf_counter(); "
            "from frugalray.config import SweepConfig; from frugalray.cluster.runs import run_sweep; "
            "from frugalray.cluster.session import start_local_ray; start_local_ray(num_cpus=2); "
            "run_sweep(SweepConfig.from_dict(eval(sys.argv[1]))); "
            "print(f'SWEEP {time.perf_counter() - start:.2f}')")
    out = subprocess.run([sys.executable, "-c", code, repr(sweep_settings)], capture_output=True, text=True)
    sweep_s = _value(out, "SWEEP")
    rows = ResultsStore(sweep_settings["results"]).table().to_pylist()
    assert len(rows) == len(configs) and all(r["status"] == "ok" for r in rows), out.stderr[-2000:]

    # 3. Re-running the finished sweep: nothing to train.
    rerun = subprocess.run([sys.executable, "-c", RERUN, repr(sweep_settings)], capture_output=True, text=True)
    rerun_s = _value(rerun, "RERUN")

    k = len(configs)
    print(f"{k} trials (tiny {args.layers}-layer encoder, demo_pos, 1 epoch), one at a time, 2 cores")
    print(f"in one process : {sequential_s:7.1f} s  ({sequential_s / k:.2f} s/trial)")
    print(f"Ray Tune sweep : {sweep_s:7.1f} s  ({sweep_s / k:.2f} s/trial, Ray start-up included)")
    print(f"ratio          : {sweep_s / sequential_s:.2f}x")
    print(f"overhead       : {(sweep_s - sequential_s) / k:.2f} s per trial (target <= 2 s)")
    print(f"re-run, finished sweep: {rerun_s:.1f} s (target < 10 s)")
    shutil.rmtree(work, ignore_errors=True)


def _value(out: subprocess.CompletedProcess, key: str) -> float:
    for line in out.stdout.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[1])
    raise SystemExit(f"{key} not measured:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


if __name__ == "__main__":
    main()
