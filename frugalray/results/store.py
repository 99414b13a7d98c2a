"""The results store: one typed Parquet file per trial, queried with filters or SQL (DuckDB).

Appends are atomic and safe with many writers: a row is written into the store's own ``.staging/``
folder (same filesystem, so the rename is atomic; no reader globs it), then renamed to
``trials/<config_hash>-<id>.parquet``. On object stores (S3, GCS) a single PUT is already all-or-nothing,
so the file is written under its final name.

One bad file never blocks the rest: every reader goes through ``readable_files``, which reads each file's
footer once per process (per path, size and modification time), skips an unreadable file or one whose
columns do not fit ``SCHEMA`` with one logged warning, and casts compatible columns (int64 where int32 is
expected, float32 where float64) to the schema. ``frugalray results STORE --check`` lists such files and
``--repair`` moves them to ``quarantine/`` (see ``frugalray.results.health``).

>>> store = ResultsStore("results/")                  # doctest: +SKIP
>>> store.query(where=["task=demo_pos", "n_kept_layers<=3"]).num_rows  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from frugalray._registry import FrugalrayError
from frugalray.results.filters import where_clauses
from frugalray.results.files import (FileCheck, check_file, duckdb_type, keep_alive, normal_permissions,
                                     staging_name, stop_heartbeat)
from frugalray.results.schema import COLUMNS, SCHEMA, TrialResult, is_trained, table

STAGING = ".staging"  # files being written, in the store but outside every folder a reader lists
log = logging.getLogger(__name__)


def _filesystem(location: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, path, is_local) for a plain path or a URI (s3://, gs://, file://)."""
    if "://" in location:
        try:
            filesystem, path = pafs.FileSystem.from_uri(location)
        except Exception as error:
            raise FrugalrayError(f"Results location {location!r} cannot be opened: {error}") from None
        return filesystem, path, isinstance(filesystem, pafs.LocalFileSystem)
    return pafs.LocalFileSystem(), str(Path(location).resolve()), True


# (filesystem, path, size, mtime) -> verdict: a file is checked once per version and process.
_CHECKED: dict[tuple, FileCheck] = {}
_WARNED: set[tuple] = set()


