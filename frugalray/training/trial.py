"""One trial: (task, model, kept layers, LoRA, training settings, seed) -> one result row.

No Ray here: a trial runs the same from a test, a notebook, the CLI and inside Ray Tune.

>>> row = execute_trial(TrialConfig(task="demo_pos", strategy="first", n=2), ResultsStore("results"))  # doctest: +SKIP
>>> row["status"], row["kept_layers"]  # doctest: +SKIP
('ok', [0, 1])
"""

from __future__ import annotations

import functools
import resource
import shutil
import time
import traceback
from collections import OrderedDict
from datetime import datetime, timezone
from typing import NamedTuple

from frugalray._registry import FrugalrayError
from frugalray.config import TrialConfig
from frugalray.results.schema import TrialResult
from frugalray.results.store import ResultsStore
from frugalray.training.columns import DevCurve, base_row, energy_columns, failed_columns, quality_columns
from frugalray.training.energy import measured_energy
from frugalray.training.environment import check_device, device_name, others_running, running
from frugalray.training.identity import fallback_hash, make_trial_id
from frugalray.training.prepared import PreparedTrial, layer_count, prepare_trial

__all__ = ["PreparedTrial", "TrialConfig", "execute_trial", "layer_count", "prepare_trial", "run_trial"]


class Encoded(NamedTuple):
    """A task's splits encoded by a model's tokenizer, and its padding id."""

    tokenizer: object
    train: list
    dev: list
    test: list
    pad_id: int


_ENCODED: OrderedDict[tuple, Encoded] = OrderedDict()  # a process (a Ray worker) encodes each task once


