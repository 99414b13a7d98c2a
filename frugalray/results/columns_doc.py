"""What each result column holds, for people: the schema's own descriptions (``column(..., doc)``) completed by
``DESCRIPTIONS`` for the columns declared without one, and the column reference page rendered from both.

    python -m frugalray.results.columns_doc > docs/reference/columns.md

``tests/test_docs.py`` fails when a column has no description, when ``DESCRIPTIONS`` names a column the schema
does not have or one the schema already describes, and when the committed page differs from a fresh render.

>>> description("kept_layers")
'original indices of the kept layers'
>>> description("f1").startswith("test F1")
True
"""

from __future__ import annotations

import inspect
import re

from frugalray.results import schema
from frugalray.results.schema import SCHEMA, TRAINED_SQL

DESCRIPTIONS = {
    # identity and what was trained
    "task": "registered task name, or the name field of a task JSON file",
    "strategy": "pruning strategy (frugalray strategies lists them): full, single, first, last, best, ...",
    "n_kept_layers": "how many layers the model kept",
    "lora": "true: LoRA adapters trained on the pruned model; false: full fine-tuning",
    "lora_r": "LoRA rank (the lora_* columns are null without LoRA)",
    "lora_alpha": "LoRA scaling numerator (lora_alpha)",
    "lora_dropout": "dropout on the LoRA branch",
    "lora_target_modules": "the linear layers that got adapters, as resolved for the architecture",
    "lora_train_head": "whether the classification head trained beside the adapters",
    "epochs": "training epochs asked for (with early stopping: the most it could train; see epochs_trained)",
    "batch_size": "training batch size",
    "max_length": "sub-tokens per example; longer ones were cut",
    "weight_decay": "AdamW weight decay (never on biases and LayerNorm weights)",
    "warmup_ratio": "share of the optimizer steps with a linear learning-rate warm-up",
    "lr_schedule": "learning-rate schedule: linear, cosine, constant, constant_with_warmup or polynomial",
    "pad_to_multiple_of": "batches padded to a multiple of this (null: to the longest member)",
    "fused_optimizer": "whether the fused AdamW kernel was asked for",
    "compile": "whether torch.compile was asked for training",
    "seed": "seed of initialisation, batching and dropout",
    "distill_temperature": "distill: softmax temperature T of the logits",
    # quality
    "accuracy": "test accuracy (token accuracy for token tasks)",
    "precision": "test precision: entity-level (seqeval) for NER, micro for POS, macro for classification",
    "recall": "test recall, averaged as precision",
    "f1": "test F1: entity-level (seqeval) for NER, micro (= token accuracy) for POS, macro for classification",
    "f1_macro": "test macro F1 over tags (POS tasks; null for the others)",
    "eval_loss": "mean cross-entropy on test",
    "dev_accuracy": "dev accuracy, as accuracy",
    "dev_f1": "dev F1, as f1: what layer sets are ranked and chosen on",
    "dev_eval_loss": "mean cross-entropy on dev (breaks ties of dev_f1 when ranking layers)",
    "dev_predicted_classes": "distinct labels predicted on dev; 1: one class everywhere",
    "dev_majority_f1": "dev F1 of always answering train's most frequent label",
    "dev_degenerate": "as degenerate, on dev",
    # cost
    "seconds_per_epoch": "train_seconds over the epochs trained",
    "eval_seconds": "seconds scoring test and dev",
    "total_seconds": "seconds of the whole trial: loading, training, scoring, latency probe",
    "train_tokens_per_second": "train_tokens over train_seconds",
    "total_params": "parameters of the model as trained: kept layers, embeddings and head (with LoRA, adapters too)",
    "trainable_params": "parameters that trained (with LoRA: adapters and head)",
    "peak_memory_mib": "peak memory of the process, of the kind peak_memory_kind says",
    "latency_ms": "median forward time of one test batch after a warm-up, in the precision it was scored in",
    "latency_batch_size": "examples in the batch latency_ms timed (up to 32)",
    "latency_seq_len": "padded length of that batch",
    "eval_co2_kg": "CO2-eq of eval_kwh at energy_country's grid intensity",
    # where and with what
    "device": "cpu, or cuda: and the GPU's name",
    "hardware": "CPU model and count, and GPUs, of the machine",
    "torch_version": "torch.__version__ where it ran",
    "transformers_version": "transformers.__version__ where it ran",
    "peft_version": "peft.__version__ where it ran",
    "frugalray_version": "frugalray.__version__ where it ran",
    "code_version": "git commit of the frugalray checkout (-dirty with uncommitted changes), else the version",
    "started_at": "when the trial started (UTC)",
    "finished_at": "when its row was written (UTC)",
}


def description(name: str) -> str:
    """What column ``name`` holds: the schema's description, else ``DESCRIPTIONS``'s ('' when neither has one)."""
    return SCHEMA.field(name).metadata[b"doc"].decode() or DESCRIPTIONS.get(name, "")


def sections() -> list[tuple[str, list[str]]]:
    """The columns grouped as ``TrialResult`` groups them (its ``# -- heading`` comments), in schema order."""
    groups: list[tuple[str, list[str]]] = [("", [])]
    for line in inspect.getsource(schema.TrialResult).splitlines():
        heading = re.match(r"\s+# -- (.+)$", line)
        field = re.match(r"\s+(\w+): .*= column\(", line)
        if heading:
            groups.append((heading.group(1).strip(), []))
        elif field:
            groups[-1][1].append(field.group(1))
    return [(title, names) for title, names in groups if names]


def _type(name: str) -> str:
    return str(SCHEMA.field(name).type).replace("item: ", "")


def _cell(text: str) -> str:
    """Markdown-safe text, with the names of other columns as code."""
    text = text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"\b([a-z0-9]+(?:_[a-z0-9]+)+)\b",
                  lambda m: f"`{m.group(1)}`" if m.group(1) in SCHEMA.names else m.group(1), text)


def render_markdown() -> str:
    """The column reference page (docs/reference/columns.md), every column of ``SCHEMA`` once."""
    lines = [
        "# Result columns",
        "",
        "<!-- Generated by `python -m frugalray.results.columns_doc > docs/reference/columns.md`: edit the schema "
        "(frugalray/results/schema.py) or frugalray/results/columns_doc.py, not this file. -->",
        "",
        f"One row per trial, {len(SCHEMA.names)} columns, in `frugalray.results.schema.SCHEMA`. Every column may be "
        "null: a failed trial has its identity, its configuration, its status and its error, and nothing else.",
        "",
        "Statistics over trained models keep the rows of a run that trained its configuration "
        "(`frugalray.results.schema.TRAINED_SQL`):",
        "",
        "```sql",
        TRAINED_SQL,
        "```",
        "",
    ]
    for title, names in sections():
        lines += [f"## {title[0].upper() + title[1:]}" if title else "## Columns", "",
                  "| column | type | what it holds |", "|---|---|---|"]
        lines += [f"| `{name}` | `{_type(name)}` | {_cell(description(name))} |" for name in names]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_markdown(), end="")
