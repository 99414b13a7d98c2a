"""The results store: one typed Parquet file per trial, queried with filters or SQL (DuckDB).

Appends are atomic and safe with many writers: a row is written into the store's own ``.staging/``
folder (same filesystem, so the rename is atomic; no reader globs it), then renamed to
``trials/<config_hash>-<id>.parquet``. On object stores (S3, GCS) a single PUT is already all-or-nothing,
so the file is written under its final name.

One bad file never blocks the rest: every reader goes through ``readable_files``, which reads each file's
footer once per process (per path, size and modification time), skips an unreadable file or one whose
columns do not fit ``SCHEMA`` with one logged warning, and casts compatible columns (int64 where int32 is
expected, float32 where float64) to the schema. ``frugalray results STORE --check`` lists such files and
``--repair`` moves them to ``quarantine/`` (see ``frugalray.store_health``).

>>> store = ResultsStore("results/")                  # doctest: +SKIP
>>> store.query(where=["task=demo_pos", "n_kept_layers<=3"]).num_rows  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import socket
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from frugalray._registry import FrugalrayError

SCHEMA = pa.schema([
    ("trial_id", pa.string()),
    ("config_hash", pa.string()),
    ("status", pa.string()),  # "ok" or "failed"
    ("error", pa.string()),
    ("reused_from", pa.string()),  # trial_id whose training this row reports (same layer set)
    ("sweep", pa.string()),
    ("stage", pa.string()),
    ("task", pa.string()),
    ("task_fingerprint", pa.string()),
    ("model", pa.string()),
    ("num_layers", pa.int32()),  # layer count of the unpruned model
    ("strategy", pa.string()),
    ("strategy_n", pa.int32()),
    ("kept_layers", pa.list_(pa.int32())),
    ("n_kept_layers", pa.int32()),
    ("lora", pa.bool_()),
    ("lora_r", pa.int32()),
    ("lora_alpha", pa.float64()),
    ("lora_dropout", pa.float64()),
    ("lora_target_modules", pa.list_(pa.string())),
    ("lora_train_head", pa.bool_()),
    ("learning_rate", pa.float64()),  # the rate actually used (LoRA's when LoRA is on)
    ("epochs", pa.int32()),
    ("batch_size", pa.int32()),
    ("max_length", pa.int32()),
    ("length_grouping", pa.bool_()),
    ("dtype", pa.string()),
    ("weight_decay", pa.float64()),
    ("warmup_ratio", pa.float64()),
    ("lr_schedule", pa.string()),
    ("max_grad_norm", pa.float64()),  # 0: no clipping
    ("length_group_batches", pa.int32()),  # batches per length group; 0: uniform shuffling
    ("pad_to_multiple_of", pa.int32()),
    ("fused_optimizer", pa.bool_()),
    ("compile", pa.bool_()),
    ("seed", pa.int64()),
    ("accuracy", pa.float64()),
    ("precision", pa.float64()),
    ("recall", pa.float64()),
    ("f1", pa.float64()),
    ("f1_macro", pa.float64()),
    ("eval_loss", pa.float64()),
    ("dev_accuracy", pa.float64()),
    ("dev_f1", pa.float64()),
    ("dev_eval_loss", pa.float64()),
    ("predicted_classes", pa.int32()),  # distinct labels predicted on test; 1: one class everywhere
    ("dev_predicted_classes", pa.int32()),
    ("majority_f1", pa.float64()),  # test F1 of always answering train's most frequent label
    ("dev_majority_f1", pa.float64()),
    ("degenerate", pa.bool_()),  # one class predicted, or no better than the majority baseline (test)
    ("dev_degenerate", pa.bool_()),
    ("train_seconds", pa.float64()),
    ("seconds_per_epoch", pa.float64()),
    ("eval_seconds", pa.float64()),
    ("total_seconds", pa.float64()),
    ("train_tokens", pa.int64()),
    ("train_padded_tokens", pa.int64()),  # tokens computed on, padding included
    ("train_tokens_per_second", pa.float64()),
    ("model_mib", pa.float64()),
    ("total_params", pa.int64()),
    ("trainable_params", pa.int64()),
    ("peak_memory_mib", pa.float64()),
    ("peak_memory_kind", pa.string()),  # "cuda_allocated" or "cpu_rss"
    ("latency_ms", pa.float64()),
    ("latency_batch_size", pa.int32()),
    ("latency_seq_len", pa.int32()),
    ("device", pa.string()),
    ("hardware", pa.string()),
    ("torch_version", pa.string()),
    ("transformers_version", pa.string()),
    ("peft_version", pa.string()),
    ("frugalray_version", pa.string()),
    ("code_version", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("config_json", pa.string()),
    ("config_version", pa.int32()),  # how config_json/config_hash were written; null: frugalray 0.1
    ("model_path", pa.string()),  # saved weights, relative to the store (None: not saved)
])
COLUMNS = SCHEMA.names
REQUIRED = ("trial_id", "config_hash", "status")  # a file without them cannot be resumed, aliased or exported
STAGING = ".staging"  # files being written, in the store but outside every folder a reader lists
_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
                 pa.bool_(): "BOOLEAN", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}
log = logging.getLogger(__name__)
_FILTER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")


def _filesystem(location: str) -> tuple[pafs.FileSystem, str, bool]:
    """(filesystem, path, is_local) for a plain path or a URI (s3://, gs://, file://)."""
    if "://" in location:
        try:
            filesystem, path = pafs.FileSystem.from_uri(location)
        except Exception as error:
            raise FrugalrayError(f"Results location {location!r} cannot be opened: {error}") from None
        return filesystem, path, isinstance(filesystem, pafs.LocalFileSystem)
    return pafs.LocalFileSystem(), str(Path(location).resolve()), True


@dataclass(frozen=True)
class FileCheck:
    """What a trial file's footer says: its rows and columns, or why the file cannot be read."""

    path: str
    rows: int = 0
    columns: tuple[str, ...] = ()
    problem: str | None = None


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

    def append(self, row: dict) -> str:
        """Write one row atomically; returns the file path."""
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise FrugalrayError(f"Result row has unknown columns {unknown}; schema columns: {', '.join(COLUMNS)}")
        table = pa.Table.from_pylist([row], schema=SCHEMA)
        name = f"{row.get('config_hash') or 'nohash'}-{uuid.uuid4().hex[:12]}.parquet"
        return self.write_table(table, "trials", name)

    def write_table(self, table: pa.Table, folder: str, name: str) -> str:
        """Write ``folder/name`` under the store so that no reader ever sees part of it; returns the path."""
        directory = f"{self.root}/{folder}"
        final = f"{directory}/{name}"
        self.fs.create_dir(directory, recursive=True)
        if not self.local:
            pq.write_table(table, final, filesystem=self.fs)
            return final
        staging = f"{self.root}/{STAGING}/{staging_name()}.tmp"
        Path(staging).parent.mkdir(parents=True, exist_ok=True)
        try:
            pq.write_table(table, staging)
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
                _CHECKED.update(zip(new, pool.map(partial(_check_file, self.fs), new.values())))
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
                f'CAST({quoted if f.name in present else "NULL"} AS {_duckdb_type(f.type)}) AS {quoted}'
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
        clauses, params = _where(where or [])
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
            return relative
        pafs.copy_files(str(Path(local).resolve()), final, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)
        return relative

    def staging_folder(self) -> str:
        """A fresh folder to write into before ``put_folder`` (inside the store when it is local)."""
        import tempfile

        if self.local:
            folder = Path(self.root) / STAGING / staging_name()
            folder.mkdir(parents=True)
            return str(folder)
        return tempfile.mkdtemp(prefix="frugalray-model-")

    def fetch_folder(self, relative: str, scratch: str | os.PathLike) -> str:
        """A local path to the folder ``relative`` of the store (copied into ``scratch`` when remote)."""
        source = self.path(relative)
        if self.fs.get_file_info(source).type != pafs.FileType.Directory:
            raise FrugalrayError(f"Saved weights {relative!r} are missing from {self.location!r}")
        if self.local:
            return source
        Path(scratch).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(source, str(scratch), source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
        return str(scratch)

    def completed_hashes(self) -> set[str]:
        """Config hashes that already have a successful row (for skipping and resuming)."""
        table = self.table(columns=["config_hash", "status"]).to_pylist()
        return {row["config_hash"] for row in table if row["status"] == "ok"}


def staging_name() -> str:
    """A unique name for a file or folder being written: ``<host>_<pid>_<hex>``, so that a leftover of a
    killed writer can be told from one being written (``frugalray.store_health``)."""
    return f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex}"


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


def _check_file(filesystem: pafs.FileSystem, path: str) -> FileCheck:
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


def _duckdb_type(kind: pa.DataType) -> str:
    if pa.types.is_list(kind):
        return _duckdb_type(kind.value_type) + "[]"
    return _DUCKDB_TYPES[kind]


def _where(filters: list[str]) -> tuple[list[str], list]:
    clauses, params = [], []
    for text in filters:
        match = _FILTER.match(text)
        if not match:
            raise FrugalrayError(f"Filter {text!r} is not 'column<op>value' with op one of = != < <= > >=")
        column, op, value = match.groups()
        if column not in COLUMNS:
            from frugalray._registry import did_you_mean

            raise FrugalrayError(did_you_mean("column", column, COLUMNS))
        kind = SCHEMA.field(column).type
        if pa.types.is_list(kind):
            raise FrugalrayError(f"Filter on list column {column!r} is not supported; use --sql with list_contains")
        clauses.append(f'"{column}" {op} ?')
        params.append(_typed(value, kind, column))
    return clauses, params


def _typed(value: str, kind: pa.DataType, column: str):
    try:
        if pa.types.is_integer(kind):
            return int(value)
        if pa.types.is_floating(kind):
            return float(value)
        if pa.types.is_boolean(kind):
            if value.lower() not in {"true", "false", "1", "0"}:
                raise ValueError(value)
            return value.lower() in {"true", "1"}
    except ValueError:
        raise FrugalrayError(f"Filter on {column!r}: {value!r} is not a valid {kind}") from None
    return value
