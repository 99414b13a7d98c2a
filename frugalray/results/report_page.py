"""The report's page: a contents list with anchors, one section per task, and in it blocks that put a figure
beside the table it summarises (a CSS grid; one column on narrow screens; a block without a figure gives its
table the whole width). Plain HTML and CSS, nothing fetched from outside.

>>> block_html(Block("pos-lora", "LoRA vs full fine-tuning", table="<table></table>"))[:40]
'<section class="block" id="pos-lora"><h3'
"""

from __future__ import annotations

import base64
import html
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from frugalray.results.tables import _cell, with_uncertainty

CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1480px;color:#222;padding:1em 1.5em 3em}
h1{font-size:1.6em;margin:.4em 0}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin:1.8em 0 .6em}
h3{margin:0 0 .5em;font-size:1.05em}
nav#contents{background:#f7f7f7;border:1px solid #e3e3e3;padding:.4em 1.2em;margin:1em 0}
nav#contents h2{border:0;margin:.4em 0;font-size:1.1em}nav#contents ol{margin:.2em 0;padding-left:1.4em}
nav#contents li{margin:.1em 0}
.block{margin:1.2em 0 1.8em}
.pair{display:grid;grid-template-columns:minmax(0,600px) minmax(0,1fr);gap:1.2em 1.8em;align-items:start}
.pair.alone{grid-template-columns:minmax(0,1fr)}
@media (max-width:1100px){.pair{grid-template-columns:minmax(0,1fr)}}
figure{margin:0;min-width:0}img{display:block;max-width:100%;height:auto}
figcaption{font-size:.85em;color:#555;margin-top:.3em}
.scroll{overflow-x:auto;min-width:0;max-width:100%}
table{border-collapse:collapse;font-size:.8em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{color:#666;font-size:.9em}
"""


@dataclass
class Block:
    """One titled part of a task's section: a figure (HTML) beside a table (HTML), either may be missing."""

    id: str
    title: str
    figure: str = ""
    table: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block]
    notes: list[str] = field(default_factory=list)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its header: the page reserves the image's room before it loads."""
    return struct.unpack(">II", data[16:24])


class Figures:
    """Turns matplotlib figures into ``<figure>`` HTML: PNG files under ``folder`` (or inlined)."""

    def __init__(self, folder: Path, embed: bool, dpi: int = 100):
        self.folder, self.embed, self.dpi = folder, embed, dpi

    def html(self, figure, name: str, caption: str) -> str:
        import io

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=self.dpi)  # constrained layout already fits everything
        data = buffer.getvalue()
        if self.embed:
            src = "data:image/png;base64," + base64.b64encode(data).decode()
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / f"{name}.png"
            atomic_write(path, data)
            src = f"{self.folder.name}/{path.name}"
        width, height = png_size(data)
        text = html.escape(caption)
        return (f'<figure><img src="{src}" width="{width}" height="{height}" alt="{text}">'
                f"<figcaption>{text}</figcaption></figure>")


def atomic_write(path: Path, data: bytes) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_bytes(data)
    os.replace(staging, path)


def table_html(table: pa.Table) -> str:
    """A table for people: mean ± std [95% CI] in one cell, lists joined with commas."""
    shown = with_uncertainty(table)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.column_names)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row.values()) + "</tr>"
                   for row in shown.to_pylist())
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def notes_html(notes: list[str]) -> str:
    return "".join(f'<p class="note">{html.escape(note)}</p>' for note in notes)


def block_html(block: Block) -> str:
    parts = [block.figure, block.table] if block.figure and block.table else [block.figure or block.table]
    kind = "pair" if len(parts) == 2 else "pair alone"
    return (f'<section class="block" id="{block.id}"><h3>{html.escape(block.title)}</h3>'
            f'<div class="{kind}">{"".join(parts)}</div>{notes_html(block.notes)}</section>')


def contents_html(sections: list[Section]) -> str:
    items = []
    for section in sections:
        inner = "".join(f'<li><a href="#{b.id}">{html.escape(b.title)}</a></li>' for b in section.blocks)
        items.append(f'<li><a href="#{section.id}">{html.escape(section.title)}</a>'
                     + (f"<ol>{inner}</ol>" if inner else "") + "</li>")
    return f'<nav id="contents"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def page_html(title: str, summary: str, sections: list[Section]) -> str:
    """The whole page: title, a one-line summary, the contents, then every section."""
    body = [f'<section class="task" id="{s.id}"><h2>{html.escape(s.title)}</h2>{notes_html(s.notes)}'
            + "".join(block_html(b) for b in s.blocks) + "</section>" for s in sections]
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{notes_html([summary])}{contents_html(sections)}"
            + "\n".join(body) + "</body></html>")


def anchor(*parts: str) -> str:
    """An id safe in HTML and URLs: ``anchor("demo_pos", "minilm")`` -> ``demo_pos-minilm``."""
    text = "-".join(parts)
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
