"""Documentation generated from the code stays true to it: the column reference page is the schema's, every
column is described, and the command line's help for a bool setting reads right for the one flag it shows."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from frugalray import config
from frugalray.cli import main
from frugalray.results.columns_doc import DESCRIPTIONS, description, render_markdown, sections
from frugalray.results.schema import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
COLUMNS_PAGE = ROOT / "docs" / "reference" / "columns.md"
REGENERATE = "python -m frugalray.results.columns_doc > docs/reference/columns.md"


# -- the column reference ------------------------------------------------------------------------------------
def test_every_column_has_a_description():
    missing = [name for name in SCHEMA.names if not description(name)]
    assert not missing, (f"columns without a description: {missing}; describe them in the schema "
                         f"(column(..., doc)) or in frugalray/results/columns_doc.py DESCRIPTIONS")


def test_descriptions_name_only_columns_the_schema_leaves_undescribed():
    unknown = sorted(set(DESCRIPTIONS) - set(SCHEMA.names))
    assert not unknown, f"DESCRIPTIONS names columns the schema does not have: {unknown}"
    twice = sorted(name for name in DESCRIPTIONS if SCHEMA.field(name).metadata[b"doc"])
    assert not twice, f"described both in the schema and in DESCRIPTIONS (keep the schema's): {twice}"


def test_the_reference_groups_every_column_once_in_schema_order():
    assert [name for _, names in sections() for name in names] == SCHEMA.names


def test_the_committed_column_reference_is_the_schema_rendered():
    page = render_markdown()
    assert "| `kept_layers` | `list<int32>` | original indices of the kept layers |" in page
    assert COLUMNS_PAGE.read_text() == page, f"docs/reference/columns.md is out of date: run {REGENERATE}"


# -- help of bool settings: the command line shows one flag, --X or --no-X, with the field's one help text ----
def _bool_fields() -> list[tuple[str, str]]:
    """(Class.field, help) of every bool setting of frugalray.config, an optional group's switch included."""
    found = []
    for name in config.__all__:
        cls = getattr(config, name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
            continue
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            switch = typing.get_origin(hints[field.name]) in (typing.Union, type(int | None)) and any(
                dataclasses.is_dataclass(member) for member in typing.get_args(hints[field.name]))
            if hints[field.name] is bool or switch:
                found.append((f"{name}.{field.name}", field.metadata.get("help", "")))
    return found


@pytest.mark.parametrize("field,text", _bool_fields(), ids=[name for name, _ in _bool_fields()])
def test_a_bool_setting_says_what_on_and_off_mean(field, text):
    """Its help shows under --X where it is off by default and under --no-X where it is on (a sweep file can
    change which), so it must read right for both: 'On: ...' and 'Off: ...', naming neither flag."""
    assert "On:" in text and "Off:" in text, f"{field}: help {text!r} must say what 'On:' and 'Off:' mean"
    assert "--" not in text, f"{field}: help {text!r} names a flag, which may not be the one shown"


def _flag_helps(argv: list[str], monkeypatch, capsys) -> dict[str, str]:
    """Each option of a command's rendered --help, with its whole help text on one line."""
    monkeypatch.setenv("COLUMNS", "90")  # one column of options
    assert main(argv) == 0
    helps, flag = {}, None
    for line in capsys.readouterr().out.splitlines():
        line = line.strip("│").rstrip()  # boxed where the output is a terminal, plain elsewhere
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if text.startswith("--") and indent <= 2:  # an option: its flag, then its help here or below
            head, _, rest = text.partition("  ")
            flag = head.split()[0]
            helps[flag] = rest.strip()
        elif flag and text and indent > 2:
            helps[flag] = f"{helps[flag]} {text}".strip()
        else:
            flag = None
    return helps


@pytest.mark.parametrize("argv,flag,off", [
    (["trial", "--help"], "--training.no-trim-vocabulary", "Off: every row trains"),
    (["trial", "--help"], "--training.no-energy", "Off: not measured"),
    (["trial", "--help"], "--lora-settings.no-train-head", "Off: the head stays as initialised"),
    (["search", "--help"], "--no-warm-start", "Off: Optuna starts empty"),
    (["sweep", str(ROOT / "sweeps" / "quick.py"), "--help"], "--training.no-trim-vocabulary", "Off: every row trains"),
    (["sweep", str(ROOT / "sweeps" / "quick.py"), "--help"], "--lora.no-train-head",
     "Off: the head stays as initialised"),
])
def test_a_no_flag_says_what_it_turns_off(argv, flag, off, monkeypatch, capsys):
    helps = _flag_helps(argv, monkeypatch, capsys)
    assert flag in helps, f"{flag} not in {' '.join(argv)}: {sorted(helps)}"
    assert off in helps[flag], f"{flag}: {helps[flag]!r}"


def test_every_bool_flag_of_a_sweep_says_what_on_and_off_mean(monkeypatch, capsys):
    """quick.py turns off settings that are on by default (alternate, lora_full): their flags are --X there."""
    helps = _flag_helps(["sweep", str(ROOT / "sweeps" / "quick.py"), "--help"], monkeypatch, capsys)
    flags = [flag for flag, text in helps.items() if re.search(r"\(default: (True|False)\)$", text)]
    assert "--alternate" in flags and "--training.no-energy" in flags
    vague = {flag: helps[flag] for flag in flags if not ("On:" in helps[flag] and "Off:" in helps[flag])}
    assert not vague, vague
