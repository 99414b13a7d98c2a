"""The user's own commands, end to end: ``ray up``, ``ray submit sweeps/quick.py``, ``ray down``.

The "cluster" is this machine as two hosts on loopback addresses: a head at 127.0.0.2 and a worker at
127.0.0.3 (Ray reads 127.0.0.1 as "this machine" and swaps it for the network address on a node that joins
another), each a private sshd (Debian's openssh-server, a key made here) in a mount namespace of its own
where a folder of the test, its "disk", is mounted at the user's home: what each host writes in ``~`` lands
on its own disk, at the same path, as on two machines of a cluster (the launcher copies
``cluster_synced_files`` from the head's ``~`` to the same path on the worker). A local-provider copy of
``cluster.yaml`` keeps its setup, token and worker commands. Everything stays on loopback, and only the
processes this test started are stopped.
"""

import os
import pwd
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from frugalray import ResultsStore

ROOT = Path(__file__).resolve().parents[2]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the head: keeps Ray on loopback addresses
                 "HF_HUB_OFFLINE": "1"}
# Setup commands left out here: those that need the network (frugalray is installed here already).
INSTALLS = ("venv", "pip install")
BUCKET = "s3://REPLACE_ME_RESULTS_BUCKET"  # cluster.yaml's results bucket: a local folder here (no AWS)


HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
JOINING = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}  # the worker: `ray start --address` refuses to join without it


def _port_free(port: int, host: str = HEAD_IP) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HEAD_IP, 0))
        return probe.getsockname()[1]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
            except OSError:
                pass
    return found


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _own_mounts_allowed() -> bool:
    """Whether this user may run a process in a mount namespace of its own (root, or a privileged container)."""
    return bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True).returncode == 0


USER_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)


def _kept_from_home() -> set[str]:
    """The folders of the user's home that a host still needs once its own disk is mounted there: those that
    hold this Python, its packages and this checkout (e.g. ~/.pyenv), nothing else of the user's."""
    needed = [sys.prefix, sys.base_prefix, os.path.realpath(sys.executable), site.getusersitepackages(), str(ROOT)]
    return {Path(path).relative_to(USER_HOME).parts[0] for path in map(Path, needed)
            if path.is_relative_to(USER_HOME) and path != USER_HOME and path.exists()}


def _sshd(base: Path, name: str, address: str, disk: Path) -> subprocess.Popen:
    """A host: a private sshd on ``address``:22 in a mount namespace of its own, where ``disk`` is mounted at the
    user's home. Its logins get the home path of the user, as on every machine of a cluster, and ssh finds
    ``~/ray_bootstrap_key.pem`` there (ssh reads ``~`` from the user database, not from HOME)."""
    config = base / f"sshd_{name}_config"
    config.write_text(f"""
Port 22
ListenAddress {address}
HostKey {base}/hostkey
AuthorizedKeysFile {base}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
PidFile {base}/sshd_{name}.pid
""")
    mounts = []
    for folder in sorted(_kept_from_home()):
        (disk / folder).mkdir(exist_ok=True)
        mounts.append(f'mount --rbind "{USER_HOME / folder}" "{disk / folder}"')
    mounts.append(f'mount --rbind "{disk}" "{USER_HOME}"')
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", " && ".join(mounts + ['exec "$0" "$@"']),
               SSHD, "-D", "-e", "-f", str(config)]
    sshd = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(base / f"sshd_{name}.log", "w"))
    deadline = time.monotonic() + 20
    while _port_free(22, address) and time.monotonic() < deadline:
        time.sleep(0.1)
    return sshd


