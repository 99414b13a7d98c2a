"""A trial file's footer, checked against the schema: readable, typed like ``SCHEMA`` (another width or
time unit is cast on read) or a problem the store skips with a warning; and the names and permissions
of what the store writes, and the heartbeat of a folder being written.

>>> check_file(pafs.LocalFileSystem(), "results/trials/x.parquet").problem  # doctest: +SKIP
"unreadable (ArrowInvalid: Parquet magic bytes not found in footer)"
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from frugalray.results.schema import COLUMNS, SCHEMA

HEARTBEAT_S = 60.0  # how often a writer touches a staging folder it uses (``keep_alive``)
REQUIRED = ("trial_id", "config_hash", "status")  # a file without them cannot be resumed, aliased or exported
_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
                 pa.bool_(): "BOOLEAN", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}


@dataclass(frozen=True)
class FileCheck:
    """What a trial file's footer says: its rows and columns, or why the file cannot be read."""

    path: str
    rows: int = 0
    columns: tuple[str, ...] = ()
    problem: str | None = None


def staging_name() -> str:
    """A unique name for a file or folder being written: ``<host>_<pid>_<hex>``, so that a leftover of a
    killed writer can be told from one being written (``frugalray.results.health``)."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex}"


_BEATING: dict[str, threading.Event] = {}  # staging folder -> what stops its heartbeat


def keep_alive(path: str | os.PathLike) -> threading.Thread:
    """The heartbeat of a staging folder in use: a daemon thread touches ``path`` every ``HEARTBEAT_S`` seconds
    until ``stop_heartbeat(path)`` (``ResultsStore.put_folder`` calls it once the folder is in place), or
    until it finds the folder gone. Its modification time tells ``--repair`` on any machine that the writer
    lives (``frugalray.results.health``)."""
    stop = _BEATING.setdefault(os.fspath(path), threading.Event())

    def beat() -> None:
        try:
            while not stop.wait(HEARTBEAT_S):
                os.utime(path)
        except FileNotFoundError:
            pass
        finally:
            if _BEATING.get(os.fspath(path)) is stop:
                del _BEATING[os.fspath(path)]

    thread = threading.Thread(target=beat, name=f"frugalray heartbeat {path}", daemon=True)
    thread.start()
    return thread


def stop_heartbeat(path: str | os.PathLike) -> None:
    """End the heartbeat of ``path`` (none: nothing to do); its thread ends at once."""
    stop = _BEATING.pop(os.fspath(path), None)
    if stop is not None:
        stop.set()


def normal_permissions(folder: str | os.PathLike) -> None:
    """Give ``folder`` and everything in it the permissions the umask gives new files (0644/0755 with the
    usual 022): temporary folders and some writers make them private (0700/0600)."""
    mask = _umask()
    for path in [Path(folder), *Path(folder).rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _umask() -> int:
    try:  # Linux reports it; elsewhere reading it means setting it, for a moment, for every thread
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^Umask:\s*([0-7]+)", status, re.MULTILINE)[1], 8)
    except (OSError, TypeError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def check_file(filesystem: pafs.FileSystem, path: str) -> FileCheck:
    """Read a trial file's footer: a file that is not Parquet, lacks a required column or has a column of
    another kind than ``SCHEMA`` (text where a number is expected) is a problem; numbers of another width
    are read once to prove they fit."""
    try:
        with pq.ParquetFile(path, filesystem=filesystem) as parquet:
            schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
            missing = [c for c in REQUIRED if c not in schema.names]
            if missing:
                return FileCheck(path, problem=f"missing required column(s) {', '.join(missing)}")
            to_cast = [f.name for f in schema if f.name in COLUMNS and f.type != SCHEMA.field(f.name).type]
            for name in to_cast:
                got, want = schema.field(name).type, SCHEMA.field(name).type
                if not _same_kind(got, want):
                    return FileCheck(path, problem=f"column {name!r} is {got}, expected {want}")
            if to_cast:
                values = parquet.read(columns=to_cast)
                for name in to_cast:
                    values.column(name).cast(SCHEMA.field(name).type)  # raises when a value does not fit
    except (pa.ArrowException, OSError) as error:
        return FileCheck(path, problem=f"unreadable ({type(error).__name__}: {str(error).splitlines()[0]})")
    return FileCheck(path, rows, tuple(schema.names))


def _same_kind(got: pa.DataType, want: pa.DataType) -> bool:
    """Whether a column of type ``got`` holds what ``want`` means (another width or time unit is fine)."""
    if pa.types.is_null(got):  # a column that was all nulls when written
        return True
    if pa.types.is_dictionary(got):
        got = got.value_type
    if pa.types.is_list(want):
        return (pa.types.is_list(got) or pa.types.is_large_list(got)) and _same_kind(got.value_type, want.value_type)
    if pa.types.is_floating(want):
        return pa.types.is_floating(got) or pa.types.is_integer(got)
    if pa.types.is_string(want):
        return pa.types.is_string(got) or pa.types.is_large_string(got)
    return any(kind(want) and kind(got) for kind in (pa.types.is_integer, pa.types.is_boolean, pa.types.is_timestamp))


def duckdb_type(kind: pa.DataType) -> str:
    if pa.types.is_list(kind):
        return duckdb_type(kind.value_type) + "[]"
    return _DUCKDB_TYPES[kind]


