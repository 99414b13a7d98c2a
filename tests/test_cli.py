import os
import re
import socket
import time

import pytest
import torch

from frugalray import FrugalrayError
from frugalray.cli import main
from frugalray.results.store import ResultsStore

FAST = ["--training.epochs", "1", "--training.batch-size", "2", "--training.max-length", "32"]


@pytest.mark.slow
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


def test_a_lone_trial_labels_its_latency_isolated_and_records_its_energy(tmp_path, tiny_model, ner_task_file,
                                                                        activity, capsys):
    results = str(tmp_path / "results")
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, *FAST, "--results", results]) == 0
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "first", "--n", "1", *FAST,
                 "--training.no-energy", "--results", results]) == 0
    capsys.readouterr()
    rows = {r["strategy"]: r for r in ResultsStore(results).table().to_pylist()}
    assert rows["full"]["latency_isolated"] is True and rows["first"]["latency_isolated"] is True
    assert rows["full"]["train_kwh"] > 0 and rows["full"]["energy_method"].startswith("cpu:")
    assert rows["first"]["train_kwh"] is None and rows["first"]["energy_method"] == "off (training.energy=False)"
    assert rows["full"]["config_hash"] != rows["first"]["config_hash"]
    assert main(["results", results, "--view", "strategies", "--columns", "strategy,latency_kind,train_kwh"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "isolated, batch " in lines[2] and "isolated, batch " in lines[3]


@pytest.mark.slow
def test_best_uses_the_stores_single_layer_scores(tmp_path, tiny_model, ner_task_file, capsys):
    results = str(tmp_path / "results")
    store = ResultsStore(results)
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "best", "--n", "2",
                 *FAST, "--results", results]) == 2
    assert "Single-layer scores are missing for layer(s) [0, 1, 2, 3]" in capsys.readouterr().err
    for k in range(4):
        assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "single", "--n", str(k),
                     *FAST, "--results", results]) == 0
    singles = {row["kept_layers"][0]: (-row["dev_f1"], row["dev_eval_loss"]) for row in store.table().to_pylist()}
    expected = sorted(sorted(singles, key=lambda k: (singles[k], k))[:2])  # dev F1 ties broken by dev loss
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
    (["--task", "demo_pos", "--training.learning-rate", "inf"], "learning_rate must be a finite number, got inf"),
    (["--task", "demo_pos", "--lora", "--training.lora-learning-rate", "inf"], "lora_learning_rate must be a finite number"),
    (["--task", "demo_pos", "--training.learning-rate", "nan"], "learning_rate must be a finite number, got nan"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, message):
    results = tmp_path / "results"
    assert main(["trial", *args, "--results", str(results)]) == 2
    assert message in capsys.readouterr().err
    assert ResultsStore(results).files() == []


def test_a_seed_out_of_numpys_range_is_refused(tmp_path, capsys):
    assert main(["trial", "--task", "demo_pos", "--seed", "-1", "--results", str(tmp_path / "r")]) == 2
    assert "seed -1: seeds are integers from 0 to 2**32 - 1" in capsys.readouterr().err
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


def _trial_row(config_hash, **values):
    return {"trial_id": f"{config_hash}-{values.pop('n', 0)}", "config_hash": config_hash, "status": "ok",
            "task": "demo_pos", "strategy": "first", "strategy_n": 1, "kept_layers": [0], "n_kept_layers": 1,
            **values}


def _age(path, hours, monkeypatch):
    """Make ``path`` ``hours`` old on the clock that --check and --repair read, stopped at this moment."""
    from frugalray.results import health

    now = time.time()
    monkeypatch.setattr(health, "clock", lambda: now)
    stamp = now - hours * 3600
    os.utime(path, (stamp, stamp))


