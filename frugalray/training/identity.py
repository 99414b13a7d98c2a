"""A trial's identity: the configuration hash, how a stored row's hash is read back, and the version of how
rows record their configuration.

>>> len(config_hash(TrialConfig(task="demo_pos"), (0, 1), "sha256:abc"))
16
"""

from __future__ import annotations

import hashlib
import json

from frugalray._registry import FrugalrayError
from frugalray.config import TrialConfig
from frugalray.data.tasks import resolve_task

# Version of how a row records its configuration and is hashed; rows without one were written by frugalray 0.1,
# rows of version 2 left the training's speed choices out of the hash.
CONFIG_VERSION = 3


def config_hash(config: TrialConfig, kept: tuple[int, ...], task_fingerprint: str) -> str:
    """Hash of exactly what changes a trial's result: not its strategy name (same layers, same run), not
    what only bookkeeping or evaluation speed depends on, and only the learning rate the trial uses (LoRA's or
    the full one)."""
    identity = {
        "task": resolve_task(config.task).name,
        "data": task_fingerprint,
        "model": config.model,
        "kept_layers": list(kept),
        "lora": config.lora.as_record() if config.lora else None,
        "training": config.training.identity(),
        **({"recovery": config.recovery.identity()} if not config.recovery.is_default else {}),
        "learning_rate": config.learning_rate,
        "seed": config.seed,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def recorded_hash(row: dict) -> str:
    """The configuration hash of a stored row as this version computes it (rows of earlier versions hashed
    differently: their settings are read back as that version trained and hashed again).

    A row whose configuration cannot be read back keeps its stored hash, and so does an exported variant's
    (int8, ONNX: its hash is its source's and the variant's, never a training configuration's)."""
    if (row.get("config_version") == CONFIG_VERSION or not row.get("config_json") or row.get("kept_layers") is None
            or row.get("source_trial_id")):
        return row["config_hash"]
    try:
        config = TrialConfig.from_record(json.loads(row["config_json"]))
        return config_hash(config, tuple(row["kept_layers"]), row["task_fingerprint"])
    except (FrugalrayError, ValueError, TypeError):
        return row["config_hash"]


def lacks_weights(row, config: TrialConfig) -> bool:
    """Whether ``row``, a successful run of ``config``'s hash, kept no weights while ``config`` asks for them
    (``save_model`` is not in the hash: a full model trained before a recover stage needed it as a teacher)."""
    return row is not None and config.save_model and row["status"] == "ok" and not row["model_path"]


def make_trial_id(config_hash: str, started_at, kind: str = "") -> str:
    """A row's unique id: its configuration hash and when its run started (UTC), with ``kind`` for rows the
    driver writes on a run's behalf (``lost``).

    >>> from datetime import datetime, timezone
    >>> make_trial_id("abc", datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc))
    'abc-20260102T030405000006'
    """
    return "-".join([config_hash] + ([kind] if kind else []) + [started_at.strftime("%Y%m%dT%H%M%S%f")])


def fallback_hash(config: TrialConfig) -> str:
    """A failed preparation has no data fingerprint; hash the config itself."""
    return "x" + hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:15]
