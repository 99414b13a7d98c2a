"""Reading local files safely: existence checks that never raise, UTF-8 text with errors that name the line.

>>> is_file(__import__("pathlib").Path("no/such/file"))
False
"""

from __future__ import annotations

import codecs
from pathlib import Path

from frugalray._registry import FrugalrayError


def is_file(path: Path) -> bool:
    """``path.is_file()``, but False for a name the file system refuses (too long, say) instead of OSError."""
    try:
        return path.is_file()
    except OSError:
        return False


def is_folder(path: Path) -> bool:
    """``path.is_dir()``, False for a name the file system refuses."""
    try:
        return path.is_dir()
    except OSError:
        return False


def read_text(path: str | Path, what: str = "File") -> str:
    """A UTF-8 text file's content, without a leading byte-order mark (Excel and Notepad write one).

    Text in another encoding is an error naming the line, rather than a misread.

    >>> read_text("tests/fixtures/ner_task.json")[:1]  # doctest: +SKIP
    '{'
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FrugalrayError(f"{what}: cannot read {str(path)!r} ({error.strerror or error})") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = len((data[: error.start] + b"x").splitlines())  # the line the bad byte is on
        column = error.start - max(data.rfind(b"\n", 0, error.start), data.rfind(b"\r", 0, error.start))
        raise FrugalrayError(
            f"{path}:{line}: not UTF-8 text (byte {data[error.start]:#04x} at column {column}); re-encode the "
            f"file, e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}"
        ) from None
