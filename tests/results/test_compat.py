"""Stores written by earlier versions keep working: read, viewed and resumed with nothing retrained."""

import shutil
from pathlib import Path

import pytest

from frugalray import ResultsStore
from frugalray.config import TrainingSettings
from frugalray.study.plan import StudyPlan, SweepConfig
from frugalray.results.views import compute_view

STORE_V0_1 = Path(__file__).parent.parent / "fixtures" / "store_v0_1"
# The settings sweeps/quick.py had when frugalray 0.1 wrote that store.
QUICK_V0_1 = dict(
    name="quick", tasks=["demo_pos"], model="minilm", seeds=[0, 1],
    training=dict(epochs=3, learning_rate=2e-4, lora_learning_rate=2e-3, batch_size=8, max_length=64),
    lora=dict(r=8, alpha=32, dropout=0.1, target_modules=["query", "value"], train_head=True),
    drop_middle=[2, 4], drop_ends=[2, 4], best=[2, 3, 4, 5], drop_worst=[1, 2, 3, 4, 5],
    drop_block=[],  # a strategy frugalray 0.1 did not have
)
# What frugalray 0.1 trained with, in today's fields: no gradient clipping, length groups of 50 batches, the
# Trainer's arithmetic (fp32 on CPUs, every embedding row trained).
RECIPE_V0_1 = dict(max_grad_norm=0.0, length_grouping=50, dtype="auto", trim_vocabulary=False)


@pytest.fixture
def old_store(tmp_path) -> ResultsStore:
    shutil.copytree(STORE_V0_1, tmp_path / "store")
    return ResultsStore(tmp_path / "store")


def _sweep(store: ResultsStore, **training) -> SweepConfig:
    values = dict(QUICK_V0_1, results=store.location)
    return SweepConfig.from_dict(values | {"training": values["training"] | training})


def test_a_store_of_version_0_1_resumes_with_nothing_retrained(old_store):
    plan = StudyPlan(_sweep(old_store, **RECIPE_V0_1), old_store)
    before = len(old_store.files())
    assert plan.finished() and plan.queue == []
    assert len(old_store.files()) == before  # nothing trained, nothing re-reported


def test_todays_recipe_is_another_configuration_and_trains_anew(old_store):
    plan = StudyPlan(_sweep(old_store), old_store)  # clipping, uniform batches, bf16, trimmed: not what 0.1 did
    plan.expand()
    assert len(plan.queue) == 14  # full + 6 single layers, for each of the two seeds


def test_recorded_settings_of_version_0_1_read_back_as_it_trained(old_store):
    import json

    from frugalray.config import TrialConfig

    row = next(r for r in old_store.table().to_pylist() if r["stage"] == "single")
    config = TrialConfig.from_record(json.loads(row["config_json"]))
    assert config.training == TrainingSettings(**QUICK_V0_1["training"], **RECIPE_V0_1)


def test_views_read_a_store_of_version_0_1(old_store):
    view = compute_view(old_store, "budget")
    assert view.table.num_rows > 0 and set(view.table.column("task").to_pylist()) == {"demo_pos"}


def test_an_exported_variant_of_an_old_row_keeps_its_own_hash(old_store):
    from frugalray.training.identity import recorded_hash

    source = next(r for r in old_store.table().to_pylist() if r["strategy"] == "full")
    assert recorded_hash(source) != source["config_hash"]  # an old training configuration: hashed again
    variant = source | {"config_hash": "int8-of-source", "variant": "int8", "source_trial_id": source["trial_id"]}
    assert recorded_hash(variant) == "int8-of-source"  # never taken for the trained fp32 run
