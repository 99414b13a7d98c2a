"""Saved trial weights, and exporting a trial as a plain Hugging Face model folder.

A trial run with ``save_model`` keeps its trained model under ``<results>/models/<trial_id>/``: the whole
pruned model after full fine-tuning; after LoRA only the adapter and the head (megabytes, not the
model), rebuilt at export from the base model and the kept layers. ``export_trial`` writes the pruned
model with LoRA merged as a normal folder that ``AutoModelFor…Classification.from_pretrained`` loads,
and checks that it predicts what the trained model predicts.

    frugalray export results/ --trial 3f2a9c01 --out exported/
    >>> AutoModelForTokenClassification.from_pretrained("exported/")   # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from frugalray._registry import FrugalrayError
from frugalray.results import ResultsStore

MANIFEST = "frugalray_trial.json"


def save_trained(model, tokenizer, folder: str | Path, *, base_model: str, kept_layers, head: str,
                 labels: list[str], lora: bool, trial: dict) -> None:
    """Write what export needs: weights (whole model, or adapter + head), tokenizer and a manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # a peft model saves its adapter and modules_to_save only
    tokenizer.save_pretrained(folder)
    manifest = {"base_model": base_model, "kept_layers": list(kept_layers), "head": head, "labels": list(labels),
                "lora": lora, **trial}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def load_trained(folder: str | Path):
    """The trained model of a saved trial (LoRA merged), in eval mode, and its manifest."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    auto = AutoModelForTokenClassification if manifest["head"] == "token" else AutoModelForSequenceClassification
    if manifest["lora"]:
        from peft import PeftModel

        from frugalray.lora import merged
        from frugalray.models import load_model
        from frugalray.surgery import num_layers, prune_layers

        model = load_model(manifest["base_model"], manifest["head"], manifest["labels"])
        if list(manifest["kept_layers"]) != list(range(num_layers(model.config))):
            prune_layers(model, manifest["kept_layers"])
        model = merged(PeftModel.from_pretrained(model, folder))
    else:
        model = auto.from_pretrained(folder)
    return model.eval(), manifest


def find_trial(store: ResultsStore, trial: str) -> dict:
    """The row whose trial_id is ``trial`` or starts with it (unique)."""
    rows = store.query(sql="SELECT trial_id, status, error, model_path, task, model, strategy, strategy_n, "
                           "kept_layers, lora, f1 FROM trials WHERE starts_with(trial_id, $1)", params=[trial]).to_pylist()
    exact = [r for r in rows if r["trial_id"] == trial]
    rows = exact or rows
    if not rows:
        raise FrugalrayError(
            f"No trial {trial!r} in {store.location!r}; list them with: frugalray results {store.location} "
            f"--columns trial_id,task,strategy,kept_layers,f1,model_path"
        )
    if len(rows) > 1:
        ids = ", ".join(r["trial_id"] for r in rows[:5])
        raise FrugalrayError(f"Trial {trial!r} is ambiguous in {store.location!r}: {ids}{'...' if len(rows) > 5 else ''}")
    return rows[0]


def export_trial(store: ResultsStore, trial: str, out: str | Path, check: bool = True) -> dict:
    """Write trial ``trial``'s model (pruned, LoRA merged) as a plain HF folder at ``out``.

    Returns what was written: trial row, output folder, parameters and the largest logit difference
    between the exported model and the trained one (checked ``< 1e-4`` when ``check``).
    """
    row = find_trial(store, trial)
    if row["status"] != "ok":
        raise FrugalrayError(f"Trial {row['trial_id']} failed ({(row['error'] or '').splitlines()[0][:200]}); "
                             f"a failed trial has no model to export")
    if not row["model_path"]:
        raise FrugalrayError(
            f"Trial {row['trial_id']} has no saved weights; run it again with --save-model "
            f"(frugalray trial ... --save-model, or save_models=[stages] in a sweep) and export that run"
        )
    out = Path(out)
    from transformers.utils import logging

    logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as scratch:
        folder = store.fetch_folder(row["model_path"], Path(scratch) / "saved")
        model, manifest = load_trained(folder)
        staging = out.with_name(f".{out.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(folder).save_pretrained(staging)
        (staging / MANIFEST).write_text((Path(folder) / MANIFEST).read_text())
        difference = _max_logit_difference(model, staging, manifest["head"]) if check else None
        if difference is not None and difference > 1e-4:
            raise FrugalrayError(f"Exported model of {row['trial_id']} differs from the trained one "
                                 f"(max logit difference {difference:.2e}); nothing was written to {out}")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    from frugalray.surgery import parameter_count

    return {"trial_id": row["trial_id"], "out": str(out), "kept_layers": manifest["kept_layers"],
            "lora_merged": manifest["lora"], "parameters": parameter_count(model), "max_logit_difference": difference}


def _max_logit_difference(model, folder: Path, head: str, batch: int = 4, length: int = 24) -> float:
    """Largest |logit| difference between ``model`` and the model loaded back from ``folder``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if head == "token" else AutoModelForSequenceClassification
    loaded = auto.from_pretrained(folder).eval()
    generator = torch.Generator().manual_seed(0)
    vocab = min(model.config.vocab_size, loaded.config.vocab_size)
    ids = torch.randint(5, vocab, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # padding too
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        got = loaded(input_ids=ids, attention_mask=mask).logits
    return float((expected - got).abs().max())
