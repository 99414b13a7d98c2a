"""Exporting a trial as a plain Hugging Face model folder, from the weights it saved
(``frugalray.model.saved``).

``export_trial`` writes the pruned
model with LoRA merged as a normal folder that ``AutoModelFor…Classification.from_pretrained`` loads,
and checks that it predicts what the trained model predicted: the export, loaded back, against the model as
the trial evaluated it (for LoRA the unmerged adapter model), on the task's test examples encoded with the
trial's tokenizer.

    frugalray export results/ --trial 3f2a9c01 --out exported/
    >>> AutoModelForTokenClassification.from_pretrained("exported/")   # doctest: +SKIP

``--int8`` and ``--onnx`` export a smaller inference form too (torch dynamic int8; ONNX Runtime, fp32 or with
``--int8`` int8), which is re-evaluated on the task and stored as a row of its own
(``frugalray.deploy.variants``).

The base model is named as the trial named it (``minilm``, a hub id, the user's folder), never by this
machine's path to it, so a saved trial and an export mean the same thing on another machine. An export
only ever replaces an earlier export's files: other files in ``--out`` are kept, and a non-empty folder
that is not an earlier export needs ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePath

from frugalray._registry import FrugalrayError
from frugalray.model.saved import MANIFEST, load_trained
from frugalray.results.store import ResultsStore, normal_permissions

def find_trial(store: ResultsStore, trial: str) -> dict:
    """The row whose trial_id is ``trial`` or starts with it (unique)."""
    rows = store.query(sql="SELECT trial_id, status, error, model_path, task, model, strategy, strategy_n, "
                           "kept_layers, lora, f1, config_json FROM trials WHERE starts_with(trial_id, $1)",
                       params=[trial]).to_pylist()
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


def export_trial(store: ResultsStore, trial: str, out: str | Path, check: bool = True, force: bool = False,
                 int8: bool = False, onnx: bool = False, int8_fp32: str | list[str] = "auto",
                 int8_max_fp32_share: float | None = None) -> dict:
    """Write trial ``trial``'s model (pruned, LoRA merged) as a plain HF folder at ``out``.

    With ``int8`` and/or ``onnx`` the export is that variant (``frugalray.deploy.variants``): it is evaluated
    on the task's test and dev sets and stored as a row of ``store`` (``variant_row``), beside the source's F1.
    For torch int8, ``int8_fp32`` names the groups of Linear layers that stay fp32, or ``auto`` (chosen on dev F1),
    ``agreement`` (chosen on agreement with the fp32 model; ``frugalray.deploy.int8``) or ``none``; a choice keeps
    at most ``int8_max_fp32_share`` of the Linear weights fp32 when that is given.

    ``out`` may be new, empty or an earlier export (whose files are replaced); another non-empty folder
    needs ``force`` (its files are kept). Returns what was written: trial row, output folder, parameters
    and the largest logit difference between the exported model and the trained one on the task's test
    examples (checked ``< 1e-4`` when ``check``; nothing is written when it fails).

    >>> export_trial(ResultsStore("results/"), "3f2a9c01", "exported/")["kept_layers"]   # doctest: +SKIP
    [0, 1, 5]
    """
    if int8_max_fp32_share is not None and not (int8 and not onnx and int8_fp32 in ("auto", "agreement")
                                                and 0 <= int8_max_fp32_share <= 1):
        raise FrugalrayError(f"--int8-max-fp32-share {int8_max_fp32_share}: a share from 0 to 1 of the Linear weights, "
                             f"for torch int8 (--int8 without --onnx) whose fp32 groups are chosen (--int8-fp32 auto "
                             f"or agreement)")
    row = _exportable(store, trial)
    out = Path(out)
    _check_out(out, force)
    from frugalray.deploy.variants import evaluate_variant, variant_name

    variant = variant_name(int8, onnx)
    if onnx:
        from frugalray.deploy.onnx import require_onnx

        require_onnx("frugalray export --onnx")  # before anything is written
    from transformers.utils import logging

    logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as scratch:
        folder = store.fetch_folder(row["model_path"], Path(scratch) / "saved")
        trained, manifest = load_trained(folder, merge=False)
        inputs = _test_inputs(row, folder, manifest) if check else None
        expected = _logits(trained, inputs) if check else None  # before merging: merging changes ``trained``
        from frugalray.model import lora

        model = lora.merged(trained)
        manifest |= {"variant": variant, "source_trial_id": row["trial_id"]}
        difference = _write(model, folder, out, manifest, (expected, inputs) if check else None)
    from frugalray.model.surgery import parameter_count

    evaluated = (evaluate_variant(store, row["trial_id"], out, int8_fp32, int8_max_fp32_share)
                 if variant != "fp32" else None)
    return {"trial_id": row["trial_id"], "out": str(out), "kept_layers": manifest["kept_layers"],
            "lora_merged": manifest["lora"], "parameters": parameter_count(model), "max_logit_difference": difference,
            "variant": variant, "source_f1": row["f1"], "variant_row": evaluated}


def _exportable(store: ResultsStore, trial: str) -> dict:
    """Trial ``trial``'s row, refused when it failed or kept no readable weights."""
    row = find_trial(store, trial)
    if row["status"] != "ok":
        raise FrugalrayError(f"Trial {row['trial_id']} failed ({(row['error'] or '').splitlines()[0][:200]}); "
                             f"a failed trial has no model to export")
    if not row["model_path"]:
        raise FrugalrayError(
            f"Trial {row['trial_id']} has no saved weights; run it again with --save-model "
            f"(frugalray trial ... --save-model, or save_models=[stages] in a sweep) and export that run"
        )
    try:
        store.path(row["model_path"])
    except FrugalrayError as error:
        raise FrugalrayError(f"Trial {row['trial_id']}: its model_path is not readable: {error}") from None
    return row


