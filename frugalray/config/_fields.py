"""Frozen-dataclass configuration helpers: ``from_dict`` refuses unknown keys and values of the wrong type.

Each settings class calls ``check_fields(self)`` first thing in ``__post_init__``, so that a value of the
wrong type (``"1"`` for an int, ``"true"`` for a bool, ``inf`` for a learning rate) is refused with the
setting's name whether the settings come from a file, the command line or Python. No torch here.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from frugalray._registry import FrugalrayError
from frugalray._files import is_file, read_text

C = TypeVar("C")


class Settings:
    """Base of every settings dataclass: fields checked against their types and frozen (lists become
    tuples, a mapping given for (key, value) pairs becomes sorted pairs) on creation, then ``check()``;
    ``from_dict`` refuses unknown keys; ``to_dict`` gives plain JSON-able values.

    >>> from frugalray.config import LoraSettings
    >>> LoraSettings.from_dict({"r": 4, "target_modules": ["query"]}).target_modules
    ('query',)
    """

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for field in dataclasses.fields(self):  # nested settings given as a mapping are built the same way
            value, nested = getattr(self, field.name), _dataclass_in(hints[field.name])
            if nested is not None and isinstance(value, dict):
                object.__setattr__(self, field.name, from_dict(nested, value, f"{type(self).__name__}: {field.name}"))
        check_fields(self)
        for field in dataclasses.fields(self):
            frozen = _frozen(getattr(self, field.name), hints[field.name])
            object.__setattr__(self, field.name, frozen)
        self.check()

    def check(self) -> None:
        """Checks across fields, in subclasses; raise FrugalrayError naming the setting."""

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], source: str | None = None) -> C:
        return from_dict(cls, values, source or cls.__name__)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _frozen(value: Any, kind: Any) -> Any:
    """``value`` with lists as tuples (and a mapping as sorted (key, value) pairs) where ``kind`` is a tuple."""
    if not isinstance(value, (list, tuple, dict)):
        return value
    members = typing.get_args(kind) if _is_union(kind) else (kind,)
    kind = next((m for m in members if typing.get_origin(m) is tuple), None)
    if kind is None:
        return value
    args = typing.get_args(kind)
    if isinstance(value, dict):
        value = sorted(value.items())
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_frozen(item, args[0]) for item in value)
    return tuple(_frozen(item, member) for item, member in zip(value, args))


def from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build a dataclass from a dict; an unknown key, a missing one or a value of the wrong type is an error.

    A dict given for a field whose type is a dataclass builds that dataclass the same way.

    >>> from frugalray.model.lora import LoraSettings
    >>> from_dict(LoraSettings, {"r": 4}).r
    4
    """
    if not isinstance(values, dict):
        raise FrugalrayError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = [f.name for f in fields]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise FrugalrayError(
                f"{source}: unknown key '{key}' for {cls.__name__}.{hint} Known keys: {', '.join(known)}"
            )
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise FrugalrayError(f"{source}: missing key(s) {', '.join(missing)} for {cls.__name__} "
                             f"(required: {', '.join(required)})")
    hints = _hints(cls)
    values = dict(values)
    for key, value in values.items():
        nested = _dataclass_in(hints[key])
        if nested is not None and isinstance(value, dict):
            values[key] = value = from_dict(nested, value, f"{source}: {key}")
        check_value(key, value, hints[key], source)
    try:
        return cls(**values)
    except TypeError as error:
        raise FrugalrayError(f"{source}: {error}") from None


