"""What a store remembers of the runs that wrote it: ``<store>/runs/<kind>/<name>.json``.

Each sweep (and search) records its settings, its reference pairs (``reference_tasks``: which study dataset
our task is compared with) and the frugalray version, one file per run name, when it starts. Every later
reader uses them: ``frugalray report`` and ``results --view`` pair ``demo_pos`` with ``FTB_POS`` as the sweep
did, without the option being repeated. Each file is written like a trial file (staged, then renamed), so a
reader sees the old content or the new, never half of it; and since every run writes only its own file,
two sweeps starting at once on one store never lose each other's entry. Stores written by 0.2 and earlier
keep their entries in ``<store>/frugalray.json``: read too, a run file of the same name wins.

>>> record_run(store, "sweeps", "quick", sweep.to_dict(), reference_tasks={"demo_pos": "FTB_POS"})  # doctest: +SKIP
>>> reference_tasks(store)                                                                       # doctest: +SKIP
{'demo_pos': 'FTB_POS'}
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from datetime import datetime, timezone

from pyarrow import fs as pafs

from frugalray.results.store import ResultsStore

FILE = "frugalray.json"  # the merged file of earlier versions, still read
RUNS = "runs"
KINDS = ("sweeps", "searches")
log = logging.getLogger(__name__)


def read_metadata(store: ResultsStore) -> dict:
    """The store's metadata, ``{kind: {name: entry}}`` ({} when it has none); an unreadable file is skipped
    with a warning naming it."""
    metadata = _read_json(store, FILE)
    for kind in KINDS:
        for path in _run_files(store, kind):
            entry = _read_json(store, path)
            if isinstance(entry.get("name"), str):
                metadata.setdefault(kind, {})[entry.pop("name")] = entry
    return metadata


def record_run(store: ResultsStore, kind: str, name: str, settings: dict, **extra) -> dict:
    """Record one run's entry (``kind``: "sweeps" or "searches") in its own file; returns the entry."""
    from frugalray._version import __version__

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    entry = {"settings": settings, **extra, "frugalray_version": __version__,
             "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    store.write_bytes(json.dumps({"name": name, **entry}, indent=2, sort_keys=True).encode("utf-8"),
                      f"{RUNS}/{kind}", run_file(name))
    return entry


def run_file(name: str) -> str:
    """A file name for a run name: readable, and distinct for names that differ only in odd characters."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "run"
    return f"{readable}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}.json"


def _run_files(store: ResultsStore, kind: str) -> list[str]:
    folder = f"{store.root}/{RUNS}/{kind}"
    try:
        infos = store.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except OSError as error:
        log.warning("Ignoring %s: it cannot be listed (%s)", folder, error)
        return []
    return sorted(f"{RUNS}/{kind}/{i.base_name}" for i in infos
                  if i.type == pafs.FileType.File and i.base_name.endswith(".json") and not i.base_name.startswith("."))


def _read_json(store: ResultsStore, relative: str) -> dict:
    data = store.read_bytes(relative)
    if data is None:
        return {}
    try:
        values = json.loads(data)
        if not isinstance(values, dict):
            raise ValueError(f"a JSON {type(values).__name__}, not an object")
        return values
    except ValueError as error:
        log.warning("Ignoring %s/%s: not frugalray metadata (%s); the next run of that name rewrites it",
                    store.location, relative, error)
        return {}


def reference_tasks(store: ResultsStore) -> dict[str, str]:
    """Our task -> study dataset, as the store's sweeps paired them (the latest sweep wins a disagreement)."""
    sweeps = sorted(read_metadata(store).get("sweeps", {}).values(), key=lambda s: s.get("updated_at", ""))
    pairs: dict[str, str] = {}
    for sweep in sweeps:
        pairs.update(sweep.get("reference_tasks") or {})
    return pairs