def _write(model, saved: Path, out: Path, manifest: dict, check: tuple | None) -> float | None:
    """Write the merged ``model``, its tokenizer (from the ``saved`` folder), its variant's files and the
    manifest to ``out``, through a staging folder beside it; with ``check`` (expected logits, inputs) the
    export is loaded back and compared first. Returns the largest logit difference (None: unchecked)."""
    from transformers import AutoTokenizer

    from frugalray.deploy.variants import write_variant

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))  # beside ``out``: moves are renames
    try:
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(saved).save_pretrained(staging)
        difference = _difference(check[0], staging, manifest["head"], check[1]) if check else None
        if difference is not None and difference > 1e-4:
            raise FrugalrayError(f"Exported model of {manifest['source_trial_id']} differs from the trained one "
                                 f"(max logit difference {difference:.2e}); nothing was written to {out}")
        write_variant(model, staging, manifest["variant"])
        written = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        (staging / MANIFEST).write_text(json.dumps(manifest | {"exported_files": written + [MANIFEST]},
                                                   indent=2, sort_keys=True))
        normal_permissions(staging)  # mkdtemp and some writers make files private
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return difference


def _check_out(out: Path, force: bool) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder that is not an earlier export (unless ``force``)."""
    if out.exists() and not out.is_dir():
        raise FrugalrayError(f"Export folder {str(out)!r} is a file; give a folder to write the model into")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file() and not force:
        raise FrugalrayError(
            f"Export folder {str(out)!r} is not empty and is not an earlier frugalray export (no {MANIFEST}); "
            f"give a new or empty folder, or --force to write into it (its other files are kept)"
        )


def _install(staging: Path, out: Path) -> None:
    """Put the export in ``staging`` at ``out``. A new or empty ``out`` is replaced whole (one rename);
    otherwise the files an earlier export listed are removed, the new ones moved in, and nothing else touched."""
    if not out.exists() or not any(out.iterdir()):
        if out.exists():
            out.rmdir()
        staging.rename(out)
        return
    earlier = json.loads((out / MANIFEST).read_text()).get("exported_files", []) if (out / MANIFEST).is_file() else []
    new = json.loads((staging / MANIFEST).read_text())["exported_files"]
    for name in set(earlier) - set(new):  # e.g. the shards of an earlier, larger export
        if not PurePath(name).is_absolute() and ".." not in PurePath(name).parts:
            (out / name).unlink(missing_ok=True)
    for name in sorted(new, key=lambda name: name == MANIFEST):  # the manifest last: it marks a whole export
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / name, out / name)


def _test_inputs(row: dict, folder: Path, manifest: dict, limit: int = 64, batch: int = 16) -> list[dict]:
    """Batches of the task's first ``limit`` test examples, encoded as the trial encoded them (its tokenizer,
    its maximum length): what the trained model was evaluated on."""
    from collections import defaultdict

    from transformers import AutoTokenizer

    from frugalray.config import TrialConfig
    from frugalray.data.encoding import collate, encode_examples
    from frugalray.data.tasks import load_task

    where = f"Cannot check the export of trial {row['trial_id']}"
    if not row.get("config_json"):
        raise FrugalrayError(f"{where}: its row records no configuration (config_json); export with --no-check")
    try:
        config = TrialConfig.from_record(json.loads(row["config_json"]))
        examples = load_task(config.task, config.data_dir).test[:limit]
    except FrugalrayError as error:
        raise FrugalrayError(f"{where}: the task's test examples are not readable here ({error}); export where "
                             f"the data is, or with --no-check") from None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    labels = defaultdict(int, {label: i for i, label in enumerate(manifest["labels"])})  # labels are not compared
    encoded = encode_examples(examples, tokenizer, labels, config.training.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = [collate(encoded[i:i + batch], pad) for i in range(0, len(encoded), batch)]
    return [{"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]} for b in batches]


def _logits(model, inputs: list[dict]) -> list:
    import torch

    with torch.no_grad():
        return [model(**batch).logits for batch in inputs]


def _difference(expected: list, folder: Path, head: str, inputs: list[dict]) -> float:
    """Largest |logit| difference, over real (non-padding) positions, between ``expected`` and the model
    loaded back from ``folder``."""
    from frugalray.model.loading import auto_class

    got = _logits(auto_class(head).from_pretrained(folder).eval(), inputs)
    largest = 0.0
    for want, have, batch in zip(expected, got, inputs):
        difference = (want - have).abs()
        if head == "token":
            difference = difference[batch["attention_mask"].bool()]
        largest = max(largest, float(difference.max()) if difference.numel() else 0.0)
    return largest
