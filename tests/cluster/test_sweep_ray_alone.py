"""Sweeps that need a Ray of their own: one fake GPU shared by quarter-GPU trials, a multi-node test cluster
losing a node, workers that die, a node whose data differs, a killed driver resumed, and which Ray a sweep
joins (another Ray on the machine, RAY_ADDRESS, token authentication).

Each test starts (and stops) its own Ray or driver process: their workers are changed by the test runners they
import (``tests/worker_dies_after_appending.py``, ``tests/node_with_other_data.py``), started with settings
of their own, or are other processes. Trials use the simulated runner of ``frugalray.testing``.
"""

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from frugalray import ResultsStore, load_task
from frugalray.study.plan import StudyPlan, SweepConfig
from frugalray.cluster.session import start_local_ray
from frugalray.config import ResourceRule
from frugalray.cluster.runs import run_sweep
from tests.cluster.sweeps import RAY_CLI, ROOT, device_fields, max_overlap, short_temp_dir, sweep_config, wait_for

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow  # a Ray (or a driver process) started per test


def _test_runners(monkeypatch, marks: Path, **settings) -> None:
    """Workers import ``tests.runners`` and find its settings (and the folder for marks) in the environment."""
    marks.mkdir()
    for name, value in {"FRUGALRAY_TEST_MARKS": str(marks), **settings}.items():
        monkeypatch.setenv(name, str(value))  # workers inherit the environment at start
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def test_four_quarter_gpu_trials_share_one_gpu(tmp_path, tiny_model, monkeypatch):
    # The first four trials wait for one another (tests/runners.py), whatever the load: if a quarter of the
    # GPU each lets four run at once, they do.
    _test_runners(monkeypatch, tmp_path / "marks", FRUGALRAY_TEST_TOGETHER=4, FRUGALRAY_TEST_PATIENCE_S=120,
                  FRUGALRAY_SIMULATED_SECONDS=0.2)
    start_local_ray(num_cpus=2, num_gpus=1)
    try:
        rule = ResourceRule(gpus=True, cpus_per_trial=0.25, fixed_fraction=0.25)
        run_sweep(sweep_config(tmp_path, tiny_model, resources=rule), runner="tests.runners:side_by_side")
    finally:
        ray.shutdown()
    rows = ResultsStore(tmp_path / "r").table().to_pylist()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    by_gpu = {}
    for row in rows:
        gpus, _, start, end = device_fields(row)
        assert len(gpus.split(",")) == 1  # a fraction lives on one GPU
        by_gpu.setdefault(gpus, []).append((start, end))
        assert row["device"].endswith(" share=0.25")  # the trial caps its GPU memory at the quarter it was granted
        assert (row["gpu_share"], row["gpu_ids"], row["cpus"]) == (0.25, ["0"], 0.25)  # the row says so too
    assert list(by_gpu) == ["0"]  # one (fake) GPU: every trial got a quarter of it
    assert max_overlap(by_gpu["0"]) == 4  # four at once, the fifth waited for a free quarter


class _Background(threading.Thread):
    """A function run beside the test; ``outcome()`` returns its result or raises its error in the test."""

    def __init__(self, function):
        super().__init__(daemon=True)
        self.function, self.result, self.error = function, None, None

    def run(self):
        try:
            self.result = self.function()
        except BaseException as error:  # handed to the test by outcome()
            self.error = error

    def outcome(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), f"{self.function.__name__} did not end within {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result


