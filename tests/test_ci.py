"""What CI must run: a test that needs a system package (Chromium, sshd) skips without it, but fails in CI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pytest_without_system_tools(test: str, **env) -> subprocess.CompletedProcess:
    """Run one test file where PATH holds only this Python (no chromium, rsync, ssh-keygen...)."""
    clean = {k: v for k, v in os.environ.items() if k != "CI"} | {"PATH": os.path.dirname(sys.executable)} | env
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", test], cwd=ROOT,
                          env=clean, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("test,missing", [("tests/results/test_report_browser.py", "no Chromium here"),
                                          ("tests/cluster/test_cluster_launcher.py", "openssh-server and rsync")])
def test_a_test_needing_system_packages_skips_without_them_but_fails_in_ci(test, missing):
    local = _pytest_without_system_tools(test)
    assert local.returncode == 0 and "skipped" in local.stdout and missing in local.stdout, local.stdout[-2000:]
    assert "failed" not in local.stdout
    ci = _pytest_without_system_tools(test, CI="true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "must run in CI (CI='true'), but it skipped" in ci.stdout and missing in ci.stdout
    assert "skipped" not in ci.stdout.splitlines()[-1]  # every one of them failed: none counted as a skip
