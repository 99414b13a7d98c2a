"""Command-line options built from the settings dataclasses with ``tyro``: one option per field (nested
settings as dotted options, ``--training.epochs 5``), each with the field's help text and its default.

Lists take commas or spaces (``--seeds 0,1,2`` or ``--seeds 0 1 2``), (task, folder) pairs take ``task=folder``
items (``--data-dirs ftb_ner=/data/ftb/ner ftb_pos=/data/ftb/pos``), each the same from every sweep file whatever
the file's own value, and an optional group of settings (``lora: LoraSettings | None``) becomes a switch and its
settings (``--lora --lora-settings.r 4``).

>>> parse(TrainingSettings, ["--epochs", "5"], prog="demo").epochs  # doctest: +SKIP
5
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from typing import Any

import tyro
from tyro import constructors

from frugalray.config._fields import _dataclass_in, _is_union

REGISTRY = constructors.ConstructorRegistry()
CONFIG = (tyro.conf.FlagCreatePairsOff,)  # a bool field that defaults to False is a plain --flag


def _items_of(kind: Any) -> Any:
    """X for ``tuple[X, ...]``, else None. Compared by origin and arguments, never by ``==``: tyro rebuilds a
    field's type from its default (``typing.Tuple[X, ...]`` for ``tuple[X, ...]`` when the default holds
    exactly two items), so a rule that tests ``kind == tuple[X, ...]`` would hold for some sweep files and not
    others, and the same option would parse differently by the file's default."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) is not tuple or len(args) != 2 or args[1] is not Ellipsis:
        return None
    return args[0]


def _is_pair(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, str)


@REGISTRY.primitive_rule
def _lists(info: constructors.PrimitiveTypeInfo):
    """tuple[int | float | str, ...]: ``0,1,2`` or ``0 1 2``."""
    item = _items_of(info.type)
    if item not in (int, float, str):
        return None
    if tyro.conf.UseAppendAction in info.markers:  # repeated --option VALUE, each value whole (filters)
        return None

    def parse(strings: list[str]) -> tuple:
        parts = [part.strip() for text in strings for part in text.split(",")]
        if not all(parts):
            raise ValueError(f"{' '.join(strings)!r} has an empty item; give e.g. "
                             f"{'0,1,2' if item is int else '0.5,0.7' if item is float else 'a,b'}")
        try:
            return tuple(item(part) for part in parts)
        except ValueError:
            raise ValueError(f"{' '.join(strings)!r} is not a list of {item.__name__}: give e.g. "
                             f"{'0,1,2' if item is int else '0.5,0.7' if item is float else 'a,b'}") from None

    return constructors.PrimitiveConstructorSpec(
        nargs="*", metavar=f"{item.__name__.upper()},...", instance_from_str=parse,
        is_instance=lambda value: isinstance(value, tuple), str_from_instance=lambda value: [",".join(map(str, value))],
    )


@REGISTRY.primitive_rule
def _pairs(info: constructors.PrimitiveTypeInfo):
    """tuple[tuple[str, str], ...]: ``key=value`` items (settings fields name theirs: ``cli_view``)."""
    if not _is_pair(_items_of(info.type)):
        return None
    return pairs_constructor()


def pairs_constructor(key: str = "KEY", value: str = "VALUE", flag: str | None = None,
                      example: str | None = None) -> constructors.PrimitiveConstructorSpec:
    """Parses ``KEY=VALUE`` items into (key, value) pairs; a malformed item is refused with the form expected.

    >>> pairs_constructor("TASK", "FOLDER").instance_from_str(["ftb_pos=/data/ftb/pos"])
    (('ftb_pos', '/data/ftb/pos'),)
    """
    form = f"{key}={value}"

    def parse(strings: list[str]) -> tuple:
        pairs = []
        for text in strings:
            name, sep, found = text.partition("=")
            if not sep or not name or not found:
                usage = f"{flag} {form} [{form} ...]" if flag else f"{form} [{form} ...]"
                raise ValueError(f"{text!r} is not KEY=VALUE: give {usage}" + (f", e.g. {example}" if example else ""))
            pairs.append((name, found))
        return tuple(pairs)

    return constructors.PrimitiveConstructorSpec(
        nargs="*", metavar=f"{form} [{form} ...]", instance_from_str=parse,
        is_instance=lambda found: isinstance(found, tuple),
        str_from_instance=lambda found: [f"{k}={v}" for k, v in found],
    )


