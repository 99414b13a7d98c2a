"""``frugalray plan FILE``: what a sweep will run and cost, with no Ray and no training.

The sweep's own plan (``StudyPlan``) is grown with stand-in results: every trial "finishes" at once with a
score that favours more and lower layers, so the staged trials (best/drop_worst from the single-layer
scores, the LoRA selection, balanced, recover) are planned as the sweep would plan them; their exact layer
sets depend on real scores, so their count is an estimate (shared layer sets are counted once). Each trial's
cost comes from the store where its configuration already ran (measured), else from the operation count of
``frugalray.cluster.cost``. Data that cannot be read here (a licensed corpus, a hub dataset offline) is
counted from approximate corpus sizes, which the report names.

>>> report = dry_run(SweepConfig.from_dict(SWEEP), card("H100"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from frugalray._registry import FrugalrayError
from frugalray.cluster.cost import SUBWORDS_PER_WORD, Card, layer_params, training_flops
from frugalray.cluster.placement import KNOWN_GPU_MEMORY_GIB
from frugalray.cluster.resources import estimate_memory_gib
from frugalray.config import SweepConfig
from frugalray.data.spec import TaskData
from frugalray.data.tasks import load_task, resolve_task
from frugalray.results.store import ResultsStore
from frugalray.study.plan import StudyPlan
from frugalray.study.planned import DONE

# Approximate sizes of the study's corpora, for planning where their files cannot be read:
# (train, dev, test sentences or reviews, words per sentence or review), before train_fraction.
APPROXIMATE_SIZES = {
    "wikiner": (120_000, 0, 13_400, 24),  # Jean-Baptiste/wikiner_fr: no dev split (dev comes from train)
    "ftb_ner": (10_000, 1_200, 1_200, 28),
    "ftb_pos": (10_000, 1_200, 1_200, 28),
    "allocine": (160_000, 20_000, 20_000, 90),  # tblard/allocine: 160k/20k/20k reviews
}
# Architectures of registered hub models, for planning where their config cannot be fetched.
KNOWN_CONFIGS = {
    "camembert-base": {"model_type": "camembert", "num_hidden_layers": 12, "hidden_size": 768,
                       "intermediate_size": 3072, "num_attention_heads": 12, "vocab_size": 32005,
                       "max_position_embeddings": 514},
    "xlm-roberta-base": {"model_type": "xlm-roberta", "num_hidden_layers": 12, "hidden_size": 768,
                         "intermediate_size": 3072, "num_attention_heads": 12, "vocab_size": 250002,
                         "max_position_embeddings": 514},
}


@dataclass
class TaskSize:
    train: int
    dev: int
    test: int
    words: float  # per sentence or review
    source: str  # "read" or "approximate"

    def tokens(self, sentences: int, max_length: int) -> float:
        return sentences * min(max_length, self.words * SUBWORDS_PER_WORD + 2)


@dataclass
class Line:
    """The trials of one (stage, task) and their cost."""

    trials: int = 0
    done: int = 0
    gpu_hours: float = 0.0
    measured_hours: float = 0.0
    cpu_hours: float = 0.0
    shares: set = field(default_factory=set)


@dataclass
class DryRun:
    sweep: SweepConfig
    card: Card
    lines: dict[tuple[str, str], Line]
    sizes: dict[str, TaskSize]
    model_source: str
    notes: list[str]

    def total(self) -> Line:
        total = Line()
        for line in self.lines.values():
            for name in ("trials", "done", "gpu_hours", "measured_hours", "cpu_hours"):
                setattr(total, name, getattr(total, name) + getattr(line, name))
            total.shares |= line.shares
        return total

    def render(self) -> str:
        sweep, out = self.sweep, []
        memory = KNOWN_GPU_MEMORY_GIB.get(self.card.name, sweep.resources.gpu_memory_gib)
        out.append(f"sweep '{sweep.name}': {len(sweep.tasks)} task(s) x {len(sweep.seeds)} seed(s), model "
                   f"{sweep.model} ({self.model_source}), on {self.card.name} ({memory:g} GiB, "
                   f"{self.card.peak_tflops:g} TFLOP/s bf16 x utilisation {self.card.utilisation:g})")
        out.append("")
        out.append("| stage | task | trials | done | GPU share per trial | GPU-hours | CPU-hours |")
        out.append("|---|---|---|---|---|---|---|")
        for (stage, task), line in self.lines.items():
            out.append(f"| {stage} | {task} | {line.trials} | {line.done} | {_shares(line.shares)} | "
                       f"{line.gpu_hours + line.measured_hours:.2f} | {line.cpu_hours:.2f} |")
        total = self.total()
        out.append(f"| **all** | | **{total.trials}** | {total.done} | {_shares(total.shares)} | "
                   f"**{total.gpu_hours + total.measured_hours:.2f}** | {total.cpu_hours:.2f} |")
        out.append("")
        if total.measured_hours:
            out.append(f"{total.measured_hours:.2f} of the GPU-hours were measured (trials already in the store).")
        for task, size in self.sizes.items():
            out.append(f"{task}: {size.train:,} training / {size.dev:,} dev / {size.test:,} test examples, "
                       f"{size.words:.0f} words each on average ({size.source})")
        out.extend(self.notes)
        out.append(f"GPU-hours: ~6 x kept-layer parameters x training tokens per epoch (4 with LoRA), dev after "
                   f"every epoch, at {self.card.utilisation:.0%} of the card's peak; CPU-hours: each trial's "
                   f"{sweep.resources.cpus_per_trial:g} CPU(s) for as long as its share of the card takes. "
                   f"Staged trials are estimated from stand-in scores; epochs are the most a trial trains.")
        return "\n".join(out)


def _shares(shares: set) -> str:
    if not shares:
        return "-"
    low, high = min(shares), max(shares)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"


def dry_run(sweep: SweepConfig, card: Card, store: str | None = None,
            sizes: dict[str, tuple[int, int, int, float]] | None = None) -> DryRun:
    """Plan ``sweep`` with stand-in results and cost every trial on ``card``; ``store``: where measured rows
    are read (nothing is written there); ``sizes``: (train, dev, test, words) per task, overriding the data."""
    notes: list[str] = []
    model_config, model_source, plan_model = _model(sweep.model)
    with tempfile.TemporaryDirectory(prefix="frugalray-plan-") as scratch:
        if plan_model != sweep.model:  # the architecture from frugalray's table: a folder of its config
            Path(scratch, "model").mkdir()
            Path(scratch, "model", "config.json").write_text(json.dumps(model_config))
            plan_model = str(Path(scratch, "model"))
        planned_sweep = dataclasses.replace(sweep, model=plan_model, results=str(Path(scratch, "results")))
        data, task_sizes = {}, {}
        for task in sweep.tasks:
            data[task], task_sizes[task] = _task(task, sweep.data_dir(task), (sizes or {}).get(task))
        plan = _StandIn(planned_sweep, ResultsStore(planned_sweep.results), data)
        trials = plan.simulate()
    measured = _measured(store, notes) if plan_model == sweep.model else {}
    if store and plan_model != sweep.model:
        notes.append("the store's rows were not matched: the model's config is not here to hash trials as "
                     "the sweep will")
    layer = layer_params(model_config)
    full_params = layer * model_config["num_hidden_layers"]
    memory = KNOWN_GPU_MEMORY_GIB.get(card.name, sweep.resources.gpu_memory_gib)
    lines: dict[tuple[str, str], Line] = defaultdict(Line)
    for planned in trials:
        config, size = planned.config, task_sizes[planned.task]
        line = lines[(planned.stage, resolve_task(planned.task).name)]
        line.trials += 1
        training = config.training
        estimate = estimate_memory_gib(model_config, len(planned.kept_layers), training.batch_size,
                                       training.max_length, lora=config.lora is not None,
                                       lora_r=config.lora.r if config.lora else 8)
        share = sweep.resources.gpu_fraction(estimate, memory)
        line.shares.add(share)
        row = measured.get(planned.config_hash)
        if row is not None:
            line.done += 1
            seconds = (row.get("train_seconds") or 0) + (row.get("eval_seconds") or 0)
            line.measured_hours += seconds * (row.get("gpu_share") or share) / 3600
            line.cpu_hours += seconds * (row.get("cpus") or sweep.resources.cpus_per_trial) / 3600
            continue
        train_fraction = resolve_task(planned.task).train_fraction or 1.0
        tokens = size.tokens(int(size.train * train_fraction), training.max_length)
        eval_tokens = (size.tokens(size.dev, training.max_length) * training.epochs
                       + size.tokens(size.test, training.max_length))
        teacher = full_params if config.recovery.needs_teacher and config.recovery.method == "distill" else 0
        flops = training_flops(layer * len(planned.kept_layers), tokens, training.epochs, config.lora is not None,
                               eval_tokens, teacher)
        hours = card.hours(flops)
        line.gpu_hours += hours
        line.cpu_hours += hours / min(share, 1.0) * sweep.resources.cpus_per_trial
    return DryRun(sweep, card, dict(lines), task_sizes, model_source, notes + plan.notes)


class _StandIn(StudyPlan):
    """The sweep's plan, fed stand-in results as soon as each trial is handed out."""

    def __init__(self, sweep: SweepConfig, store: ResultsStore, data: dict[str, TaskData]):
        self._given = data
        super().__init__(sweep, store)

    def _load(self, task: str) -> TaskData:
        return self._given[task]

    def _proxy(self, task: str, source: str) -> tuple:
        count = self.num_layers
        if source == "block_proxy":  # the block starting at l, of n layers: later and shorter blocks look closer
            return tuple(tuple((n + 1) / count + (count - l) / count**2 for n in range(count - l))
                         for l in range(count))
        return tuple(1 - k / count for k in range(count))

    def note(self, text: str) -> None:
        self.notes.append(f"note: {text}")

    def _write_alias(self, planned, trained: dict) -> dict:  # a shared layer set: counted once, nothing written
        self.reported.add((trained["config_hash"], planned.config.strategy, planned.config.n, planned.stage))
        return trained

    def simulate(self) -> list:
        from frugalray.training.columns import base_row
        from frugalray.training.prepared import prepare_trial

        handed = []
        with contextlib.redirect_stderr(io.StringIO()):
            while (planned := self.next()) is not DONE:
                if planned is None:
                    raise FrugalrayError("the plan waits on a trial that never ran (a stage without its inputs)")
                kept, count = planned.kept_layers, self.num_layers
                score = 0.5 * len(kept) / count + 0.4 * sum(1 - k / count for k in kept) / len(kept)
                row = base_row(planned.config, prepare_trial(planned.config, self.data[planned.task])) | {
                    "status": "ok", "config_hash": planned.config_hash, "trial_id": f"plan-{len(handed)}",
                    "kept_layers": list(kept), "n_kept_layers": len(kept), "f1": score, "dev_f1": score,
                    "dev_eval_loss": 1 - score, "train_seconds": 0.5 + len(kept), "model_path": "plan"}
                self.finish(planned, row)
                handed.append(planned)
        return handed


