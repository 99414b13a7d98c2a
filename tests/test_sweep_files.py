"""The shipped sweep and search files: their settings parse, and each answers --help with the file's values."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from frugalray.cli.run import load_settings_file
from frugalray.config import SearchConfig, SweepConfig

ROOT = Path(__file__).resolve().parents[1]
FILES = [("all.py", "SWEEP", SweepConfig), ("quick.py", "SWEEP", SweepConfig), ("search.py", "SEARCH", SearchConfig)]


@pytest.mark.parametrize("name,variable,kind", FILES)
def test_a_sweep_files_settings_parse_into_its_config(name, variable, kind, monkeypatch):
    monkeypatch.setenv("FRUGALRAY_RESULTS", "s3://my-bucket/camembert-study")  # as cluster.yaml sets it on every node
    values = load_settings_file(str(ROOT / "sweeps" / name), variable)
    config = kind.from_dict(values, source=name)
    assert config.to_dict() == kind.from_dict(config.to_dict()).to_dict()  # every value kept, none lost
    if name == "all.py":  # the study on the cluster
        assert (config.model, config.seeds, config.results) == ("camembert-base", (0, 1, 2),
                                                                "s3://my-bucket/camembert-study")
        assert config.stages == ("single", "strategies", "lora", "balanced", "recover")
        # trials on GPUs, declared: shares sized from each node type's card, nothing to type per card
        assert (config.max_failures, config.resources.gpus, config.resources.cpu_fallback) == (3, True, False)
        assert dict(config.data_dirs) == {"ftb_ner": "/data/ftb/ner", "ftb_pos": "/data/ftb/pos"}
    elif name == "search.py":
        assert (config.task, config.model, config.budget, config.max_layers) == ("demo_pos", "minilm", 12, 3)
        assert (config.objective, config.prior, config.halving, config.results) == ("f1_vs_layers", "none", True,
                                                                                  "results/quick")


@pytest.mark.parametrize("name,variable,kind", FILES)
@pytest.mark.slow
def test_a_sweep_files_help_lists_its_options_with_the_files_values(name, variable, kind):
    env = os.environ | {"COLUMNS": "100", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, f"sweeps/{name}", "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = " ".join(done.stdout.replace("│", " ").split())  # the help's boxes and wrapping aside
    assert text.startswith(f"usage: python {variable}_FILE [-h] [OPTIONS]")
    flags = set(re.findall(r"(--[a-z][a-z0-9.-]+)", text))
    expected = {"--results", "--training.epochs", "--resources.cpus-per-trial"} | (
        {"--tasks", "--seeds", "--stages", "--max-failures", "--autoscale-wait-s"} if kind is SweepConfig
        else {"--task", "--budget", "--max-layers", "--objective"})
    assert expected <= flags, expected - flags
    values = load_settings_file(str(ROOT / "sweeps" / name), variable)
    for value in (values["results"], values["model"]):  # the file's values are the defaults
        assert f"(default: {value})" in text
