"""Every option parses the same from every sweep file: ``python sweeps/X.py`` (``sweep_main``), ``frugalray
sweep FILE`` and ``python sweeps/search.py`` (``search_main``), whatever the file's own value of the option.

Parse only: the function that would start Ray is replaced by one that keeps the settings it was given.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from frugalray.cli import main
from frugalray.cli.options import from_view, parse, to_view
from frugalray.cli.run import SweepView, load_settings_file, search_main, sweep_main
from frugalray.config import SweepConfig

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = ["all.py", "quick.py"]
ENTRIES = ["python FILE", "frugalray sweep FILE"]


class _Parsed(Exception):
    """Raised where the sweep would start: parsing is over."""


def _sweep_settings(monkeypatch, entry: str, name: str, argv: list[str]) -> SweepConfig:
    kept = []

    def run_sweep(sweep, runner=None):
        kept.append(sweep)
        raise _Parsed

    monkeypatch.setattr("frugalray.cluster.runs.run_sweep", run_sweep)
    path = str(ROOT / "sweeps" / name)
    with pytest.raises(_Parsed):
        if entry == "python FILE":
            sweep_main(load_settings_file(path, "SWEEP"), argv, prog=f"python {path}")
        else:
            main(["sweep", path, *argv])
    return kept[0]


def _sweep_error(monkeypatch, capsys, entry: str, name: str, argv: list[str]) -> str:
    monkeypatch.setattr("frugalray.cluster.runs.run_sweep", lambda *a, **k: pytest.fail("the sweep started"))
    path = str(ROOT / "sweeps" / name)
    if entry == "python FILE":
        with pytest.raises(SystemExit) as exit_:
            sweep_main(load_settings_file(path, "SWEEP"), argv, prog=f"python {path}")
        code = exit_.value.code
    else:
        code = main(["sweep", path, *argv])
    assert code == 2
    printed = capsys.readouterr()
    return " ".join((printed.out + printed.err).replace("│", " ").split())


@pytest.mark.parametrize("name", SWEEP_FILES)
@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("argv,expected", [
    (["--tasks", "ftb_ner", "ftb_pos", "--data-dirs", "ftb_ner=/x", "ftb_pos=/y"],
     {"tasks": ("ftb_ner", "ftb_pos"), "data_dirs": (("ftb_ner", "/x"), ("ftb_pos", "/y"))}),
    (["--tasks", "ftb_ner", "--data-dirs", "ftb_ner=/x"], {"tasks": ("ftb_ner",), "data_dirs": (("ftb_ner", "/x"),)}),
    (["--data-dirs", "ftb_ner=/data/a=b", "--tasks", "ftb_ner"], {"data_dirs": (("ftb_ner", "/data/a=b"),)}),
    (["--tasks", "ftb_pos", "allocine"], {"tasks": ("ftb_pos", "allocine")}),
    (["--seeds", "0", "1", "2"], {"seeds": (0, 1, 2)}),
    (["--seeds", "0,1,2"], {"seeds": (0, 1, 2)}),
    (["--seeds", "4"], {"seeds": (4,)}),
    (["--stages", "single", "lora"], {"stages": ("single", "lora")}),
    (["--stages", "single,strategies,lora,balanced,recover"],
     {"stages": ("single", "strategies", "lora", "balanced", "recover")}),
    (["--lora.target-modules", "query", "key", "value"], {"lora.target_modules": ("query", "key", "value")}),
    (["--save-models", "lora", "balanced"], {"save_models": ("lora", "balanced")}),
    (["--first-last", "2", "4"], {"first_last": (2, 4)}),
])
def test_an_option_parses_the_same_from_every_sweep_file(monkeypatch, entry, name, argv, expected):
    sweep = _sweep_settings(monkeypatch, entry, name, argv)
    for path, value in expected.items():
        found = sweep
        for part in path.split("."):
            found = getattr(found, part)
        assert found == value, path


@pytest.mark.parametrize("name", SWEEP_FILES)
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_pair_without_equals_is_refused_with_the_form_expected(monkeypatch, capsys, entry, name):
    text = _sweep_error(monkeypatch, capsys, entry, name, ["--tasks", "ftb_ner", "--data-dirs", "ftb_ner"])
    assert ("Error parsing --data-dirs: 'ftb_ner' is not KEY=VALUE: give --data-dirs TASK=FOLDER [TASK=FOLDER ...], "
            "e.g. ftb_ner=/data/ftb/ner ftb_pos=/data/ftb/pos") in text
    assert "Traceback" not in text


@pytest.mark.parametrize("name", SWEEP_FILES)
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_list_item_of_the_wrong_type_is_refused(monkeypatch, capsys, entry, name):
    text = _sweep_error(monkeypatch, capsys, entry, name, ["--seeds", "0,x"])
    assert "Error parsing --seeds: '0,x' is not a list of int: give e.g. 0,1,2" in text


def test_the_sweep_file_itself_exits_2_without_a_traceback():
    env = os.environ | {"COLUMNS": "200", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "sweeps/all.py", "--data-dirs", "ftb_ner=/x", "ftb_pos"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "Error parsing --data-dirs: 'ftb_pos' is not KEY=VALUE: give --data-dirs TASK=FOLDER" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize("argv,expected", [
    (["--lora", "--lora-settings.target-modules", "query", "key"], ("query", "key")),
    (["--lora", "--lora-settings.target-modules", "query,key,value"], ("query", "key", "value")),
])
def test_the_search_files_lists_parse_like_the_sweep_files(monkeypatch, argv, expected):
    kept = []
    monkeypatch.setattr("frugalray.cli.run._search", lambda config, runner=None: kept.append(config))
    search_main(load_settings_file(str(ROOT / "sweeps" / "search.py"), "SEARCH"), [*argv, "--seed", "3"])
    assert kept[0].lora.target_modules == expected and kept[0].seed == 3


# A file's own value of an option, with one, two or three items: tyro rebuilds an option's type from the
# default, and a default of exactly two items used to switch --data-dirs to another parser (all.py's two
# folders: `--data-dirs a=/x b=/y` became the single pair ('a=/x', 'b=/y')).
DEFAULTS_AND_ARGV = {
    "data_dirs": ([(("a", "/1"),), (("a", "/1"), ("b", "/2")), (("a", "/1"), ("b", "/2"), ("c", "/3"))],
                  ["a=/x", "b=/y"], (("a", "/x"), ("b", "/y"))),
    "reference_tasks": ([(("a", "A"),), (("a", "A"), ("b", "B")), (("a", "A"), ("b", "B"), ("c", "C"))],
                        ["a=X"], (("a", "X"),)),
    "tasks": ([("a",), ("a", "b"), ("a", "b", "c")], ["c", "b"], ("c", "b")),
    "seeds": ([(0,), (0, 1), (0, 1, 2)], ["7,8"], (7, 8)),
    "stages": ([("single",), ("single", "lora"), ("single", "lora", "recover")], ["strategies", "balanced"],
               ("strategies", "balanced")),
    "first_last": ([(1,), (1, 2), (1, 2, 3)], ["3", "4"], (3, 4)),
    "drop_middle": ([(2,), (2, 4), (2, 4, 6)], ["6"], (6,)),
}


@pytest.mark.parametrize("field", sorted(DEFAULTS_AND_ARGV))
@pytest.mark.parametrize("items", [1, 2, 3])
def test_an_option_parses_the_same_whatever_the_files_value(field, items):
    defaults, argv, expected = DEFAULTS_AND_ARGV[field]
    base = SweepConfig.from_dict({"tasks": ["a", "b", "c"], field: defaults[items - 1]})
    assert getattr(base, field) == defaults[items - 1]
    options = parse(SweepView, [f"--{field.replace('_', '-')}", *argv], "test", to_view(SweepView, base))
    assert getattr(from_view(options), field) == expected
