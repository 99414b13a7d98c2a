"""Test helpers: tiny random encoders and word-level tokenizers built from constants, never downloaded.

>>> path = tiny_model_dir(tmp_path, words=["le", "chat"], num_layers=4)  # doctest: +SKIP
>>> TrialConfig(task="demo_pos", model=str(path))                       # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]
MPNET_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # as all-mpnet-base-v2's: padding id 1, not 0


def _numbered_from_padding(n: int, v: int) -> dict:
    """RoBERTa's keys (CamemBERT's, XLM-R's, MPNet's): positions start after the padding id, hence 128 + 2."""
    return dict(hidden_size=32, num_hidden_layers=n, num_attention_heads=2, intermediate_size=64, vocab_size=v,
                max_position_embeddings=130, pad_token_id=0, bos_token_id=1, eos_token_id=2)


# Per-architecture config keys for a tiny model: hidden 32, 2 heads.
_ARCHITECTURES = {
    "camembert": _numbered_from_padding, "roberta": _numbered_from_padding, "xlm-roberta": _numbered_from_padding,
    "mpnet": lambda n, v: _numbered_from_padding(n, v) | dict(pad_token_id=1, bos_token_id=0),
    "bert": lambda n, v: dict(hidden_size=32, num_hidden_layers=n, num_attention_heads=2,
                              intermediate_size=64, vocab_size=v, max_position_embeddings=128, pad_token_id=0),
    "distilbert": lambda n, v: dict(dim=32, n_layers=n, n_heads=2, hidden_dim=64, vocab_size=v,
                                    max_position_embeddings=128, pad_token_id=0),
    "flaubert": lambda n, v: dict(emb_dim=32, n_layers=n, n_heads=2, vocab_size=v, max_position_embeddings=128,
                                  pad_index=0),
}
ARCHITECTURES = sorted(_ARCHITECTURES)


def tiny_tokenizer(words: Iterable[str], specials: list[str] = SPECIALS):
    """A word-level fast tokenizer over ``words`` (+ ``specials``, in their order), as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(specials)}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
                                                        special_tokens=[(t, vocab[t]) for t in ("<s>", "</s>")])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )


def tiny_config(architecture: str = "camembert", num_layers: int = 4, vocab_size: int = 100):
    from transformers import AutoConfig

    return AutoConfig.for_model(architecture, **_ARCHITECTURES[architecture](num_layers, vocab_size))


