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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test marked ``required_in_ci`` skips where a system package it needs is missing (Chromium, sshd),
    except in CI, which installs them: there its skip is a failure, so that a run never passes without it."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and item.get_closest_marker("required_in_ci"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} must run in CI (CI={os.environ['CI']!r}), but it skipped: {reason}. "
                           f"Install what it needs (.ci/run does), or unset CI to let it skip")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def ner_task_file() -> str:
    return str(DATA / "ner_task.json")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A 4-layer CamemBERT-architecture model (hidden 32) whose tokenizer knows the fixture words."""
    words = conll_words(*DATA.glob("ner_*.conll")) | {"un", "une", "film", "histoire", "magnifique",
                                                         "ennuyeux", "touchante", "plate"}
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny_camembert"), words, "camembert", num_layers=4))


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


@pytest.fixture()
def s3_results(monkeypatch):
    """A results location on a local S3 server (moto, on 127.0.0.1): ``s3://<a new bucket>/results?...``, its
    endpoint and region as Arrow's URI options."""
    moto_server = pytest.importorskip("moto.server")
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)  # Ray workers started afterwards inherit them
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
