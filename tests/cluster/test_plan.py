"""``frugalray plan``: a sweep's trials and cost before it runs (no Ray), and the ``nodes`` view of where trials ran."""

import re
from datetime import datetime, timezone

import pytest

from frugalray import ResultsStore
from frugalray.cli import main
from frugalray.cluster.cost import card, training_flops
from frugalray.cluster.dry_run import dry_run
from frugalray.config import ResourceRule, SweepConfig
from frugalray.results.views import compute_view
from frugalray.study.plan import StudyPlan


def test_the_operation_count_and_gpu_hours_are_the_stated_model():
    # 2 kept layers of 1,000 parameters, 500 tokens per epoch, 3 epochs: 6 x 2000 x 500 x 3 = 18e6
    assert training_flops(2000, tokens=500, epochs=3, lora=False) == 18_000_000
    assert training_flops(2000, tokens=500, epochs=3, lora=True) == 12_000_000  # no weight gradients
    # + dev/test passes (2 x 2000 x 100) + a teacher of 4000 parameters run forward on the training tokens
    assert training_flops(2000, 500, 3, False, eval_tokens=100, teacher_params=4000) == 18_000_000 + 400_000 + 12_000_000
    h100 = card("H100", utilisation=0.5)
    assert h100.hours(989e12 * 0.5 * 3600) == pytest.approx(1.0)  # one hour of half the card's peak
    with pytest.raises(Exception, match=r"Unknown GPU 'H10'. Did you mean 'H100'"):
        card("H10")


def test_plan_of_the_study_file_prints_every_stage_and_a_total_without_ray_or_data(capsys):
    # camembert-base's config and the French corpora are not here: frugalray's table and approximate sizes
    code = main(["plan", "sweeps/all.py", "--tasks", "ftb_ner", "--seeds", "0", "--gpu", "A100",
                 "--task-size", "ftb_ner=9881,1235,1235,28"])
    out = capsys.readouterr().out
    assert code == 0
    assert "on A100 (40 GiB, 312 TFLOP/s bf16 x utilisation 0.3)" in out
    stages = dict(re.findall(r"^\| (\w+) \| ftb_ner \| (\d+) \|", out, re.M))
    assert list(stages) == ["single", "strategies", "lora", "balanced", "recover"]
    assert stages["single"] == "13"  # the full model and each of the 12 layers alone
    total = re.search(r"\| \*\*all\*\* \| \| \*\*(\d+)\*\* \| 0 \| [\d.-]+ \| \*\*([\d.]+)\*\*", out)
    assert int(total[1]) == sum(map(int, stages.values())) and float(total[2]) > 0
    assert "ftb_ner: 9,881 training / 1,235 dev / 1,235 test examples, 28 words each on average (given)" in out


def test_plan_counts_measured_rows_of_trials_already_in_the_store(tmp_path, tiny_model):
    sweep = SweepConfig(name="p", tasks=("demo_pos",), model=tiny_model, seeds=(0,), results=str(tmp_path / "r"),
                        stages=("single",), resources=ResourceRule(gpus=True))
    store = ResultsStore(tmp_path / "r")
    before = dry_run(sweep, card("H100"), store=str(tmp_path / "r"))
    assert (before.lines[("single", "demo_pos")].trials, before.lines[("single", "demo_pos")].done) == (5, 0)
    plan = StudyPlan(sweep, store)
    full = plan.expand()[0]
    store.append({"trial_id": "a", "config_hash": full.config_hash, "status": "ok", "task": "demo_pos",
                  "strategy": "full", "kept_layers": list(full.kept_layers), "train_seconds": 3000.0,
                  "eval_seconds": 600.0, "gpu_share": 0.5, "cpus": 2.0, "config_json": None,
                  "finished_at": datetime.now(timezone.utc)})
    after = dry_run(sweep, card("H100"), store=str(tmp_path / "r"))
    line = after.lines[("single", "demo_pos")]
    assert (line.trials, line.done) == (5, 1)
    assert line.measured_hours == pytest.approx(0.5)  # an hour at half a card
    assert "0.50 of the GPU-hours were measured" in after.render()


def test_the_nodes_view_sums_trials_failures_and_seconds_per_node(tmp_path):
    store = ResultsStore(tmp_path / "r")
    rows = [("n1", "h1", "ok", None, 10.0, 0.25), ("n1", "h1", "failed", "exception", 2.0, 0.25),
            ("n2", "h2", "ok", None, 5.0, 0.5), ("n2", "h2", "failed", "lost", None, None)]
    for i, (node, host, status, kind, seconds, share) in enumerate(rows):
        store.append({"trial_id": f"t{i}", "config_hash": f"h{i}", "status": status, "error_kind": kind,
                      "node_id": node, "node_host": host, "accelerator_type": "A10G", "train_seconds": seconds,
                      "gpu_share": share, "gpu_ids": ["0"], "task": "demo_pos"})
    table = compute_view(store, "nodes").table.to_pylist()
    assert [(r["host"], r["trials"], r["ok"], r["failed"], r["lost"], r["seconds"], r["mean_gpu_share"])
            for r in table] == [("h1", 2, 1, 1, 0, 12.0, 0.25), ("h2", 2, 1, 0, 1, 5.0, 0.5)]
    assert [r["host"] for r in compute_view(store, "nodes", where=["node_host=h2"]).table.to_pylist()] == ["h2"]