@pytest.fixture
def loopback_hosts():
    """Two "hosts" on loopback, a head and a worker: yields (base, key, head_disk, worker_disk), each disk
    being the user's home on that host."""
    if not (os.path.exists(SSHD) and shutil.which("rsync") and shutil.which("ssh-keygen")):
        pytest.skip("needs Debian's openssh-server and rsync (apt-get install openssh-server rsync)")
    if not (_port_free(22, HEAD_IP) and _port_free(22, WORKER_IP)):
        pytest.skip(f"port 22 is taken on {HEAD_IP} or {WORKER_IP}; Ray's launcher has no ssh-port setting")
    if not _own_mounts_allowed():
        pytest.skip("each host needs a mount namespace of its own (unshare -m: root, or a privileged container)")
    base = Path(tempfile.mkdtemp(prefix="frc-", dir="/tmp"))  # short: Ray's socket paths must stay short
    head_disk, worker_disk = base / "head_disk", base / "worker_disk"
    head_disk.mkdir()
    worker_disk.mkdir()
    for name in ("key", "hostkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
    (base / "authorized_keys").write_text((base / "key.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)
    daemons = [_sshd(base, "head", HEAD_IP, head_disk), _sshd(base, "worker", WORKER_IP, worker_disk)]
    try:
        yield base, base / "key", head_disk, worker_disk
    finally:
        for sshd in daemons:
            sshd.kill()
            sshd.wait()
        _kill(_processes_mentioning(str(base)))  # anything of ours the test could not stop cleanly
        shutil.rmtree(base, ignore_errors=True)


def _environment(home: Path, base: Path, ray_dir: Path, real_ray: str, test_env: dict) -> None:
    """A host's virtual environment (cluster.yaml's ~/frugalray-env): this interpreter, which has frugalray, and
    a `ray` whose `stop` stops only the Ray in ``ray_dir`` (the real `ray stop` kills every Ray of the user).
    Its login shell imports this checkout and keeps Ray on loopback; cluster.yaml's setup adds the rest."""
    bin_dir = home / "frugalray-env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    (bin_dir / "ray").write_text(f"""#!/bin/sh
if [ "$1" = stop ]; then pkill -f "{ray_dir}"; sleep 2; pkill -9 -f "{ray_dir}"; exit 0; fi
exec {real_ray} "$@"
""")
    (bin_dir / "ray").chmod(0o755)
    exports = " ".join(f"{k}={v}" for k, v in test_env.items())
    (home / ".bashrc").write_text(f"export {exports} PYTHONPATH={ROOT}\n")


def _worker_start(command: str, port: int, ray_dir: Path) -> str:
    """cluster.yaml's worker start command, on this test's head port, at WORKER_IP in a Ray folder of its own."""
    command = command.replace(":6379", f":{port}")
    if "ray start" in command:
        command += f" --node-ip-address={WORKER_IP} --temp-dir={ray_dir} --num-cpus=2 --num-gpus=0"
    return command


def _launcher_config(base: Path, port: int, user: str, key: Path) -> dict:
    """cluster.yaml for the local provider on the two loopback hosts: its setup commands less the installs
    (the results bucket a folder of the test's), its head setup (the token), its token copy to workers and its
    worker start commands."""
    text = (ROOT / "cluster.yaml").read_text()
    assert BUCKET in text
    config = yaml.safe_load(text.replace(BUCKET, str(base / "bucket")))
    assert config["cluster_synced_files"] == ["~/.ray/auth_token", "~/frugalray-constraints.txt"]
    config.update(
        cluster_name=f"frtest{port}",
        provider={"type": "local", "head_ip": HEAD_IP, "worker_ips": [WORKER_IP]},
        auth={"ssh_user": user, "ssh_private_key": str(key)},
        min_workers=1,
        max_workers=1,
        file_mounts={},  # frugalray is installed where each host's interpreter looks
        setup_commands=[c for c in config["setup_commands"] if not any(i in c for i in INSTALLS)],
        # RAY_ADDRESS=localhost: on a cluster Ray reads it as the head's address; here the head is HEAD_IP
        head_setup_commands=[c.replace("localhost:6379", f"{HEAD_IP}:{port}") for c in config["head_setup_commands"]],
        head_start_ray_commands=[  # as cluster.yaml says of the head: it drives the sweep and runs no trial
            "ray stop",
            f"ray start --head --node-ip-address={HEAD_IP} --port={port} --temp-dir={base}/ray --num-cpus=0 "
            f"--num-gpus=0 --include-dashboard=false --disable-usage-stats "
            f"--autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        worker_start_ray_commands=[_worker_start(c, port, base / "wk") for c in config["worker_start_ray_commands"]],
    )
    for key_name in ("available_node_types", "head_node_type"):  # the local provider makes its own node type
        config.pop(key_name, None)
    return config


NODES = """
import ray
ray.init()
print("NODES", sorted((n["NodeManagerAddress"], n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n["Alive"]))
"""


@pytest.mark.slow
@pytest.mark.required_in_ci  # with CI set, a skip (no sshd, port 22 taken) fails
def test_ray_up_submit_quick_sweep_and_down(loopback_hosts):
    base, key, head_disk, worker_disk = loopback_hosts
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    port = _free_port()
    real_ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    # RAY_TMPDIR: the launcher and the head's autoscaler keep the local provider's state in $RAY_TMPDIR/ray
    # (else /tmp/ray, shared by every Ray of the machine).
    test_env = LOOPBACK_ONLY | {"RAY_TMPDIR": str(base)}
    _environment(head_disk, base, base / "ray", real_ray, test_env)
    _environment(worker_disk, base, base / "wk", real_ray, test_env | JOINING)
    config = _launcher_config(base, port, user, key)
    cluster_file = base / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(config))
    (base / "nodes.py").write_text(NODES)
    # The launcher's v1 autoscaler, as cluster.yaml's on-prem variant says: Ray 2.60's default (v2) counts the
    # head toward the local provider's min_workers and cannot tell a worker's resources before it runs.
    env = os.environ | test_env | {"RAY_UP_enable_autoscaler_v2": "0"}
    before = set(os.listdir("/tmp"))

    def ray_cli(*args, timeout=600, check=True):
        done = subprocess.run([real_ray, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert not check or done.returncode == 0, f"ray {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    results = base / "results"
    try:
        up = ray_cli("up", "-y", "--no-config-cache", str(cluster_file))
        assert f"Local node IP: {HEAD_IP}" in up  # Ray kept the loopback address
        token = head_disk / ".ray" / "auth_token"  # made on the head, for the head's user only
        assert token.read_text().strip() and token.stat().st_mode & 0o077 == 0
        # The head runs no trial: the sweep waits (autoscale_wait_s) for the worker the autoscaler sets up.
        submitted = ray_cli("submit", "--no-config-cache", str(cluster_file), "sweeps/quick.py", "--",
                            "--tasks", "demo_pos", "--stages", "single", "--training.epochs", "1",
                            "--results", str(results), "--autoscale-wait-s", "600")
        assert "== demo_pos" in submitted
        # The sweep joined the head's Ray, through RAY_ADDRESS and with the token, instead of starting its own.
        assert f"Connecting to existing Ray cluster at address: {HEAD_IP}:{port}" in submitted
        assert "Started a local Ray instance" not in submitted
        [head_gcs] = [p for p in map(psutil.Process, _processes_mentioning(f"{base}/ray")) if p.name() == "gcs_server"]
        assert head_gcs.environ().get("RAY_AUTH_MODE") == "token"
        _check_the_worker(ray_cli("exec", str(cluster_file), f"python {base}/nodes.py"), base, head_disk, worker_disk)
    finally:
        down = ray_cli("down", "-y", str(cluster_file), check=False)
        _kill(_processes_mentioning(f"{base}/wk"))  # the local provider's `ray down` stops the head's Ray only
        for name in set(os.listdir("/tmp")) - before:  # the launcher's own leftovers
            path = os.path.join("/tmp", name)
            if name.startswith(("ray-config-", "ray_ssh_")):
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    assert not _processes_mentioning(f"{base}/ray"), down  # `ray down` stopped our head
    assert list((base / "ray").glob(f"cluster-{config['cluster_name']}.*"))  # its state: here, not in /tmp/ray
    assert not list(Path("/tmp/ray").glob(f"cluster-{config['cluster_name']}.*"))

    rows = ResultsStore(results).table().to_pylist()
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows)  # trained on the worker: the head has no CPU
    assert {r["sweep"] for r in rows} == {"quick"} and {r["model"] for r in rows} == {"minilm"}
    assert sorted(tuple(r["kept_layers"]) for r in rows) == sorted([tuple(range(6))] + [(k,) for k in range(6)])


def _check_the_worker(nodes: str, base: Path, head_disk: Path, worker_disk: Path) -> None:
    """The worker joined with the head's token, after cluster.yaml's setup ran there."""
    assert f"NODES [('{HEAD_IP}', 0.0), ('{WORKER_IP}', 2.0)]" in nodes, nodes[-3000:]
    # cluster_synced_files copied the head's token to the same path (~/.ray/auth_token) on the worker's disk
    copy = worker_disk / ".ray" / "auth_token"
    assert copy.read_text() == (head_disk / ".ray" / "auth_token").read_text() and copy.stat().st_mode & 0o077 == 0
    # and the head's versions (head_setup_commands' pip freeze), which the worker's installs are held to
    versions = (worker_disk / "frugalray-constraints.txt").read_text()
    assert versions == (head_disk / "frugalray-constraints.txt").read_text() and "\nray==" in f"\n{versions}"
    # setup_commands ran on the worker: its login shell has the environment first on PATH and token auth on
    bashrc = (worker_disk / ".bashrc").read_text()
    assert "export PATH=$HOME/frugalray-env/bin:$PATH" in bashrc and "export RAY_AUTH_MODE=token" in bashrc
    # with where sweeps write (sweeps/all.py reads it), which the node's setup checked it can write
    assert f"export FRUGALRAY_RESULTS={base}/bucket/camembert-study" in bashrc
    assert (base / "bucket" / "camembert-study").is_dir()
    [raylet] = [p for p in map(psutil.Process, _processes_mentioning(f"{base}/wk")) if p.name() == "raylet"]
    assert raylet.environ().get("RAY_AUTH_MODE") == "token" and raylet.environ().get("HOME") == str(USER_HOME)
