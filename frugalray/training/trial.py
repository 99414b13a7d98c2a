"""One trial: (task, model, kept layers, LoRA, training settings, seed) -> one result row.

No Ray here: a trial runs the same from a test, a notebook, the CLI and inside Ray Tune.

>>> row = execute_trial(TrialConfig(task="demo_pos", strategy="first", n=2), ResultsStore("results"))  # doctest: +SKIP
>>> row["status"], row["kept_layers"]  # doctest: +SKIP
('ok', [0, 1])
"""

from __future__ import annotations

import functools
import json
import resource
import shutil
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone

from frugalray._registry import FrugalrayError
from frugalray.config import TrialConfig
from frugalray.data.tasks import TaskData, load_task, resolve_task
from frugalray.results.schema import TrialResult
from frugalray.results.store import ResultsStore
from frugalray.study.strategies import kept_layers
from frugalray.training.energy import measured_energy
from frugalray.training.environment import check_device, device_name, environment, others_running, running
from frugalray.training.identity import CONFIG_VERSION, config_hash, fallback_hash, trial_id

__all__ = ["PreparedTrial", "TrialConfig", "execute_trial", "layer_count", "prepare_trial", "run_trial"]


@dataclass(frozen=True)
class PreparedTrial:
    """A validated trial: data read, layer count known, kept layers resolved, hash computed."""

    config: TrialConfig
    task: TaskData
    num_layers: int
    kept_layers: tuple[int, ...]
    config_hash: str


@functools.cache
def layer_count(model: str) -> int:
    """Layers of a model, read from its config once per process."""
    from frugalray.model.loading import load_model_config
    from frugalray.model.surgery import num_layers

    return num_layers(load_model_config(model))


def prepare_trial(config: TrialConfig, task: TaskData | None = None) -> PreparedTrial:
    """Validate a config without training: raises FrugalrayError on any bad input."""
    task = task or load_task(config.task, config.data_dir)
    count = layer_count(config.model)
    kept = kept_layers(config.strategy, count, n=config.n, layers=config.layers, scores=config.scores)
    return PreparedTrial(config, task, count, kept, config_hash(config, kept, task.fingerprint))


