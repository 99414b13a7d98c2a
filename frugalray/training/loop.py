"""The training loop: the recipe of ``transformers.Trainer`` with its defaults, written out.

What ``TrainingArguments()`` does by default is what a trial does by default: AdamW (fused where the
device has it) with betas 0.9/0.999 and eps 1e-8, weight decay off biases and LayerNorm weights, gradient
norm clipped at 1.0, a linear schedule with optional warm-up, uniformly shuffled batches, dynamic padding.
``tests/training/test_loop.py`` checks step by step that the losses and the final weights equal the Trainer's
on the same batches. Every knob is a ``TrainingSettings`` field, recorded in each row and in the
configuration hash; the speed choices are off by default until ``benchmarks/recipe_fidelity.py`` shows
over seeds, on a real corpus, that they cost no quality.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from frugalray._registry import FrugalrayError
from frugalray.data.encoding import IGNORE, Encoded, collate, length_grouped_batches
from frugalray.data.readers import Example
from frugalray.data.metrics import METRICS
from frugalray.config import TrainingSettings
from frugalray.config.training import DTYPES
from frugalray.training import resume

__all__ = ["TrainingSettings", "TrainStats", "train", "predict", "evaluate", "measure_latency"]

# One loss per step is kept; checking them for NaN every few steps costs one host sync per check.
DIVERGENCE_CHECK_EVERY = 16


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 where asked (any device), where 'auto' finds a GPU that has it, or where 'native-bf16' finds a GPU or
    a CPU that computes it natively; None: plain fp32."""
    if setting not in DTYPES:
        raise ValueError(f"dtype {setting!r} is not one of {', '.join(DTYPES)}")
    if setting == "fp32":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if setting == "native-bf16" and device.type == "cpu" and cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16, or AMX tiles); without them, bf16 autocast on the CPU
    is emulated and slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own probes (private, so guarded)
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class TrainStats:
    train_seconds: float
    epoch_seconds: list[float]
    train_tokens: int  # non-padding tokens seen, all epochs
    padded_tokens: int  # tokens the model computed on, padding included
    step_losses: list[float] = field(repr=False)

    @property
    def steps(self) -> int:
        return len(self.step_losses)


Objective = Callable[[torch.nn.Module, dict, list[int]], torch.Tensor]


