"""Sweeps on a real (local) Ray: fake GPUs for packing, a multi-node test cluster, driver kill and resume.

Trials use the simulated runner of ``frugalray.testing``: scheduling is what is under test here.
"""

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter

import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.pipeline import StudyPlan, SweepConfig
from frugalray.resources import ResourceRule
from frugalray.sweep import run_sweep

ray = pytest.importorskip("ray")
RUNNER = "frugalray.testing:simulated_trial"


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
    ray.init(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, _temp_dir=_temp_dir())
    yield
    ray.shutdown()


def test_four_quarter_gpu_trials_share_one_gpu(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "15")  # long enough that four run at once
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, _temp_dir=_temp_dir())
    rule = ResourceRule(cpus_per_trial=0.25, fixed_fraction=0.25)
    sweep = _sweep(tmp_path, tiny_model, resources=rule)
    run_sweep(sweep, runner=RUNNER)
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
    from frugalray.sweep import trial_demand, _model_config_dict

    plan = StudyPlan(_sweep(tmp_path, tiny_model), ResultsStore(tmp_path / "r"))
    plan.expand()
    rule = ResourceRule(gpu_memory_gib=1.0, min_fraction=0.05, step=0.05)
    sweep = _sweep(tmp_path, tiny_model, resources=rule)
    config = _model_config_dict(tiny_model)
    full, single = plan.queue[0], plan.queue[1]
    assert trial_demand(sweep, config, True, full)["GPU"] >= trial_demand(sweep, config, True, single)["GPU"] > 0
    assert "GPU" not in trial_demand(sweep, config, False, full)


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


def test_trials_spread_over_nodes_and_survive_a_lost_node(tmp_path, tiny_model, monkeypatch):
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "1.5")
    temp = _temp_dir()
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, node_ip_address="127.0.0.1",
                                                                 include_dashboard=False, temp_dir=temp))
    try:
        workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        cluster.wait_for_nodes()
        # ray.init rewrites 127.0.0.1 to the machine's interface address; this cluster listens on loopback only.
        monkeypatch.setattr("ray._private.services.resolve_ip_for_localhost", lambda host: host)
        ray.init(address=cluster.address, _node_ip_address="127.0.0.1")
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        sweep = _sweep(tmp_path, tiny_model, seeds=(0, 1, 2), max_failures=3)
        store = ResultsStore(tmp_path / "r")

        def remove_a_worker():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(store.files()) < 3:
                time.sleep(0.2)
            time.sleep(0.5)  # both workers are busy with their next trial
            cluster.remove_node(workers[1], allow_graceful=False)

        killer = threading.Thread(target=remove_a_worker)
        killer.start()
        run_sweep(sweep, runner=RUNNER)
        killer.join()
        rows = store.table().to_pylist()
        assert len(rows) == 15 and all(r["status"] == "ok" for r in rows)
        assert len({r["config_hash"] for r in rows}) == 15
        assert len({_device_fields(r)[1] for r in rows}) == 2  # both worker nodes ran trials
    finally:
        ray.shutdown()
        cluster.shutdown()


DRIVER = textwrap.dedent("""
    import sys
    import ray
    from frugalray.pipeline import SweepConfig
    from frugalray.resources import ResourceRule
    from frugalray.sweep import run_sweep
    model, results, temp = sys.argv[1:4]
    ray.init(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, _temp_dir=temp)
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
    command = [sys.executable, str(script), tiny_model, results]
    driver = subprocess.Popen(command + [_temp_dir()], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = ResultsStore(results)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(store.files()) < 6:
        time.sleep(0.1)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, nothing else
    driver.wait()
    interrupted = len(store.files())
    assert 6 <= interrupted

    finished = subprocess.run(command + [_temp_dir()], env=env, start_new_session=True, capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    rows = store.table().to_pylist()

    # The same sweep run start to end without interruption, in-process, gives the expected rows.
    expected_store = ResultsStore(tmp_path / "expected")
    sweep = SweepConfig(name="t", tasks=("demo_pos", "demo_ner"), model=tiny_model, seeds=(0,),
                        results=str(tmp_path / "expected"), drop_middle=(2,), drop_ends=(2,), best=(2,),
                        drop_worst=(1,), stages=("single", "strategies"))
    from tests.test_pipeline import _run

    os.environ["FRUGALRAY_SIMULATED_SECONDS"] = "0"
    try:
        _run(StudyPlan(sweep, expected_store))
    finally:
        del os.environ["FRUGALRAY_SIMULATED_SECONDS"]
    key = lambda r: (r["config_hash"], r["strategy"], r["strategy_n"], r["stage"], r["status"])
    assert Counter(map(key, rows)) == Counter(map(key, expected_store.table().to_pylist()))
    trained = [r["config_hash"] for r in rows if r["reused_from"] is None]
    assert len(trained) == len(set(trained))  # nothing trained twice
