"""The results commands on an S3 location (a local S3 server on 127.0.0.1), through pyarrow filesystems."""

import pytest
from transformers import AutoModelForTokenClassification

from frugalray import ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.cli import main
from frugalray.testing import synthetic_catalog, synthetic_table


@pytest.mark.slow
def test_trials_views_report_and_export_on_s3(s3_results, tmp_path, tiny_model, ner_task_file, capsys):
    store = ResultsStore(s3_results)
    assert not store.local
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="mask", layers=(1, 3), save_model=True,
                                    training=TrainingSettings(epochs=1, batch_size=2, max_length=32)), store)
    assert row["status"] == "ok", row["error"]
    store.write_table(synthetic_table(synthetic_catalog(tasks=("pos",))), "trials", "synthetic.parquet")

    assert main(["results", s3_results, "--where", "task=tiny_ner", "--columns", "strategy,kept_layers,model_path"]) == 0
    assert f"mask      1,3          models/{row['trial_id']}" in capsys.readouterr().out
    assert main(["results", s3_results, "--view", "best_worst", "--format", "csv", "--no-reference"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("pos,tiny,best_2,")
    assert main(["report", s3_results, "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "figures" / "pos-tiny-pareto.png").stat().st_size > 10_000

    assert main(["export", s3_results, "--trial", row["trial_id"], "--out", str(tmp_path / "model")]) == 0
    assert "max logit difference" in capsys.readouterr().out
    assert AutoModelForTokenClassification.from_pretrained(tmp_path / "model").config.frugalray_kept_layers == [1, 3]


def test_empty_s3_location_is_a_clear_error(s3_results, capsys):
    assert main(["results", s3_results.replace("/results?", "/nothing?"), "--view", "budget"]) == 2
    assert f"No results in '{s3_results.split('/results?')[0]}/nothing?" in capsys.readouterr().err
