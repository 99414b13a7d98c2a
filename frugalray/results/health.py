"""Health of a results store, and its repair.

    frugalray results results/ --check     # files, rows, what needs attention; exit 1 when something does
    frugalray results results/ --repair    # bad files to results/quarantine/, stale staging files removed

A store needs attention when a trial file cannot be read or does not fit the schema (readers skip it, so
its rows are missing and a sweep retrains them), when a killed writer left staging files behind, or when
a configuration was trained more than once (successful rows of one config hash that are not alias rows:
views use the latest, the others cost compute). Two runs are expected and not counted: a configuration
first trained without keeping its weights and trained again because a later stage needed them (a teacher),
and an exported variant measured again (an evaluation, not a training). Repair never deletes data: bad files keep their names
under ``quarantine/``; only staging files whose writer is gone are removed. A writer of this machine is judged
by its process; one of another machine by its heartbeat: a writer touches a staging folder it uses every
minute (``frugalray.results.files.keep_alive``), so an entry untouched for an hour has lost its writer.

>>> health = check_store(ResultsStore("results/"))    # doctest: +SKIP
>>> health.healthy, health.files, health.rows          # doctest: +SKIP
(True, 240, 240)
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass, field

from pyarrow import fs as pafs

from frugalray._registry import FrugalrayError
from frugalray.results.schema import TRAINED_SQL
from frugalray.results.store import STAGING, ResultsStore

QUARANTINE = "quarantine"
clock = time.time  # what ages are measured against (a test's own clock)
STALE_AFTER_S = 3600  # another machine's entry untouched this long: its writer (heartbeat every minute) is gone
_WRITER = re.compile(r"^(?P<host>.*)_(?P<pid>\d+)_[0-9a-f]{32}(\.tmp)?$")  # frugalray.results.files.staging_name()

DUPLICATES_SQL = f"""
SELECT config_hash, count(*) AS n FROM trials
WHERE {TRAINED_SQL}
GROUP BY config_hash HAVING count(model_path) > 1 OR (count(model_path) = 0 AND count(*) > 1)
ORDER BY n DESC, config_hash
"""


@dataclass
class Leftover:
    path: str  # relative to the store
    age_s: float
    stale: bool
    folder: bool


@dataclass
class Health:
    location: str
    files: int = 0
    rows: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path relative to the store, reason)
    leftovers: list[Leftover] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)  # (config hash, successful rows)

    @property
    def healthy(self) -> bool:
        return not self.bad and not self.duplicates and not any(left.stale for left in self.leftovers)

    def text(self) -> str:
        lines = [f"{self.location}: {self.files} trial file(s), {self.rows} row(s)"]
        if self.bad:
            lines.append(f"Unreadable or schema-mismatched files ({len(self.bad)}), skipped by every reader:")
            lines += [f"  {path}: {reason}" for path, reason in self.bad]
        if self.leftovers:
            lines.append(f"Staging leftovers ({len(self.leftovers)}):")
            lines += [f"  {left.path} ({left.age_s / 60:.0f} min old, "
                      f"{'stale' if left.stale else 'may still be being written'})" for left in self.leftovers]
        if self.duplicates:
            lines.append(f"Config hashes trained more than once ({len(self.duplicates)}; views use the latest row):")
            lines += [f"  {config_hash}: {count} successful rows" for config_hash, count in self.duplicates]
        if self.healthy:
            lines.append("Healthy.")
        elif self.bad or any(left.stale for left in self.leftovers):
            lines.append(f"Needs attention: `frugalray results {self.location} --repair` moves bad files to "
                         f"{QUARANTINE}/ and removes stale staging files.")
        else:  # only duplicates: rows are data, repair keeps them
            lines.append("Needs attention: configurations were trained more than once (compute spent twice); "
                         "their rows are kept.")
        return "\n".join(lines)


def check_store(store: ResultsStore) -> Health:
    """Count the store's files and rows and list what needs attention (nothing is changed)."""
    import duckdb

    if store.fs.get_file_info(store.root).type == pafs.FileType.NotFound:
        raise FrugalrayError(f"No results store at {store.location!r}: it does not exist")
    checks = store.checked_files()
    good = [c for c in checks if c.problem is None]
    health = Health(store.location, files=len(checks), rows=sum(c.rows for c in good),
                    bad=[(_relative(store, c.path), c.problem) for c in checks if c.problem],
                    leftovers=_leftovers(store))
    if good:
        connection = duckdb.connect()
        store.register(connection, "trials")
        health.duplicates = connection.sql(DUPLICATES_SQL).fetchall()
    return health


def repair_store(store: ResultsStore) -> list[str]:
    """Move bad trial files to ``quarantine/`` (names kept) and remove stale staging files; returns what
    was done, one line per file."""
    done = []
    health = check_store(store)
    for relative, reason in health.bad:
        target = _free_path(store, f"{QUARANTINE}/{relative.rsplit('/', 1)[-1]}")
        store.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        store.fs.move(f"{store.root}/{relative}", target)
        done.append(f"moved {relative} to {_relative(store, target)} ({reason})")
    for left in health.leftovers:
        if left.stale:
            path = f"{store.root}/{left.path}"
            if left.folder:
                store.fs.delete_dir(path)
            else:
                store.fs.delete_file(path)
            done.append(f"removed stale staging {'folder' if left.folder else 'file'} {left.path}")
    return done or ["nothing to repair"]


def _leftovers(store: ResultsStore) -> list[Leftover]:
    """Everything under ``.staging/``, and the ``.staging-*`` files older versions wrote beside the data."""
    def entries(folder: str) -> list[pafs.FileInfo]:
        return store.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))

    found = entries(f"{store.root}/{STAGING}")
    for info in entries(store.root):
        if info.type == pafs.FileType.Directory and info.base_name not in (STAGING, QUARANTINE):
            found += [i for i in entries(info.path) if i.base_name.startswith(".staging")]
    now = clock()
    out = []
    for info in found:
        age = max(0.0, now - info.mtime.timestamp()) if info.mtime else 0.0  # another host's clock may be ahead
        out.append(Leftover(_relative(store, info.path), age, _stale(info.base_name, age),
                            info.type == pafs.FileType.Directory))
    return sorted(out, key=lambda left: left.path)


def _stale(name: str, age_s: float) -> bool:
    """A staging entry of a dead process of this machine, or of another machine (or an older version) whose
    last heartbeat (its modification time) is older than ``STALE_AFTER_S``. A live writer's entry is never
    stale, however long its trial trains."""
    writer = _WRITER.match(name)
    if writer is None or writer["host"] != socket.gethostname():
        return age_s > STALE_AFTER_S
    try:
        os.kill(int(writer["pid"]), 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's
        return False
    return False


def _relative(store: ResultsStore, path: str) -> str:
    return path[len(store.root) + 1:] if path.startswith(store.root + "/") else path


def _free_path(store: ResultsStore, relative: str) -> str:
    """``relative`` under the store, or the same name in a numbered subfolder when it is taken."""
    path, number = f"{store.root}/{relative}", 1
    while store.fs.get_file_info(path).type != pafs.FileType.NotFound:
        folder, name = relative.rsplit("/", 1)
        path, number = f"{store.root}/{folder}/{number}/{name}", number + 1
    return path
