"""Sweeps on a real (local) Ray: fake GPUs for packing, a multi-node test cluster, driver kill and resume.

Trials use the simulated runner of ``frugalray.testing``: scheduling is what is under test here.
"""

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from frugalray import FrugalrayError, ResultsStore, load_task
from frugalray.study.plan import StudyPlan, SweepConfig
from frugalray.cluster.session import start_local_ray
from frugalray.config import ResourceRule
from frugalray.cluster.runs import run_sweep

ray = pytest.importorskip("ray")
RUNNER = "frugalray.testing:simulated_trial"
ROOT = Path(__file__).resolve().parents[2]
RAY_CLI = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")


def _temp_dir() -> str:
    return tempfile.mkdtemp(prefix="fr-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars


def _sweep(tmp_path, tiny_model, **values):
    defaults = dict(name="t", tasks=("demo_pos",), model=tiny_model, seeds=(0,), results=str(tmp_path / "r"),
                    stages=("single",))
    return SweepConfig(**(defaults | values))


def _device_fields(row):
    fields = dict(part.split("=", 1) for part in row["device"].split()[1:])
    return fields["gpus"], fields["node"], float(fields["start"]), float(fields["end"])


def _max_overlap(intervals):
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    running = best = 0
    for _, step in events:
        running += step
        best = max(best, running)
    return best


@pytest.fixture
def local_ray(monkeypatch):
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0.5")  # workers inherit the environment at start
    start_local_ray(num_cpus=2, num_gpus=4)
    yield
    ray.shutdown()


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
    rule = ResourceRule(cpus_per_trial=0.25, fixed_fraction=0.25)
    sweep = _sweep(tmp_path, tiny_model, resources=rule)
    run_sweep(sweep, runner="tests.runners:side_by_side")
    rows = ResultsStore(tmp_path / "r").table().to_pylist()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    by_gpu = {}
    for row in rows:
        gpus, _, start, end = _device_fields(row)
        assert len(gpus.split(",")) == 1  # a fraction lives on one GPU
        by_gpu.setdefault(gpus, []).append((start, end))
    ray.shutdown()
    assert list(by_gpu) == ["0"]  # one (fake) GPU: every trial got a quarter of it
    assert _max_overlap(by_gpu["0"]) == 4  # four at once, the fifth waited for a free quarter


def test_gpu_fraction_follows_the_memory_estimate(tmp_path, tiny_model, local_ray):
    from frugalray.cluster.runs import trial_demand

    plan = StudyPlan(_sweep(tmp_path, tiny_model), ResultsStore(tmp_path / "r"))
    plan.expand()
    rule = ResourceRule(gpu_memory_gib=1.0, min_fraction=0.05, step=0.05)
    on_gpus, on_cpus = trial_demand(rule, tiny_model, True), trial_demand(rule, tiny_model, False)
    full, single = plan.queue[0], plan.queue[1]
    assert on_gpus(full)["GPU"] >= on_gpus(single)["GPU"] > 0
    assert "GPU" not in on_cpus(full)


def test_no_node_fits_fails_before_scheduling(tmp_path, tiny_model, local_ray):
    sweep = _sweep(tmp_path, tiny_model, resources=ResourceRule(cpus_per_trial=4))
    with pytest.raises(FrugalrayError, match="No node of the cluster fits a trial"):
        run_sweep(sweep, runner=RUNNER)
    assert ResultsStore(tmp_path / "r").files() == []


def test_failing_trial_is_retried_then_recorded_and_the_sweep_completes(tmp_path, tiny_model, data_dir, local_ray):
    task = tmp_path / "task.json"
    task.write_text('{"name": "tiny_oom", "head": "token", "metric": "ner", "format": "conll", '
                    f'"data_dir": "{data_dir}", "train": "ner_train.conll", "dev": "ner_dev.conll", '
                    '"test": "ner_test.conll"}')
    sweep = _sweep(tmp_path, tiny_model, tasks=(str(task),), retries=1, resources=ResourceRule(cpus_per_trial=0.5),
                   save_models=("single",))
    run_sweep(sweep, runner=RUNNER)
    rows = ResultsStore(tmp_path / "r").table().to_pylist()
    assert Counter(r["status"] for r in rows) == {"ok": 4, "failed": 1}
    [failed] = [r for r in rows if r["status"] == "failed"]
    assert failed["kept_layers"] == [1]
    assert failed["error"].startswith("failed 2 attempt(s); last: RuntimeError: CUDA out of memory")
    # weights of the successful trials were kept, from inside the Ray workers; none for the failed one
    assert failed["model_path"] is None
    for row in (r for r in rows if r["status"] == "ok"):
        saved = tmp_path / "r" / row["model_path"] / "simulated.json"
        assert saved.read_text() == f'{{"kept_layers": {row["kept_layers"]}}}'
    assert sorted(p.name for p in (tmp_path / "r" / "models").iterdir()) == sorted(
        r["trial_id"] for r in rows if r["status"] == "ok")  # no staging folders left behind


def test_unreachable_results_location_fails_first(tmp_path, tiny_model):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FrugalrayError, match="not writable"):
        run_sweep(_sweep(tmp_path, tiny_model, results=str(tmp_path / "file" / "r")), runner=RUNNER)


