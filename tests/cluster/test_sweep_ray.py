"""Sweeps on one local Ray shared by the module (4 fake GPUs; started once, stopped at the end): what trials
ask of the cluster, retries, an S3 store, Tune's output, and the sweep's progress.

Trials use the simulated runner of ``frugalray.testing``: scheduling is what is under test here. Sweeps that need a
Ray of their own (another shape, workers that die, several nodes, a driver killed) are in test_sweep_ray_alone.py.
"""

import time
from collections import Counter

import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.study.plan import StudyPlan
from frugalray.cluster.session import start_local_ray
from frugalray.config import ResourceRule
from frugalray.cluster.runs import run_sweep
from tests.cluster.sweeps import RUNNER, sweep_config
from tests.conftest import S3_TEST_ENVIRONMENT

ray = pytest.importorskip("ray")
SIMULATED_SECONDS = "0.05"  # each simulated trial's sleep: enough that trials overlap, short enough to be quick


@pytest.fixture(scope="module")
def local_ray():
    """One private Ray (its own temp folder, on loopback) for the module's sweeps, stopped at the module's end.
    Its workers inherit the environment it starts with: the simulated trials' sleep, the local S3 server's
    credentials (for the S3 sweep)."""
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("FRUGALRAY_SIMULATED_SECONDS", SIMULATED_SECONDS)
        for name, value in S3_TEST_ENVIRONMENT.items():
            environment.setenv(name, value)
        start_local_ray(num_cpus=2, num_gpus=4)
        try:
            yield
        finally:
            ray.shutdown()  # the Ray this fixture started (its folder goes at exit, with start_local_ray's hook)


@pytest.mark.slow
def test_gpu_share_follows_the_memory_estimate_and_the_card(tmp_path, tiny_model, local_ray):
    from frugalray.cluster.runs import trial_placer

    plan = StudyPlan(sweep_config(tmp_path, tiny_model), ResultsStore(tmp_path / "r"))
    plan.expand()
    full, single = plan.queue[0], plan.queue[1]
    small, large = (ResourceRule(gpus=True, gpu_memory_gib=memory, min_fraction=0.01, step=0.01) for memory in (4, 8))
    # this Ray's 4 GPUs name no card: the rule's gpu_memory_gib sizes their shares
    on_small, on_large = trial_placer(small, tiny_model, None), trial_placer(large, tiny_model, None)
    assert on_small(full).resources["GPU"] > on_large(full).resources["GPU"] >= on_large(single).resources["GPU"] > 0
    assert on_small(full).resources["GPU"] == pytest.approx(2 * on_large(full).resources["GPU"], abs=0.011)
    assert trial_placer(ResourceRule(), tiny_model, None)(full).resources == {"CPU": 1.0}  # gpus off: CPUs only


@pytest.fixture()
def autoscaler_requests(monkeypatch):
    """What a sweep asks of the autoscaler (``request_resources``); this Ray has none to answer."""
    asked = []
    monkeypatch.setattr("ray.autoscaler.sdk.request_resources", lambda **request: asked.append(request))
    return asked


@pytest.mark.slow
def test_no_node_fits_fails_before_scheduling(tmp_path, tiny_model, local_ray, autoscaler_requests):
    sweep = sweep_config(tmp_path, tiny_model, resources=ResourceRule(cpus_per_trial=4))
    started = time.monotonic()
    with pytest.raises(FrugalrayError, match="No node of the cluster fits a trial"):
        run_sweep(sweep, runner=RUNNER)
    assert autoscaler_requests == [] and time.monotonic() - started < 5  # no autoscale_wait_s: no wait, no request
    assert ResultsStore(tmp_path / "r").files() == []