# Examples for the pair options whose help says what they pair: "(task, folder) pairs." -> TASK=FOLDER.
_PAIR_EXAMPLES = {("TASK", "FOLDER"): "ftb_ner=/data/ftb/ner ftb_pos=/data/ftb/pos"}


def _pair_names(help_text: str) -> tuple[str, str]:
    """("TASK", "FOLDER") from a help text that starts "(task, folder) pairs", else ("KEY", "VALUE")."""
    found = re.match(r"\(([\w ]+), ([\w ]+)\) pairs", help_text or "")
    if not found:
        return "KEY", "VALUE"
    return tuple(name.strip().upper().replace(" ", "_") for name in found.groups())


def cli_view(cls: type, hide: tuple[str, ...] = (), types: dict[str, Any] | None = None) -> type:
    """A plain dataclass with ``cls``'s fields as the command line shows them: ``hide`` left out (their
    defaults apply), ``types`` overridden, nested settings as views too, and each ``X | None`` settings
    group split into a switch and its settings. It checks nothing: ``from_view`` builds the real settings,
    so that a bad value is a FrugalrayError like any other, not an error inside the parser."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if f.name in hide:
            continue
        kind = (types or {}).get(f.name, hints[f.name])
        group = _dataclass_in(kind)
        if group is not None and _is_union(kind):
            fields.append((f.name, bool, dataclasses.field(default=False, metadata={
                "help": f"{f.metadata.get('help', '')} Its settings: --{_flag(f.name)}-settings.*"})))
            fields.append((f"{f.name}_settings", _nested_view(group), dataclasses.field(
                default_factory=functools.partial(to_view, _nested_view(group), group()))))
        elif group is not None:
            fields.append((f.name, _nested_view(group), dataclasses.field(metadata=f.metadata, default_factory=(
                functools.partial(to_view, _nested_view(group), f.default_factory())))))
        else:
            if _is_pair(_items_of(kind)):  # e.g. --data-dirs TASK=FOLDER [TASK=FOLDER ...]
                names = _pair_names(f.metadata.get("help", ""))
                kind = typing.Annotated[kind, pairs_constructor(*names, flag=f"--{_flag(f.name)}",
                                                                example=_PAIR_EXAMPLES.get(names))]
            default = {"default": f.default} if f.default is not dataclasses.MISSING else {}
            fields.append((f.name, kind, dataclasses.field(metadata=f.metadata, **default)))
    view = dataclasses.make_dataclass(cls.__name__, fields, frozen=True)
    view.__doc__, view.__settings__ = cls.__doc__, cls
    return view


@functools.cache
def _nested_view(cls: type) -> type:
    return cli_view(cls)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def from_view(values: Any, **fixed: Any):
    """The settings a ``cli_view`` instance stands for (``fixed``: values of the hidden fields)."""
    data = {f.name: getattr(values, f.name) for f in dataclasses.fields(values)}
    for name, value in data.items():
        if hasattr(type(value), "__settings__"):
            data[name] = from_view(value)
    for name in [n for n in data if f"{n}_settings" in data]:
        settings = data.pop(f"{name}_settings")
        data[name] = settings if data[name] else None
    return type(values).__settings__(**data, **fixed)


def to_view(view: type, settings: Any):
    """A ``cli_view`` instance holding ``settings`` (the defaults a command line starts from)."""
    names = {f.name for f in dataclasses.fields(view)}
    values = {}
    for f in dataclasses.fields(view):
        base = f.name.removesuffix("_settings")
        if base != f.name and base in names:  # the settings of an optional group
            owner = getattr(settings, base)
            values[f.name] = to_view(f.type, owner) if owner is not None else f.default_factory()
        elif f"{f.name}_settings" in names:  # its switch
            values[f.name] = getattr(settings, f.name) is not None
        elif hasattr(f.type, "__settings__"):
            values[f.name] = to_view(f.type, getattr(settings, f.name))
        else:
            values[f.name] = getattr(settings, f.name)
    return view(**values)


def parse(fn_or_type, argv: list[str] | None, prog: str, default: Any = None, description: str | None = None):
    """tyro over ``fn_or_type`` with frugalray's rules for lists, pairs and flags."""
    with REGISTRY:
        return tyro.cli(fn_or_type, args=argv, prog=prog, default=default, description=description, config=CONFIG)
