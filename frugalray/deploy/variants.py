"""Smaller inference forms of an exported trial — torch dynamic int8, ONNX Runtime fp32 and int8 — and their
re-evaluation: quality is never assumed.

    frugalray export results/ --trial 3f2a9c01 --out exported-int8/ --int8
    frugalray export results/ --trial 3f2a9c01 --out exported-onnx/ --onnx [--int8]

The export folder always holds the Hugging Face model (fp32 weights); ``int8`` is applied when the folder is
loaded (``load_variant``: dynamic quantisation is a deterministic function of those weights), the ONNX forms
add ``model.onnx`` or ``model.int8.onnx``. The variant is then evaluated on the task's test and dev sets
with the trial's own evaluation (``frugalray.training.loop.evaluate``; an ONNX session answers like the torch
model, ``frugalray.deploy.onnx.OnnxModel``) and stored as a row of the same store: ``variant``, the
``source_trial_id`` whose model it converts, its own F1 (the source row keeps its own), evaluation energy
and latency, and the source's training cost (it is that training's model).

>>> row = evaluate_variant(ResultsStore("results/"), "3f2a9c01-2025...", "exported-int8/")   # doctest: +SKIP
>>> row["variant"], row["f1"]                                                              # doctest: +SKIP
('int8', 0.938)
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from frugalray._registry import FrugalrayError

VARIANT_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
AGREEMENT_SENTENCES = 2000  # training sentences the ``agreement`` choice of int8 groups reads at most


def variant_name(int8: bool, onnx: bool) -> str:
    """fp32, int8, onnx or onnx-int8 from the export flags.

    >>> variant_name(int8=True, onnx=True)
    'onnx-int8'
    """
    return ("onnx" if onnx else "") + ("-" if onnx and int8 else "") + ("int8" if int8 else "") or "fp32"


def write_variant(model, folder: Path, variant: str) -> list[str]:
    """Write the files ``variant`` adds to an export folder; returns their names. An ONNX fp32 graph must give
    the torch model's logits (a padded batch included) or nothing is written."""
    if variant not in VARIANT_FILES:
        return []
    from frugalray.deploy.onnx import export_onnx, quantize_onnx

    graph = export_onnx(model, folder / VARIANT_FILES["onnx"])
    difference = _onnx_difference(model, graph)
    if difference > 1e-4:
        raise FrugalrayError(f"The ONNX graph differs from the trained model (max logit difference {difference:.2e}); "
                             f"nothing was written")
    if variant == "onnx":
        return [graph.name]
    quantize_onnx(graph, folder / VARIANT_FILES[variant])
    graph.unlink()
    return [VARIANT_FILES[variant]]


