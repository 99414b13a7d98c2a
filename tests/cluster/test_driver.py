"""The driver's pieces that need no running Ray: where Tune keeps its files, waiting for capacity."""

import pytest
from pyarrow import fs as pafs

from frugalray import FrugalrayError
from frugalray.cluster.driver import _tune_storage
from frugalray.cluster.resources import check_fit

pytest.importorskip("ray")


@pytest.mark.parametrize("results,expected", [
    ("s3://bucket/p", "s3://bucket/p/_tune"),
    ("s3://bucket/p/", "s3://bucket/p/_tune"),
    ("gs://bucket/a/b", "gs://bucket/a/b/_tune"),
    # Arrow's URI options (a local S3 server, its region) stay options, after the path
    ("s3://bucket/p?endpoint_override=127.0.0.1:9000&scheme=http",
     "s3://bucket/p/_tune?endpoint_override=127.0.0.1:9000&scheme=http"),
    ("s3://bucket/p/?region=eu-west-3", "s3://bucket/p/_tune?region=eu-west-3"),
])
def test_tune_files_go_beside_the_results_keeping_the_uri_options(results, expected):
    assert _tune_storage(results) == expected


def test_tune_storage_of_an_s3_uri_with_options_opens_where_the_results_are():
    uri = "s3://bucket/p?endpoint_override=127.0.0.1:9000&scheme=http&region=us-east-1"
    filesystem, path = pafs.FileSystem.from_uri(_tune_storage(uri))
    assert path == "bucket/p/_tune"
    assert filesystem.region == "us-east-1"  # not "us-east-1/_tune"


class _Capacity:
    """The cluster as check_fit sees it, on a clock of its own: nodes appear at given (fake) times."""

    def __init__(self, nodes_at: list[tuple[float, list[dict]]]):
        self.now, self.nodes_at, self.polls, self.slept = 1000.0, nodes_at, 0, 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds

    def nodes(self) -> list[dict]:
        self.polls += 1
        waited = self.now - 1000.0
        return [node for at, nodes in self.nodes_at if waited >= at for node in nodes]


def _requests(monkeypatch) -> list:
    asked = []
    monkeypatch.setattr("ray.autoscaler.sdk.request_resources", lambda **kw: asked.append(kw))
    return asked


def test_check_fit_asks_the_autoscaler_and_returns_once_a_node_fits(monkeypatch):
    asked = _requests(monkeypatch)
    cluster = _Capacity([(0, [{"CPU": 4.0}]), (20, [{"CPU": 8.0, "GPU": 1.0}])])  # a GPU node after 20 s
    check_fit([{"CPU": 1.0, "GPU": 0.5}, {"CPU": 1.0}, {"CPU": 1.0, "GPU": 0.5}], wait_s=900,
              nodes=cluster.nodes, clock=cluster.clock, sleep=cluster.sleep)
    assert asked == [{"bundles": [{"CPU": 1.0, "GPU": 0.5}]}]  # what no node holds, once
    assert cluster.slept == 20  # it stopped waiting as soon as the node was there, not after 900 s


def test_check_fit_gives_up_after_autoscale_wait_s_naming_what_is_missing(monkeypatch):
    asked = _requests(monkeypatch)
    cluster = _Capacity([(0, [{"CPU": 4.0}])])  # no GPU node ever comes
    with pytest.raises(FrugalrayError, match=r"trials need \[\{'CPU': 1.0, 'GPU': 0.5\}\], nodes have \[\{'CPU': 4.0\}\]"):
        check_fit([{"CPU": 1.0, "GPU": 0.5}], wait_s=60, nodes=cluster.nodes, clock=cluster.clock, sleep=cluster.sleep)
    assert len(asked) == 1 and 60 <= cluster.slept < 60 + 5  # the whole wait, in polls, and no longer


def test_check_fit_without_wait_fails_at_once_and_asks_nobody(monkeypatch):
    asked = _requests(monkeypatch)
    cluster = _Capacity([(0, [{"CPU": 4.0}])])
    with pytest.raises(FrugalrayError, match="set autoscale_wait_s"):
        check_fit([{"CPU": 8.0}], nodes=cluster.nodes, clock=cluster.clock, sleep=cluster.sleep)
    assert asked == [] and cluster.slept == 0
    check_fit([{"CPU": 4.0}], nodes=cluster.nodes, clock=cluster.clock, sleep=cluster.sleep)  # fits: no error


@pytest.mark.parametrize("max_steps", [315, 300, 90, 1000, 28])
def test_a_search_keeps_state_exactly_at_the_steps_where_asha_may_stop_it(max_steps):
    from frugalray.cluster.halving import halving_scheduler
    from frugalray.config import SearchConfig

    scheduler = halving_scheduler(SearchConfig(task="demo_pos", halving=True), max_steps)
    milestones = sorted(step for step, _ in scheduler._brackets[0]._rungs)  # ASHA's own bookkeeping
    assert scheduler.rungs() == [step for step in milestones if step < max_steps]


def _search_trial(tmp_path, full_fidelity, **training):
    from frugalray import TrainingSettings, TrialConfig

    trial = TrialConfig(task="demo_pos", model="minilm", training=TrainingSettings(eval_every_steps=5, **training))
    return {"config_hash": "h1", "keep_state_at": [10, 30], "full_fidelity": full_fidelity}, trial


def test_a_search_trial_keeps_its_state_at_rungs_only_and_a_promoted_one_goes_on_from_it(tmp_path):
    from frugalray import ResultsStore
    from frugalray.cluster.driver import _resumption
    from frugalray.training import resume

    store = ResultsStore(tmp_path)
    config, trial = _search_trial(tmp_path, full_fidelity=False)
    options = _resumption(config, trial, store)
    assert "resume" not in options
    for step in (5, 10, 15):
        options["snapshot"](step, lambda step=step: {"step": step})
    assert resume.kept(store, "h1") == {"step": 10}  # the rung's, not the later checkpoint's
    config, trial = _search_trial(tmp_path, full_fidelity=True)
    assert _resumption(config, trial, store)["resume"] == {"step": 10}
    assert _resumption({"config_hash": "h1", "full_fidelity": True}, trial, store) == {}  # no halving, no state
    config, trial = _search_trial(tmp_path, full_fidelity=True, early_stopping_patience=2)
    assert _resumption(config, trial, store) == {}  # early stopping on dev: never stopped, never resumed
