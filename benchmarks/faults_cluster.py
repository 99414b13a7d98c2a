"""Reliability on a cluster: two sweeps share one S3 store on a Ray cluster of separate nodes while worker
nodes are removed under running trials and drivers are killed; every row still ends up there exactly once.

    python benchmarks/faults_cluster.py [--removals 10] [--kills 5] [--seed 0] [--seeds 3] [--workers 3]
                                        [--trial-seconds 3] [--out DIR]

The cluster is this machine: a Ray head (0 CPUs: it runs no trial) and ``--workers`` worker nodes of 1 CPU,
each a raylet of its own on 127.0.0.1 (``ray.cluster_utils.Cluster``, in a temp folder of this run). The
results go to a local S3 server (moto, on 127.0.0.1) as ``s3://bench/store?endpoint_override=...``. Two
drivers run at once, each a sweep of its own (stages single + strategies, simulated trials that sleep
``--trial-seconds``: ``frugalray.testing:simulated_trial``, which leaves a start mark per trial: node,
process, time), on the same store. At seeded random moments the benchmark either

- removes a worker node while it runs a trial (a trial whose start mark on that node is younger than half a
  trial, its process alive), then adds a node back; afterwards it checks that the trial's process died with
  the node, that the trial started again on another node and that its row came from another node; or
- SIGKILLs a driver's process group and runs the same command again.

Then it waits for both drivers (a driver that has not finished ``HANG_S`` seconds after the last fault is
hung), runs each sweep once more (it must find nothing to do), and compares the store with the same two
sweeps run without faults, in this process, into local stores. Prints a Markdown table; exits 1 when a row
is lost or duplicated, or a driver hangs or fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from faults import DRIVER, fault_model, reference_rows, report_key  # noqa: E402  (the single-machine benchmark's pieces)

HANG_S = 600  # a driver that has not finished this long after the last fault is hung
BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """A moto S3 server on 127.0.0.1, in a process of its own; ``uri(prefix)`` names a store there."""

    def __init__(self, log: Path):
        self.port = _free_port()
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=log.open("w"), stderr=subprocess.STDOUT)
        import boto3

        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}")
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.5)

    def uri(self, prefix: str) -> str:
        return f"s3://{BUCKET}/{prefix}?endpoint_override=127.0.0.1:{self.port}&scheme=http&region=us-east-1"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class Driver:
    """One run of a sweep command, joined to the cluster (RAY_ADDRESS): a process group of its own."""

    def __init__(self, settings: dict, log: Path, env: dict):
        self.settings, self.log, self.env = settings, log, env
        self.runs, self.kills, self.statuses = 0, 0, []
        self.start()

    def start(self) -> None:
        with self.log.open("a") as out:
            out.write(f"\n=== driver started at {time.strftime('%H:%M:%S')}\n")
        self.process = subprocess.Popen([sys.executable, "-c", DRIVER, repr(self.settings)], env=self.env, cwd=ROOT,
                                        start_new_session=True, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        self.runs += 1

    def running(self) -> bool:
        return self.process.poll() is None

    def kill_and_rerun(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.kills += 1
        self.start()

    def finish(self, timeout: float) -> int | None:
        """Its exit status, or None when it hung (then it is killed)."""
        try:
            status = self.process.wait(timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            status = None
        self.statuses.append(status)
        return status


class Marks:
    """The simulated trials' start marks (``frugalray.testing.trial_marks``), read as they appear."""

    def __init__(self, folder: Path):
        self.folder, self.seen, self.all = folder, set(), []

    def read(self) -> list[dict]:
        import json

        for path in self.folder.glob("*.json"):
            if path.name not in self.seen:
                self.seen.add(path.name)
                self.all.append(json.loads(path.read_text()))
        return self.all


def running_trial(cluster, marks: Marks, trial_seconds: float, rng: random.Random) -> tuple | None:
    """A worker node and the mark of the trial it runs now: the node's latest mark, younger than half a trial,
    its process alive. None when no node runs one."""
    latest = {}
    for mark in marks.read():
        if mark["node"] not in latest or mark["start"] > latest[mark["node"]]["start"]:
            latest[mark["node"]] = mark
    now, found = time.time(), []
    for node in cluster.worker_nodes:
        mark = latest.get(node.node_id)
        if mark and now - mark["start"] < trial_seconds / 2 and psutil.pid_exists(mark["pid"]):
            found.append((node, mark))
    return rng.choice(sorted(found, key=lambda pair: pair[0].node_id)) if found else None


def remove_under_a_trial(cluster, marks: Marks, trial_seconds: float, rng: random.Random) -> dict | None:
    """Remove a worker node while it runs a trial, then add a node back; the removal's record, None when no
    node ran a trial within 120 s."""
    deadline = time.monotonic() + 120
    while (picked := running_trial(cluster, marks, trial_seconds, rng)) is None:
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)
    node, mark = picked
    cluster.remove_node(node, allow_graceful=False)
    removal = {"node": node.node_id, "mark": mark, "removed_at": time.time()}
    gone = time.monotonic() + 30
    while psutil.pid_exists(mark["pid"]) and time.monotonic() < gone:
        time.sleep(0.1)
    removal["process_died"] = not psutil.pid_exists(mark["pid"])
    time.sleep(rng.uniform(1, 5))
    cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    return removal