def test_a_sweep_on_an_s3_store_keeps_rows_and_tunes_files_under_its_prefix(tmp_path, tiny_model, s3_results,
                                                                           local_ray):
    from pyarrow import fs as pafs

    run_sweep(_sweep(tmp_path, tiny_model, results=s3_results), runner=RUNNER)  # s3://BUCKET/results?endpoint...
    store = ResultsStore(s3_results)
    rows = store.table().to_pylist()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    bucket = store.root.split("/")[0]
    tune = store.fs.get_file_info(pafs.FileSelector(f"{bucket}/results/_tune", recursive=True, allow_not_found=True))
    assert [i for i in tune if i.base_name.startswith("experiment_state")]  # Tune's own files, beside the rows
    assert {i.base_name for i in store.fs.get_file_info(pafs.FileSelector(bucket))} == {"results"}


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


def _wait_for(condition, what: str, timeout: float = 240):
    """Poll ``condition()`` until it returns something true (returned); fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout} s for {what}")


def test_trials_spread_over_nodes_and_survive_a_lost_node(tmp_path, tiny_model, monkeypatch):
    from ray.cluster_utils import Cluster

    from frugalray.testing import trial_marks

    starts = tmp_path / "starts"
    starts.mkdir()
    _test_runners(monkeypatch, tmp_path / "marks", FRUGALRAY_SIMULATED_SECONDS=0.3, FRUGALRAY_SIMULATED_MARKS=starts,
                  FRUGALRAY_TEST_PATIENCE_S=240)
    temp = _temp_dir()
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
            [held] = _wait_for(lambda: [m for m in trial_marks(starts) if m["node"] == victim.node_id],
                               "a trial to start on the victim node")
            assert store.trained_row(held["config_hash"]) is None  # it runs: no row yet
            assert psutil.pid_exists(held["pid"])
            cluster.remove_node(victim, allow_graceful=False)
            return held

        remover = _Background(remove_the_victim_under_its_trial)
        remover.start()
        run_sweep(_sweep(tmp_path, tiny_model, seeds=(0, 1, 2), max_failures=3), runner="tests.runners:held_on_a_node")
        held = remover.outcome(timeout=60)

        # The node is dead for Ray, and the trial's worker process died with it.
        _wait_for(lambda: [n for n in ray.nodes() if n["NodeID"] == victim.node_id and not n["Alive"]],
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
        assert _device_fields(row)[1] == survivor.node_id
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
        run_sweep(_sweep(tmp_path, tiny_model), runner="tests.worker_dies_after_appending:simulated_trial")
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
        sweep = _sweep(tmp_path, tiny_model, max_failures=1, retries=1, resources=ResourceRule(cpus_per_trial=1))
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
    temp, port = _temp_dir(), _free_port()
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
        self.trial_nodes = {_device_fields(row)[1] for row in self.rows}
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


def test_tune_prints_no_experiment_box_unless_asked(tmp_path, tiny_model, local_ray, capfd):
    run_sweep(_sweep(tmp_path, tiny_model, results=str(tmp_path / "quiet")), runner=RUNNER)
    quiet = capfd.readouterr().out
    assert "Number of trials" not in quiet and "9223372036854775807" not in quiet
    run_sweep(_sweep(tmp_path, tiny_model, results=str(tmp_path / "verbose"), verbose=1), runner=RUNNER)
    assert "Configuration for experiment" in capfd.readouterr().out  # Tune's output, when asked for


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
        sweep = _sweep(tmp_path, tiny_model, tasks=(task,))
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


class _Terminal(__import__("io").StringIO):
    def isatty(self):
        return True


class _Clock:
    """A monotonic clock that moves only when told: a machine booted a moment ago starts it near 0."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _finish_trials(progress, results, clock=None, trial_s: float = 90.0):
    """Feed a Progress callback trials as Tune would: start them all, then, ``trial_s`` later on ``clock``,
    complete them in order."""
    from types import SimpleNamespace

    from frugalray.results.schema import TrialResult

    trials = [SimpleNamespace(trial_id=f"t{i}", config={"task": task, "stage": "strategies"},
                              last_result={"row_json": TrialResult(status="ok", **row).to_json()})
              for i, (task, row) in enumerate(results)]
    for trial in trials:
        progress.on_trial_start(0, trials, trial)
    if clock is not None:
        clock.now += trial_s
    for trial in trials:
        progress.on_trial_complete(0, trials, trial)
    progress.on_experiment_end(trials)