def model_loss(model, batch: dict, indices: list[int]) -> torch.Tensor:
    """The model's own loss (cross-entropy over labelled tokens, mean over the batch): the Trainer's."""
    return model(**batch).loss


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters that get weight decay: all but biases and normalisation weights (the Trainer's rule)."""
    from transformers.trainer_pt_utils import get_parameter_names

    patterns = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    return set(get_parameter_names(model, [torch.nn.LayerNorm], patterns))


def make_optimizer(model: torch.nn.Module, settings: TrainingSettings, learning_rate: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, in the Trainer's two groups (decay / no decay)."""
    decay = decay_parameter_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise FrugalrayError("Nothing to train: every parameter is frozen")
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": settings.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    options = dict(lr=learning_rate, betas=(settings.adam_beta1, settings.adam_beta2), eps=settings.adam_epsilon)
    if settings.fused_optimizer:
        try:  # one kernel for all parameters: much faster steps on CPU, the Trainer's default too
            return torch.optim.AdamW(groups, fused=True, **options)
        except (RuntimeError, TypeError):  # a device or dtype without the fused kernel
            pass
    return torch.optim.AdamW(groups, **options)


def make_scheduler(optimizer: torch.optim.Optimizer, settings: TrainingSettings, total_steps: int):
    from transformers import get_scheduler

    warmup = math.ceil(settings.warmup_ratio * total_steps)  # as TrainingArguments.get_warmup_steps
    return get_scheduler(settings.lr_schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def epoch_batches(lengths: list[int], settings: TrainingSettings, seed: int, epoch: int) -> list[list[int]]:
    """This epoch's batches of example indices: uniform shuffling, or length-grouped when asked."""
    return length_grouped_batches(lengths, settings.batch_size, seed * 1000 + epoch,
                                  megabatch=settings.length_grouping)


def train(model, data: list[Encoded], settings: TrainingSettings, learning_rate: float, pad_id: int,
          device: torch.device, seed: int, *, objective: Objective = model_loss,
          batches: Callable[[int], list[list[int]]] | None = None,
          checkpoint: Callable[[int, float, Callable[[], dict]], None] | None = None, checkpoint_every: int = 0,
          after_epoch: Callable[[int], bool] | None = None, resume_from: dict | None = None) -> TrainStats:
    """Fine-tune ``model`` on ``data`` in place; training seconds exclude everything but the steps.

    ``objective(model, batch, indices)`` gives the loss (the model's own by default; distillation passes
    its own). ``batches(epoch)`` replaces the shuffling, e.g. to replay another trainer's batch order.
    With ``checkpoint_every``, ``checkpoint(step, seconds, state)`` is called after every that many optimizer steps
    but the last, with the training seconds so far (e.g. to evaluate dev) and ``state()``, which gives the loop's
    state there (``frugalray.training.resume``); its time is not training time, and it must leave the model as it
    found it (train mode included). ``resume_from``: such a state, to go on from (the weights included).
    ``after_epoch(epoch)`` is called after every epoch, outside the training time (e.g. to score dev); training
    stops when it returns True. A loss that turns NaN or infinite stops training with a FrugalrayError naming the step.
    """
    optimizer = make_optimizer(model, settings, learning_rate)
    lengths = [len(item) for item in data]
    plan = batches or (lambda epoch: epoch_batches(lengths, settings, seed, epoch))
    total_steps = settings.planned_steps(len(data))
    scheduler = make_scheduler(optimizer, settings, total_steps)
    amp = (device, autocast_dtype(settings.dtype, device))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    step_model = torch.compile(model) if settings.compile else model
    model.train()
    epoch_seconds, losses, tokens, padded, skip, carried = [], [], 0, 0, 0, 0.0
    if resume_from is not None:
        skip, carried, epoch_seconds, losses, tokens, padded = resume.restore_loop(
            resume_from, model, optimizer, scheduler, device)
    for epoch in range(settings.epochs):
        order = plan(epoch)
        if skip >= len(order):  # done before the resume
            skip -= len(order)
            continue
        order, skip = order[skip:], 0
        _sync(device)
        start, carried = time.perf_counter() - carried, 0.0
        for indices in order:
            batch = _to(collate([data[i] for i in indices], pad_id, settings.pad_to_multiple_of), device)
            tokens += sum(lengths[i] for i in indices)
            padded += batch["input_ids"].numel()
            losses.append(_step(step_model, objective, batch, indices, optimizer, scheduler, params, settings, amp))
            if len(losses) % DIVERGENCE_CHECK_EVERY == 0:
                _check_finite(losses, len(losses) - DIVERGENCE_CHECK_EVERY)
            if checkpoint_every and len(losses) % checkpoint_every == 0 and len(losses) < total_steps:
                _check_finite(losses, 0)  # a diverged model is never scored
                _sync(device)
                paused = time.perf_counter()
                rng = resume.random_state(device)  # before dev is scored: the training's own random state
                state = functools.partial(resume.loop_state, model, optimizer, scheduler, losses, epoch_seconds,
                                          paused - start, tokens, padded, rng)
                checkpoint(len(losses), sum(epoch_seconds) + paused - start, state)
                start += time.perf_counter() - paused
        _check_finite(losses, 0)
        _sync(device)
        epoch_seconds.append(time.perf_counter() - start)
        if after_epoch is not None and after_epoch(epoch):
            break
    return TrainStats(sum(epoch_seconds), epoch_seconds, tokens, padded, torch.stack(losses).float().tolist())


def _step(model, objective: Objective, batch: dict, indices: list[int], optimizer, scheduler, params, settings,
          amp) -> torch.Tensor:
    """One optimizer step; returns its loss (on the device, not synchronised)."""
    with _autocast(*amp):
        loss = objective(model, batch, indices)
    loss.backward()
    if settings.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def _check_finite(losses: list[torch.Tensor], start: int) -> None:
    recent = torch.stack(losses[start:])
    finite = torch.isfinite(recent)
    if not bool(finite.all()):
        step = start + int((~finite).nonzero()[0, 0]) + 1
        raise FrugalrayError(
            f"loss diverged at step {step} (loss {float(recent[step - start - 1])}); lower the learning rate, "
            f"keep gradient clipping on (max_grad_norm) or add warm-up"
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict(model, data: list[Encoded], batch_size: int, pad_id: int, device: torch.device,
            dtype: str) -> tuple[list, float]:
    """Predicted label ids per example (per word for token tasks) and the mean eval loss."""
    model.eval()
    amp = autocast_dtype(dtype, device)
    order = sorted(range(len(data)), key=lambda i: len(data[i]))  # little padding; order restored below
    predictions: list = [None] * len(data)
    loss_sum, loss_weight = 0.0, 0
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = _to(collate([data[i] for i in indices], pad_id), device)
        with _autocast(device, amp):
            out = model(**batch)
        weight = int((batch["labels"] != IGNORE).sum())
        loss_sum += float(out.loss) * weight
        loss_weight += weight
        best = out.logits.float().argmax(-1).cpu()
        for row, i in enumerate(indices):
            item = data[i]
            if item.word_positions is None:
                predictions[i] = int(best[row])
            else:
                predictions[i] = [int(best[row, p]) if p is not None else None for p in item.word_positions]
    return predictions, loss_sum / max(loss_weight, 1)


def evaluate(model, data: list[Encoded], examples: list[Example], labels: list[str], metric: str,
             batch_size: int, pad_id: int, device: torch.device, dtype: str) -> dict[str, float]:
    """Task metrics on ``examples``; a word cut by truncation counts as predicted 'O' (or the first label).

    Also says how many distinct labels were predicted (``predicted_classes``): one means the model
    answers the same thing everywhere, whatever its F1.
    """
    predicted_ids, loss = predict(model, data, batch_size, pad_id, device, dtype)
    predicted = label_names(predicted_ids, labels)
    if examples and examples[0].words is not None:
        gold = [list(e.labels) for e in examples]
        distinct = {tag for row in predicted for tag in row}
    else:
        gold = [e.labels for e in examples]
        distinct = set(predicted)
    return METRICS.get(metric)(gold, predicted) | {"eval_loss": loss, "predicted_classes": len(distinct)}


def label_names(predicted_ids: list, labels: list[str]) -> list:
    """``predict``'s label ids as names: a list per sentence for token tasks (a word cut by truncation counts
    as 'O', or the first label), one name per text otherwise.

    >>> label_names([[1, None], 0], ["O", "B-PER"])
    [['B-PER', 'O'], 'O']
    """
    fallback = "O" if "O" in labels else labels[0]
    return [[labels[i] if i is not None else fallback for i in row] if isinstance(row, list) else labels[row]
            for row in predicted_ids]


@torch.inference_mode()
def measure_latency(model, data: list[Encoded], batch_size: int, pad_id: int, device: torch.device,
                    dtype: str, repeats: int = 5) -> dict[str, float]:
    """Median forward time of one batch of the first ``batch_size`` examples, after a warm-up."""
    model.eval()
    amp = autocast_dtype(dtype, device)
    batch = _to(collate(data[:batch_size], pad_id), device)
    batch.pop("labels")
    times = []
    for attempt in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        with _autocast(device, amp):
            model(**batch)
        _sync(device)
        if attempt:  # the first call warms caches and kernels
            times.append(time.perf_counter() - start)
    return {
        "latency_ms": statistics.median(times) * 1000,
        "latency_batch_size": int(batch["input_ids"].shape[0]),
        "latency_seq_len": int(batch["input_ids"].shape[1]),
    }
