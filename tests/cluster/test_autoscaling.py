"""A GPU sweep on Ray's autoscaling simulator (the fake_multinode provider: the real autoscaler launches worker
raylets on this machine, with the resources their node type declares, fake GPUs included).

The head has no GPU; two GPU worker types start at zero, as in cluster.yaml: A10G cards (24 GiB) and H100 cards
(80 GiB), each declaring its card (``accelerator_type:<MODEL>``) and its memory (``gpu_memory_gib:<N>``). The
sweep's trials must make the autoscaler start GPU workers, each run on one with a share sized for its card, and
say so in their rows; a worker removed under a running trial has that trial run again on another node.
Everything listens on 127.0.0.1; the test stops only the processes it started, by PID.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter

import pytest

from frugalray import ResultsStore
from frugalray.config import ResourceRule
from tests.cluster.sweeps import RAY_CLI, ROOT, short_temp_dir, sweep_config, wait_for

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")
pytestmark = pytest.mark.slow

CARDS = {"A10G": 24, "H100": 80}


def _config(port: int) -> dict:
    def gpu_worker(card: str, most: int) -> dict:
        resources = {"CPU": 1, "GPU": 1, f"accelerator_type:{card}": 1, f"gpu_memory_gib:{CARDS[card]}": 1}
        return {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": most}

    return {
        "cluster_name": "frugalray-test", "max_workers": 3,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 2, "GPU": 0}, "node_config": {}, "max_workers": 0},
            "gpu_a10g": gpu_worker("A10G", 2), "gpu_h100": gpu_worker("H100", 1)},
        "head_node_type": "ray.head.default",  # the name the fake provider gives its head
        "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": []}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _started_by(temp: str) -> list:
    """Every process whose command line names ``temp`` (the head's gcs_server, raylet, monitor...) and their
    descendants (the simulated worker nodes, children of the autoscaler's monitor)."""
    found = {}
    for process in psutil.process_iter(["cmdline"]):
        if any(temp in part for part in process.info["cmdline"] or []):
            for member in [process, *process.children(recursive=True)]:
                found[member.pid] = member
    return list(found.values())


def _kill(processes) -> None:
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


@pytest.fixture
def simulated_cluster(tmp_path, monkeypatch):
    """The head of an autoscaling cluster (no GPU), started here; yields (address, launcher config path, marks)."""
    port, temp = _free_port(), short_temp_dir()
    config = tmp_path / "cluster.json"
    config.write_text(json.dumps(_config(port)))
    marks, starts = tmp_path / "marks", tmp_path / "starts"
    marks.mkdir()
    starts.mkdir()
    loopback = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
    for name, value in loopback.items():
        monkeypatch.setenv(name, value)
    # The worker nodes inherit the head's environment: the simulated trials' settings and tests.runners.
    environment = dict(os.environ, **loopback, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
                       FRUGALRAY_SIMULATED_SECONDS="0.3", FRUGALRAY_SIMULATED_MARKS=str(starts),
                       FRUGALRAY_TEST_MARKS=str(marks), FRUGALRAY_TEST_HOLD_CARD="A10G",
                       FRUGALRAY_TEST_PATIENCE_S="240", HF_HUB_OFFLINE="1",
                       PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    command = [RAY_CLI or sys.executable, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
               f"--autoscaling-config={config}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
               f"--temp-dir={temp}", "--disable-usage-stats"]
    try:
        subprocess.run(command, env=environment, check=True, capture_output=True, timeout=180)
        yield f"127.0.0.1:{port}", config, marks, starts, temp
    finally:
        ray.shutdown()
        _kill(_started_by(temp))


def test_a_gpu_sweep_makes_the_autoscaler_start_gpu_workers_and_runs_every_trial_on_one(simulated_cluster, tmp_path,
                                                                                       tiny_model, monkeypatch):
    import threading

    from frugalray.cluster.runs import run_sweep
    from frugalray.testing import trial_marks

    address, config, marks, starts, temp = simulated_cluster
    # ray.init rewrites 127.0.0.1 to the machine's interface address (Ray read its loopback setting at import).
    monkeypatch.setattr("ray._private.services.resolve_ip_for_localhost", lambda host: host)
    ray.init(address=address, _node_ip_address="127.0.0.1")
    [head] = [n for n in ray.nodes() if n["Alive"]]  # only the head, with no GPU, when the sweep starts
    assert head["Resources"].get("GPU", 0) == 0
    rule = ResourceRule(gpus=True, cpus_per_trial=1, min_fraction=0.001, step=0.001, autoscaling_config=str(config))
    sweep = sweep_config(tmp_path, tiny_model, resources=rule, max_failures=3)
    store = ResultsStore(sweep.results)
    removed = {}

    def remove_the_node_under_the_held_trial():
        def held_mark():
            named = (marks / "held").read_text() if (marks / "held").exists() else ""
            return [m for m in trial_marks(starts) if named and m["config_hash"] == named]

        [held] = wait_for(held_mark, "a trial held on an A10G worker", timeout=300, poll_s=0.5)
        raylet = psutil.Process(held["pid"]).parent()
        assert "raylet" in raylet.name()
        assert store.trained_row(held["config_hash"]) is None  # it runs: no row yet
        _kill([*raylet.children(recursive=True), raylet])  # the node dies under its trial
        removed.update(held)

    remover = threading.Thread(target=remove_the_node_under_the_held_trial, daemon=True)
    remover.start()
    run_sweep(sweep, runner="tests.runners:held_once_on_card")  # returns once every trial has its row
    remover.join(timeout=60)
    assert removed, "no trial was held on an A10G worker"

    rows = store.table().to_pylist()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    needed = {}  # GiB each layer set asks for: a share of an A10G and of an H100 hold the same memory
    for row in rows:
        card = row["accelerator_type"]
        assert card in CARDS and row["gpu_memory_gib"] == CARDS[card]  # placed for a GPU card
        assert row["node_id"] != head["NodeID"]  # never on the head
        assert row["gpu_ids"] and 0 < row["gpu_share"] < 0.1 and row["cpus"] == 1
        assert row["node_type"] == {"A10G": "gpu_a10g", "H100": "gpu_h100"}[card]
        assert row["device"].startswith(f"simulated gpus={row['gpu_ids'][0]} ")  # what the trial itself saw
        needed.setdefault(tuple(row["kept_layers"]), []).append((card, row["gpu_share"]))
    assert {r["accelerator_type"] for r in rows} == set(CARDS)  # both worker types started and used
    # A one-layer trial needs the same memory on either card: its share times the card's memory agrees.
    memory = {card: share * CARDS[card] for kept, pairs in needed.items() if len(kept) == 1 for card, share in pairs}
    assert memory["A10G"] == pytest.approx(memory["H100"], rel=0.05)
    by_card = {card: [s for pairs in needed.values() for c, s in pairs if c == card] for card in CARDS}
    assert min(by_card["A10G"]) > max(by_card["H100"])  # a 24 GiB card gives a larger share of itself
    # The trial held on the removed node started twice, the second time on another node (an A10G worker the
    # autoscaler started in its place), whose row is the trial's only row.
    started = Counter(m["config_hash"] for m in trial_marks(starts))
    assert {h: n for h, n in started.items() if n != 1} == {removed["config_hash"]: 2}
    [row] = [r for r in rows if r["config_hash"] == removed["config_hash"]]
    assert row["node_id"] != removed["node"] and row["accelerator_type"] == "A10G"
    assert not [n for n in ray.nodes() if n["NodeID"] == removed["node"] and n["Alive"]]