@pytest.mark.slow
def test_a_sweep_with_autoscale_wait_s_asks_the_autoscaler_and_waits_that_long_before_failing(
        tmp_path, tiny_model, local_ray, autoscaler_requests):
    sweep = sweep_config(tmp_path, tiny_model, resources=ResourceRule(cpus_per_trial=4), autoscale_wait_s=7)
    started = time.monotonic()
    with pytest.raises(FrugalrayError, match=r"trials need \[\{'CPU': 4\}\], nodes have \[\{.*'CPU': 2.0"):
        run_sweep(sweep, runner=RUNNER)
    waited = time.monotonic() - started
    assert autoscaler_requests == [{"bundles": [{"CPU": 4}]}]  # the trials' shape, once, for the autoscaler
    assert 7 <= waited < 60, waited  # the wait the sweep set, polled, then the error
    assert ResultsStore(tmp_path / "r").files() == []


@pytest.mark.slow
def test_failing_trial_is_retried_then_recorded_and_the_sweep_completes(tmp_path, tiny_model, oom_task_file, local_ray):
    task = oom_task_file  # layer set [1] fails
    sweep = sweep_config(tmp_path, tiny_model, tasks=(str(task),), retries=1,
                         resources=ResourceRule(cpus_per_trial=0.5), save_models=("single",))
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
        run_sweep(sweep_config(tmp_path, tiny_model, results=str(tmp_path / "file" / "r")), runner=RUNNER)


@pytest.mark.slow
def test_a_sweep_on_an_s3_store_keeps_rows_and_tunes_files_under_its_prefix(tmp_path, tiny_model, s3_results,
                                                                           local_ray):
    from pyarrow import fs as pafs

    run_sweep(sweep_config(tmp_path, tiny_model, results=s3_results), runner=RUNNER)  # s3://BUCKET/results?endpoint...
    store = ResultsStore(s3_results)
    rows = store.table().to_pylist()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    bucket = store.root.split("/")[0]
    tune = store.fs.get_file_info(pafs.FileSelector(f"{bucket}/results/_tune", recursive=True, allow_not_found=True))
    assert [i for i in tune if i.base_name.startswith("experiment_state")]  # Tune's own files, beside the rows
    assert {i.base_name for i in store.fs.get_file_info(pafs.FileSelector(bucket))} == {"results"}


@pytest.mark.slow
def test_tune_prints_its_experiment_box_when_asked(tmp_path, tiny_model, local_ray, capfd):
    run_sweep(sweep_config(tmp_path, tiny_model, results=str(tmp_path / "verbose"), verbose=1), runner=RUNNER)
    assert "Configuration for experiment" in capfd.readouterr().out  # Tune's output, when asked for


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


@pytest.mark.slow
def test_a_sweep_shows_its_progress_and_records_its_settings_for_later_readers(tmp_path, tiny_model, local_ray,
                                                                              capfd):
    from io import StringIO

    from frugalray.cli import main
    from frugalray.results.metadata import read_metadata

    stream = StringIO()
    sweep = sweep_config(tmp_path, tiny_model, reference_tasks={"demo_pos": "FTB_POS"})
    run_sweep(sweep, runner=RUNNER, stream=stream)
    out = stream.getvalue()
    assert "[frugalray" in out and "\x1b[" not in out  # not a terminal: plain lines
    assert "demo_pos 5/5: 0 running, 0 failed, finished, best dev F1" in out
    printed = capfd.readouterr().out  # and nothing of Tune's own: its experiment box comes only when asked for
    assert "Number of trials" not in printed and "9223372036854775807" not in printed
    metadata = read_metadata(ResultsStore(tmp_path / "r"))
    assert metadata["sweeps"]["t"]["reference_tasks"] == {"demo_pos": "FTB_POS"}
    assert metadata["sweeps"]["t"]["settings"]["stages"] == ["single"]
    # a later reader pairs demo_pos with FTB_POS without being told
    assert main(["results", str(tmp_path / "r"), "--view", "baselines", "--format", "csv"]) == 0
    assert "FTB_POS full, study: 12/12 layers" in capfd.readouterr().out