def tiny_model_dir(path: str | Path, words: Iterable[str], architecture: str = "camembert",
                   num_layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny random encoder + tokenizer to ``path``; returns the folder, loadable by name."""
    import torch
    from transformers import AutoModel

    path = Path(path)
    tokenizer = tiny_tokenizer(words, MPNET_SPECIALS if architecture == "mpnet" else SPECIALS)
    torch.manual_seed(seed)
    model = AutoModel.from_config(tiny_config(architecture, num_layers, len(tokenizer)))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def conll_words(*paths: str | Path) -> set[str]:
    """Every word of some CoNLL files (first column), to build a tokenizer that knows them."""
    words = set()
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.startswith("-DOCSTART-"):
                words.add(line.split()[0])
    return words


def simulated_trial(prepared, device=None, gpu_memory_fraction=None, save_to=None, teacher=None, report=None,
                    alone=False, snapshot=None, resume=None) -> dict:
    """A stand-in for ``run_trial`` that trains nothing: for testing scheduling, packing and resume.

    Its F1 grows with the number of kept layers and favours low layers, so best/drop_worst are
    well defined; a layer set containing layer 1 alone raises a simulated CUDA OOM when the task is
    named ``*_oom``. It sleeps ``FRUGALRAY_SIMULATED_SECONDS`` (default 0.2) and reports the GPU ids
    Ray gave it in ``device``. A student of the fine-tuned full model (``teacher``) scores closer to 0.9.
    With ``training.eval_every_steps`` it reports a dev curve rising linearly to its final dev F1.
    With ``FRUGALRAY_SIMULATED_MARKS`` (a folder) it leaves a mark there as it starts (``trial_marks``).
    """
    import os
    import time

    kept, layers = prepared.kept_layers, prepared.num_layers
    if prepared.task.name.endswith("_oom") and kept == (1,):
        raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
    started = time.time()
    gpus, node = _where()
    mark_start(prepared, node, started)
    time.sleep(float(os.environ.get("FRUGALRAY_SIMULATED_SECONDS", "0.2")))
    if save_to:  # stands for the weights
        Path(save_to, "simulated.json").write_text(f'{{"kept_layers": {list(kept)}}}')
    score = 0.5 * len(kept) / layers + 0.4 * sum(1 - k / layers for k in kept) / len(kept)
    if teacher is not None:  # a student of the fine-tuned full model recovers part of what pruning lost
        score += 0.5 * (0.9 - score) * (1.0 if prepared.config.recovery.init == "finetuned" else 0.5)
    seconds = 1.0 + len(kept) * (2.0 if prepared.config.lora is None else 1.2) * prepared.config.training.epochs / 3
    planned = prepared.config.training.planned_steps(len(prepared.task.train))
    curve = checkpoint_curve(prepared, lambda step: score * step / planned, report)
    return {**curve,
        "accuracy": score, "precision": score, "recall": score, "f1": score, "eval_loss": 1 - score,
        "dev_accuracy": score, "dev_f1": score, "dev_eval_loss": 1 - score,
        "train_seconds": seconds, "seconds_per_epoch": seconds / prepared.config.training.epochs,
        "eval_seconds": 0.1, "total_seconds": time.time() - started,
        "device": f"simulated gpus={','.join(gpus)} node={node} start={started:.3f} end={time.time():.3f}",
        **({"teacher_trial_id": teacher.trial_id, "teacher_seconds": teacher.train_seconds} if teacher else {}),
    }


def _where() -> tuple[list[str], str]:
    """The GPU ids Ray gave this worker and its node id; none and "local" outside Ray."""
    try:
        import ray

        if ray.is_initialized():
            context = ray.get_runtime_context()
            return context.get_accelerator_ids().get("GPU", []), context.get_node_id()
    except Exception:  # outside Ray
        pass
    return [], "local"


def mark_start(prepared, node: str, started: float) -> None:
    """Leave a start mark in the folder ``FRUGALRAY_SIMULATED_MARKS`` names (if any): which trial started
    where (node, process) and when, in a file that appears whole."""
    import json
    import os

    folder = os.environ.get("FRUGALRAY_SIMULATED_MARKS")
    if not folder:
        return
    mark = {"config_hash": prepared.config_hash, "kept_layers": list(prepared.kept_layers), "node": node,
            "pid": os.getpid(), "start": started}
    name = f"{prepared.config_hash}.{os.getpid()}.{int(started * 1e6)}"
    Path(folder, f".{name}.tmp").write_text(json.dumps(mark))
    os.replace(Path(folder, f".{name}.tmp"), Path(folder, f"{name}.json"))


def trial_marks(folder: str | Path) -> list[dict]:
    """The start marks simulated trials left in ``folder``, oldest first: each a dict of ``config_hash``,
    ``kept_layers``, ``node``, ``pid`` and ``start`` (seconds since the epoch)."""
    import json

    marks = [json.loads(path.read_text()) for path in Path(folder).glob("*.json")]
    return sorted(marks, key=lambda mark: mark["start"])


def checkpoint_curve(prepared, dev_f1_at, report=None, seconds_per_step: float = 0.0, dev_loss_at=None) -> dict:
    """Simulate a trial's dev checkpoints (every ``training.eval_every_steps``, the last step excluded), as
    ``run_trial`` reports them; ``dev_f1_at(step)`` gives the curve, ``dev_loss_at(step)`` its dev loss (default:
    1 - dev F1). Returns the row's step columns."""
    import time

    training = prepared.config.training
    planned = training.planned_steps(len(prepared.task.train))
    steps = list(range(training.eval_every_steps, planned, training.eval_every_steps)) if training.eval_every_steps else []
    dev_loss_at = dev_loss_at or (lambda step: 1 - dev_f1_at(step))
    values, losses = [], []
    for step in steps:
        time.sleep(seconds_per_step * training.eval_every_steps)
        values.append(dev_f1_at(step))
        losses.append(dev_loss_at(step))
        if report:
            report({"train_steps": step, "planned_steps": planned, "checkpoint_steps": steps[:len(values)],
                    "checkpoint_dev_f1": list(values), "checkpoint_dev_loss": list(losses), "dev_f1": values[-1],
                    "dev_accuracy": values[-1], "dev_eval_loss": losses[-1],
                    "train_seconds": step * max(seconds_per_step, 1e-3)})
    time.sleep(seconds_per_step * (planned - (steps[-1] if steps else 0)))
    curve = {"checkpoint_steps": steps, "checkpoint_dev_f1": values, "checkpoint_dev_loss": losses} if steps else {}
    return {"train_steps": planned, "planned_steps": planned, **curve}


def replayed_trial(prepared, device=None, gpu_memory_fraction=None, save_to=None, teacher=None, report=None,
                   alone=False, **ignored) -> dict:
    """A stand-in for ``run_trial`` that replays a recorded table instead of training: the row of the same
    kept layers (and seed, where the table has it) from the store at ``FRUGALRAY_REPLAY_TABLE``, its dev curve
    reported at the same checkpoints. It sleeps ``FRUGALRAY_REPLAY_SECONDS`` per kept layer and training step
    (default 1e-5), so that deeper masks take longer, as they would (0 on a virtual clock: ``cluster.simulated``)."""
    import os

    from frugalray.results.store import ResultsStore

    table = os.environ["FRUGALRAY_REPLAY_TABLE"]
    rows = _REPLAY.get(table)
    if rows is None:
        rows = _REPLAY[table] = {(tuple(r["kept_layers"]), r["seed"]): r for r in ResultsStore(table).table().to_pylist()
                                 if r["status"] == "ok" and r["checkpoint_steps"]}
    row = rows.get((prepared.kept_layers, prepared.config.seed))
    if row is None:
        raise FileNotFoundError(f"{table} has no recorded row for layers {prepared.kept_layers} seed {prepared.config.seed}")
    recorded = dict(zip(row["checkpoint_steps"], row["checkpoint_dev_f1"]))
    losses = dict(zip(row["checkpoint_steps"], row["checkpoint_dev_loss"])) if row.get("checkpoint_dev_loss") else None
    per_step = float(os.environ.get("FRUGALRAY_REPLAY_SECONDS", "1e-5")) * len(prepared.kept_layers)
    curve = checkpoint_curve(prepared, recorded.__getitem__, report, per_step, losses.__getitem__ if losses else None)
    if curve.get("checkpoint_steps") and row.get("checkpoint_eval_seconds"):  # a dev evaluation's recorded cost
        seconds = row["checkpoint_eval_seconds"]
        curve["checkpoint_eval_seconds"] = [sum(seconds) / len(seconds)] * len(curve["checkpoint_steps"])
    keep = ("accuracy", "precision", "recall", "f1", "eval_loss", "dev_accuracy", "dev_f1", "dev_eval_loss",
            "train_seconds", "seconds_per_epoch", "train_tokens", "latency_ms", "model_mib")
    return {k: row[k] for k in keep} | curve


_REPLAY: dict[str, dict] = {}  # table location -> its rows, read once per process


# -- synthetic results with known values ------------------------------------------------------------
SYNTHETIC_NOISE = 0.01  # seed s of S shifts every metric by NOISE * (s - (S - 1) / 2): mean 0, known std


def synthetic_truth(kept: tuple[int, ...], num_layers: int) -> float:
    """The noiseless test F1 of a layer set in synthetic results: more layers and lower layers are better."""
    return round(0.5 + 0.4 * len(kept) / num_layers - 0.1 * sum(kept) / len(kept) / num_layers, 10)


def synthetic_catalog(tasks=("pos", "ner"), num_layers: int = 4, model: str = "tiny",
                      symmetric: bool = False) -> list[dict]:
    """One row per configuration of a small study, noiseless (see ``synthetic_table``).

    Per task: full, single(k), first/last N, best/drop_worst N, LoRA on the full model and on best_2, and
    best_2 retrained at 6 epochs (balanced); with ``symmetric`` also drop_middle/drop_ends N (even N) and the
    alternate family, as a whole sweep has them. ``last_1`` has the best dev F1 of the 1-layer sets but a
    poor test F1, so a view that chose on test F1 would pick another set.
    """
    from frugalray.strategies import alternate_family, kept_layers

    layers = num_layers
    singles = [synthetic_truth((k,), layers) for k in range(layers)]
    specs = [("full", None)] + [("single", k) for k in range(layers)]
    specs += [(name, n) for name in ("first", "last") for n in range(1, layers)]
    specs += [("best", n) for n in range(2, layers)] + [("drop_worst", n) for n in range(1, layers - 1)]
    if symmetric:
        specs += [(name, n) for name in ("drop_middle", "drop_ends") for n in range(2, layers, 2)]
        specs += alternate_family(layers)
    rows = []
    for task in tasks:
        for strategy, n in specs:
            kept = kept_layers(strategy, layers, n=n, scores=singles)
            rows.append(_synthetic_row(task, model, layers, strategy, n, kept, lora=False, epochs=3))
        best2 = kept_layers("best", layers, n=2, scores=singles)
        rows.append(_synthetic_row(task, model, layers, "full", None, tuple(range(layers)), lora=True, epochs=3))
        rows.append(_synthetic_row(task, model, layers, "mask", None, best2, lora=True, epochs=3))
        rows.append(_synthetic_row(task, model, layers, "mask", None, best2, lora=False, epochs=6))
    return rows


def _synthetic_row(task, model, layers, strategy, n, kept, lora, epochs) -> dict:
    f1 = synthetic_truth(kept, layers) - (0.05 if lora else 0.0) + (0.02 if epochs > 3 else 0.0)
    dev_f1 = f1 + (0.1 if strategy == "last" and n == 1 else 0.0)  # the dev/test trap of the docstring
    seconds = 1.0 + 2.0 * len(kept) * epochs / 3 * (0.6 if lora else 1.0)
    return {
        "status": "ok", "task": task, "model": model, "num_layers": layers, "strategy": strategy, "strategy_n": n,
        "kept_layers": list(kept), "n_kept_layers": len(kept), "lora": lora, "lora_r": 8 if lora else None,
        "lora_train_head": True if lora else None, "learning_rate": 5e-4 if lora else 5e-5, "epochs": epochs,
        "batch_size": 16, "max_length": 128, "f1": f1, "accuracy": f1, "precision": f1, "recall": f1,
        "dev_f1": dev_f1, "train_seconds": seconds, "latency_ms": 1.0 + len(kept), "latency_batch_size": 32,
        "latency_seq_len": 48,
        "model_mib": 10.0 + 2.0 * len(kept), "total_params": 1000 * len(kept), "trainable_params": 10 if lora else 1000,
    }


def synthetic_table(catalog: list[dict], seeds: int = 3, start: int = 0):
    """``catalog`` × ``seeds`` rows in the results schema, built column-wise (a million rows in seconds).

    Seed s adds ``SYNTHETIC_NOISE * (s - (seeds - 1) / 2)`` to f1, dev_f1, accuracy, precision, recall and
    ``train_seconds``, so the mean over seeds is the catalog value and the std is known.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from frugalray.results.store import SCHEMA

    base = pa.Table.from_pylist(catalog)
    index = np.repeat(np.arange(len(catalog)), seeds)
    seed = np.tile(np.arange(seeds), len(catalog))
    shift = SYNTHETIC_NOISE * (seed - (seeds - 1) / 2)
    columns = {name: base.column(name).take(pa.array(index)) for name in base.column_names}
    for name in ("f1", "dev_f1", "accuracy", "precision", "recall", "train_seconds"):
        columns[name] = pa.array(columns[name].to_numpy() + shift)
    columns["seed"] = pa.array(seed + start, pa.int64())
    number = pa.array(index * 1_000_003 + seed + start).cast(pa.string())
    columns["config_hash"] = pc.binary_join_element_wise("h", number, "")
    columns["trial_id"] = pc.binary_join_element_wise("t", number, "")
    columns["finished_at"] = pa.array(np.full(len(index), 1_700_000_000_000_000), pa.timestamp("us", tz="UTC"))
    arrays = [columns[f.name].cast(f.type) if f.name in columns else pa.nulls(len(index), f.type) for f in SCHEMA]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)