def test_check_reports_a_healthy_store_and_exits_0(tmp_path, capsys):
    store = ResultsStore(tmp_path).check_writable()
    store.append(_trial_row("a"))
    store.append(_trial_row("a", strategy="single", reused_from="a-0"))  # an alias row shares the hash
    store.append(_trial_row("b", status="failed", error="RuntimeError: boom"))
    store.append(_trial_row("b", n=1))  # a failure fixed by a later run
    store.append(_trial_row("c"))
    store.append(_trial_row("c", n=1, model_path="models/c-1"))  # trained again for its weights (a teacher)
    store.append(_trial_row("v", source_trial_id="c-1", variant="int8"))
    store.append(_trial_row("v", n=1, source_trial_id="c-1", variant="int8"))  # a variant measured twice
    young = tmp_path / ".staging" / f"{socket.gethostname()}_{os.getpid()}_{'0' * 32}.tmp"
    young.write_bytes(b"being written")  # by a live writer: not a problem
    assert main(["results", str(tmp_path), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}: 8 trial file(s), 8 row(s)" in out
    assert "may still be being written" in out and out.rstrip().endswith("Healthy.")


def test_check_names_every_problem_and_repair_fixes_what_it_can(tmp_path, capsys, kill_a_writer, monkeypatch):
    store = ResultsStore(tmp_path).check_writable()
    store.append(_trial_row("a"))
    store.append(_trial_row("a", n=1))  # trained twice
    store.append(_trial_row("w", model_path="models/w-0"))
    store.append(_trial_row("w", n=1, model_path="models/w-1"))  # trained twice, weights kept both times
    bad = tmp_path / "trials" / "h-broken.parquet"
    bad.write_bytes(b"PAR1 half a row")
    kill_a_writer(tmp_path)  # leaves half a row and a model folder in .staging/
    old = tmp_path / "trials" / ".staging-0123.tmp"  # an older version staged beside the data
    old.write_bytes(b"PAR1")
    _age(old, 2, monkeypatch)

    assert main(["results", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path}: 5 trial file(s), 4 row(s)" in out
    assert "trials/h-broken.parquet: unreadable (ArrowInvalid: Parquet magic bytes not found" in out
    assert out.count("(0 min old, stale)") == 2 and "trials/.staging-0123.tmp (120 min old, stale)" in out
    assert "a: 2 successful rows" in out and "w: 2 successful rows" in out and "--repair" in out

    assert main(["results", str(tmp_path), "--repair"]) == 1  # the duplicate stays: repair deletes no data
    out = capsys.readouterr().out
    assert "moved trials/h-broken.parquet to quarantine/h-broken.parquet" in out
    assert out.count("removed stale staging") == 3
    assert (tmp_path / "quarantine" / "h-broken.parquet").read_bytes() == b"PAR1 half a row"
    assert not list((tmp_path / ".staging").iterdir()) and not old.exists()
    assert "Unreadable" not in out and "Staging" not in out and "a: 2 successful rows" in out
    assert store.table().num_rows == 4


def test_repair_leaves_a_live_writer_alone_and_a_missing_store_is_an_error(tmp_path, capsys, monkeypatch):
    from frugalray.results.files import stop_heartbeat

    store = ResultsStore(tmp_path).check_writable()
    store.append(_trial_row("a"))
    live = store.staging_folder()  # this process is writing it
    try:
        _age(live, 5, monkeypatch)
        assert main(["results", str(tmp_path), "--repair"]) == 0
        assert "nothing to repair" in capsys.readouterr().out and os.path.isdir(live)
    finally:
        stop_heartbeat(live)  # the writer this test started is done
    assert main(["results", str(tmp_path / "nope"), "--check"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_lora_config_takes_pefts_own_adapter_config(tmp_path, tiny_model, ner_task_file):
    from peft import LoraConfig

    LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "value"],
               modules_to_save=["classifier"]).save_pretrained(tmp_path / "adapter")
    results = str(tmp_path / "results")
    assert main(["trial", "--task", ner_task_file, "--model", tiny_model, "--strategy", "first", "--n", "2",
                 "--lora-config", str(tmp_path / "adapter" / "adapter_config.json"), *FAST, "--results", results]) == 0
    [row] = ResultsStore(results).table().to_pylist()
    assert (row["lora_r"], row["lora_alpha"], row["lora_dropout"], sorted(row["lora_target_modules"]),
            row["lora_train_head"]) == (4, 16, 0.05, ["query", "value"], True)


@pytest.mark.parametrize("peft_values,train_head", [
    ({"task_type": "TOKEN_CLS"}, True),  # peft adds the classifier to what it trains
    ({}, False),  # peft alone trains no head: the study's collapse, faithfully
])
def test_peft_head_training_is_train_head(tmp_path, peft_values, train_head):
    from peft import LoraConfig

    from frugalray.model.lora import LoraSettings

    LoraConfig(target_modules=["query"], **peft_values).save_pretrained(tmp_path)
    assert LoraSettings.from_json(tmp_path / "adapter_config.json").train_head is train_head


@pytest.mark.parametrize("peft_values,message", [
    ({"use_dora": True}, "peft option use_dora=true changes training in a way frugalray does not"),
    ({"bias": "all"}, 'peft option bias="all" changes training .*; set it to "none" or remove it'),
    ({"use_rslora": True}, "peft option use_rslora=true"),
    ({"init_lora_weights": "gaussian"}, 'peft option init_lora_weights="gaussian"'),
    ({"layers_to_transform": [0]}, r"peft option layers_to_transform=\[0\]"),
    ({"modules_to_save": ["classifier", "embeddings"]}, r"modules_to_save \['embeddings'\]: frugalray trains the task head only"),
    ({"task_type": "CAUSAL_LM"}, "task_type 'CAUSAL_LM' is not a classification task"),
    ({"target_modules": "query"}, "target_modules 'query' is a peft pattern"),
])
def test_lora_config_refuses_peft_options_frugalray_cannot_honour(tmp_path, peft_values, message, capsys):
    from peft import LoraConfig

    LoraConfig(**{"target_modules": ["query", "value"], **peft_values}).save_pretrained(tmp_path)
    assert main(["trial", "--task", "demo_pos", "--lora-config", str(tmp_path / "adapter_config.json"),
                 "--results", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and "adapter_config.json" in error
    assert ResultsStore(tmp_path / "results").files() == []


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
    """sweep_main, with run_sweep replaced: it records the sweep it was given and stops there."""
    import frugalray.cluster.runs
    from frugalray.cli import sweep_main

    given = []

    def run_sweep(sweep, **kwargs):
        given.append(sweep)
        raise FrugalrayError("stopped before running")

    monkeypatch.setattr(frugalray.cluster.runs, "run_sweep", run_sweep)

    def main_(argv):
        with pytest.raises(SystemExit) as exit:
            sweep_main(SWEEP, argv)
        assert exit.value.code == 2
        return given[0] if given else None

    return main_


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "x"], "Error parsing --seeds: 'x' is not a list of int: give e.g. 0,1,2"),
    (["--seeds", "0,-1"], "seeds are integers from 0 to 2**32 - 1"),
    (["--data-dirs", "ftb_pos=/data/ftb"], "names task(s) ['ftb_pos'] that the sweep does not run: ['demo_pos', 'demo_ner']"),
    (["--tasks", "demo_pos", "--data-dirs", "demo_ner=/x"], "names task(s) ['demo_ner'] that the sweep does not run: ['demo_pos']"),
    (["--data-dirs", "demo_pos"], "'demo_pos' is not KEY=VALUE"),
    (["--data-dirs", "demo_pos="], "'demo_pos=' is not KEY=VALUE"),
    (["--training.learning-rate", "inf"], "learning_rate must be a finite number, got inf"),
    (["--training.lora-learning-rate", "nan"], "lora_learning_rate must be a finite number, got nan"),
    (["--training.epochs", "two"], "Error parsing --training.epochs: invalid literal for int() with base 10: 'two'"),
    (["--max-concurrent", "0"], "max_concurrent must be >= 1"),
    (["--autoscale-wait-s", "-5"], "autoscale_wait_s must be >= 0 seconds, got -5.0"),
    (["--tasks", "demo_pos,"], "'demo_pos,' has an empty item"),
    (["--tasks", "demo_poss"], "Unknown task 'demo_poss'. Did you mean 'demo_pos'?"),
    (["--stages", "single,lora2"], "Unknown stage 'lora2'. Did you mean 'lora'?"),
    (["--results", " "], "results is empty"),
    (["--name", ""], "name is empty"),
])
def test_sweep_command_line_errors_are_clear(sweep_main, capsys, argv, message):
    assert sweep_main(argv) is None  # nothing ran
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--budget", "0"], "budget"),
    (["--training.learning-rate", "inf"], "learning_rate must be a finite number, got inf"),
    (["--task", "demo_poss"], "Unknown task 'demo_poss'. Did you mean 'demo_pos'?"),
])
def test_search_file_errors_are_clear(capsys, argv, message):
    from frugalray.cli import search_main

    with pytest.raises(SystemExit) as exit:
        search_main(dict(name="s", task="demo_pos", model="minilm", budget=4), argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("frugalray: error:") and message in err and "Traceback" not in err


def test_sweep_command_line_overrides_the_file(sweep_main):
    sweep = sweep_main(["--tasks", "demo_pos", "--seeds", "1,2", "--training.learning-rate", "1e-4",
                        "--training.epochs", "2", "--data-dirs", "demo_pos=/data/pos", "--max-concurrent", "3",
                        "--autoscale-wait-s", "60"])
    assert sweep.tasks == ("demo_pos",) and sweep.seeds == (1, 2)
    assert (sweep.training.learning_rate, sweep.training.epochs) == (1e-4, 2)
    assert sweep.data_dirs == (("demo_pos", "/data/pos"),)  # the file's folder for demo_ner does not apply
    assert (sweep.max_concurrent, sweep.autoscale_wait_s) == (3, 60.0)


@pytest.mark.parametrize("argv", [["--help"], ["results", "--help"], ["results", "STORE", "--view", "budget"],
                                  ["results", "STORE", "--view", "payoff"], ["results", "STORE", "--check"],
                                  ["results", "STORE", "--where", "task=demo_pos"], ["results", "FRONTS", "--fronts"]])
@pytest.mark.slow
def test_reading_commands_import_neither_torch_nor_ray(argv, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from frugalray.results.fronts import write_front

    store = str(Path(__file__).parent / "fixtures" / "store_v0_1")
    write_front(ResultsStore(tmp_path), "s", "f1_vs_layers", [{"kept_layers": [0], "dev_f1": 0.5, "n_kept_layers": 1}])
    places = {"STORE": store, "FRONTS": str(tmp_path)}
    code = ("import sys\nfrom frugalray.cli import main\nmain(sys.argv[1:])\n"
            "print('HEAVY', sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *[places.get(a, a) for a in argv]],
                          capture_output=True, text=True, timeout=120)
    assert "HEAVY []" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    if "--fronts" in argv:
        assert "== s (f1_vs_layers)" in done.stdout


# -- every command's help and example ---------------------------------------------------------------
COMMANDS = ["trial", "sweep", "search", "results", "report", "export", "importance", "bench-latency", "tasks",
            "strategies", "stages"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _help(argv, capsys, monkeypatch, columns: int = 100) -> str:
    """The help text; 100 columns: one panel of options a row (wider, tyro puts panels side by side)."""
    monkeypatch.setenv("COLUMNS", str(columns))
    capsys.readouterr()
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


def _options(text: str) -> list[tuple[str, str]]:
    """(flag, help) of every option in tyro's help (its plain layout, as when not on a terminal)."""
    found, current = [], None
    for line in text.splitlines():
        if re.match(r"^  (-h, )?--[a-z]", line):
            flag, _, rest = line.strip().removeprefix("-h, ").partition("  ")
            current = [flag.split()[0], rest.strip()]
            found.append(current)
        elif current is not None and re.match(r"^ {3,}\S", line):  # indented under its flag (by 4 to 8 spaces)
            current[1] = f"{current[1]} {line.strip()}".strip()
        else:
            current = None
    return [(flag, text) for flag, text in found if flag != "--help"]


@pytest.mark.parametrize("argv", [[c] for c in COMMANDS] + [["sweep", os.path.join(ROOT, "sweeps", "quick.py")]])
def test_every_option_has_help_and_shows_its_default(argv, capsys, monkeypatch):
    text = _help(argv, capsys, monkeypatch)
    assert not re.search(r"\w+\(\w+: '", text)  # no settings group described by its bare dataclass signature
    options = _options(text)
    if argv[0] in ("trial", "search", "results", "export", "bench-latency") or len(argv) > 1:
        assert len(options) >= 3, text  # tyro's layout was read: these commands have many options
    for flag, help_ in options:
        described = re.fullmatch(r"(.*?)\s*\((default: .*|required|repeatable)\)", help_)
        assert described and len(described.group(1)) > 3, f"{argv[0]} {flag}: {help_!r}"


def test_strategies_name_options_that_trial_takes(capsys, monkeypatch):
    flags = {flag for flag, _ in _options(_help(["trial"], capsys, monkeypatch))}
    assert main(["strategies"]) == 0
    named = set(re.findall(r" (--[a-z-]+) ", capsys.readouterr().out))
    assert named == {"--n", "--layers"} and named <= flags


@pytest.fixture(scope="module")
def example_store(tmp_path_factory, tiny_model, ner_task_file):
    """results/quick as a quick sweep leaves it: demo tasks (synthetic rows) and a trial with saved weights."""
    from frugalray import LoraSettings, TrainingSettings, TrialConfig, execute_trial
    from frugalray.testing import synthetic_catalog, synthetic_table

    root = tmp_path_factory.mktemp("example") / "results" / "quick"
    store = ResultsStore(root)
    catalog = synthetic_catalog(tasks=("demo_pos", "demo_ner"), num_layers=6, model="minilm")
    store.write_table(synthetic_table(catalog, seeds=2), "trials", "synthetic.parquet")
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=2, lora=LoraSettings(),
                                    training=TrainingSettings(epochs=1, batch_size=2, max_length=32),
                                    save_model=True), store)
    assert row["status"] == "ok", row["error"]
    return root, row["trial_id"]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_every_commands_example_runs_as_written(command, example_store, tmp_path, capsys, monkeypatch):
    """Each `frugalray COMMAND --help` ends its description with an Example line: run it, in a folder laid out
    as a fresh clone after the quick start (sweeps/, results/quick/). Sweeps and searches schedule real plans
    on a local Ray with simulated trials (their training is tested elsewhere); the rest run for real."""
    import shlex
    import shutil

    [example] = re.findall(r"^Example: (frugalray .+)$", _help([command], capsys, monkeypatch, 400), re.M)
    store, trial_id = example_store
    shutil.copytree(store, tmp_path / "results" / "quick")
    shutil.copytree(os.path.join(ROOT, "sweeps"), tmp_path / "sweeps")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRUGALRAY_SIMULATED_SECONDS", "0")
    monkeypatch.setattr("frugalray.cluster.driver.DEFAULT_RUNNER", "frugalray.testing:simulated_trial")
    argv = [trial_id if word == "TRIAL_ID" else word for word in shlex.split(example)[1:]]
    try:
        assert main(argv) == 0, capsys.readouterr().err[-3000:]
    finally:
        import sys

        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
    out = capsys.readouterr().out
    assert out.strip(), example


# -- range and combination errors of the study's options, as the command line answers them --------------------
def _refused(argv, capsys) -> str:
    """Run the command line; it must exit 2 with frugalray's one-line error (no traceback). Returns stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip(), err
    return err


@pytest.mark.parametrize("argv,message", [
    (["--full-model-epochs", "-1"], "full_model_epochs must be >= 0 (0: as every trial) and full_model_patience >= 1; "
                                    "got -1 and 2"),
    (["--full-model-epochs", "6", "--full-model-patience", "0"], "full_model_patience >= 1; got 6 and 0"),
    (["--recovery.teacher-epochs", "6"], "recovery.teacher_epochs is set by the sweep from full_model_epochs"),
    (["--full-model-epochs", "six"], "--full-model-epochs"),
])
def test_full_model_epochs_out_of_range_or_combined_wrongly_is_refused_on_the_command_line(tmp_path, capsys, argv,
                                                                                          message):
    results = tmp_path / "r"
    err = _refused(["sweep", os.path.join(ROOT, "sweeps", "quick.py"), "--results", str(results), *argv], capsys)
    assert message in err
    assert not results.exists()


@pytest.mark.parametrize("argv,message", [
    (["--rung-score", "dev_los"], "Unknown rung_score 'dev_los'. Did you mean 'dev_loss'?"),
    (["--rung-score", "f1"], "Unknown rung_score 'f1'"),
    (["--rung-score", "loss"], "Did you mean 'dev_loss'? Available: dev_f1, dev_f1_then_loss, dev_loss"),
])
def test_an_unknown_rung_score_is_refused_on_the_command_line(tmp_path, capsys, argv, message):
    results = tmp_path / "r"
    err = _refused(["search", "--task", "demo_pos", "--results", str(results), *argv], capsys)
    assert message in err
    assert not results.exists()


SHARE = "a share from 0 to 1 of the Linear weights, for torch int8 (--int8 without --onnx) whose fp32 groups are chosen"


@pytest.mark.parametrize("argv,message", [
    (["--int8", "--int8-max-fp32-share", "1.5"], f"--int8-max-fp32-share 1.5: {SHARE}"),
    (["--int8", "--int8-max-fp32-share", "-0.1"], f"--int8-max-fp32-share -0.1: {SHARE}"),
    (["--int8-max-fp32-share", "0.2"], f"--int8-max-fp32-share 0.2: {SHARE}"),  # without --int8
    (["--int8", "--onnx", "--int8-max-fp32-share", "0.2"], f"--int8-max-fp32-share 0.2: {SHARE}"),
    (["--int8", "--int8-fp32", "classifier", "--int8-max-fp32-share", "0.2"], f"--int8-max-fp32-share 0.2: {SHARE}"),
    (["--int8", "--int8-max-fp32-share", "half"], "--int8-max-fp32-share"),
])
def test_an_int8_fp32_budget_out_of_range_or_without_a_choice_is_refused_on_the_command_line(tmp_path, capsys,
                                                                                            argv, message):
    store = ResultsStore(tmp_path / "r").check_writable()  # no trial needed: the options are checked first
    err = _refused(["export", store.location, "--trial", "t", "--out", str(tmp_path / "out"), *argv], capsys)
    assert message in err
    assert not (tmp_path / "out").exists() and store.files() == []
