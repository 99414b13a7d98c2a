"""A result row's columns, from what a run measured: identity (``base_row``), quality on test and dev
(``quality_columns``), energy, recovery settings, and the dev curve of an early-stopped run. Every place that
writes a row (a trial, an exported variant, the driver's rows for lost or stopped runs) builds it here.

>>> is_degenerate({"f1": 0.29, "predicted_classes": 2}, {"f1": 0.294})
True
"""

from __future__ import annotations

import json

from frugalray._registry import FrugalrayError
from frugalray.config import TrialConfig
from frugalray.data.tasks import resolve_task
from frugalray.training.environment import environment
from frugalray.training.identity import CONFIG_VERSION

# Why a run failed, as the row's error_kind: bad input (retrying cannot help), an exception while it ran (it
# may pass on another attempt: a CUDA OOM beside a neighbour), or a process that died (worker or node lost).
ERROR_KINDS = ("input", "exception", "lost")


def base_row(config: TrialConfig, prepared=None) -> dict:
    """The row's identity columns, from the config (and the ``PreparedTrial`` when there is one: its config names
    the LoRA target modules that trained)."""
    config = prepared.config if prepared else config
    lora, training = config.lora, config.training
    return {
        "trial_id": None,
        "config_hash": prepared.config_hash if prepared else None,
        "sweep": config.sweep,
        "stage": config.stage,
        "task": _task_name(config),
        "task_fingerprint": prepared.task.fingerprint if prepared else None,
        "model": config.model,
        "num_layers": prepared.num_layers if prepared else None,
        "strategy": config.strategy,
        "strategy_n": config.n,
        "kept_layers": list(prepared.kept_layers) if prepared else (list(config.layers) if config.layers else None),
        "n_kept_layers": len(prepared.kept_layers) if prepared else None,
        "lora": lora is not None,
        "lora_r": lora.r if lora else None,
        "lora_alpha": float(lora.alpha) if lora else None,
        "lora_dropout": lora.dropout if lora else None,
        "lora_target_modules": list(lora.target_modules) if lora else None,
        "lora_train_head": lora.train_head if lora else None,
        "learning_rate": config.learning_rate,
        "epochs": training.epochs,
        "batch_size": training.batch_size,
        "max_length": training.max_length,
        "weight_decay": training.weight_decay,
        "warmup_ratio": training.warmup_ratio,
        "lr_schedule": training.lr_schedule,
        "max_grad_norm": training.max_grad_norm,
        "length_grouping": training.length_grouping > 0,
        "length_group_batches": training.length_grouping,
        "pad_to_multiple_of": training.pad_to_multiple_of,
        "fused_optimizer": training.fused_optimizer,
        "compile": training.compile,
        "trim_vocabulary": training.trim_vocabulary,
        "early_stopping_patience": training.early_stopping_patience,
        "dtype": training.dtype,
        "seed": config.seed,
        **recovery_columns(config.recovery),
        "config_json": json.dumps(config.to_dict(), sort_keys=True),
        "config_version": CONFIG_VERSION,
        **environment(),
    }


def failed_columns(error: BaseException | str, kind: str) -> dict:
    """The outcome columns of a failed run: its error text and ``error_kind`` (one of ERROR_KINDS)."""
    if kind not in ERROR_KINDS:
        raise ValueError(f"error kind {kind!r}; valid: {ERROR_KINDS}")
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"status": "failed", "error": text, "error_kind": kind}


def quality_columns(test: dict, dev: dict, majority: dict) -> dict:
    """Test metrics as they are, dev metrics prefixed, the majority baseline and degeneracy of both.

    ``test`` and ``dev`` come from ``frugalray.training.loop.evaluate``; ``majority`` from
    ``frugalray.data.labels.majority_baseline``."""
    return {
        **test,
        "dev_accuracy": dev["accuracy"], "dev_f1": dev["f1"], "dev_eval_loss": dev["eval_loss"],
        "dev_predicted_classes": dev["predicted_classes"],
        "majority_f1": majority["test"]["f1"], "dev_majority_f1": majority["dev"]["f1"],
        "degenerate": is_degenerate(test, majority["test"]), "dev_degenerate": is_degenerate(dev, majority["dev"]),
    }


