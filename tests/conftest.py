import os

# Before transformers/datasets are imported anywhere: a stray download must fail loudly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from frugalray.testing import conll_words, tiny_model_dir

DATA = Path(__file__).parent / "fixtures"
torch.set_num_threads(2)

try:
    from hypothesis import settings
except ImportError:  # the property tests skip themselves
    pass
else:
    # The same examples on every run and machine (no example database): a failure in CI reproduces locally.
    # HYPOTHESIS_PROFILE=explore searches afresh, with more examples.
    settings.register_profile("frugalray", derandomize=True, database=None, deadline=None, max_examples=150,
                              print_blob=True)
    settings.register_profile("explore", deadline=None, max_examples=2000)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "frugalray"))


def in_ci() -> bool:
    """Whether this run is CI's (``CI`` set, as ``.ci/run`` and CI services set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(report) -> str:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason.removeprefix("Skipped: ")


def missing_package(reason: str) -> bool:
    """Whether a skip is ``pytest.importorskip``'s: a Python package the test extra installs is missing (moto,
    hypothesis, onnxruntime...)."""
    return reason.startswith("could not import ")


def _fail_in_ci(report, nodeid: str) -> None:
    reason = _skip_reason(report)
    report.outcome = "failed"
    report.longrepr = (f"{nodeid} must run in CI (CI={os.environ['CI']!r}), but it skipped: {reason}. "
                       f"Install what it needs (.ci/run does: the test extra, Chromium, sshd), or unset CI to let "
                       f"it skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test skips where what it needs is missing: a system package (Chromium, sshd: marked ``required_in_ci``)
    or a Python package of the test extra (``pytest.importorskip``). Not in CI, which installs them all: there
    such a skip is a failure, so that a run never passes without the test."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():
        if item.get_closest_marker("required_in_ci") or missing_package(_skip_reason(report)):
            _fail_in_ci(report, item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module that skips as it is imported (``importorskip`` at module level)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and missing_package(_skip_reason(report)):
        _fail_in_ci(report, collector.nodeid)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def ner_task_file() -> str:
    return str(DATA / "ner_task.json")


@pytest.fixture(scope="session")
def oom_task_file() -> str:
    """The NER fixture task named ``tiny_oom``: the simulated trial raises a CUDA OOM for layer set [1] alone."""
    return str(DATA / "ner_oom_task.json")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 4-layer CamemBERT-architecture model (hidden 32) whose tokenizer knows the fixture words."""
    words = conll_words(*DATA.glob("ner_*.conll")) | {"un", "une", "film", "histoire", "magnifique",
                                                         "ennuyeux", "touchante", "plate"}
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny_camembert"), words, "camembert", num_layers=4))


@pytest.fixture(autouse=True)
def no_ray_left_running():
    """A test that starts Ray in this process shuts it down: a Ray left initialized would be the one every later
    test's ``ray.init`` finds (and fails on). The test that leaves one is failed by name, and the Ray stopped."""
    before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    yield
    ray = sys.modules.get("ray")
    if not before and ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("the test left Ray initialized in the test process (shut it down, or patch what starts it)")


@pytest.fixture()
def activity(tmp_path, monkeypatch):
    """A private activity folder (``frugalray.training.environment``: where frugalray processes mark the work they
    run, so that a latency measurement knows whether it ran alone): other trials and benchmarks running on this
    machine meanwhile do not leak into the test."""
    folder = tmp_path / "running"
    monkeypatch.setattr("frugalray.training.environment._activity_dir", lambda: folder)
    return folder


@pytest.fixture()
def another_frugalray_process(activity):
    """Another live process that marks a trial as running on this machine (in the test's activity folder)."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        activity.mkdir(parents=True, exist_ok=True)
        (activity / f"{other.pid}-abcd.trial").touch()
        yield other
    finally:
        other.kill()
        other.wait()


# A writer killed mid-append (and mid-trial, its model folder not yet filled), as `kill -9` leaves it.
KILLED_WRITER = """
import os, signal, sys
import pyarrow.parquet as pq
from frugalray.results.store import ResultsStore

def half_written_then_killed(table, where, **options):
    with open(where, "wb") as out:
        out.write(b"PAR1 half a row")
    os.kill(os.getpid(), signal.SIGKILL)

store = ResultsStore(sys.argv[1])
store.staging_folder()
pq.write_table = half_written_then_killed
store.append({"config_hash": "lost", "status": "ok"})
"""


@pytest.fixture()
def kill_a_writer():
    """Run a writer on a store and kill it mid-append; returns its exit status."""
    return lambda store: subprocess.run([sys.executable, "-c", KILLED_WRITER, str(store)]).returncode


# The local S3 server's credentials (any will do), and no look-up of a cloud machine's own.
S3_TEST_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture()
def s3_results(monkeypatch):
    """A results location on a local S3 server (moto, on 127.0.0.1): ``s3://<a new bucket>/results?...``, its
    endpoint and region as Arrow's URI options."""
    moto_server = pytest.importorskip("moto.server")
    for name, value in S3_TEST_ENVIRONMENT.items():
        monkeypatch.setenv(name, value)  # Ray workers started afterwards inherit them (a shared Ray: set them first)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server._server.server_address
    try:
        import boto3

        bucket = f"study-{uuid.uuid4().hex[:8]}"  # moto keeps its buckets for the whole process: one per test
        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket=bucket)
        yield f"s3://{bucket}/results?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    finally:
        server.stop()
