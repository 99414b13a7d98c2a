"""MkDocs hook: settings tables rendered from the settings dataclasses when the site is built, so that they
cannot drift from the code. A page asks for one with a line ``<!-- settings: TrainingSettings -->`` (a class of
``frugalray.config``, or a dotted path such as ``frugalray.data.spec.TaskSpec``); the hook puts a table of its
fields there: name, type, default and help text. A line ``<!-- views -->`` becomes the table of the registered
result views, each with the first line of its docstring.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing

MARKER = re.compile(r"^<!-- settings: ([\w.]+) -->$", re.MULTILINE)


def _type(kind) -> str:
    text = kind.__name__ if isinstance(kind, type) else str(kind)
    return re.sub(r"\bfrugalray(?:\.\w+)*\.(\w+)", r"\1", text.replace("typing.", ""))


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
        if dataclasses.is_dataclass(value):
            return f"its own table ({type(value).__name__})"
    else:
        return "required"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"`{value!r}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def settings_table(name: str) -> str:
    """The Markdown table of the fields of ``frugalray.config.<name>`` (or of the class a dotted path names)."""
    module, _, attribute = name.rpartition(".")
    cls = getattr(importlib.import_module(module or "frugalray.config"), attribute)
    hints = typing.get_type_hints(cls)
    lines = ["| setting | type | default | what it does |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        kind = _type(hints[field.name]).replace(" | ", " or ")
        lines.append(f"| `{field.name}` | `{kind}` | {_default(field)} | "
                     f"{_cell(field.metadata.get('help', ''))} |")
    return "\n".join(lines)


def views_table() -> str:
    """The Markdown table of the registered result views (``frugalray results LOC --view NAME``)."""
    import frugalray.results.views  # noqa: F401 (registers every view)
    from frugalray.results.rows import VIEWS

    lines = ["| view | what it shows |", "|---|---|"]
    lines += [f"| `{name}` | {_cell(VIEWS.get(name).doc)} |" for name in VIEWS.names()]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = markdown.replace("<!-- views -->", views_table())
    return MARKER.sub(lambda match: settings_table(match.group(1)), markdown)