def check_fields(instance: Any, source: str | None = None) -> None:
    """Check every field of a dataclass instance against its type annotation; call it from ``__post_init__``.

    int, float, bool, str, None, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``, Literal and nested
    dataclasses (checked in turn) are understood; other annotations are not checked. A bool is not an int,
    an int is a float, and a float must be finite. A list is taken where a tuple is expected (the classes
    freeze it into one), and a mapping where a tuple of (key, value) pairs is.

    >>> from frugalray.model.lora import LoraSettings
    >>> LoraSettings(r="8")
    Traceback (most recent call last):
    ...
    frugalray._registry.FrugalrayError: LoraSettings: r must be int, got '8' (str)
    """
    source = source or type(instance).__name__
    hints = _hints(type(instance))
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        check_value(field.name, value, hints[field.name], source)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, f"{source}: {field.name}")


def check_value(name: str, value: Any, kind: Any, source: str) -> None:
    """Raise a FrugalrayError naming ``source``, the setting, the expected type and the value if it does not fit.

    >>> check_value("epochs", "3", int, "train.json")
    Traceback (most recent call last):
    ...
    frugalray._registry.FrugalrayError: train.json: epochs must be int, got '3' (str)
    """
    problem = _problem(value, kind)
    if problem is not None:
        raise FrugalrayError(f"{source}: {name} must be {problem}, got {_shown(value)}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_in(kind: Any) -> type | None:
    """The dataclass a field holds (``LoraSettings`` for ``LoraSettings | None``), if any."""
    for member in typing.get_args(kind) if _is_union(kind) else (kind,):
        if isinstance(member, type) and dataclasses.is_dataclass(member):
            return member
    return None


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (Union, types.UnionType)


def _problem(value: Any, kind: Any) -> str | None:
    """What ``value`` should have been to fit ``kind``; None when it fits."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return None
    if kind is None or kind is type(None):
        return None if value is None else "None"
    if _is_union(kind):
        problems = [_problem(value, member) for member in args]
        if None in problems:
            return None
        # an infinite float fits nothing, but the useful thing to say is that it must be finite
        return next((p for p in problems if "finite" in p), None) or _name(kind)
    if origin is Literal:
        return None if value in args else _name(kind)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "float"
        return None if math.isfinite(value) else "a finite number"
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "int"
    if origin is tuple:
        return _tuple_problem(value, kind, args)
    if isinstance(kind, type):
        return None if isinstance(value, kind) else _name(kind)
    return None  # an annotation this check does not know: not checked


def _tuple_problem(value: Any, kind: Any, args: tuple) -> str | None:
    pairs = len(args) == 2 and args[1] is Ellipsis and typing.get_origin(args[0]) is tuple
    if pairs and isinstance(value, dict):  # {task: folder} for ((task, folder), ...)
        value = list(value.items())
    if not isinstance(value, (tuple, list)):
        return _name(kind)
    if len(args) == 2 and args[1] is Ellipsis:
        items = [_problem(item, args[0]) for item in value]
    elif len(value) != len(args):
        return _name(kind)
    else:
        items = [_problem(item, member) for item, member in zip(value, args)]
    problem = next((p for p in items if p is not None), None)
    if problem is None:
        return None
    return "a list of finite numbers" if "finite" in problem else _name(kind)


def _name(kind: Any) -> str:
    """How an annotation reads in an error: 'int or None', 'a list of str', 'a list of (str, str)'."""
    args = typing.get_args(kind)
    if kind is None or kind is type(None):
        return "None"
    if _is_union(kind):
        return " or ".join(_name(member) for member in args)
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if typing.get_origin(kind) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_name(args[0])}"
        return f"({', '.join(_name(a) for a in args)})"
    return getattr(kind, "__name__", str(kind))


def _shown(value: Any) -> str:
    text = repr(value)
    text = text if len(text) <= 80 else text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def read_json(path: str | Path, what: str) -> dict:
    """A JSON settings file as a dict; a missing file, bad text or bad JSON is an error naming file and line."""
    path = Path(path)
    if not is_file(path):
        raise FrugalrayError(f"{what} file {str(path)!r} does not exist")
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as error:
        raise FrugalrayError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    except RecursionError:
        raise FrugalrayError(f"{path}: JSON nested too deeply to be settings") from None