def run_trial(prepared: PreparedTrial, device: str | None = None, gpu_memory_fraction: float | None = None,
              save_to: str | None = None, alone: bool = False, teacher=None, report=None) -> dict:
    """Train and evaluate one prepared trial; returns its result row (raises on failure).

    With ``save_to`` the trained model is saved there for ``frugalray export`` (see ``frugalray.model.export``).
    ``alone``: the caller runs nothing else (``frugalray trial``); the latency is labelled isolated when, in
    addition, no other process of frugalray runs on the machine while it is measured.
    ``teacher`` (``frugalray.training.recovery.Teacher``): the fine-tuned full model a recovering student
    starts from or learns from.
    ``report(progress)``: called at every dev checkpoint (``training.eval_every_steps``) with the row's progress
    columns so far (steps, the dev curve, dev F1 and training seconds at that step)."""
    import torch
    from transformers import set_seed

    from frugalray.data.encoding import encode_examples
    from frugalray.data.labels import majority_baseline
    from frugalray.model.lora import apply_lora
    from frugalray.model.loading import load_tokenizer
    from frugalray.model.surgery import parameter_count, parameter_mib
    from frugalray.training import recovery
    from frugalray.training.loop import evaluate, measure_latency, model_loss, planned_steps, train

    config, task = prepared.config, prepared.task
    started = time.perf_counter()
    check_device(device)  # before the model loads: a missing GPU is bad input, not a failure after minutes
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if target.type == "cuda":
        if gpu_memory_fraction:  # a trial that shares a GPU keeps to its share
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction, target)
        torch.cuda.reset_peak_memory_stats(target)
    set_seed(config.seed)

    tokenizer = load_tokenizer(config.model)
    label2id = {label: i for i, label in enumerate(task.labels)}
    max_length = config.training.max_length
    train_data = encode_examples(task.train, tokenizer, label2id, max_length)
    dev_data = encode_examples(task.dev, tokenizer, label2id, max_length)
    test_data = encode_examples(task.test, tokenizer, label2id, max_length)

    model = recovery.student_model(prepared, teacher, task.spec.head, task.labels)
    if config.recovery.method == "partial":
        recovery.freeze_all_but_last(model, config.recovery.partial_layers)
    if config.lora:
        model = apply_lora(model, config.lora)
    model.to(target)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    objective = model_loss
    if config.recovery.method == "distill":
        logits = recovery.teacher_logits(teacher, train_data, pad_id, target, config.training.eval_batch_size)
        teacher_model = recovery.load_teacher(teacher).to(target) if config.recovery.beta > 0 else None
        objective = recovery.distillation(config.recovery, logits, prepared.kept_layers, teacher_model)
    meter = functools.partial(measured_energy, config.training.energy, config.training.energy_country, str(target))
    settings = (config.training.eval_batch_size, pad_id, target, config.training.dtype)
    planned = planned_steps(len(train_data), config.training)
    curve = DevCurve(planned)

    def checkpoint(step: int, train_seconds: float) -> None:
        curve.add(step, evaluate(model, dev_data, task.dev, task.labels, task.spec.metric, *settings), train_seconds)
        model.train()
        if report:
            report(curve.progress())

    with meter() as train_energy:
        stats = train(model, train_data, config.training, config.learning_rate, pad_id, target, config.seed,
                      objective=objective, checkpoint=checkpoint, checkpoint_every=config.training.eval_every_steps)
    eval_start = time.perf_counter()
    with meter() as eval_energy:
        test_metrics = evaluate(model, test_data, task.test, task.labels, task.spec.metric, *settings)
        dev_metrics = evaluate(model, dev_data, task.dev, task.labels, task.spec.metric, *settings)
    eval_seconds = time.perf_counter() - eval_start
    latency = measure_latency(model, test_data, 32, pad_id, target, config.training.dtype)
    latency["latency_isolated"] = alone and not others_running()
    if save_to:
        from frugalray.model.export import save_trained

        save_trained(model, tokenizer, save_to, base_model=config.model, kept_layers=prepared.kept_layers,
                     head=task.spec.head, labels=task.labels, lora=config.lora is not None,
                     trial={"task": task.name, "config_hash": prepared.config_hash, "strategy": config.strategy})

    if target.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(target) / 2**20, "cuda_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"
    majority = majority_baseline(task)
    return {
        **test_metrics,
        "dev_accuracy": dev_metrics["accuracy"],
        "dev_f1": dev_metrics["f1"],
        "dev_eval_loss": dev_metrics["eval_loss"],
        "dev_predicted_classes": dev_metrics["predicted_classes"],
        "majority_f1": majority["test"]["f1"],
        "dev_majority_f1": majority["dev"]["f1"],
        "degenerate": is_degenerate(test_metrics, majority["test"]),
        "dev_degenerate": is_degenerate(dev_metrics, majority["dev"]),
        "train_seconds": stats.train_seconds,
        "train_steps": stats.steps,
        "planned_steps": planned,
        **({"checkpoint_steps": curve.steps, "checkpoint_dev_f1": curve.dev_f1} if config.training.eval_every_steps else {}),
        "seconds_per_epoch": stats.train_seconds / len(stats.epoch_seconds),
        "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - started,
        "train_tokens": stats.train_tokens,
        "train_padded_tokens": stats.padded_tokens,
        "train_tokens_per_second": stats.train_tokens / stats.train_seconds,
        "model_mib": parameter_mib(model),
        "total_params": parameter_count(model),
        "trainable_params": parameter_count(model, trainable_only=True),
        "peak_memory_mib": peak,
        "peak_memory_kind": peak_kind,
        **latency,
        **energy_columns(train_energy, eval_energy, config.training.energy_country),
        "variant": "fp32",
        "device": device_name(target),
        **({"teacher_trial_id": teacher.trial_id, "teacher_seconds": teacher.train_seconds,
            "teacher_logits_seconds": teacher.logits_seconds} if teacher else {}),
    }


class DevCurve:
    """Dev F1 at a trial's checkpoints, and its progress columns at the latest one."""

    def __init__(self, planned_steps: int):
        self.planned_steps, self.steps, self.dev_f1 = planned_steps, [], []
        self.latest: dict = {}
        self.train_seconds = 0.0

    def add(self, step: int, metrics: dict, train_seconds: float) -> None:
        self.steps.append(step)
        self.dev_f1.append(metrics["f1"])
        self.latest, self.train_seconds = metrics, train_seconds

    def progress(self) -> dict:
        return {"train_steps": self.steps[-1], "planned_steps": self.planned_steps,
                "checkpoint_steps": list(self.steps), "checkpoint_dev_f1": list(self.dev_f1),
                "dev_f1": self.latest["f1"], "dev_accuracy": self.latest["accuracy"],
                "dev_eval_loss": self.latest["eval_loss"], "train_seconds": self.train_seconds}


def energy_columns(train, evaluation, country: str) -> dict:
    """The row's energy fields from the readings of training and evaluation (``measured_energy``)."""
    methods = sorted({train.method, evaluation.method} - {None})  # one method, unless a meter failed midway
    return {"train_kwh": train.kwh, "train_co2_kg": train.co2_kg, "eval_kwh": evaluation.kwh,
            "eval_co2_kg": evaluation.co2_kg, "energy_method": " | ".join(methods) or None, "energy_country": country}