def _row_node(row: dict) -> str | None:
    fields = dict(part.split("=", 1) for part in (row.get("device") or "").split()[1:] if "=" in part)
    return fields.get("node")


def hit_a_running_trial(removal: dict, marks: list[dict], rows: list[dict]) -> bool:
    """The removal really interrupted its trial: the trial's process died with the node, the trial started
    again on another node after the removal, and its successful row came from another node."""
    trial = removal["mark"]["config_hash"]
    again = [m for m in marks if m["config_hash"] == trial and m["start"] > removal["removed_at"]
             and m["node"] != removal["node"]]
    ok = [r for r in rows if r["config_hash"] == trial and r["status"] == "ok" and r["reused_from"] is None]
    return removal["process_died"] and bool(again) and len(ok) == 1 and _row_node(ok[0]) not in (None, removal["node"])


def sweep_settings(name: str, tasks: list[str], seeds: list[int], model: str, results: str) -> dict:
    return dict(name=name, tasks=tasks, model=model, seeds=seeds, results=results, stages=["single", "strategies"],
                resources=dict(cpus_per_trial=1), max_failures=10, retries=1)


def start_cluster(work: Path, workers: int):
    """A Ray head of 0 CPUs and ``workers`` nodes of 1 CPU, each a raylet of its own, on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    temp = Path(tempfile.mkdtemp(prefix="frfc-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    (temp / "ray").mkdir()
    os.environ["RAY_TMPDIR"] = str(temp)  # Cluster's address file, in this run's folder, not /tmp/ray
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, node_ip_address="127.0.0.1",
                                                                 include_dashboard=False, temp_dir=str(temp)))
    for _ in range(workers):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    return cluster, temp


def run_faults(args, cluster, drivers: list[Driver], marks: Marks, rng: random.Random) -> tuple[list, list[str]]:
    """The faults, in a seeded random order at seeded random moments; returns the removals and the events."""
    removals, events = [], []
    for kind in rng.sample(["remove"] * args.removals + ["kill"] * args.kills, args.removals + args.kills):
        time.sleep(rng.uniform(args.gap / 2, args.gap * 1.5))
        alive = [d for d in drivers if d.running()]
        if not alive:
            events.append("both sweeps ended: no more faults")
            break
        if kind == "kill":
            driver = rng.choice(alive)
            driver.kill_and_rerun()
            events.append(f"killed driver {driver.settings['name']}")
        elif (removal := remove_under_a_trial(cluster, marks, args.trial_seconds, rng)) is not None:
            removals.append(removal)
            events.append(f"removed node {removal['node'][:8]} under trial {removal['mark']['config_hash'][:10]}")
        else:
            events.append("no node ran a trial for 120 s: no removal")
        print(f"{time.strftime('%H:%M:%S')} {events[-1]}", flush=True)
    return removals, events


def rerun(settings: dict, log: Path, env: dict) -> tuple[int | None, bool]:
    """The same sweep once more: its status and whether it found nothing to run."""
    driver = Driver(settings, log, env)
    status = driver.finish(HANG_S)
    return status, f"sweep '{settings['name']}' is complete" in log.read_text().rsplit("=== driver started", 1)[-1]


def audit(sweeps: list[dict], references: dict, rows: list[dict]) -> dict:
    counts = Counter()
    for settings in sweeps:
        mine = [r for r in rows if r["sweep"] == settings["name"]]
        expected = Counter(report_key(r) for r in references[settings["name"]] if r["status"] == "ok")
        found = Counter(report_key(r) for r in mine if r["status"] == "ok")
        counts["expected"] += sum(expected.values())
        counts["found"] += sum(found.values())
        counts["duplicated"] += sum(n - 1 for n in found.values() if n > 1)
        counts["lost"] += sum(1 for key in expected if key not in found)
        counts["unexpected"] += sum(1 for key in found if key not in expected)
        counts["failed rows"] += sum(1 for r in mine if r["status"] != "ok")
        counts["trained"] += sum(1 for r in mine if r["status"] == "ok" and r["reused_from"] is None)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--removals", type=int, default=10, help="worker nodes removed, each under a running trial")
    parser.add_argument("--kills", type=int, default=5, help="drivers killed (SIGKILL of the group) and rerun")
    parser.add_argument("--seed", type=int, default=0, help="seed of the faults' order, moments and victims")
    parser.add_argument("--seeds", type=int, default=3, help="sweep seeds per sweep (each: 2 tasks, 28 trained runs)")
    parser.add_argument("--workers", type=int, default=3, help="worker nodes of 1 CPU")
    parser.add_argument("--trial-seconds", type=float, default=3.0, help="how long a simulated trial sleeps")
    parser.add_argument("--gap", type=float, default=10.0, help="mean seconds between two faults")
    parser.add_argument("--out", help="work folder (default: a new temp folder)")
    args = parser.parse_args()

    from frugalray.results.store import ResultsStore

    started = time.monotonic()
    rng = random.Random(args.seed)
    work = Path(args.out or tempfile.mkdtemp(prefix="frugalray-faults-cluster-"))
    (work / "marks").mkdir(parents=True, exist_ok=True)
    model = fault_model(work)
    # What the S3 server's clients, Ray's nodes (and so the trials) and the drivers inherit.
    os.environ.update({"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                       "FRUGALRAY_SIMULATED_SECONDS": str(args.trial_seconds), "FRUGALRAY_SIMULATED_MARKS": str(work / "marks"),
                       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    s3 = S3Server(work / "s3.log")
    cluster, ray_temp = start_cluster(work, args.workers)
    env = os.environ | {"RAY_ADDRESS": cluster.address, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # join, on loopback
    store = s3.uri("store")
    sweeps = [sweep_settings("faults-a", ["demo_pos", "demo_ner"], list(range(args.seeds)), model, store),
              sweep_settings("faults-b", [str(ROOT / "tests/fixtures/ner_task.json"), "demo_pos"],
                             list(range(100, 100 + args.seeds)), model, store)]
    try:
        drivers = [Driver(settings, work / f"{settings['name']}.log", env) for settings in sweeps]  # both at once
        removals, events = run_faults(args, cluster, drivers, Marks(work / "marks"), rng)
        last_fault = time.monotonic()
        for driver in drivers:  # each keeps its exit status (None: hung)
            driver.finish(HANG_S - (time.monotonic() - last_fault))
        reruns = [rerun(settings, work / f"{settings['name']}.log", env) for settings in sweeps]
    finally:
        cluster.shutdown()  # this run's nodes, nothing else
        shutil.rmtree(ray_temp, ignore_errors=True)
    rows = ResultsStore(store).table().to_pylist()
    s3.stop()
    for name in ("FRUGALRAY_SIMULATED_MARKS", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    references = {s["name"]: reference_rows(s | {"results": str(work / f"reference-{s['name']}")}) for s in sweeps}
    marks = Marks(work / "marks").read()
    counts = audit(sweeps, references, rows)
    hits = sum(hit_a_running_trial(r, marks, rows) for r in removals)
    started_twice = sum(1 for n in Counter(m["config_hash"] for m in marks).values() if n > 1)
    hung = sum(1 for d in drivers for s in d.statuses if s is None) + sum(1 for s, _ in reruns if s is None)
    failed = sum(1 for d in drivers for s in d.statuses if s not in (0, None)) + sum(1 for s, _ in reruns if s not in (0, None))
    print(table(args, sweeps, counts, removals, hits, drivers, started_twice, hung, failed, reruns,
                time.monotonic() - started))
    print(f"\nwork folder {work}; events: {'; '.join(events)}")
    bad = counts["lost"] or counts["duplicated"] or counts["unexpected"] or hung or failed or hits < len(removals)
    return 1 if bad else 0


def table(args, sweeps, counts, removals, hits, drivers, started_twice, hung, failed, reruns, wall) -> str:
    kills = {d.settings["name"]: d.kills for d in drivers}
    lines = [
        "| | |", "|---|---|",
        f"| cluster | Ray head (0 CPUs) + {args.workers} worker nodes of 1 CPU, each its own raylet on 127.0.0.1 "
        f"(`ray.cluster_utils.Cluster`); results on a local S3 server (moto), one store for both sweeps |",
        f"| sweeps | two at once: `faults-a` (demo_pos, demo_ner) and `faults-b` (tests' NER task file, demo_pos), "
        f"{args.seeds} seeds each, stages single + strategies, simulated trials of {args.trial_seconds:g} s: "
        f"{counts['trained']} trained runs, {counts['expected']} rows |",
        f"| nodes removed | {len(removals)} of {args.removals}, each while it ran a trial; checked afterwards: "
        f"{hits} of {len(removals)} trials died with their node, started again on another node and have their "
        f"row from it; a node added back after each |",
        f"| drivers killed | {sum(kills.values())} of {args.kills} (SIGKILL of the process group, then the same "
        f"command again): " + ", ".join(f"{name} {n}" for name, n in kills.items()) + " |",
        f"| trials retried | {started_twice} started more than once |",
        f"| rows expected | {counts['expected']} |",
        f"| rows found | {counts['found']} successful ({counts['failed rows']} failed rows too) |",
        f"| duplicated | {counts['duplicated']} |",
        f"| lost | {counts['lost']} |",
        f"| unexpected | {counts['unexpected']} |",
        f"| drivers hung / failed | {hung} / {failed} |",
        "| rerun after the faults | " + ", ".join(
            f"{s['name']}: {'nothing to run' if done else 'had work'}" for s, (_, done) in zip(sweeps, reruns)) + " |",
        f"| wall time | {wall:.0f} s |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