def _model(name: str) -> tuple[dict, str, str]:
    """(config dict, where it came from, the model name to plan with)."""
    from frugalray.model.loading import load_model_config

    try:
        with _offline():
            return load_model_config(name).to_dict(), "config read", name
    except FrugalrayError:
        if name in KNOWN_CONFIGS:
            return KNOWN_CONFIGS[name], "architecture from frugalray's table: its config is not here", "table"
        raise


def _task(task: str, data_dir: str | None, given) -> tuple[TaskData, TaskSize]:
    spec = resolve_task(task)
    try:
        with _offline():  # a dry run reads what is here, it downloads nothing
            data = load_task(task, data_dir)
    except FrugalrayError:
        approximate = given or APPROXIMATE_SIZES.get(spec.name)
        if approximate is None:
            raise FrugalrayError(f"task '{spec.name}': its data cannot be read here and its size is unknown; give "
                                 f"--task-size {spec.name}=TRAIN,DEV,TEST,WORDS (examples per split, words each)") from None
        stand_in = TaskData(spec, [], [], [], [], f"plan:{spec.name}")
        return stand_in, TaskSize(*approximate, source="given" if given else "approximate: the data is not here")
    if given:
        return data, TaskSize(*given, source="given")
    examples = data.train + data.dev + data.test
    words = sum(len(e.words) if e.words is not None else len((e.text or "").split()) for e in examples)
    return data, TaskSize(len(data.train), len(data.dev), len(data.test), words / max(1, len(examples)), "read")


@contextlib.contextmanager
def _offline():
    import os

    before = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    os.environ.update({name: "1" for name in before})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _measured(store: str | None, notes: list[str]) -> dict[str, dict]:
    """Rows of trials already in ``store``, by configuration hash (read only)."""
    if not store:
        return {}
    from frugalray.training.identity import recorded_hash

    try:
        rows = ResultsStore(store).table(columns=None).to_pylist()
    except Exception as error:  # an unreachable store: plan without measurements
        notes.append(f"the store {store} could not be read ({type(error).__name__}); every trial is estimated")
        return {}
    return {recorded_hash(r): r for r in rows if r["status"] == "ok" and not r.get("reused_from")}
