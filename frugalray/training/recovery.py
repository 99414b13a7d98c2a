"""Recovery beyond drop-and-fine-tune: a student that starts from the fine-tuned full model (the teacher),
learns from its logits (distillation), or trains only its last layers (partial fine-tuning).

The teacher is the ``full`` trial of the same task, model, training settings (its epochs and early stopping
as ``RecoverySettings.teacher_epochs`` says) and seed, trained once with
its weights kept in the store. Its logits on the training set are computed once and cached in the store
(``teachers/<teacher trial id>/``), so every student after the first distils as cheaply as it fine-tunes.

>>> teacher = find_teacher(store, prepared)          # doctest: +SKIP
>>> model = student_model(prepared, teacher)         # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn import functional

from frugalray._registry import FrugalrayError
from frugalray.config import RecoverySettings, TrialConfig
from frugalray.data.encoding import IGNORE, Encoded, collate
from frugalray.results.schema import TRAINED_SQL

LOGITS = "logits.safetensors"


@dataclass
class Teacher:
    trial_id: str
    folder: str  # a local copy of its saved weights
    train_seconds: float
    store: object = field(repr=False)  # the ResultsStore that keeps its cached logits
    logits_seconds: float | None = None  # set when this trial computed the cached logits itself


def teacher_config(config: TrialConfig) -> TrialConfig:
    """The trial whose model teaches ``config``: the full model, fine-tuned alone, same settings and seed (but
    for its epochs and early stopping when the recovery says how the teacher trained)."""
    return TrialConfig(task=config.task, model=config.model, strategy="full",
                       training=config.recovery.teacher_training(config.training), seed=config.seed,
                       data_dir=config.data_dir)


# what recorded_hash needs, of the successful trained rows of the student's seed (a store may hold thousands)
TEACHER_SQL = f"""
SELECT trial_id, config_hash, config_version, config_json, kept_layers, task_fingerprint, source_trial_id,
       model_path, finished_at, train_seconds