def is_degenerate(metrics: dict, majority: dict) -> bool:
    """A model that predicts one class everywhere, or scores no better than always answering the majority
    class, has learnt nothing its F1 could rank."""
    return metrics["predicted_classes"] <= 1 or metrics["f1"] <= 0 or metrics["f1"] <= majority["f1"] + 1e-9


def energy_columns(train, evaluation, country: str) -> dict:
    """The row's energy fields from the readings of training and evaluation (``measured_energy``)."""
    methods = sorted({train.method, evaluation.method} - {None})  # one method, unless a meter failed midway
    return {"train_kwh": train.kwh, "train_co2_kg": train.co2_kg, "eval_kwh": evaluation.kwh,
            "eval_co2_kg": evaluation.co2_kg, "energy_method": " | ".join(methods) or None, "energy_country": country}


def recovery_columns(recovery) -> dict:
    distill, partial = recovery.method == "distill", recovery.method == "partial"
    return {
        "init": recovery.init, "recovery": recovery.method,
        "distill_temperature": recovery.temperature if distill else None,
        "distill_alpha": recovery.alpha if distill else None,
        "distill_beta": recovery.beta if distill else None,
        "distill_hidden_map": recovery.hidden_map if recovery.remaps_layers else None,
        "partial_layers": recovery.partial_layers if partial else None,
        "teacher_epochs": recovery.teacher_epochs if recovery.teacher_trained_apart else None,
        "teacher_patience": recovery.teacher_patience if recovery.teacher_trained_apart else None,
    }


class DevCurve:
    """Dev F1 and dev loss at a trial's checkpoints, and its progress columns at the latest one (the columns of
    the row it leaves if an early-stopping search stops it there)."""

    def __init__(self, planned_steps: int):
        self.planned_steps, self.steps, self.dev_f1, self.dev_loss, self.seconds = planned_steps, [], [], [], []
        self.latest: dict = {}
        self.train_seconds = 0.0

    def add(self, step: int, metrics: dict, train_seconds: float, eval_seconds: float) -> None:
        self.steps.append(step)
        self.seconds.append(eval_seconds)
        self.dev_f1.append(metrics["f1"])
        self.dev_loss.append(metrics["eval_loss"])
        self.latest, self.train_seconds = metrics, train_seconds

    def columns(self) -> dict:
        """The curve as the finished row records it (empty when no checkpoint was asked for)."""
        if not self.steps:
            return {}
        return {"checkpoint_steps": list(self.steps), "checkpoint_dev_f1": list(self.dev_f1),
                "checkpoint_dev_loss": list(self.dev_loss), "checkpoint_eval_seconds": list(self.seconds)}

    def state(self) -> dict:
        """What ``restore`` needs to go on with this curve (a resumed trial's)."""
        return {"steps": list(self.steps), "dev_f1": list(self.dev_f1), "dev_loss": list(self.dev_loss),
                "seconds": list(self.seconds), "train_seconds": self.train_seconds,
                "latest": {key: float(self.latest[key]) for key in ("f1", "accuracy", "eval_loss")}}

    def restore(self, state: dict) -> None:
        self.steps, self.dev_f1, self.dev_loss = list(state["steps"]), list(state["dev_f1"]), list(state["dev_loss"])
        self.seconds, self.train_seconds, self.latest = list(state["seconds"]), state["train_seconds"], dict(state["latest"])

    def progress(self) -> dict:
        return {"train_steps": self.steps[-1], "planned_steps": self.planned_steps, **self.columns(),
                "dev_f1": self.latest["f1"], "dev_accuracy": self.latest["accuracy"],
                "dev_eval_loss": self.latest["eval_loss"], "train_seconds": self.train_seconds}


def _task_name(config: TrialConfig) -> str:
    try:
        return resolve_task(config.task).name
    except FrugalrayError:
        return config.task