RESULTS = [("demo_pos", {"strategy": "first", "strategy_n": 2, "dev_f1": 0.61}),
           ("demo_pos", {"strategy": "best", "strategy_n": 3, "dev_f1": 0.83}),
           ("demo_ner", {"strategy": "last", "strategy_n": 1, "dev_f1": 0.42, "lora": True})]


def _counts():
    return {("demo_pos", "strategies"): {"planned": 4, "done": 2, "failed": 0},
            ("demo_ner", "strategies"): {"planned": 2, "done": 1, "failed": 0}}


def test_progress_off_a_terminal_prints_plain_lines_with_eta_and_the_best_per_task():
    from io import StringIO

    from frugalray.cluster.progress import Progress

    stream, clock = StringIO(), _Clock()
    progress = Progress(_counts, every_s=0, stream=stream, clock=clock)
    _finish_trials(progress, RESULTS, clock, trial_s=90)  # three trials side by side, 90 s each: 30 s a trial
    out = stream.getvalue()
    assert "\x1b[" not in out and "━" not in out  # no terminal codes in a log
    last = [line for line in out.splitlines() if line.startswith("[frugalray")][-1]
    assert last.startswith("[frugalray    90s] 3/6 done, 0 running, 0 failed, ETA 1.5 min | ")
    assert "demo_pos 2/4: 0 running, 0 failed, ETA 1.0 min, best dev F1 0.8300 (best_3)" in last
    assert "demo_ner 1/2: 0 running, 0 failed, ETA 0.5 min, best dev F1 0.4200 (last_1 + LoRA)" in last
    assert "  demo_pos         strategies     2/4    done" in out  # the table at the end

    for every_s, lines in ((3600, 2), (60, 3)):  # at most one line per every_s, the first and the last always
        quiet, clock = StringIO(), _Clock()
        _finish_trials(Progress(_counts, every_s=every_s, stream=quiet, clock=clock), RESULTS, clock, trial_s=90)
        assert sum(line.startswith("[frugalray") for line in quiet.getvalue().splitlines()) == lines, every_s


def test_progress_counts_the_trials_tune_holds_running():
    from io import StringIO
    from types import SimpleNamespace

    from frugalray.cluster.progress import Progress

    stream = StringIO()
    progress = Progress(_counts, every_s=0, stream=stream)
    trials = [SimpleNamespace(trial_id=f"t{i}", status=status, config={"task": task, "stage": "strategies"})
              for i, (task, status) in enumerate([("demo_pos", "RUNNING"), ("demo_ner", "RUNNING"),
                                                  ("demo_pos", "TERMINATED"), ("demo_pos", "PENDING")])]
    progress.on_step_end(0, trials)
    last = [line for line in stream.getvalue().splitlines() if line.startswith("[frugalray")][-1]
    assert "3/6 done, 2 running" in last and "demo_pos 2/4: 1 running" in last and "demo_ner 1/2: 1 running" in last


def test_progress_on_a_terminal_is_a_live_bar_per_task():
    from frugalray.cluster.progress import Progress

    stream = _Terminal()
    _finish_trials(Progress(_counts, stream=stream), RESULTS)
    out = stream.getvalue()
    assert "━" in out and "\x1b[" in out  # rich's bar, redrawn in place
    assert "demo_pos" in out and "2/4" in out and "best dev F1 0.8300 (best_3)" in out


def test_a_sweep_shows_its_progress_and_records_its_settings_for_later_readers(tmp_path, tiny_model, local_ray,
                                                                              capsys):
    from io import StringIO

    from frugalray.cli import main
    from frugalray.results.metadata import read_metadata

    stream = StringIO()
    sweep = _sweep(tmp_path, tiny_model, reference_tasks={"demo_pos": "FTB_POS"})
    run_sweep(sweep, runner=RUNNER, stream=stream)
    out = stream.getvalue()
    assert "[frugalray" in out and "\x1b[" not in out  # not a terminal: plain lines
    assert "demo_pos 5/5: 0 running, 0 failed, finished, best dev F1" in out
    metadata = read_metadata(ResultsStore(tmp_path / "r"))
    assert metadata["sweeps"]["t"]["reference_tasks"] == {"demo_pos": "FTB_POS"}
    assert metadata["sweeps"]["t"]["settings"]["stages"] == ["single"]
    # a later reader pairs demo_pos with FTB_POS without being told
    assert main(["results", str(tmp_path / "r"), "--view", "baselines", "--format", "csv"]) == 0
    assert "FTB_POS full, study: 12/12 layers" in capsys.readouterr().out
