"""Frozen-dataclass configuration helpers: ``from_dict`` refuses unknown keys."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, TypeVar

from frugalray._registry import FrugalrayError

C = TypeVar("C")


def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build a dataclass from a dict; an unknown key is an error naming the known ones.

    >>> from frugalray.lora import LoraSettings
    >>> from_dict(LoraSettings, {"r": 4}).r
    4
    """
    if not isinstance(values, dict):
        raise FrugalrayError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FrugalrayError(
                f"{source}: unknown key '{key}' for {cls.__name__}.{hint} Known keys: {', '.join(known)}"
            )
    try:
        return cls(**values)
    except TypeError as error:
        raise FrugalrayError(f"{source}: {error}") from None


def help_text(cls: type) -> dict[str, str]:
    """Each field's help, for --help output and docs."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def read_json(path: str | Path, what: str) -> dict:
    """A JSON settings file as a dict; a missing file or bad JSON is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FrugalrayError(f"{what} file {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise FrugalrayError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