def test_trials_spread_over_nodes_and_survive_a_lost_node(tmp_path, tiny_model, monkeypatch):
    from ray.cluster_utils import Cluster

    from frugalray.testing import trial_marks

    starts = tmp_path / "starts"
    starts.mkdir()
    # A sweep lets its trials wait for resources together (``driver._tune_settings``): the second trial goes to
    # the other node while the first runs, instead of waiting for the first one's worker.
    _test_runners(monkeypatch, tmp_path / "marks", FRUGALRAY_SIMULATED_SECONDS=0.3, FRUGALRAY_SIMULATED_MARKS=starts,
                  FRUGALRAY_TEST_PATIENCE_S=240)
    temp = short_temp_dir()
    # Cluster records its address in $RAY_TMPDIR/ray/ray_current_cluster (else /tmp/ray, shared by every
    # Ray of the machine, and absent on a fresh one): keep it in this test's own folder.
    os.makedirs(os.path.join(temp, "ray"))
    monkeypatch.setenv("RAY_TMPDIR", temp)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, node_ip_address="127.0.0.1",
                                                                 include_dashboard=False, temp_dir=temp))
    try:
        survivor, victim = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        cluster.wait_for_nodes()
        assert os.path.isfile(os.path.join(temp, "ray", "ray_current_cluster"))
        # ray.init rewrites 127.0.0.1 to the machine's interface address; this cluster listens on loopback only.
        monkeypatch.setattr("ray._private.services.resolve_ip_for_localhost", lambda host: host)
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1")
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        # The first trial on the victim runs until its node is removed under it (tests/runners.py).
        (tmp_path / "marks" / "hold_node").write_text(victim.node_id)
        store = ResultsStore(tmp_path / "r")

        def remove_the_victim_under_its_trial() -> dict:
            [held] = wait_for(lambda: [m for m in trial_marks(starts) if m["node"] == victim.node_id],
                              "a trial to start on the victim node", timeout=240)
            assert store.trained_row(held["config_hash"]) is None  # it runs: no row yet
            assert psutil.pid_exists(held["pid"])
            cluster.remove_node(victim, allow_graceful=False)
            return held

        remover = _Background(remove_the_victim_under_its_trial)
        remover.start()
        run_sweep(sweep_config(tmp_path, tiny_model, seeds=(0, 1, 2), max_failures=3),
                  runner="tests.runners:held_on_a_node")
        held = remover.outcome(timeout=60)

        # The node is dead for Ray, and the trial's worker process died with it.
        wait_for(lambda: [n for n in ray.nodes() if n["NodeID"] == victim.node_id and not n["Alive"]],
                 "Ray to see the removed node dead", timeout=120)
        assert {n["NodeID"] for n in ray.nodes() if n["Alive"]} == {cluster.head_node.node_id, survivor.node_id}
        assert not psutil.pid_exists(held["pid"])
        rows = store.table().to_pylist()
        assert len(rows) == 15 and all(r["status"] == "ok" for r in rows)
        assert len({r["config_hash"] for r in rows}) == 15
        # Every trial started once, but the one on the removed node: twice, the second time on the survivor,
        # whose row is the trial's only row.
        started = Counter(m["config_hash"] for m in trial_marks(starts))
        assert {h: n for h, n in started.items() if n != 1} == {held["config_hash"]: 2} and len(started) == 15
        [again] = [m for m in trial_marks(starts) if m["config_hash"] == held["config_hash"] and m["start"] > held["start"]]
        assert again["node"] == survivor.node_id
        [row] = [r for r in rows if r["config_hash"] == held["config_hash"]]
        assert device_fields(row)[1] == survivor.node_id
        assert {m["node"] for m in trial_marks(starts)} == {survivor.node_id, victim.node_id}  # spread over both
    finally:
        ray.shutdown()
        cluster.shutdown()  # the nodes this test started, nothing else
        shutil.rmtree(temp, ignore_errors=True)


DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from frugalray.study.plan import SweepConfig
    from frugalray.config import ResourceRule
    from frugalray.cluster.session import start_local_ray
    from frugalray.cluster.runs import run_sweep
    model, results, ray_dir_file = sys.argv[1:4]
    Path(ray_dir_file).write_text(start_local_ray(num_cpus=2, num_gpus=0))
    sweep = SweepConfig(name="t", tasks=("demo_pos", "demo_ner"), model=model, seeds=(0,), results=results,
                        drop_middle=(2,), drop_ends=(2,), best=(2,), drop_worst=(1,), stages=("single", "strategies"),
                        resources=ResourceRule(cpus_per_trial=1))
    run_sweep(sweep, runner="frugalray.testing:simulated_trial")