FROM trials WHERE {TRAINED_SQL} AND seed = $1
"""


def find_teacher(store, prepared, scratch: str | None = None) -> Teacher:
    """The teacher of a prepared trial, from the store: its row must be successful and have saved weights."""
    from frugalray.training.identity import recorded_hash
    from frugalray.training.prepared import prepare_trial

    wanted = prepare_trial(teacher_config(prepared.config), prepared.task).config_hash
    candidates = store.query(sql=TEACHER_SQL, params=[prepared.config.seed], require=False).to_pylist() if store else []
    rows = [r for r in candidates if recorded_hash(r) == wanted]
    saved = sorted((r for r in rows if r["model_path"]), key=lambda r: r["finished_at"])
    kept = [r for r in saved if store.has_folder(r["model_path"])]  # weights may be deleted, or left elsewhere
    if not kept:
        config = prepared.config
        state = ("has no saved weights left in the results (deleted, or kept on another machine)" if saved
                 else "was trained without --save-model" if rows else "is not in the results")
        recovery = config.recovery
        own = (f" --training.epochs {recovery.teacher_epochs} --training.early-stopping-patience "
               f"{recovery.teacher_patience}" if recovery.teacher_epochs else "")
        raise FrugalrayError(
            f"recovery {recovery.label()} needs its teacher, the full model fine-tuned on task "
            f"'{prepared.task.name}' with the same training settings{' but its epochs' if own else ''} and seed "
            f"{config.seed}, with its weights kept; it {state}. Train it first: frugalray trial --task {config.task} "
            f"--model {config.model} --strategy full --seed {config.seed} --save-model{own} (and the same training "
            f"options) --results ..."
        )
    row = kept[-1]
    folder = store.fetch_folder(row["model_path"], Path(scratch or tempfile.mkdtemp(prefix="frugalray-teacher-")))
    return Teacher(row["trial_id"], folder, row["train_seconds"], store)


def load_teacher(teacher: Teacher):
    from frugalray.model.saved import load_trained

    model, _ = load_trained(teacher.folder)
    return model


def student_model(prepared, teacher: Teacher | None, head: str, labels: list[str]):
    """The model a trial trains: the pretrained encoder with a new head, or the teacher's own layers and head
    (``init='finetuned'``), pruned to the kept layers."""
    from frugalray.model.loading import load_model
    from frugalray.model.surgery import prune_layers

    if prepared.config.recovery.init == "finetuned":
        model = load_teacher(teacher)
        model.train()
    else:
        model = load_model(prepared.config.model, head, labels)
    if list(prepared.kept_layers) != list(range(prepared.num_layers)):
        prune_layers(model, prepared.kept_layers)  # prune first, then wrap with LoRA
    return model


def freeze_all_but_last(model, layers: int) -> None:
    """Partial fine-tuning: only the task head and the last ``layers`` encoder layers keep training."""
    from frugalray.model.lora import head_modules
    from frugalray.model.surgery import layer_lists

    for parameter in model.parameters():
        parameter.requires_grad = False
    trainable = [getattr(model, name) for name in head_modules(model)]
    for parent, name in layer_lists(model):
        modules = getattr(parent, name)
        trainable += list(modules)[len(modules) - layers:] if layers else []
    for module in trainable:
        for parameter in module.parameters():
            parameter.requires_grad = True


# -- distillation --------------------------------------------------------------------------------------
def teacher_logits(teacher: Teacher, data: list[Encoded], pad_id: int, device: torch.device,
                   batch_size: int = 64) -> list[torch.Tensor]:
    """The teacher's logits on ``data`` (per example: [tokens, labels] or [labels]), from the store's cache
    when an earlier student computed them for the same examples, else computed now and cached."""
    from safetensors.torch import load_file, save_file

    fingerprint = _data_fingerprint(data)
    relative = f"teachers/{teacher.trial_id}/{fingerprint}"
    store = teacher.store
    with tempfile.TemporaryDirectory() as scratch:
        try:
            folder = store.fetch_folder(relative, Path(scratch) / "cached")
            tensors = load_file(str(Path(folder) / LOGITS))
            return [tensors[str(i)] for i in range(len(data))]
        except (FrugalrayError, OSError, KeyError):
            pass  # not cached yet (or a partial copy): compute
    start = time.perf_counter()
    model = load_teacher(teacher).to(device)
    logits = _logits(model, data, pad_id, device, batch_size)
    teacher.logits_seconds = time.perf_counter() - start
    local = store.staging_folder()  # on the store's filesystem: moving it in is atomic
    save_file({str(i): t.contiguous() for i, t in enumerate(logits)}, str(Path(local) / LOGITS))
    (Path(local) / "about.json").write_text(json.dumps({"teacher": teacher.trial_id, "examples": len(data)}))
    try:
        store.put_folder(local, relative)
    except OSError:  # another student cached the same logits meanwhile: theirs are as good
        pass
    finally:
        shutil.rmtree(local, ignore_errors=True)
    return logits


def _data_fingerprint(data: list[Encoded]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for item in data:
        digest.update(json.dumps([item.input_ids, item.labels]).encode())
    return digest.hexdigest()[:16]


@torch.inference_mode()
def _logits(model, data: list[Encoded], pad_id: int, device: torch.device, batch_size: int) -> list[torch.Tensor]:
    model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(data), batch_size):
        items = data[start : start + batch_size]
        batch = collate(items, pad_id)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        logits = logits.float().cpu()
        out += [logits[row, : len(item)] if logits.dim() == 3 else logits[row] for row, item in enumerate(items)]
    return out


def distillation(settings: RecoverySettings, logits: list[torch.Tensor], kept: tuple[int, ...] = (),
                 teacher_model=None):
    """The training objective of a distilled student (for ``frugalray.training.loop.train``):
    alpha * CE(labels) + (1 - alpha) * T^2 * KL(teacher || student) on the logits of labelled positions,
    + beta * mean over kept layers of (1 - cos) between the student's layer output and the teacher layer's
    that ``settings.hidden_map`` maps it to (``teacher_model`` runs alongside only then)."""
    temperature, alpha, beta = settings.temperature, settings.alpha, settings.beta
    if beta > 0:
        from frugalray.model.loading import num_layers

        teacher_layers = settings.teacher_layers(tuple(kept), num_layers(teacher_model.config))

    def objective(model, batch: dict, indices: list[int]) -> torch.Tensor:
        out = model(**batch, output_hidden_states=beta > 0)
        student = out.logits
        target = _padded([logits[i] for i in indices], student).to(student.device)
        labelled = batch["labels"] != IGNORE
        if student.dim() == 3:  # token task: the positions that carry a word's label
            student, target = student[labelled], target[labelled]
        soft = functional.kl_div(functional.log_softmax(student / temperature, -1),
                                 functional.softmax(target / temperature, -1), reduction="batchmean")
        loss = alpha * out.loss + (1 - alpha) * temperature**2 * soft
        if beta > 0:
            loss = loss + beta * _hidden_cosine(out.hidden_states, teacher_model, batch, teacher_layers)
        return loss

    return objective


def _padded(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    if like.dim() == 2:
        return torch.stack(rows)
    padded = torch.zeros(like.shape[0], like.shape[1], like.shape[2])
    for i, row in enumerate(rows):
        padded[i, : row.shape[0]] = row
    return padded


def _hidden_cosine(student_states, teacher_model, batch: dict, teacher_layers: tuple[int, ...]) -> torch.Tensor:
    """Mean over student layers i of 1 - cos(output of student layer i, output of teacher layer
    ``teacher_layers[i]``), over the batch's tokens (hidden state 0 is the embeddings': layer k's is k + 1)."""
    with torch.no_grad():
        teacher_states = teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                       output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].bool()
    losses = [(1 - functional.cosine_similarity(student_states[i + 1], teacher_states[k + 1], dim=-1))[mask].mean()
              for i, k in enumerate(teacher_layers)]
    return torch.stack(losses).mean()
