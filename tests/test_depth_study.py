"""benchmarks/depth_study.py's choices and tables, on a store of made-up rows: which recoveries go on to every
seed, and distillation against fine-tuning paired by seed."""

import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from frugalray import ResultsStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import depth_study  # noqa: E402  (benchmarks/depth_study.py)

KEPT = [0, 1, 2, 3, 4, 5]
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _row(trial, seed, f1, dev_f1, strategy="mask", teacher=None, minute=0, **recovery):
    kept = list(range(12)) if strategy == "full" else KEPT
    return {"trial_id": trial, "config_hash": trial, "status": "ok", "task": "conll2003_small",
            "model": "mpnet-base", "num_layers": 12, "sweep": depth_study.SWEEP, "strategy": strategy,
            "kept_layers": kept, "n_kept_layers": len(kept), "lora": False, "seed": seed, "f1": f1,
            "dev_f1": dev_f1, "teacher_trial_id": teacher, "epochs_trained": 4, "best_epoch": 2,
            "train_seconds": 100.0, "started_at": START, "finished_at": START + timedelta(minutes=minute),
            **recovery}


FINETUNE = {"init": "finetuned", "recovery": "finetune"}
DISTILL = {"init": "finetuned", "recovery": "distill", "distill_temperature": 2.0, "distill_alpha": 0.5,
           "distill_beta": 0.0}
HIDDEN = DISTILL | {"distill_beta": 1.0, "distill_hidden_map": "uniform"}
PARTIAL = {"init": "finetuned", "recovery": "partial", "partial_layers": 2}


@pytest.fixture
def store(tmp_path):
    store = ResultsStore(tmp_path / "r").check_writable()
    # the hidden-state distillation is stored first: its dev F1 must not stand for distillation from logits'
    for row in [_row("full0", 0, 0.80, 0.90, "full"), _row("hidden0", 0, 0.78, 0.70, teacher="full0", **HIDDEN),
                _row("ft0", 0, 0.79, 0.88, teacher="full0", **FINETUNE),
                _row("kd0", 0, 0.81, 0.89, teacher="full0", **DISTILL),
                _row("partial0", 0, 0.77, 0.85, teacher="full0", **PARTIAL),
                _row("full2-old", 2, 0.70, 0.80, "full", minute=1),  # its weights were gone: trained again
                _row("full2", 2, 0.60, 0.75, "full", minute=2),
                _row("ft2", 2, 0.57, 0.70, teacher="full2", **FINETUNE),
                _row("kd2", 2, 0.60, 0.71, teacher="full2", **DISTILL)]:
        store.append(row)
    return store


def test_the_recoveries_going_on_to_every_seed_are_those_with_the_best_dev_f1_of_their_own_rows(store):
    options = depth_study.recoveries(2)
    dev = {name: depth_study._dev_f1(store, tuple(KEPT), options[name], 0) for name in options}
    assert dev == {"finetune": 0.88, "distill_hidden": 0.70, "distill": 0.89, "partial": 0.85}
    assert depth_study._dev_f1(store, tuple(KEPT), options["partial"], 2) == float("-inf")  # never trained


def test_the_report_pairs_each_student_with_its_own_teacher_and_compares_distillation_with_fine_tuning(store,
                                                                                                        capsys):
    assert depth_study.report(store) == 0
    out = capsys.readouterr().out
    assert "| 2 (trained again later: its weights were gone) | 0.7000 |" in out
    assert "| 2 | 0.6000 |" in out
    # seed 0: 0.81 / 0.80 and seed 2: 0.60 / 0.60 (the copy it learnt from, not the older one at 0.70)
    assert "| 0,1,2,3,4,5 | finetuned+distill(T=2,a=0.5,b=0) | 2 | 0.7050 ± " in out
    # shares 101.25% and 100%: mean 100.625, half-width t(0.975, 1) = 12.706 times the standard error 0.625
    assert "| 100.6% ± 7.9 |" in out
    # distillation minus fine-tuning, by seed: +2.00 (seed 0) and +3.00 (seed 2) points; mean 2.50, half-width
    # 12.706 times the standard error 0.50: 6.35
    assert ("finetuned+distill(T=2,a=0.5,b=0) minus finetuned+finetune, paired by seed and teacher: +2.50 ± 6.4 "
            "test F1 points (95% CI, 2 seeds; by seed 0: +2.00, 2: +3.00)") in out