""")


def test_killing_the_driver_and_rerunning_resumes_exactly(tmp_path, tiny_model):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    results = str(tmp_path / "r")
    env = os.environ | {"FRUGALRAY_SIMULATED_SECONDS": "0.5", "RAY_AUTH_MODE": "disabled"}
    command = [sys.executable, str(script), tiny_model, results, str(tmp_path / "ray_dir")]
    driver = subprocess.Popen(command, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ResultsStore(results)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(store.files()) < 6:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, nothing else
    driver.wait()
    shutil.rmtree((tmp_path / "ray_dir").read_text(), ignore_errors=True)  # a killed driver leaves it behind
    interrupted = len(store.files())
    assert 6 <= interrupted

    finished = subprocess.run(command, env=env, start_new_session=True, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = store.table().to_pylist()

    # The same sweep run start to end without interruption, in-process, gives the expected rows.
    expected_store = ResultsStore(tmp_path / "expected")
    sweep = SweepConfig(name="t", tasks=("demo_pos", "demo_ner"), model=tiny_model, seeds=(0,),
                        results=str(tmp_path / "expected"), drop_middle=(2,), drop_ends=(2,), best=(2,),
                        drop_worst=(1,), stages=("single", "strategies"))
    from tests.study.test_plan import _run

    os.environ["FRUGALRAY_SIMULATED_SECONDS"] = "0"
    try:
        _run(StudyPlan(sweep, expected_store))
    finally:
        del os.environ["FRUGALRAY_SIMULATED_SECONDS"]
    key = lambda r: (r["config_hash"], r["strategy"], r["strategy_n"], r["stage"], r["status"])
    assert Counter(map(key, rows)) == Counter(map(key, expected_store.table().to_pylist()))
    trained = [r["config_hash"] for r in rows if r["reused_from"] is None]
    assert len(trained) == len(set(trained))  # nothing trained twice


def test_a_worker_lost_after_appending_its_row_is_retried_without_a_second_row(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("FRUGALRAY_TEST_MARKS", str(tmp_path))  # read by workers (tests/worker_dies_after_appending.py)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
    start_local_ray(num_cpus=2, num_gpus=0)
    try:
        run_sweep(sweep_config(tmp_path, tiny_model), runner="tests.worker_dies_after_appending:simulated_trial")
    finally:
        ray.shutdown()
    assert (tmp_path / "died").exists()  # a worker did die between its append and its report
    rows = ResultsStore(tmp_path / "r").table().to_pylist()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    assert len({r["config_hash"] for r in rows}) == 5  # the retry found the row; nothing was trained twice


def test_a_trial_whose_worker_dies_every_time_is_recorded_lost_and_the_sweep_finishes(tmp_path, tiny_model,
                                                                                     monkeypatch):
    marks = tmp_path / "marks"
    _test_runners(monkeypatch, marks, FRUGALRAY_SIMULATED_SECONDS=0)
    start_local_ray(num_cpus=2, num_gpus=0)
    try:
        sweep = sweep_config(tmp_path, tiny_model, max_failures=1, retries=1, resources=ResourceRule(cpus_per_trial=1))
        finishing = _Background(lambda: run_sweep(sweep, runner="tests.runners:dies_keeping_layer_1"))
        finishing.start()
        finishing.outcome(timeout=300)  # the sweep ends: it does not wait for the lost trial
    finally:
        ray.shutdown()
    died = sorted(marks.glob("died-*"))
    assert len(died) == 2  # its first run and max_failures=1 reschedule, each killing its worker process
    rows = ResultsStore(tmp_path / "r").table().to_pylist()
    assert len(rows) == 5 and len({r["config_hash"] for r in rows}) == 5
    [lost] = [r for r in rows if r["status"] != "ok"]
    assert (lost["status"], lost["error_kind"], lost["kept_layers"]) == ("failed", "lost", [1])
    assert (lost["n_kept_layers"], lost["task_fingerprint"]) == (1, load_task("demo_pos").fingerprint)  # as planned
    assert lost["error"] == "trial process died (worker or node lost) more often than max_failures allows"
    assert lost["f1"] is None and lost["trial_id"].startswith(f"{lost['config_hash']}-lost-")
    assert sorted(tuple(r["kept_layers"]) for r in rows if r["status"] == "ok") == [(0,), (0, 1, 2, 3), (2,), (3,)]


# -- which Ray a sweep runs on -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _stop(processes: list[psutil.Process]) -> None:
    """Kill these processes and their children (Ray's workers), nothing else."""
    tree = []
    for process in processes:
        try:
            tree += [process] + process.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for process in tree:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


@pytest.fixture(scope="module")
def foreign_ray():
    """Someone else's Ray on this machine: `ray start --head` on loopback, in a temp dir and port of its own."""
    temp, port = short_temp_dir(), _free_port()
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run([RAY_CLI, "start", "--head", f"--port={port}", f"--temp-dir={temp}",
                              "--node-ip-address=127.0.0.1", "--num-cpus=1", "--include-dashboard=false",
                              "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=120)
    ours = [p for p in psutil.process_iter(["cmdline"]) if any(temp in arg for arg in p.info["cmdline"] or [])]
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        [raylet] = [p for p in ours if p.name() == "raylet"]
        [node_id] = [arg.split("=", 1)[1] for arg in raylet.cmdline() if arg.startswith("--node_id=")]
        yield {"address": f"127.0.0.1:{port}", "node_id": node_id, "logs": Path(temp, "session_latest", "logs")}
    finally:
        _stop(ours)  # never `ray stop`: it stops every Ray of the user
        shutil.rmtree(temp, ignore_errors=True)


REPORTING_DRIVER = textwrap.dedent("""
    import json, os, sys
    import ray
    from frugalray.cli import sweep_main
    model, results, report = sys.argv[1:4]
    sweep = dict(name="t", tasks=["demo_pos"], model=model, seeds=[0], results=results, stages=["single"])
    sweep_main(sweep, argv=[], runner="frugalray.testing:simulated_trial")  # as a sweep file runs
    context = ray.get_runtime_context()
    with open(report + ".part", "w") as out:
        json.dump({"gcs_address": context.gcs_address, "nodes": [n["NodeID"] for n in ray.nodes()]}, out)
    os.rename(report + ".part", report)
    sys.stdin.read()  # keep this Ray up while the test looks at it
""")


class _Driver:
    """A sweep driver process, up (with the Ray it found or started) until the ``with`` block ends."""

    def __init__(self, tmp_path, tiny_model, env: dict):
        (tmp_path / "driver.py").write_text(REPORTING_DRIVER)
        self.results, self.report, self.log = tmp_path / "r", tmp_path / "report.json", tmp_path / "driver.log"
        env = env | {"FRUGALRAY_SIMULATED_SECONDS": "0", "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, str(tmp_path / "driver.py"), tiny_model, str(self.results), str(self.report)],
            env=env, stdin=subprocess.PIPE, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def __enter__(self):
        deadline = time.monotonic() + 240
        while not self.report.exists() and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if not self.report.exists():
            self.__exit__()
            pytest.fail(f"the sweep driver did not finish its sweep:\n{self.log.read_text()[-3000:]}")
        self.found = json.loads(self.report.read_text())
        self.rows = ResultsStore(self.results).table().to_pylist()
        self.trial_nodes = {device_fields(row)[1] for row in self.rows}
        self.processes = [psutil.Process(self.process.pid)] + psutil.Process(self.process.pid).children(recursive=True)
        return self

    def __exit__(self, *exc):
        self.process.stdin.close()  # the driver ends, and the Ray it started with it
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _stop([psutil.Process(self.process.pid)])

    def started(self, name: str) -> bool:
        return any(p.name() == name for p in self.processes)


def _env(**values) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return env | values


def test_without_ray_address_a_sweep_never_joins_another_ray_on_the_machine(tmp_path, tiny_model, foreign_ray):
    # As on macOS, Ray keeps loopback addresses here: joining "any Ray on this machine" would find the other.
    env = _env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    with _Driver(tmp_path, tiny_model, env) as driver:
        assert driver.started("gcs_server") and driver.started("raylet")  # a Ray of its own
        assert driver.found["gcs_address"] != foreign_ray["address"]
        assert foreign_ray["node_id"] not in driver.found["nodes"]
        assert len(driver.rows) == 5 and all(r["status"] == "ok" for r in driver.rows)
        assert driver.trial_nodes <= set(driver.found["nodes"])
    assert not list(foreign_ray["logs"].glob(f"*_{driver.process.pid}.log"))  # no job of it on the other Ray


def test_with_ray_address_a_sweep_joins_that_ray(tmp_path, tiny_model, foreign_ray):
    env = _env(RAY_ADDRESS=foreign_ray["address"], RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    with _Driver(tmp_path, tiny_model, env) as driver:
        assert not driver.started("gcs_server") and not driver.started("raylet")
        assert driver.found == {"gcs_address": foreign_ray["address"], "nodes": [foreign_ray["node_id"]]}
        assert len(driver.rows) == 5 and all(r["status"] == "ok" for r in driver.rows)
        assert driver.trial_nodes == {foreign_ray["node_id"]}
    assert list(foreign_ray["logs"].glob(f"python-core-driver-*_{driver.process.pid}.log"))


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_a_local_sweep_ray_listens_on_loopback_only_with_token_auth_on(tmp_path, tiny_model):
    home = tmp_path / "home"  # Ray keeps the token it makes in ~/.ray/auth_token
    home.mkdir()
    with _Driver(tmp_path, tiny_model, _env(HOME=str(home))) as driver:  # no RAY_AUTH_MODE: Ray's default
        assert len(driver.rows) == 5 and all(r["status"] == "ok" for r in driver.rows)
        listening = {(name, c.laddr.ip, c.laddr.port) for name, connections in map(_tcp, driver.processes)
                     for c in connections if c.status == psutil.CONN_LISTEN}
        assert {name for name, _, _ in listening} >= {"gcs_server", "raylet"}
        assert [entry for entry in listening if not _loopback(entry[1])] == []
        [gcs] = [p for p in driver.processes if _tcp(p)[0] == "gcs_server"]
        assert gcs.environ().get("RAY_AUTH_MODE") == "token"
        assert (home / ".ray" / "auth_token").read_text().strip()


def _tcp(process) -> tuple[str, list]:
    """A process's name and TCP sockets; none for a short-lived worker that exited meanwhile."""
    try:
        return process.name(), process.net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return "", []


def test_a_node_with_other_data_fails_its_trials_at_once_and_the_sweep_ends(tmp_path, tiny_model, data_dir,
                                                                         monkeypatch):
    node_copy = tmp_path / "node_copy"
    shutil.copytree(data_dir, node_copy)
    train = node_copy / "ner_train.conll"
    train.write_text(train.read_text().replace("habite", "vit", 1))  # one word differs on that node
    task = str(data_dir / "ner_task.json")
    driver_data, node_data = load_task(task).fingerprint, load_task(task, str(node_copy)).fingerprint
    assert driver_data != node_data
    monkeypatch.setenv("FRUGALRAY_TEST_NODE_DATA", str(node_copy))  # read by workers (tests/node_with_other_data.py)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
    start_local_ray(num_cpus=2, num_gpus=0)
    try:
        node = f"Node {ray.get_runtime_context().get_node_id()} ({socket.gethostname()})"
        sweep = sweep_config(tmp_path, tiny_model, tasks=(task,))
        runner = "tests.node_with_other_data:simulated_trial"
        sweeping = threading.Thread(target=run_sweep, args=(sweep,), kwargs={"runner": runner}, daemon=True)
        sweeping.start()
        sweeping.join(timeout=180)
        assert not sweeping.is_alive(), "the sweep waits for trials that ran under another configuration"
    finally:
        ray.shutdown()
    plan = StudyPlan(sweep, ResultsStore(tmp_path / "r"))
    plan.expand()
    rows = ResultsStore(tmp_path / "r").table().to_pylist()
    assert sorted(r["config_hash"] for r in rows) == sorted(p.config_hash for p in plan.queue)  # each planned trial
    for row in rows:
        assert row["status"] == "failed" and row["f1"] is None and row["device"] is None  # nothing trained
        assert row["error"].startswith(  # an input error: not retried
            f"failed 1 attempt(s); last: FrugalrayError: {node} reads task 'tiny_ner' as data {node_data}, "
            f"but the driver planned this trial on data {driver_data}")
