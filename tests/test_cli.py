import pytest
import torch

from frugalray import FrugalrayError
from frugalray.cli import main
from frugalray.results import ResultsStore

FAST = ["--epochs", "1", "--batch-size", "2", "--max-length", "32"]


def test_trial_then_results(tmp_path, tiny_model, ner_task_file, capsys):
    results = str(tmp_path / "results")
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "first", "--n", "2",
                 *FAST, "--results", results]) == 0
    printed = capsys.readouterr().out
    assert "tiny_ner" in printed and "first" in printed
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "mask", "--layers", "1,3",
                 "--lora", *FAST, "--results", results]) == 0
    capsys.readouterr()
    assert main(["results", results, "--where", "lora=true", "--columns", "strategy,kept_layers,lora"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["strategy", "kept_layers", "lora"]
    assert lines[2].split() == ["mask", "1,3", "yes"]
    assert main(["results", results, "--sql", "SELECT count(*) AS n FROM trials", "--format", "csv"]) == 0
    assert capsys.readouterr().out.strip() == "n\n2"


def test_best_uses_the_stores_single_layer_scores(tmp_path, tiny_model, ner_task_file, capsys):
    results = str(tmp_path / "results")
    store = ResultsStore(results)
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "best", "--n", "2",
                 *FAST, "--results", results]) == 2
    assert "Single-layer scores are missing for layer(s) [0, 1, 2, 3]" in capsys.readouterr().err
    for k in range(4):
        assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "single", "--n", str(k),
                     *FAST, "--results", results]) == 0
    singles = {row["kept_layers"][0]: row["dev_f1"] for row in store.table().to_pylist()}
    expected = sorted(sorted(singles, key=lambda k: (-singles[k], k))[:2])
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "best", "--n", "2",
                 *FAST, "--results", results]) == 0
    [best] = store.query(where=["strategy=best"]).to_pylist()
    assert best["kept_layers"] == expected


@pytest.mark.parametrize("args,message", [
    (["--task", "demo_po"], "Unknown task 'demo_po'. Did you mean 'demo_pos'?"),
    (["--task", "demo_pos", "--strategy", "frist"], "Unknown strategy 'frist'. Did you mean 'first'?"),
    (["--task", "demo_pos", "--model", "minilmm"], "Unknown model 'minilmm'. Did you mean 'minilm'?"),
    (["--task", "demo_pos", "--strategy", "first", "--n", "7"], "valid N: 1..6"),
    (["--task", "demo_pos", "--strategy", "mask", "--layers", "1,1"], "repeats layer(s) [1]"),
    (["--task", "demo_pos", "--strategy", "mask", "--layers", "0,6"], "out of range"),
    (["--task", "ftb_pos"], "licensed"),
    (["--task", "demo_pos", "--lora-config", "missing.json"], "LoRA settings file 'missing.json' does not exist"),
    (["--task", "demo_pos", "--lr", "inf"], "training: learning_rate must be a finite number, got inf"),
    (["--task", "demo_pos", "--lora", "--lora-lr", "inf"], "training: lora_learning_rate must be a finite number"),
    (["--task", "demo_pos", "--lr", "nan"], "learning_rate=nan is out of range"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    results = tmp_path / "results"
    assert main(["trial", *args, "--results", str(results)]) == 2
    assert message in capsys.readouterr().err
    assert ResultsStore(results).files() == []


def test_a_seed_out_of_numpys_range_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["trial", "--task", "demo_pos", "--seed", "-1", "--results", str(tmp_path / "r")])
    assert "argument --seed: '-1' is not a seed: an integer from 0 to 2**32 - 1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_malformed_data_reports_file_and_line(tmp_path, tiny_model, data_dir, capsys):
    task = tmp_path / "task.json"
    task.write_text('{"name": "bad", "head": "token", "metric": "ner", "format": "conll", '
                    f'"data_dir": "{data_dir}", "train": "ner_malformed.conll"}}')
    assert main(["trial", "--task", str(task), "--model", tiny_model, "--results", str(tmp_path / "r")]) == 2
    assert "ner_malformed.conll:3: malformed CoNLL line 'habite'" in capsys.readouterr().err


def test_lora_target_not_in_model(tmp_path, tiny_model, ner_task_file, capsys):
    config = tmp_path / "lora.json"
    config.write_text('{"target_modules": ["q_proj", "v_proj"]}')
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--lora-config", str(config), *FAST,
                 "--results", str(tmp_path / "r")]) == 2
    assert "LoRA target module(s) ['q_proj', 'v_proj'] are not in" in capsys.readouterr().err
    assert ResultsStore(tmp_path / "r").files() == []


