"""What CI must run: a test that needs a system package (Chromium, sshd) or a Python package of the test extra
(moto, hypothesis, onnxruntime) skips without it, but fails in CI."""

import os
import re
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
@pytest.mark.slow
def test_a_test_needing_system_packages_skips_without_them_but_fails_in_ci(test, missing):
    local = _pytest_without_system_tools(test)
    assert local.returncode == 0 and "skipped" in local.stdout and missing in local.stdout, local.stdout[-2000:]
    assert "failed" not in local.stdout
    ci = _pytest_without_system_tools(test, CI="true")
    assert ci.returncode == 1, ci.stdout[-2000:]
    assert "must run in CI (CI='true'), but it skipped" in ci.stdout and missing in ci.stdout
    assert "skipped" not in ci.stdout.splitlines()[-1]  # every one of them failed: none counted as a skip


# -- Python packages of the test extra: a test needing one skips without it, but fails in CI ------------------
# Stand-ins that fail to import as a missing package does; put first on the path, they hide the real ones.
HIDDEN = {"moto": "moto/__init__.py", "hypothesis": "hypothesis/__init__.py", "onnxruntime": "onnxruntime/__init__.py"}
NEEDING_THEM = ["tests/data/test_fuzz_inputs.py",  # hypothesis, imported with the module (a collection skip)
                "tests/results/test_remote.py",  # moto, through the s3_results fixture
                "tests/deploy/test_latency.py::test_onnx_variants_are_timed_by_onnx_runtime"]  # onnxruntime, in it


def _pytest_without_packages(tmp_path, **env) -> subprocess.CompletedProcess:
    for name, path in HIDDEN.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        message = f"No module named {name!r}"
        (tmp_path / path).write_text(f"raise ModuleNotFoundError({message!r}, name={name!r})\n")
    clean = {k: v for k, v in os.environ.items() if k != "CI"} | env
    clean["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    # without hypothesis, no hypothesis plugin either (it comes with the package)
    plugins = ["-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:hypothesispytest"]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", *plugins, "-rs", "--continue-on-collection-errors",
                           *NEEDING_THEM], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_test_needing_a_package_of_the_test_extra_skips_without_it_but_fails_in_ci(tmp_path):
    local = _pytest_without_packages(tmp_path)
    assert local.returncode == 0, local.stdout[-3000:]
    for name in HIDDEN:
        assert f"could not import '{name}" in local.stdout, (name, local.stdout[-3000:])
    assert "failed" not in local.stdout and "error" not in local.stdout.splitlines()[-1]
    ci = _pytest_without_packages(tmp_path, CI="true")
    assert ci.returncode != 0, ci.stdout[-3000:]
    failed = re.findall(r"^(tests/\S+) must run in CI \(CI='true'\), but it skipped: could not import '(\w+)",
                        ci.stdout, re.MULTILINE)
    assert sorted(failed) == [  # the module that skips as a whole, as a collection error; every test of the others
        ("tests/data/test_fuzz_inputs.py", "hypothesis"),
        ("tests/deploy/test_latency.py::test_onnx_variants_are_timed_by_onnx_runtime", "onnxruntime"),
        ("tests/results/test_remote.py::test_empty_s3_location_is_a_clear_error", "moto"),
        ("tests/results/test_remote.py::test_trials_views_report_and_export_on_s3", "moto")], ci.stdout[-3000:]
    assert "skipped" not in ci.stdout.splitlines()[-1]  # none of them counted as a skip


def test_every_package_a_test_imports_or_skips_is_one_the_test_extra_or_the_package_installs():
    """What CI installs (``pip install -e .[test]``) is what makes the rule above hold: a test that skips
    without a package must name one of the test extra or of frugalray's own dependencies."""
    import ast
    import importlib.metadata

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        pytest.skip("reading pyproject.toml needs Python 3.11's tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installed = {re.split(r"[\[<>=; ]", requirement, maxsplit=1)[0].lower()
                 for requirement in project["dependencies"] + project["optional-dependencies"]["test"]}
    needed = set()
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                needed.add((path.relative_to(ROOT).as_posix(), node.args[0].value))
    assert {module for _, module in needed} >= {"moto.server", "hypothesis", "onnxruntime", "onnxscript"}
    distributions = importlib.metadata.packages_distributions()
    outside = [(test, module) for test, module in sorted(needed)
               if not {d.lower() for d in distributions.get(module.split(".")[0], [module])} & installed]
    assert not outside, f"tests skip without packages that neither the test extra nor the package installs: {outside}"
