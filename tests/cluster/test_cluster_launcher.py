"""The user's own commands, end to end: ``ray up``, ``ray submit sweeps/quick.py``, ``ray down``.

The "cluster" is this machine: a private sshd on 127.0.0.1 (Debian's openssh-server, a key made here, a
temporary HOME), and a local-provider copy of ``cluster.yaml``. Everything stays on loopback, and only
the processes this test started are stopped.
"""

import os
import shutil
import signal
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
LOOPBACK_ONLY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keeps Ray from swapping 127.0.0.1 for the NIC address
                 "HF_HUB_OFFLINE": "1"}
INSTALLS = ("venv", "pip install")  # setup commands that need the network: frugalray is installed here already


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
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


@pytest.fixture
def loopback_head():
    """A private sshd on 127.0.0.1:22 whose logins land in a temporary HOME; yields (base, key, home)."""
    if not (os.path.exists(SSHD) and shutil.which("rsync") and shutil.which("ssh-keygen")):
        pytest.skip("needs Debian's openssh-server and rsync (apt-get install openssh-server rsync)")
    if not _port_free(22):
        pytest.skip("port 22 is taken; Ray's launcher has no ssh-port setting")
    base = Path(tempfile.mkdtemp(prefix="frc-", dir="/tmp"))  # short: Ray's socket paths must stay short
    home = base / "home"
    home.mkdir()
    for name in ("key", "hostkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
    (base / "authorized_keys").write_text((base / "key.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)
    (base / "sshd_config").write_text(f"""
Port 22
ListenAddress 127.0.0.1
HostKey {base}/hostkey
AuthorizedKeysFile {base}/authorized_keys
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
PidFile {base}/sshd.pid
SetEnv HOME={home}
""")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(base / "sshd.log", "w"))
    deadline = time.monotonic() + 20
    while _port_free(22) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        yield base, base / "key", home
    finally:
        sshd.kill()
        sshd.wait()
        _kill(_processes_mentioning(str(base)))  # anything of ours the test could not stop cleanly
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.required_in_ci  # with CI set, a skip (no sshd, port 22 taken) fails
def test_ray_up_submit_quick_sweep_and_down(loopback_head):
    base, key, home = loopback_head
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    port = _free_port()
    # The head's virtual environment (cluster.yaml's ~/frugalray-env): this interpreter, which has frugalray,
    # and a `ray` whose `stop` stops only this test's Ray (the real `ray stop` kills every Ray of the user).
    # The login shell imports this checkout and keeps Ray on loopback; cluster.yaml adds the rest.
    bin_dir = home / "frugalray-env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    real_ray = shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray")
    (bin_dir / "ray").write_text(f"""#!/bin/sh
if [ "$1" = stop ]; then pkill -f "{base}/ray"; sleep 2; pkill -9 -f "{base}/ray"; exit 0; fi
exec {real_ray} "$@"
""")
    (bin_dir / "ray").chmod(0o755)
    # RAY_TMPDIR: the launcher and the head's autoscaler keep the local provider's state in $RAY_TMPDIR/ray
    # (else /tmp/ray, shared by every Ray of the machine).
    test_env = LOOPBACK_ONLY | {"RAY_TMPDIR": str(base)}
    exports = " ".join(f"{k}={v}" for k, v in test_env.items())
    (home / ".bashrc").write_text(f"export {exports} PYTHONPATH={ROOT}\n")

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config.update(
        cluster_name=f"frtest{port}",
        provider={"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        auth={"ssh_user": user, "ssh_private_key": str(key)},
        max_workers=0,
        file_mounts={},  # frugalray is installed where the head's interpreter looks
        setup_commands=[c for c in config["setup_commands"] if not any(i in c for i in INSTALLS)],
        head_setup_commands=[c.replace(":6379", f":{port}") for c in config["head_setup_commands"]],
        head_start_ray_commands=[
            "ray stop",
            f"ray start --head --node-ip-address=127.0.0.1 --port={port} --temp-dir={base}/ray --num-cpus=2 "
            f"--num-gpus=0 --include-dashboard=false --disable-usage-stats "
            f"--autoscaling-config=~/ray_bootstrap_config.yaml",
        ],
        worker_start_ray_commands=[],
    )
    for key_name in ("available_node_types", "head_node_type"):
        config.pop(key_name, None)
    cluster_file = base / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(config))
    env = os.environ | test_env
    before = set(os.listdir("/tmp"))

    def ray_cli(*args, timeout=600, check=True):
        done = subprocess.run([real_ray, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        assert not check or done.returncode == 0, f"ray {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout + done.stderr

    results = base / "results"
    try:
        up = ray_cli("up", "-y", "--no-config-cache", str(cluster_file))
        assert "Local node IP: 127.0.0.1" in up  # Ray kept the loopback address
        token = home / ".ray" / "auth_token"  # made on the head, for the head's user only
        assert token.read_text().strip() and token.stat().st_mode & 0o077 == 0
        submitted = ray_cli("submit", "--no-config-cache", str(cluster_file), "sweeps/quick.py", "--",
                            "--tasks", "demo_pos", "--stages", "single", "--training.epochs", "1",
                            "--results", str(results))
        assert "== demo_pos" in submitted
        # The sweep joined the head's Ray, through RAY_ADDRESS and with the token, instead of starting its own.
        assert f"Connecting to existing Ray cluster at address: 127.0.0.1:{port}" in submitted
        assert "Started a local Ray instance" not in submitted
        [head_gcs] = [p for p in map(psutil.Process, _processes_mentioning(f"{base}/ray")) if p.name() == "gcs_server"]
        assert head_gcs.environ().get("RAY_AUTH_MODE") == "token"
    finally:
        down = ray_cli("down", "-y", str(cluster_file), check=False)
        for name in set(os.listdir("/tmp")) - before:  # the launcher's own leftovers
            path = os.path.join("/tmp", name)
            if name.startswith(("ray-config-", "ray_ssh_")):
                shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    assert not _processes_mentioning(f"{base}/ray"), down  # `ray down` stopped our head
    assert list((base / "ray").glob(f"cluster-{config['cluster_name']}.*"))  # its state: here, not in /tmp/ray
    assert not list(Path("/tmp/ray").glob(f"cluster-{config['cluster_name']}.*"))

    rows = ResultsStore(results).table().to_pylist()
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows)
    assert {r["sweep"] for r in rows} == {"quick"} and {r["model"] for r in rows} == {"minilm"}
    assert sorted(tuple(r["kept_layers"]) for r in rows) == sorted([tuple(range(6))] + [(k,) for k in range(6)])
