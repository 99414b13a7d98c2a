"""The result of one trial: one typed record (``TrialResult``), one Parquet row. The Arrow schema of the
store (``SCHEMA``) is derived from it, so a column exists in one place only.

A result reads like a row too (``result["f1"]``, ``result.get("dev_f1")``), and every field but the
identity is optional: a failed trial has its configuration, its status and its error, and nothing else.

>>> TrialResult(trial_id="t1", config_hash="h", status="ok", f1=0.9)["f1"]
0.9
>>> SCHEMA.field("kept_layers").type
ListType(list<item: int32>)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

_STRING, _BOOL, _INT32, _INT64, _FLOAT = pa.string(), pa.bool_(), pa.int32(), pa.int64(), pa.float64()
_TIME = pa.timestamp("us", tz="UTC")


def column(arrow: pa.DataType, doc: str = ""):
    """A result field: optional (None), stored as ``arrow``; ``doc`` says what it holds."""
    return field(default=None, metadata={"arrow": arrow, "doc": doc})


@dataclass
class TrialResult:
    # -- identity and outcome
    trial_id: str | None = column(_STRING, "config hash + start time; unique")
    config_hash: str | None = column(_STRING, "hash of everything that changes the result")
    status: str | None = column(_STRING, "ok, failed, or stopped: an early-stopping search stopped its training "
                                         "at train_steps (dev F1 at that step, no test metrics; never a final result)")
    error: str | None = column(_STRING, "why a failed trial failed")
    error_kind: str | None = column(_STRING, "input (bad input: retrying cannot help), exception (raised while it ran) "
                                             "or lost (its process died); null: ok, or a row of frugalray <= 0.2")
    reused_from: str | None = column(_STRING, "trial_id whose training this row reports (same layer set)")
    sweep: str | None = column(_STRING, "sweep label")
    stage: str | None = column(_STRING, "sweep stage that scheduled it")
    variant: str | None = column(_STRING, "inference form: fp32 (the trained torch model; null in older rows), int8 "
                                          "(torch dynamic int8), onnx, onnx-int8 (ONNX Runtime)")
    source_trial_id: str | None = column(_STRING, "the trial whose trained model this variant converts (null: trained here)")
    int8_fp32_groups: list[str] | None = column(pa.list_(_STRING), "int8: the groups of Linear layers kept fp32 "
                                                                   "(chosen on dev; empty: every one int8)")
    # -- what was trained
    task: str | None = column(_STRING)
    task_fingerprint: str | None = column(_STRING, "hash of the task's data and reading options")
    model: str | None = column(_STRING, "alias, folder or hub id")
    num_layers: int | None = column(_INT32, "layer count of the unpruned model")
    strategy: str | None = column(_STRING)
    strategy_n: int | None = column(_INT32, "N (k for single)")
    kept_layers: list[int] | None = column(pa.list_(_INT32), "original indices of the kept layers")
    n_kept_layers: int | None = column(_INT32)
    lora: bool | None = column(_BOOL)
    lora_r: int | None = column(_INT32)
    lora_alpha: float | None = column(_FLOAT)
    lora_dropout: float | None = column(_FLOAT)
    lora_target_modules: list[str] | None = column(pa.list_(_STRING))
    lora_train_head: bool | None = column(_BOOL)
    learning_rate: float | None = column(_FLOAT, "the rate actually used (LoRA's when LoRA is on)")
    epochs: int | None = column(_INT32)
    batch_size: int | None = column(_INT32)
    max_length: int | None = column(_INT32)
    length_grouping: bool | None = column(_BOOL, "any length grouping")
    dtype: str | None = column(_STRING, "asked for; see autocast")
    autocast: str | None = column(_STRING, "the precision it trained and was scored in: bf16 (autocast) or fp32, "
                                           "dtype resolved on its hardware")
    weight_decay: float | None = column(_FLOAT)
    warmup_ratio: float | None = column(_FLOAT)
    lr_schedule: str | None = column(_STRING)
    max_grad_norm: float | None = column(_FLOAT, "0: no clipping")
    length_group_batches: int | None = column(_INT32, "batches per length group; 0: uniform shuffling")
    pad_to_multiple_of: int | None = column(_INT32)
    fused_optimizer: bool | None = column(_BOOL)
    compile: bool | None = column(_BOOL)
    trim_vocabulary: bool | None = column(_BOOL, "asked for; see embedding_rows_trained")
    early_stopping_patience: int | None = column(_INT32, "0: every epoch trained")
    seed: int | None = column(_INT64)
    # -- recovery (null for rows written before it existed: the study's pretrained + finetune)
    init: str | None = column(_STRING, "pretrained or finetuned (kept layers of the fine-tuned full model)")
    recovery: str | None = column(_STRING, "finetune, distill or partial")
    distill_temperature: float | None = column(_FLOAT)
    distill_alpha: float | None = column(_FLOAT, "weight of the label loss")
    distill_beta: float | None = column(_FLOAT, "weight of the hidden-state cosine loss")
    distill_hidden_map: str | None = column(_STRING, "the teacher layers of the hidden-state loss when not each kept "
                                                     "layer's own: uniform (TinyBERT's, student layer i of n to "
                                                     "teacher layer (i + 1) * L / n - 1); null: its own, or no loss")
    partial_layers: int | None = column(_INT32, "partial: the last k kept layers that trained")
    teacher_epochs: int | None = column(_INT32, "the most epochs the teacher trained, when not the trial's own "
                                                "(null: as the trial's training settings)")
    teacher_patience: int | None = column(_INT32, "with teacher_epochs: the teacher's early-stopping patience")
    teacher_trial_id: str | None = column(_STRING, "the fine-tuned full model this trial started or learnt from")
    teacher_seconds: float | None = column(_FLOAT, "the teacher's own training seconds (shared by its students)")
    teacher_logits_seconds: float | None = column(_FLOAT, "seconds this trial spent computing the teacher's logits")
    # -- quality (test, then dev)
    accuracy: float | None = column(_FLOAT)
    precision: float | None = column(_FLOAT)
    recall: float | None = column(_FLOAT)
    f1: float | None = column(_FLOAT)
    f1_macro: float | None = column(_FLOAT)
    eval_loss: float | None = column(_FLOAT)
    dev_accuracy: float | None = column(_FLOAT)
    dev_f1: float | None = column(_FLOAT)
    dev_eval_loss: float | None = column(_FLOAT)
    predicted_classes: int | None = column(_INT32, "distinct labels predicted on test; 1: one class everywhere")
    dev_predicted_classes: int | None = column(_INT32)
    majority_f1: float | None = column(_FLOAT, "test F1 of always answering train's most frequent label")
    dev_majority_f1: float | None = column(_FLOAT)
    degenerate: bool | None = column(_BOOL, "one class predicted, or no better than the majority baseline (test)")
    dev_degenerate: bool | None = column(_BOOL)
    # -- cost
    train_seconds: float | None = column(_FLOAT, "training steps only")
    train_steps: int | None = column(_INT64, "optimizer steps trained (fewer than planned_steps when stopped early)")
    planned_steps: int | None = column(_INT64, "optimizer steps of the whole training: epochs x batches per epoch")
    checkpoint_steps: list[int] | None = column(pa.list_(_INT32), "steps at which dev was scored during training "
                                                                 "(training.eval_every_steps)")
    checkpoint_dev_f1: list[float] | None = column(pa.list_(_FLOAT), "dev F1 at those steps (the final one is dev_f1)")
    checkpoint_dev_loss: list[float] | None = column(pa.list_(_FLOAT), "dev loss at those steps: it moves while "
                                                                       "dev F1 is still 0 everywhere")
    resumed_from_step: int | None = column(_INT64, "a stopped mask a search promoted: the step it went on from "
                                                   "(its earlier steps trained before; energy is this run's only)")
    checkpoint_eval_seconds: list[float] | None = column(pa.list_(_FLOAT), "seconds each of those dev evaluations "
                                                                           "took (not in train_seconds)")
    seconds_per_epoch: float | None = column(_FLOAT)
    eval_seconds: float | None = column(_FLOAT)
    total_seconds: float | None = column(_FLOAT)
    train_tokens: int | None = column(_INT64, "non-padding tokens seen, all epochs")
    train_padded_tokens: int | None = column(_INT64, "tokens computed on, padding included")
    train_tokens_per_second: float | None = column(_FLOAT)
    epochs_trained: int | None = column(_INT32, "with early stopping: the epochs it trained (all in train_seconds)")
    best_epoch: int | None = column(_INT32, "with early stopping: the epoch whose weights it kept")
    embedding_rows_trained: int | None = column(_INT64, "input embedding rows in the optimizer (all of them "
                                                        "unless the vocabulary was trimmed; 0: frozen)")
    model_mib: float | None = column(_FLOAT, "parameter bytes")
    total_params: int | None = column(_INT64)
    trainable_params: int | None = column(_INT64)
    peak_memory_mib: float | None = column(_FLOAT)
    peak_memory_kind: str | None = column(_STRING, "cuda_allocated or cpu_rss")
    latency_ms: float | None = column(_FLOAT)
    latency_batch_size: int | None = column(_INT32)
    latency_seq_len: int | None = column(_INT32)
    latency_isolated: bool | None = column(_BOOL, "True: nothing else of frugalray ran on the machine (a lone "
                                                  "`frugalray trial`, an export); False: beside other trials (a sweep)")
    train_kwh: float | None = column(_FLOAT, "energy of the training steps (null: not measured, see energy_method)")
    train_co2_kg: float | None = column(_FLOAT, "CO2-eq of that energy at energy_country's grid intensity")
    eval_kwh: float | None = column(_FLOAT, "energy of evaluating test and dev")
    eval_co2_kg: float | None = column(_FLOAT)
    energy_method: str | None = column(_STRING, "how energy was measured (RAPL, NVML, codecarbon's estimate), or why not")
    energy_country: str | None = column(_STRING, "ISO 3166-1 alpha-3 country whose grid intensity gives CO2-eq")
    # -- where and with what
    device: str | None = column(_STRING)
    hardware: str | None = column(_STRING)
    node_id: str | None = column(_STRING, "Ray node the trial ran on (null: outside Ray)")
    node_host: str | None = column(_STRING, "host name of that node")
    node_type: str | None = column(_STRING, "the cluster's node type the trial was placed for (null: any node)")
    accelerator_type: str | None = column(_STRING, "GPU model the trial was placed on (A10G, H100...; null: CPU)")
    gpu_ids: list[str] | None = column(pa.list_(_STRING), "GPU ids Ray gave the trial (CUDA_VISIBLE_DEVICES)")
    gpu_share: float | None = column(_FLOAT, "share of one GPU granted (its CUDA allocator is capped at it); null: CPU")
    gpu_memory_gib: float | None = column(_FLOAT, "memory of the GPU model the share was sized for")
    cpus: float | None = column(_FLOAT, "CPUs granted")
    torch_version: str | None = column(_STRING)
    transformers_version: str | None = column(_STRING)
    peft_version: str | None = column(_STRING)
    frugalray_version: str | None = column(_STRING)
    code_version: str | None = column(_STRING)
    started_at: datetime | None = column(_TIME)
    finished_at: datetime | None = column(_TIME)
    config_json: str | None = column(_STRING, "the whole TrialConfig")
    config_version: int | None = column(_INT32, "how config_json/config_hash were written; null: frugalray 0.1")
    model_path: str | None = column(_STRING, "saved weights, relative to the store (None: not saved)")

    # -- reading it like a row
    def __getitem__(self, name: str) -> Any:
        if name not in COLUMN_SET:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in COLUMN_SET else default

    def __contains__(self, name: object) -> bool:
        return name in COLUMN_SET

    def to_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "TrialResult":
        """From a dict of columns; an unknown column is an error (KeyError names it)."""
        unknown = sorted(set(row) - COLUMN_SET)
        if unknown:
            raise KeyError(f"Result row has unknown columns {unknown}; schema columns: {', '.join(COLUMNS)}")
        return cls(**row)

    def replace(self, **changes: Any) -> "TrialResult":
        return dataclasses.replace(self, **changes)

    # -- the wire format between a Ray worker and the driver
    def to_json(self) -> str:
        return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in self.to_row().items()})

    @classmethod
    def from_json(cls, text: str) -> "TrialResult":
        values = json.loads(text)
        for key in ("started_at", "finished_at"):
            if isinstance(values.get(key), str):
                values[key] = datetime.fromisoformat(values[key])
        return cls(**{k: values.get(k) for k in COLUMNS})


SCHEMA = pa.schema([pa.field(f.name, f.metadata["arrow"], metadata={"doc": f.metadata["doc"]})
                    for f in dataclasses.fields(TrialResult)])
COLUMNS = SCHEMA.names
COLUMN_SET = frozenset(COLUMNS)


# A row whose own run trained its configuration: successful, not the alias row of another strategy that shared
# the run (reused_from), not an exported int8/ONNX variant of a trained model (source_trial_id). As SQL over
# the store's ``trials`` view, and as a test of one row.
TRAINED_SQL = "status = 'ok' AND reused_from IS NULL AND source_trial_id IS NULL"


def is_trained(row) -> bool:
    """Whether ``row`` (a dict or a TrialResult) is a trained row (``TRAINED_SQL``)."""
    return row["status"] == "ok" and row.get("reused_from") is None and row.get("source_trial_id") is None


def table(results: list[TrialResult | dict]) -> pa.Table:
    """Results as an Arrow table of ``SCHEMA``."""
    rows = [r.to_row() if isinstance(r, TrialResult) else r for r in results]
    return pa.Table.from_pylist(rows, schema=SCHEMA)