def _onnx_difference(model, graph: Path, batch: int = 3, length: int = 20) -> float:
    import torch

    from frugalray.deploy.onnx import OnnxModel

    ids = torch.randint(5, model.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, length // 2:] = 0  # padding, at a length other than the exporter's example
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
    return float((expected - OnnxModel(graph)(input_ids=ids, attention_mask=mask).logits).abs().max())


def load_variant(folder: str | Path, threads: int | None = None):
    """The exported model in the form its manifest names, ready to evaluate or time, and the manifest."""
    from frugalray.model.saved import MANIFEST
    from frugalray.model.loading import auto_class

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    variant = manifest.get("variant", "fp32")
    if variant in VARIANT_FILES:
        from frugalray.deploy.onnx import OnnxModel

        return OnnxModel(folder / VARIANT_FILES[variant], threads), manifest
    model = auto_class(manifest["head"]).from_pretrained(folder).eval()
    if variant == "int8":
        from frugalray.model.quantize import dynamic_int8

        model = dynamic_int8(model, manifest.get("int8_fp32_groups") or ())
    return model, manifest


def size_mib(model, variant: str) -> float:
    """Parameter bytes of a variant: int8 counts packed weights, ONNX the file."""
    if variant in VARIANT_FILES:
        from frugalray.deploy.onnx import file_mib

        return file_mib(model.path)
    if variant == "int8":
        from frugalray.model.quantize import quantized_mib

        return quantized_mib(model)
    from frugalray.model.surgery import parameter_mib

    return parameter_mib(model)


def evaluate_variant(store, source_id: str, folder: str | Path, int8_fp32: str | list[str] = "auto",
                     max_fp32_share: float | None = None):
    """Evaluate the export in ``folder`` (of trial ``source_id``) on its task's test and dev sets, on CPU, and
    append its row to ``store``; returns the row (a TrialResult). For torch int8, ``int8_fp32`` says which
    groups of Linear layers stay fp32: chosen on dev F1 (``auto``) or on agreement with the fp32 model
    (``agreement``; ``frugalray.deploy.int8``), none, or those listed, within ``max_fp32_share`` of the Linear
    weights when given; the choice is written into the export's manifest first."""
    from frugalray.data.labels import majority_baseline
    from frugalray.results.schema import TrialResult
    from frugalray.training.columns import energy_columns, quality_columns
    from frugalray.training.energy import measured_energy
    from frugalray.training.environment import environment, others_running, running
    from frugalray.training.identity import make_trial_id
    from frugalray.training.loop import measure_latency

    started_at, started = datetime.now(timezone.utc), time.perf_counter()
    source, config, task, data = _variant_data(store, source_id, folder)
    if json.loads((Path(folder) / _manifest_name()).read_text()).get("variant") == "int8":
        _choose_int8(folder, data, int8_fp32, max_fp32_share)
    model, manifest = load_variant(folder)
    variant, groups = manifest.get("variant", "fp32"), manifest.get("int8_fp32_groups") or []
    with running("export"), measured_energy(config.training.energy, config.training.energy_country, "cpu") as energy:
        test, dev = data.score(model, "test"), data.score(model, "dev")
    eval_seconds = time.perf_counter() - started
    latency = measure_latency(model, data.test, 32, data.pad_id, _cpu(), "fp32")
    latency["latency_isolated"] = not others_running()
    identity = f"{source['config_hash']}:{variant}" + (f":fp32={','.join(groups)}" if groups else "")
    config_hash = hashlib.sha256(identity.encode()).hexdigest()[:16]
    columns = energy_columns(energy, energy, config.training.energy_country)
    row = source | quality_columns(test, dev, majority_baseline(task)) | latency | environment() | {
        "trial_id": make_trial_id(config_hash, started_at), "config_hash": config_hash, "status": "ok",
        "error": None, "reused_from": None, "stage": "export", "variant": variant, "source_trial_id": source_id,
        "int8_fp32_groups": groups if variant == "int8" else None, "eval_seconds": eval_seconds,
        "total_seconds": time.perf_counter() - started, "model_mib": size_mib(model, variant),
        "peak_memory_mib": None, "peak_memory_kind": None, "device": "cpu", "model_path": None,
        "eval_kwh": columns["eval_kwh"], "eval_co2_kg": columns["eval_co2_kg"],
        "energy_method": " | ".join(sorted({source["energy_method"], columns["energy_method"]} - {None})) or None,
        "energy_country": columns["energy_country"],
        "started_at": started_at, "finished_at": datetime.now(timezone.utc),
    }
    result = TrialResult.from_row({k: row.get(k) for k in TrialResult.__dataclass_fields__})
    store.append(result)
    return result


class _Data:
    """A variant's task data, encoded with the export's tokenizer, and its scoring (the trials' own)."""

    def __init__(self, task, tokenizer, config):
        from frugalray.data.encoding import encode_examples

        label2id = {label: i for i, label in enumerate(task.labels)}
        self.task, self.config, self.tokenizer, self.label2id = task, config, tokenizer, label2id
        self.test = encode_examples(task.test, tokenizer, label2id, config.training.max_length)
        self.dev = encode_examples(task.dev, tokenizer, label2id, config.training.max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def score(self, model, split: str) -> dict:
        from frugalray.training.loop import evaluate

        return evaluate(model, getattr(self, split), getattr(self.task, split), self.task.labels, self.task.spec.metric,
                        self.config.training.eval_batch_size, self.pad_id, _cpu(), "fp32")

    def agreement(self, reference, limit: int = AGREEMENT_SENTENCES):
        """A score for the int8 forms of ``reference``: the task's metric (F1) of their predictions against
        ``reference``'s own, on the dev sentences and up to ``limit`` training sentences (a seeded sample).
        No gold label is used; ``reference`` itself scores 1."""
        import dataclasses
        import random

        from frugalray.data.encoding import encode_examples
        from frugalray.training.loop import evaluate, label_names, predict

        train = list(self.task.train)
        if len(train) > limit:
            train = random.Random(0).sample(train, limit)
        examples = list(self.task.dev) + train
        encoded = self.dev + encode_examples(train, self.tokenizer, self.label2id, self.config.training.max_length)
        batch, labels = self.config.training.eval_batch_size, self.task.labels
        predicted, _ = predict(reference, encoded, batch, self.pad_id, _cpu(), "fp32")
        pseudo = [dataclasses.replace(e, labels=tuple(answer) if isinstance(answer, list) else answer)
                  for e, answer in zip(examples, label_names(predicted, labels))]
        return lambda candidate: evaluate(candidate, encoded, pseudo, labels, self.task.spec.metric, batch,
                                          self.pad_id, _cpu(), "fp32")["f1"]


def _variant_data(store, source_id: str, folder):
    from transformers import AutoTokenizer

    from frugalray.config import TrialConfig
    from frugalray.data.tasks import load_task

    source = store.query(sql="SELECT * FROM trials WHERE trial_id = $1", params=[source_id]).to_pylist()[0]
    config = TrialConfig.from_record(json.loads(source["config_json"]))
    task = load_task(config.task, config.data_dir)
    labels = json.loads((Path(folder) / _manifest_name()).read_text())["labels"]
    if list(labels) != list(task.labels):
        raise FrugalrayError(f"Export {str(folder)!r} predicts labels {labels} but task '{task.name}' now "
                             f"has {task.labels}; its data changed since trial {source_id} ran")
    return source, config, task, _Data(task, AutoTokenizer.from_pretrained(folder), config)


def _choose_int8(folder, data: _Data, int8_fp32, max_fp32_share: float | None = None) -> None:
    """Record in the manifest which groups stay fp32: chosen on dev F1 (``auto``) or on agreement with the
    fp32 model (``agreement``), none, or the given ones."""
    from frugalray.deploy.int8 import MIN_GAIN, TOLERANCE, choose_fp32_groups, record_choice
    from frugalray.model.loading import auto_class

    if int8_fp32 == "none":
        return record_choice(Path(folder), [], [])
    if not isinstance(int8_fp32, str) or int8_fp32 not in TOLERANCE:
        return record_choice(Path(folder), list(int8_fp32), [])
    head = json.loads((Path(folder) / _manifest_name()).read_text())["head"]
    model = auto_class(head).from_pretrained(folder).eval()
    if int8_fp32 == "agreement":
        score, name = data.agreement(model), "agreement_f1"
    else:
        score, name = (lambda candidate: data.score(candidate, "dev")["f1"]), "dev_f1"
    groups, steps = choose_fp32_groups(model, score, TOLERANCE[int8_fp32], name=name, min_gain=MIN_GAIN[int8_fp32],
                                       max_fp32_share=max_fp32_share)
    record_choice(Path(folder), groups, [step | {"criterion": int8_fp32, "max_fp32_share": max_fp32_share}
                                         for step in steps])


def _manifest_name() -> str:
    from frugalray.model.saved import MANIFEST

    return MANIFEST


def _cpu():
    import torch

    return torch.device("cpu")