def encoded_task(task, model: str, max_length: int) -> Encoded:
    """The task's splits tokenised for ``model``, kept for the next trial of the same process (the last 4
    (data, tokenizer, length) triples): a sweep trains many layer sets and seeds on the same encoding."""
    from frugalray.data.encoding import encode_examples
    from frugalray.model.loading import load_tokenizer

    key = (task.fingerprint, tuple(task.labels), model, max_length)
    if key not in _ENCODED:
        tokenizer = load_tokenizer(model)
        label2id = {label: i for i, label in enumerate(task.labels)}
        splits = [encode_examples(examples, tokenizer, label2id, max_length) for examples in (task.train, task.dev, task.test)]
        _ENCODED[key] = Encoded(tokenizer, *splits, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        while len(_ENCODED) > 4:
            _ENCODED.popitem(last=False)
    _ENCODED.move_to_end(key)
    return _ENCODED[key]


def run_trial(prepared: PreparedTrial, device: str | None = None, gpu_memory_fraction: float | None = None,
              save_to: str | None = None, alone: bool = False, teacher=None, report=None, snapshot=None,
              resume: dict | None = None) -> dict:
    """Train and evaluate one prepared trial; returns its result row (raises on failure).

    With ``save_to`` the trained model is saved there for ``frugalray export`` (see ``frugalray.model.saved``).
    ``alone``: the caller runs nothing else (``frugalray trial``); the latency is labelled isolated when, in
    addition, no other process of frugalray runs on the machine while it is measured.
    ``teacher`` (``frugalray.training.recovery.Teacher``): the fine-tuned full model a recovering student
    starts from or learns from.
    ``report(progress)``: called at every dev checkpoint (``training.eval_every_steps``) with the row's progress
    columns so far. ``snapshot(step, state)``: called there first, ``state()`` giving the trial's state;
    ``resume``: such a state to go on from (``frugalray.training.resume``)."""
    from transformers import set_seed

    from frugalray.data.labels import majority_baseline
    from frugalray.training.loop import measure_latency

    config, task, training = prepared.config, prepared.task, prepared.config.training
    started = time.perf_counter()
    target = _device(device, gpu_memory_fraction)
    set_seed(config.seed)
    data = encoded_task(task, config.model, training.max_length)
    model = _model(prepared, teacher, target)
    stats, curve, train_energy, fitted = _fit(prepared, model, data, teacher, target, report, snapshot, resume)
    score = functools.partial(_score, model, task, data, target, training)
    meter = functools.partial(measured_energy, training.energy, training.energy_country, str(target))
    eval_start = time.perf_counter()
    with meter() as eval_energy:
        test, dev = score("test"), score("dev")
    eval_seconds = time.perf_counter() - eval_start
    latency = measure_latency(model, data.test, 32, data.pad_id, target, training.dtype)
    latency["latency_isolated"] = alone and not others_running()
    if save_to:
        _save(model, data.tokenizer, save_to, prepared)
    return {
        **quality_columns(test, dev, majority_baseline(task)),
        "train_seconds": stats.train_seconds, "train_steps": stats.steps, "planned_steps": curve.planned_steps,
        **curve.columns(),
        "seconds_per_epoch": stats.train_seconds / len(stats.epoch_seconds), "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - started, "train_tokens": stats.train_tokens,
        "train_padded_tokens": stats.padded_tokens, "train_tokens_per_second": stats.train_tokens / stats.train_seconds,
        **fitted,
        **_size_columns(model, target), **latency,
        **energy_columns(train_energy, eval_energy, training.energy_country),
        "variant": "fp32", "device": device_name(target), "resumed_from_step": resume["step"] if resume else None,
        **({"teacher_trial_id": teacher.trial_id, "teacher_seconds": teacher.train_seconds,
            "teacher_logits_seconds": teacher.logits_seconds} if teacher else {}),
    }


def _fit(prepared: PreparedTrial, model, data: Encoded, teacher, target, report, snapshot=None, resume=None):
    """Train ``model`` in place, on the task's own embedding rows where asked (``frugalray.training.vocab``),
    scoring dev at the checkpoints and stopping early on it where asked; returns (training stats, dev curve, training
    energy, the columns this adds to the row)."""
    from frugalray.training import vocab
    from frugalray.training.early_stopping import EarlyStopping
    from frugalray.training.loop import autocast_dtype, train

    config, training = prepared.config, prepared.config.training
    trimmed = vocab.trimmed_vocabulary(config, model, data)
    during = trimmed.data if trimmed else data  # the token ids the model takes while it trains
    score_dev = functools.partial(_score, model, prepared.task, during, target, training, "dev")
    curve = DevCurve(training.planned_steps(len(data.train)))
    embedding = model.get_input_embeddings().weight
    rows_trained = embedding.shape[0] if embedding.requires_grad else 0

    if resume:
        curve.restore(resume["curve"])

    def checkpoint(step: int, train_seconds: float, state) -> None:
        scoring = time.perf_counter()
        metrics = score_dev()
        curve.add(step, metrics, train_seconds, time.perf_counter() - scoring)
        model.train()
        if snapshot:  # before the report, which does not return when a scheduler stops the trial there
            snapshot(step, lambda: state() | {"curve": curve.state()})
        if report:
            report(curve.progress())

    patience = training.early_stopping_patience
    stopper = EarlyStopping(model, patience, score_dev) if patience else None
    with measured_energy(training.energy, training.energy_country, str(target)) as energy:
        objective = _objective(prepared, teacher, data, target)  # the teacher's logits, on the task's own ids
        stats = train(model, during.train, training, config.learning_rate, during.pad_id, target, config.seed,
                      objective=objective, checkpoint=checkpoint, checkpoint_every=training.eval_every_steps,
                      after_epoch=stopper, resume_from=resume)
    if stopper:
        stopper.restore()
    if trimmed:  # the rows it left out decayed for as many steps as the weights it keeps trained
        kept_steps = stopper.best_epoch * (curve.planned_steps // training.epochs) if stopper else stats.steps
        trimmed.restore(vocab.untouched_decay(training, config.learning_rate, kept_steps, curve.planned_steps))
    precision = "bf16" if autocast_dtype(training.dtype, target) is not None else "fp32"
    return stats, curve, energy, {"embedding_rows_trained": rows_trained, "autocast": precision,
                                  **(stopper.columns() if stopper else {})}


def _device(device: str | None, gpu_memory_fraction: float | None):
    """The torch device a trial runs on, checked before the model loads: a missing GPU is bad input, not a
    failure after minutes. A trial that shares a GPU keeps to its share."""
    import torch

    check_device(device)
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if target.type == "cuda":
        if gpu_memory_fraction:
            torch.cuda.set_per_process_memory_fraction(gpu_memory_fraction, target)
        torch.cuda.reset_peak_memory_stats(target)
    return target


def _model(prepared: PreparedTrial, teacher, target):
    """The model that trains: the kept layers (of the pretrained or the fine-tuned full model), frozen where
    recovery says, with LoRA where asked."""
    from frugalray.model.lora import apply_lora
    from frugalray.training import recovery

    config, task = prepared.config, prepared.task
    model = recovery.student_model(prepared, teacher, task.spec.head, task.labels)
    if config.recovery.method == "partial":
        recovery.freeze_all_but_last(model, config.recovery.partial_layers)
    if config.lora:
        model = apply_lora(model, config.lora)
    return model.to(target)


def _objective(prepared: PreparedTrial, teacher, data: Encoded, target):
    """The training loss: the model's own, or distillation from the teacher's cached logits."""
    from frugalray.training import recovery
    from frugalray.training.loop import model_loss

    config = prepared.config
    if config.recovery.method != "distill":
        return model_loss
    logits = recovery.teacher_logits(teacher, data.train, data.pad_id, target, config.training.eval_batch_size)
    teacher_model = recovery.load_teacher(teacher).to(target) if config.recovery.beta > 0 else None
    return recovery.distillation(config.recovery, logits, prepared.kept_layers, teacher_model)


def _score(model, task, data: Encoded, target, training, split: str) -> dict:
    """The task's metrics of ``model`` on ``split`` ("dev" or "test")."""
    from frugalray.training.loop import evaluate

    return evaluate(model, getattr(data, split), getattr(task, split), task.labels, task.spec.metric,
                    training.eval_batch_size, data.pad_id, target, training.dtype)


def _save(model, tokenizer, folder: str, prepared: PreparedTrial) -> None:
    from frugalray.model.saved import save_trained

    config, task = prepared.config, prepared.task
    save_trained(model, tokenizer, folder, base_model=config.model, kept_layers=prepared.kept_layers,
                 head=task.spec.head, labels=task.labels, lora=config.lora is not None,
                 trial={"task": task.name, "config_hash": prepared.config_hash, "strategy": config.strategy})


def _size_columns(model, target) -> dict:
    import torch

    from frugalray.model.surgery import parameter_count, parameter_mib

    if target.type == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(target) / 2**20, "cuda_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu_rss"
    return {"model_mib": parameter_mib(model), "total_params": parameter_count(model),
            "trainable_params": parameter_count(model, trainable_only=True), "peak_memory_mib": peak,
            "peak_memory_kind": peak_kind}


def execute_trial(config: TrialConfig, store: ResultsStore | None = None, *, prepared: PreparedTrial | None = None,
                  raise_input_errors: bool = False, device: str | None = None,
                  gpu_memory_fraction: float | None = None, runner=None, append: bool = True, alone: bool = False,
                  report=None, snapshot=None, resume: dict | None = None) -> TrialResult:
    """Prepare, run and record one trial. Any failure becomes a 'failed' row with its error and error_kind.

    With a ``store``, the row is appended to it (unless ``append`` is False: the caller appends it, e.g.
    after retries) and the weights of a ``save_model`` trial are put in it.

    With ``raise_input_errors`` a bad input (FrugalrayError) is raised instead, and nothing is written.
    ``runner`` replaces ``run_trial`` (same signature), e.g. the simulated trials of ``frugalray.testing``.
    ``alone``: nothing else runs in the caller (``frugalray trial``, not a sweep), see ``run_trial``.
    ``report(result)``: called at every dev checkpoint with the row this trial would leave if it stopped there
    (status ``stopped``), for an early-stopping scheduler; the row is the caller's to store (``snapshot``,
    ``resume``: ``run_trial``'s)."""
    started_at = datetime.now(timezone.utc)
    saving = store.staging_folder() if config.save_model and store is not None else None
    try:
        prepared = prepared or prepare_trial(config)
        resumption = {k: v for k, v in (("snapshot", snapshot), ("resume", resume)) if v is not None}
        extra = _run_options(config, prepared, store, started_at, saving, alone, report, resumption)
        with running("trial"):  # a latency measured elsewhere on the machine meanwhile is not isolated
            row = base_row(config, prepared) | (runner or run_trial)(prepared, device, gpu_memory_fraction, **extra)
        row |= {"status": "ok", "error": None}
    except FrugalrayError as error:
        if raise_input_errors:
            raise
        row = base_row(config, prepared) | failed_columns(error, "input")
    except Exception as error:  # a trial never takes its caller down: it becomes a failed row
        tail = "".join(traceback.format_exception(error)[-3:])
        row = base_row(config, prepared) | failed_columns(f"{type(error).__name__}: {error}\n{tail}", "exception")
    row["config_hash"] = row.get("config_hash") or fallback_hash(config)
    row["trial_id"] = make_trial_id(row["config_hash"], started_at)
    if saving:
        _keep_weights(store, saving, row)
    row["started_at"], row["finished_at"] = started_at, datetime.now(timezone.utc)
    result = TrialResult.from_row(row)
    if store is not None and append:
        store.append(result)
    return result


def _run_options(config, prepared, store, started_at, saving, alone, report, resumption) -> dict:
    """``run_trial``'s keyword arguments beyond the device: where to save, the teacher, the checkpoint hooks."""
    extra = ({"save_to": saving} if saving else {}) | ({"alone": True} if alone else {}) | resumption
    if report:
        stopped = base_row(config, prepared) | {"trial_id": make_trial_id(prepared.config_hash, started_at),
                                                "status": "stopped", "started_at": started_at}
        extra["report"] = lambda progress: report(TrialResult.from_row(
            stopped | progress | {"finished_at": datetime.now(timezone.utc)}))
    if config.recovery.needs_teacher:
        from frugalray.training.recovery import find_teacher

        extra["teacher"] = find_teacher(store, prepared)
    return extra


def _keep_weights(store: ResultsStore, saving: str, row: dict) -> None:
    """Put a successful trial's saved weights in the store, before the row that points at them lands."""
    try:
        if row["status"] == "ok":
            row["model_path"] = store.put_folder(saving, store.model_folder(row["trial_id"]))
    except Exception as error:
        row |= failed_columns(f"Saving the trained weights failed: {type(error).__name__}: {error}", "exception")
    finally:
        shutil.rmtree(saving, ignore_errors=True)