def test_unwritable_results_location(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["trial", "--task", "demo_pos", "--results", str(tmp_path / "file" / "r")]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_listing_commands(capsys):
    assert main(["tasks"]) == 0
    assert "wikiner" in capsys.readouterr().out
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert "drop_worst" in out and "--n" in out


@pytest.mark.parametrize("device,message", [
    ("gpu", "Device 'gpu' is not a device name; available here: cpu"),
    pytest.param("cuda", "Device 'cuda' is not available on this machine; available here: cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
    pytest.param("cuda:3", "Device 'cuda:3' is not available on this machine; available here: cpu",
                 marks=pytest.mark.skipif(torch.cuda.device_count() > 3, reason="this machine has a 4th GPU")),
])
def test_a_missing_device_fails_before_anything_is_written(tmp_path, capsys, device, message):
    results = tmp_path / "results"
    assert main(["trial", "--task", "demo_pos", "--device", device, "--results", str(results)]) == 2
    assert message in capsys.readouterr().err
    assert not results.exists()
    assert main(["bench-latency", "--device", device]) == 2
    assert message in capsys.readouterr().err


def test_report_out_must_not_be_a_file(tmp_path, capsys):
    (tmp_path / "report.html").write_text("<html></html>")
    for out in ("report.html", "report.html/sub"):
        assert main(["report", str(tmp_path / "results"), "--out", str(tmp_path / out)]) == 2
        assert f"{tmp_path / 'report.html'}' is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "report.html").read_text() == "<html></html>"


SWEEP = dict(name="t", tasks=["demo_pos", "demo_ner"], model="minilm", seeds=[0], data_dirs={"demo_ner": "/data/ner"})


@pytest.fixture
def sweep_main(monkeypatch):
    """sweep.main, with run_sweep replaced: it records the sweep it was given and stops there."""
    import frugalray.sweep

    given = []

    def run_sweep(sweep, **kwargs):
        given.append(sweep)
        raise FrugalrayError("stopped before running")

    monkeypatch.setattr(frugalray.sweep, "run_sweep", run_sweep)

    def main_(argv):
        with pytest.raises(SystemExit) as exit:
            frugalray.sweep.main(SWEEP, argv)
        assert exit.value.code == 2
        return given[0] if given else None

    return main_


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "x"], "argument --seeds: 'x' is not a comma-separated list of seeds, e.g. 0,1,2"),
    (["--seeds", "0,-1"], "seeds are integers from 0 to 2**32 - 1"),
    (["--data-dir", "ftb_pos=/data/ftb"], "this sweep does not run task 'ftb_pos'; its tasks: demo_pos, demo_ner"),
    (["--tasks", "demo_pos", "--data-dir", "demo_ner=/x"], "does not run task 'demo_ner'; its tasks: demo_pos"),
    (["--data-dir", "demo_pos"], "argument --data-dir: 'demo_pos' is not TASK=FOLDER"),
    (["--data-dir", "demo_pos="], "argument --data-dir: 'demo_pos=' is not TASK=FOLDER"),
    (["--lr", "inf"], "argument --lr: 'inf' is not a positive number"),
    (["--lora-lr", "nan"], "argument --lora-lr: 'nan' is not a positive number"),
    (["--epochs", "two"], "argument --epochs: 'two' is not a positive whole number"),
    (["--max-concurrent", "0"], "argument --max-concurrent: '0' is not a positive whole number"),
    (["--autoscale-wait", "-5"], "argument --autoscale-wait: '-5' is not a number of seconds"),
    (["--tasks", "demo_pos,"], "argument --tasks: 'demo_pos,' has an empty name"),
    (["--tasks", "demo_poss"], "Unknown task 'demo_poss'. Did you mean 'demo_pos'?"),
    (["--stages", "single,lora2"], "unknown stage(s) ['lora2']"),
    (["--results", " "], "argument --results: an empty value"),
    (["--name", ""], "argument --name: an empty value"),
])
def test_sweep_command_line_errors_are_clear(sweep_main, capsys, argv, message):
    assert sweep_main(argv) is None  # nothing ran
    assert message in capsys.readouterr().err


def test_sweep_command_line_overrides_the_file(sweep_main):
    sweep = sweep_main(["--tasks", "demo_pos", "--seeds", "1,2", "--lr", "1e-4", "--epochs", "2",
                        "--data-dir", "demo_pos=/data/pos", "--max-concurrent", "3", "--autoscale-wait", "60"])
    assert sweep.tasks == ("demo_pos",) and sweep.seeds == (1, 2)
    assert (sweep.training.learning_rate, sweep.training.epochs) == (1e-4, 2)
    assert sweep.data_dirs == (("demo_pos", "/data/pos"),)  # the file's folder for demo_ner does not apply
    assert (sweep.max_concurrent, sweep.autoscale_wait_s) == (3, 60.0)
