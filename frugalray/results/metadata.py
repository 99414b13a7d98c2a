"""What a store remembers of the runs that wrote it: ``<store>/frugalray.json``.

Each sweep (and search) records its settings, its reference pairs (``reference_tasks``: which study dataset
our task is compared with) and the frugalray version, merged per name, when it starts. Every later reader
uses them: ``frugalray report`` and ``results --view`` pair ``demo_pos`` with ``FTB_POS`` as the sweep did,
without the option being repeated. The file is written like a trial file (staged, then renamed), so a
reader sees the old content or the new, never half of it.

>>> record_run(store, "sweeps", "quick", sweep.to_dict(), reference_tasks={"demo_pos": "FTB_POS"})  # doctest: +SKIP
>>> reference_tasks(store)                                                                       # doctest: +SKIP
{'demo_pos': 'FTB_POS'}
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from frugalray.results.store import ResultsStore

FILE = "frugalray.json"
log = logging.getLogger(__name__)


def read_metadata(store: ResultsStore) -> dict:
    """The store's metadata ({} when it has none); an unreadable file is skipped with a warning naming it."""
    data = store.read_bytes(FILE)
    if data is None:
        return {}
    try:
        values = json.loads(data)
        if not isinstance(values, dict):
            raise ValueError(f"a JSON {type(values).__name__}, not an object")
        return values
    except ValueError as error:
        log.warning("Ignoring %s/%s: not frugalray metadata (%s); the next sweep rewrites it",
                    store.location, FILE, error)
        return {}


def record_run(store: ResultsStore, kind: str, name: str, settings: dict, **extra) -> dict:
    """Merge one run's entry (``kind``: "sweeps" or "searches") into the store's metadata; returns it all."""
    from frugalray import __version__

    metadata = read_metadata(store)
    metadata.setdefault(kind, {})[name] = {"settings": settings, **extra, "frugalray_version": __version__,
                                           "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    metadata["frugalray_version"] = __version__
    store.write_bytes(json.dumps(metadata, indent=2, sort_keys=True).encode("utf-8"), "", FILE)
    return metadata


def reference_tasks(store: ResultsStore) -> dict[str, str]:
    """Our task -> study dataset, as the store's sweeps paired them (the latest sweep wins a disagreement)."""
    sweeps = sorted(read_metadata(store).get("sweeps", {}).values(), key=lambda s: s.get("updated_at", ""))
    pairs: dict[str, str] = {}
    for sweep in sweeps:
        pairs.update(sweep.get("reference_tasks") or {})
    return pairs