class ResultsStore:
    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self.fs, self.root, self.local = _filesystem(self.location)
        self.trials_dir = f"{self.root}/trials"

    def check_writable(self) -> "ResultsStore":
        """Create the store and prove it takes a file; a clear error otherwise."""
        probe = f"{self.root}/{STAGING}/{staging_name()}.tmp"
        try:
            self.fs.create_dir(self.trials_dir, recursive=True)
            self.fs.create_dir(f"{self.root}/{STAGING}", recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except Exception as error:
            raise FrugalrayError(
                f"Results location {self.location!r} is not writable ({type(error).__name__}: {error}); "
                f"give a folder you can write to, or an s3://, gs:// or NFS path"
            ) from None
        return self

    def append(self, result: TrialResult | dict) -> str:
        """Write one result atomically; returns the file path."""
        if not isinstance(result, TrialResult):
            try:
                result = TrialResult.from_row(result)
            except KeyError as error:
                raise FrugalrayError(error.args[0]) from None
        name = f"{result.config_hash or 'nohash'}-{uuid.uuid4().hex[:12]}.parquet"
        return self.write_table(table([result]), "trials", name)

    def trained_row(self, config_hash: str) -> TrialResult | None:
        """The successful row that trained ``config_hash`` (not an alias row), if the store has one. Only the
        files named after the hash (``append``) are read.

        >>> store.trained_row("3f2a9c0d1e4b5a6c").f1  # doctest: +SKIP
        0.81
        """
        named = [p for p in self.files() if p.rsplit("/", 1)[-1].startswith(f"{config_hash}-")]
        readable = [c.path for c in (check_file(self.fs, p) for p in named) if c.problem is None]
        rows = self.dataset(require=False, files=readable).to_table().to_pylist() if readable else []
        trained = [r for r in rows if r["config_hash"] == config_hash and is_trained(r)]
        return TrialResult.from_row(max(trained, key=lambda r: bool(r["model_path"]))) if trained else None  # weights kept first

    def write_table(self, table: pa.Table, folder: str, name: str) -> str:
        """Write ``folder/name`` under the store so that no reader ever sees part of it; returns the path."""
        return self._write(folder, name, lambda where, filesystem: pq.write_table(table, where, filesystem=filesystem))

    def write_bytes(self, data: bytes, folder: str, name: str) -> str:
        """Write a small file ``folder/name`` (``folder`` "" for the store's root) the way ``write_table`` does."""

        def write(where, filesystem):
            with filesystem.open_output_stream(where) as out:
                out.write(data)

        return self._write(folder, name, write)

    def read_bytes(self, relative: str) -> bytes | None:
        """The content of a file of the store, or None when there is none."""
        path = self.path(relative)
        try:
            with self.fs.open_input_stream(path) as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except OSError as error:
            if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
                return None
            raise FrugalrayError(f"{path} cannot be read: {error}") from None

    def _write(self, folder: str, name: str, write) -> str:
        directory = f"{self.root}/{folder}".rstrip("/")
        final = f"{directory}/{name}"
        self.fs.create_dir(directory, recursive=True)
        if not self.local:  # one PUT: all or nothing already
            write(final, self.fs)
            return final
        staging = f"{self.root}/{STAGING}/{staging_name()}.tmp"
        Path(staging).parent.mkdir(parents=True, exist_ok=True)
        try:
            write(staging, pafs.LocalFileSystem())
            with open(staging, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(staging, final)  # atomic on POSIX: readers see all of the file or none
        finally:
            if os.path.exists(staging):
                os.remove(staging)
        return final

    def _listing(self, folder: str) -> list[pafs.FileInfo]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{folder}", allow_not_found=True))
        except Exception as error:
            raise FrugalrayError(f"Results location {self.location!r} cannot be read: {error}") from None
        return sorted(
            (i for i in infos
             if i.type == pafs.FileType.File and i.path.endswith(".parquet") and not i.base_name.startswith(".")),
            key=lambda i: i.path,
        )

    def files(self, folder: str = "trials") -> list[str]:
        """Finished Parquet files of a folder of the store (staging files are never listed)."""
        return [i.path for i in self._listing(folder)]

    def checked_files(self) -> list[FileCheck]:
        """Every trial file with what its footer says; files not seen before are read in parallel."""
        infos = self._listing("trials")
        keys = [(self.fs.type_name, i.path, i.size, i.mtime_ns) for i in infos]
        new = {key: info.path for key, info in zip(keys, infos) if key not in _CHECKED}
        if new:
            with ThreadPoolExecutor(max_workers=min(16, len(new))) as pool:  # remote footers are one GET each
                _CHECKED.update(zip(new, pool.map(partial(check_file, self.fs), new.values())))
        return [_CHECKED[key] for key in keys]

    def readable_files(self) -> list[FileCheck]:
        """The trial files every reader reads; each other file is skipped with one warning naming it."""
        checks = self.checked_files()
        for check in checks:
            key = (self.fs.type_name, check.path)
            if check.problem and key not in _WARNED:
                _WARNED.add(key)
                log.warning("Skipping %s: %s. `frugalray results %s --repair` moves it to quarantine/",
                            check.path, check.problem, self.location)
        return [c for c in checks if c.problem is None]

    def path(self, relative: str) -> str:
        """The full path of ``relative`` (e.g. a row's ``model_path``); a path leaving the store is refused."""
        parts = PurePosixPath(relative).parts
        outside = "://" in relative or PurePosixPath(relative).is_absolute() or ".." in parts or not parts
        full = f"{self.root}/{relative}"
        if not outside and self.local:  # a symbolic link may lead out too
            outside = not Path(full).resolve().is_relative_to(Path(self.root).resolve())
        if outside:
            raise FrugalrayError(f"Path {relative!r} is outside the results store {self.location!r}; store paths "
                                 f"are relative to it, e.g. models/<trial_id>")
        return full

    def dataset(self, require: bool = True, files: list[str] | None = None):
        """The trials as a pyarrow dataset typed by ``SCHEMA`` (columns read on demand; older files get nulls
        for new columns). ``files``: the readable files when the caller already has them."""
        import pyarrow.dataset as ds

        files = [c.path for c in self.readable_files()] if files is None else files
        if not files and require:
            raise FrugalrayError(self._empty_message())
        return ds.dataset(files, schema=SCHEMA, filesystem=self.fs, format="parquet")

    def register(self, connection, name: str = "trials", require: bool = True) -> None:
        """Make the trials a DuckDB view ``name``: DuckDB's own Parquet reader on local folders (it reads
        only the columns and row groups a query needs), the pyarrow dataset on other filesystems."""
        checks = self.readable_files()
        if self.local and checks:
            listing = ", ".join("'" + c.path.replace("'", "''") + "'" for c in checks)
            present = {column for c in checks for column in c.columns}
            # Typed like SCHEMA whatever the files hold (a cast to the same type costs nothing in DuckDB).
            columns = ", ".join(
                f'CAST({quoted if f.name in present else "NULL"} AS {duckdb_type(f.type)}) AS {quoted}'
                for f, quoted in ((f, f'"{f.name}"') for f in SCHEMA)
            )
            connection.execute(f'CREATE OR REPLACE VIEW "{name}" AS SELECT {columns} '
                               f'FROM read_parquet([{listing}], union_by_name = true)')
        else:
            connection.register(name, self.dataset(require=require, files=[c.path for c in checks]))

    def _empty_message(self) -> str:
        try:
            exists = self.fs.get_file_info(self.root).type != pafs.FileType.NotFound
        except Exception:
            exists = False
        where = "exists but has no trials/*.parquet" if exists else "does not exist"
        return f"No results in {self.location!r}: it {where}; run a trial or a sweep with --results there first"

    def table(self, require: bool = False, columns: list[str] | None = None) -> pa.Table:
        """Every readable row, typed by ``SCHEMA``; an empty table (or an error with ``require``) when none."""
        files = [c.path for c in self.readable_files()]
        if not files:
            if require:
                raise FrugalrayError(self._empty_message())
            return SCHEMA.empty_table() if columns is None else SCHEMA.empty_table().select(columns)
        return self.dataset(files=files).to_table(columns=columns)

    def query(self, where: list[str] | None = None, sql: str | None = None, require: bool = True,
              params: list | None = None) -> pa.Table:
        """Rows matching every ``where`` filter (``col=value``, ``col<=3``...), or the result of ``sql``
        over the view ``trials``."""
        import duckdb

        connection = duckdb.connect()
        self.register(connection, "trials", require=require)
        if sql:
            try:
                return connection.sql(sql, params=params).to_arrow_table()
            except duckdb.Error as error:
                raise FrugalrayError(
                    f"SQL failed: {error}. Query the view 'trials'; its columns: {', '.join(COLUMNS)}"
                ) from None
        clauses, params = where_clauses(where or [])
        query = "SELECT * FROM trials" + (" WHERE " + " AND ".join(clauses) if clauses else "")
        order = " ORDER BY task, model, n_kept_layers, strategy, seed"
        return connection.sql(query + order, params=params).to_arrow_table()

    def model_folder(self, trial_id: str) -> str:
        """Where a trial's saved weights go, relative to the store."""
        return f"models/{trial_id}"

    def put_folder(self, local: str | os.PathLike, relative: str) -> str:
        """Move a finished local folder into the store at ``relative``, all or nothing; returns ``relative``."""
        final = self.path(relative)
        if self.local:
            Path(final).parent.mkdir(parents=True, exist_ok=True)
            normal_permissions(local)  # as if written in place, not through a private temporary folder
            os.replace(local, final)  # same filesystem when ``local`` was made by ``staging_folder``
            stop_heartbeat(local)  # in place: no longer a staging folder (its thread would linger a beat)
            return relative
        pafs.copy_files(str(Path(local).resolve()), final, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)
        return relative

    def staging_folder(self) -> str:
        """A fresh folder to write into before ``put_folder`` (inside the store when it is local)."""
        import tempfile

        if self.local:  # a machine's --repair tells it from a dead writer's by its heartbeat
            folder = Path(self.root) / STAGING / staging_name()
            folder.mkdir(parents=True)
            keep_alive(folder)
            return str(folder)
        return tempfile.mkdtemp(prefix="frugalray-model-")

    def has_folder(self, relative: str) -> bool:
        """Whether the folder ``relative`` (saved weights, say) is in the store."""
        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.Directory

    def fetch_folder(self, relative: str, scratch: str | os.PathLike) -> str:
        """A local path to the folder ``relative`` of the store (copied into ``scratch`` when remote)."""
        source = self.path(relative)
        if not self.has_folder(relative):
            raise FrugalrayError(f"Saved weights {relative!r} are missing from {self.location!r}")
        if self.local:
            return source
        Path(scratch).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(source, str(scratch), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return str(scratch)
