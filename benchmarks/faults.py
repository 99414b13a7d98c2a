"""Reliability: a sweep whose driver and Ray workers are killed at random moments, and whose store gets a
corrupt file, still ends with every row exactly once.

    python benchmarks/faults.py [--kills 20] [--seed 0] [--seeds 3] [--trial-seconds 0.3] [--out DIR]

The sweep (stages single + strategies, tasks demo_pos, demo_ner and the tests' NER task file, a tiny random
4-layer encoder) runs simulated trials (``frugalray.testing:simulated_trial``: they sleep, train nothing)
in a child process, the driver, on the private local Ray that the driver starts. ``--kills`` times, at a
random moment, the benchmark either SIGKILLs the driver's process group (then reruns the same command) or
SIGKILLs one ``ray::`` worker of that driver's Ray (a descendant of its raylet; nothing else is touched).
Then it truncates one trial file half-way and adds a file that is not Parquet, runs
``frugalray results STORE --repair`` and reruns the sweep to the end.

The expected rows (planned configurations × the strategies reporting them) come from the same sweep run
uninterrupted, in this process, into a second store. Prints kills, rows expected/found, duplicates
(a configuration hash + strategy + N + stage with more than one successful row), rows lost, files
quarantined and the wall time; exits 1 when a row is lost or duplicated, or a driver hangs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
os.environ.pop("RAY_ADDRESS", None)  # the sweep must start a Ray of its own, never join another

RUNNER = "frugalray.testing:simulated_trial"
DRIVER = f"""
import ast, sys
from frugalray.cli import sweep_main
sweep_main(ast.literal_eval(sys.argv[1]), argv=[], runner={RUNNER!r})
"""
HANG_S = 900  # a driver that has not finished the sweep after this long is hung


def sweep_settings(model: str, seeds: int, results: Path) -> dict:
    return dict(name="faults", tasks=["demo_pos", "demo_ner", str(ROOT / "tests/fixtures/ner_task.json")],
                model=model, seeds=list(range(seeds)), results=str(results), stages=["single", "strategies"],
                resources=dict(cpus_per_trial=1))


class Driver:
    """One run of the sweep command: a process group of its own, its output in a log."""

    def __init__(self, settings: dict, log: Path, trial_seconds: float):
        env = os.environ | {"FRUGALRAY_SIMULATED_SECONDS": str(trial_seconds)}
        with log.open("a") as out:
            out.write(f"\n=== driver started at {time.strftime('%H:%M:%S')}\n")
        self.process = subprocess.Popen([sys.executable, "-c", DRIVER, repr(settings)], env=env, cwd=ROOT,
                                        start_new_session=True, stdout=log.open("a"), stderr=subprocess.STDOUT)
        self.ray_dirs: set[str] = set()  # its Ray's temp folder, removed after a kill (atexit never ran)

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def workers(self) -> list[psutil.Process]:
        """The ``ray::`` processes under this driver's raylet (trial actors, idle workers)."""
        found = []
        for process in self.descendants():
            self.ray_dirs |= {arg.split("=", 1)[1].rsplit("/session_", 1)[0] for arg in _cmdline(process)
                              if arg.startswith(("--session_dir=", "--session-dir="))}
            if _name(process) == "raylet":  # its ray:: children, less Ray's own agents (dashboard, runtime env)
                found += [p for p in _children(process)
                          if _title(p).startswith("ray::") and not _title(p).endswith("Agent")]
        return found

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` while noting its Ray; False when the driver ended first."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.workers()
            if self.process.poll() is not None:
                return False
            time.sleep(0.2)
        return True

    def kill(self) -> list[str]:
        """SIGKILL the driver's process group; returns the names of its processes that outlived it by 15 s
        (then killed: they were started by this driver's Ray)."""
        self.workers()
        tree = self.descendants()
        with contextlib.suppress(ProcessLookupError):  # it may have just finished
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        _, alive = psutil.wait_procs(tree, timeout=15)
        names = [_title(p) for p in alive]
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        for folder in self.ray_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        return names

    def finish(self) -> int | None:
        """Wait for the sweep to end; its exit status, or None when it hung (then it is killed)."""
        try:
            return self.process.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            self.kill()
            return None


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _title(process: psutil.Process) -> str:
    """What a Ray process calls itself (ray::IDLE, ray::ImplicitFunc.train...), its script (log_monitor.py)
    or its name (raylet)."""
    command = _cmdline(process) or [""]
    scripts = [Path(arg).name for arg in command[1:] if arg.endswith(".py")]
    return command[0].strip() if command[0].startswith("ray::") else (scripts or [_name(process)])[0]


def _children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def kill_a_worker(driver: Driver, rng: random.Random) -> str | None:
    """SIGKILL one of the driver's Ray workers, a busy one (running a trial) when there is one; returns its
    title (ray::ImplicitFunc.train, ray::IDLE...), None when the driver ended first."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = driver.workers()
        busy = [p for p in workers if _title(p) != "ray::IDLE"]  # a trial's actor, not a spare worker
        if busy or workers:
            victim = rng.choice(sorted(busy or workers, key=lambda p: p.pid))
            title = _title(victim)
            with contextlib.suppress(psutil.Error):
                victim.kill()
                return title
        if driver.process.poll() is not None:
            return None
        time.sleep(0.2)
    return None


def corrupt(store, rng: random.Random) -> str:
    """Truncate one trial file half-way and add a file that is not Parquet; returns the truncated one."""
    victim = Path(rng.choice(store.files()))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    (Path(store.trials_dir) / "notes-from-an-editor.parquet").write_text("not a Parquet file\n")
    return victim.name


def reference_rows(settings: dict) -> list[dict]:
    """The sweep run uninterrupted, in this process, without Ray: the rows the faulty run must end with."""
    from frugalray.config import SweepConfig
    from frugalray.results.store import ResultsStore
    from frugalray.study.plan import StudyPlan
    from frugalray.testing import simulated_trial
    from frugalray.training.trial import execute_trial

    os.environ["FRUGALRAY_SIMULATED_SECONDS"] = "0"
    plan = StudyPlan(SweepConfig.from_dict(settings), ResultsStore(settings["results"]))
    while plan.expand() or plan.queue:
        planned = plan.pop()
        row = execute_trial(planned.config, runner=simulated_trial)
        plan.store.append(row)
        plan.record(row)
    assert plan.finished()
    return plan.store.table().to_pylist()


def fault_model(work: Path) -> str:
    """The tiny random 4-layer encoder the fault sweeps train, its vocabulary from the demo and test corpora."""
    from frugalray.data.tasks import DEMO_DIR
    from frugalray.testing import conll_words, tiny_model_dir

    words = conll_words(*DEMO_DIR.glob("*.conll"), *(ROOT / "tests/fixtures").glob("ner_*.conll"))
    return str(tiny_model_dir(work / "model", words, num_layers=4))


def report_key(row: dict) -> tuple:
    return row["config_hash"], row["strategy"], row["strategy_n"], row["stage"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20, help="driver or worker kills, at random moments")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kills and of the corrupted file")
    parser.add_argument("--seeds", type=int, default=3, help="sweep seeds 0..N-1 (each: 42 trained runs, 66 rows)")
    parser.add_argument("--trial-seconds", type=float, default=0.3, help="how long a simulated trial sleeps")
    parser.add_argument("--out", help="work folder (default: a new temp folder)")
    args = parser.parse_args()

    from frugalray.results.store import ResultsStore

    started = time.monotonic()
    rng = random.Random(args.seed)
    work = Path(args.out or tempfile.mkdtemp(prefix="frugalray-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    model = fault_model(work)
    settings = sweep_settings(model, args.seeds, work / "store")
    store, log = ResultsStore(settings["results"]), work / "drivers.log"

    # 1. Kills at random moments: the driver (then the same command again), or one of its Ray workers.
    kills, outlived, statuses = Counter(), [], []
    driver = Driver(settings, log, args.trial_seconds)
    for kind in (rng.choice(("driver", "worker")) for _ in range(args.kills)):
        if kind == "driver":
            if not driver.wait(rng.uniform(2, 40)):
                break  # the sweep finished before this kill
            outlived += driver.kill()
            driver = Driver(settings, log, args.trial_seconds)
        elif not driver.wait(rng.uniform(0, 8)) or not (kind := kill_a_worker(driver, rng)):
            break
        kills["driver" if kind == "driver" else "worker"] += 1
        print(f"kill {sum(kills.values())}: {kind}, {len(store.files())} trial files", flush=True)
    statuses.append(driver.finish())

    # 2. A corrupt store: repaired, then the same sweep run to the end.
    truncated = corrupt(store, rng)
    repair = subprocess.run([sys.executable, "-m", "frugalray.cli", "results", str(store.location), "--repair"],
                            capture_output=True, text=True)
    with log.open("a") as out:
        out.write(repair.stdout + repair.stderr)
    statuses.append(Driver(settings, log, args.trial_seconds).finish())

    # 3. What the store holds, against the same sweep run without faults.
    reference = reference_rows(sweep_settings(model, args.seeds, work / "reference"))
    expected = Counter(report_key(r) for r in reference if r["status"] == "ok")
    rows = store.table().to_pylist()
    found = Counter(report_key(r) for r in rows if r["status"] == "ok")
    duplicates = sum(n - 1 for n in found.values() if n > 1)
    lost = sum(1 for key in expected if key not in found)
    unexpected = sum(1 for key in found if key not in expected)
    quarantined = sorted(p.name for p in Path(store.root, "quarantine").rglob("*") if p.is_file())
    staging_removed = repair.stdout.count("removed stale staging")
    trained = sum(1 for r in rows if r["status"] == "ok" and r["reused_from"] is None)
    failed_drivers = sum(1 for status in statuses if status != 0)

    print(f"\nsweep: 3 tasks x {args.seeds} seed(s), stages single + strategies, {trained} trained runs "
          f"(simulated, {args.trial_seconds} s each), {sum(expected.values())} rows with the strategies sharing them")
    print(f"kills             : {sum(kills.values())} of {args.kills} (driver {kills['driver']}, worker "
          f"{kills['worker']}); processes outliving a killed driver: {len(outlived)} {outlived or ''}")
    print(f"corrupted         : {truncated} truncated half-way; notes-from-an-editor.parquet added")
    print(f"repair            : {len(quarantined)} file(s) quarantined ({', '.join(quarantined)}), "
          f"{staging_removed} stale staging file(s) removed")
    print(f"rows expected     : {sum(expected.values())}")
    print(f"rows found        : {sum(found.values())} successful ({len(rows) - sum(found.values())} failed rows too)")
    print(f"duplicates        : {duplicates}")
    print(f"rows lost         : {lost}")
    print(f"unexpected rows   : {unexpected}")
    print(f"drivers failed    : {failed_drivers} (exit status of the last runs: {statuses}; None: hung)")
    print(f"wall time         : {time.monotonic() - started:.0f} s  (work folder {work}, driver log {log})")
    return 1 if duplicates or lost or unexpected or failed_drivers else 0

if __name__ == "__main__":
    sys.exit(main())
