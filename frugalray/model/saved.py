"""A trial's saved weights: what ``save_model`` keeps and how it is loaded back.

A trial run with ``save_model`` keeps its trained model under ``<results>/models/<trial_id>/``: the whole
pruned model after full fine-tuning; after LoRA only the adapter and the head (megabytes, not the
model), rebuilt when loaded from the base model and the kept layers. The manifest names the base model as
the trial named it (``minilm``, a hub id, the user's folder), never by this machine's path to it, so that the
weights mean the same thing on another machine. Exporting them is ``frugalray.deploy.export``'s.

>>> model, manifest = load_trained("results/models/3f2a9c01-20260101T000000000000")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

MANIFEST = "frugalray_trial.json"


def save_trained(model, tokenizer, folder: str | Path, *, base_model: str, kept_layers, head: str,
                 labels: list[str], lora: bool, trial: dict) -> None:
    """Write what export needs: weights (whole model, or adapter + head), tokenizer and a manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _name_base_model(model, base_model)
    if hasattr(model, "peft_config"):  # a peft model saves its adapter and modules_to_save only
        # frugalray never resizes the vocabulary, so the embeddings are saved only when LoRA targets them;
        # saying so spares peft looking the base model's config up on the hub (a warning offline).
        targets = {str(m) for config in model.peft_config.values() for m in (config.target_modules or ())}
        model.save_pretrained(folder, save_embedding_layers=any("embed" in m for m in targets))
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    manifest = {"base_model": base_model, "kept_layers": list(kept_layers), "head": head, "labels": list(labels),
                "lora": lora, **trial}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))


def _name_base_model(model, base_model: str) -> None:
    """Make ``model`` call its base model ``base_model``: peft writes that name into adapter_config.json and
    README.md, where the resolved location (e.g. a site-packages path) would only mean something here."""
    for config in getattr(model, "peft_config", {}).values():
        config.base_model_name_or_path = base_model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.config.name_or_path = base_model
    inner.name_or_path = base_model


def load_trained(folder: str | Path, merge: bool = True):
    """The trained model of a saved trial, in eval mode, and its manifest. LoRA is merged into the weights
    unless ``merge`` is False: then it is the peft model with its adapter, as the trial evaluated it."""
    from frugalray.model.loading import auto_class, load_model

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest["lora"]:
        from peft import PeftModel

        from frugalray.model.lora import merged
        from frugalray.model.surgery import num_layers, prune_layers

        model = load_model(manifest["base_model"], manifest["head"], manifest["labels"])
        if list(manifest["kept_layers"]) != list(range(num_layers(model.config))):
            prune_layers(model, manifest["kept_layers"])
        model = PeftModel.from_pretrained(model, folder)
        model = merged(model) if merge else model
    else:
        model = auto_class(manifest["head"]).from_pretrained(folder)
    return model.eval(), manifest