def is_degenerate(metrics: dict, majority: dict) -> bool:
    """A model that predicts one class everywhere, or scores no better than always answering the majority
    class, has learnt nothing its F1 could rank.

    >>> is_degenerate({"f1": 0.29, "predicted_classes": 2}, {"f1": 0.294})
    True
    """
    return metrics["predicted_classes"] <= 1 or metrics["f1"] <= 0 or metrics["f1"] <= majority["f1"] + 1e-9


def base_row(config: TrialConfig, prepared: PreparedTrial | None) -> dict:
    """The row's identity columns, from the config (and the prepared trial when there is one)."""
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
        "dtype": training.dtype,
        "seed": config.seed,
        **recovery_columns(config.recovery),
        "config_json": json.dumps(config.to_dict(), sort_keys=True),
        "config_version": CONFIG_VERSION,
        **environment(),
    }


def recovery_columns(recovery) -> dict:
    distill, partial = recovery.method == "distill", recovery.method == "partial"
    return {
        "init": recovery.init, "recovery": recovery.method,
        "distill_temperature": recovery.temperature if distill else None,
        "distill_alpha": recovery.alpha if distill else None,
        "distill_beta": recovery.beta if distill else None,
        "partial_layers": recovery.partial_layers if partial else None,
    }


def execute_trial(
    config: TrialConfig,
    store: ResultsStore | None = None,
    *,
    prepared: PreparedTrial | None = None,
    raise_input_errors: bool = False,
    device: str | None = None,
    gpu_memory_fraction: float | None = None,
    runner=None,
    append: bool = True,
    alone: bool = False,
    report=None,
) -> TrialResult:
    """Prepare, run and record one trial. Any failure becomes a 'failed' row with its error.

    With a ``store``, the row is appended to it (unless ``append`` is False: the caller appends it, e.g.
    after retries) and the weights of a ``save_model`` trial are put in it.

    With ``raise_input_errors`` a bad input (FrugalrayError) is raised instead, and nothing is written.
    ``runner`` replaces ``run_trial`` (same signature), e.g. the simulated trials of ``frugalray.testing``.
    ``alone``: nothing else runs in the caller (``frugalray trial``, not a sweep), see ``run_trial``.
    ``report(result)``: called at every dev checkpoint with the row this trial would leave if it stopped there
    (status ``stopped``), for an early-stopping scheduler; the row is the caller's to store.
    """
    started_at = datetime.now(timezone.utc)
    row: dict
    saving = store.staging_folder() if config.save_model and store is not None else None
    try:
        prepared = prepared or prepare_trial(config)
        extra = ({"save_to": saving} if saving else {}) | ({"alone": True} if alone else {})
        if report:
            stopped = base_row(config, prepared) | {"trial_id": trial_id(prepared.config_hash, started_at),
                                                    "status": "stopped", "started_at": started_at}
            extra["report"] = lambda progress: report(TrialResult.from_row(
                stopped | progress | {"finished_at": datetime.now(timezone.utc)}))
        if config.recovery.needs_teacher:
            from frugalray.training.recovery import find_teacher

            extra["teacher"] = find_teacher(store, prepared)
        with running("trial"):  # a latency measured elsewhere on the machine meanwhile is not isolated
            row = base_row(config, prepared) | (runner or run_trial)(prepared, device, gpu_memory_fraction, **extra)
        row["status"], row["error"] = "ok", None
    except FrugalrayError as error:
        if raise_input_errors:
            raise
        row = base_row(config, prepared) | {"status": "failed", "error": f"FrugalrayError: {error}"}
    except Exception as error:  # a trial never takes its caller down: it becomes a failed row
        tail = "".join(traceback.format_exception(error)[-3:])
        row = base_row(config, prepared) | {"status": "failed", "error": f"{type(error).__name__}: {error}\n{tail}"}
    row["config_hash"] = row.get("config_hash") or fallback_hash(config)
    row["trial_id"] = trial_id(row["config_hash"], started_at)
    if saving:
        try:
            if row["status"] == "ok":  # the weights land before the row that points at them
                row["model_path"] = store.put_folder(saving, store.model_folder(row["trial_id"]))
        except Exception as error:
            row |= {"status": "failed", "error": f"Saving the trained weights failed: {type(error).__name__}: {error}"}
        finally:
            shutil.rmtree(saving, ignore_errors=True)
    row["started_at"], row["finished_at"] = started_at, datetime.now(timezone.utc)
    result = TrialResult.from_row(row)
    if store is not None and append:
        store.append(result)
    return result


def _task_name(config: TrialConfig) -> str:
    try:
        return resolve_task(config.task).name
    except FrugalrayError:
        return config.task
