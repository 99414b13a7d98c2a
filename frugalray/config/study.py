"""What to run: one trial (``TrialConfig``), a sweep (``SweepConfig``), a layer-mask search
(``SearchConfig``), and what each trial asks of the cluster (``ResourceRule``). Torch-free.

>>> TrialConfig(task="demo_pos", strategy="first", n=2).learning_rate
5e-05
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from frugalray._registry import FrugalrayError, did_you_mean
from frugalray.config._fields import Settings
from frugalray.config.lora import LoraSettings
from frugalray.config.recovery import RecoverySettings
from frugalray.config.training import TrainingSettings

def check_seeds(*seeds: int) -> None:
    """Seeds are what numpy (and so ``transformers.set_seed``) accepts: integers from 0 to 2**32 - 1."""
    bad = [seed for seed in seeds if not 0 <= seed < 2**32]
    if bad:
        raise FrugalrayError(f"seed{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))}: seeds are integers "
                             f"from 0 to 2**32 - 1")


@dataclass(frozen=True)
class ResourceRule(Settings):
    """What each trial asks of the cluster: CPUs, and with ``gpus`` a share of one GPU sized from the trial's
    memory estimate and the memory of the card it is placed on (``frugalray.cluster.placement``)."""

    gpus: bool = field(default=False, metadata={
        "help": "Trials on GPUs. On: every trial asks for a GPU share, whatever nodes are alive when the sweep "
                "starts (the autoscaler starts GPU workers for them); a cluster that can never have a GPU is an "
                "error before scheduling. Off: trials run on CPUs."})
    cpu_fallback: bool = field(default=False, metadata={
        "help": "CPU fallback of a GPU sweep. On: where the cluster has no GPU and can start none (a laptop), "
                "trials run on CPUs, and the sweep says so. Off: that is an error."})
    cpus_per_trial: float = field(default=1.0, metadata={"help": "CPUs each trial reserves."})
    gpu_memory_gib: float = field(default=80.0, metadata={
        "help": "Memory of a GPU whose model the cluster does not tell (neither a gpu_memory_gib:N resource on its "
                "node type nor a known accelerator_type); shares are sized from the card's own memory otherwise."})
    autoscaling_config: str | None = field(default=None, metadata={
        "help": "The cluster launcher's config, to know the GPU node types the autoscaler can start (default: "
                "what the autoscaler reported to Ray, else ~/ray_bootstrap_config.yaml on the head)."})
    safety: float = field(default=1.5, metadata={"help": "Multiplier on the memory estimate."})
    step: float = field(default=0.05, metadata={"help": "GPU fractions round up to a multiple of this."})
    min_fraction: float = field(default=0.1, metadata={"help": "Smallest GPU share a trial gets."})
    fixed_fraction: float | None = field(default=None, metadata={"help": "Use this GPU share for every trial."})

    def check(self) -> None:
        if self.cpus_per_trial <= 0:
            raise FrugalrayError(f"cpus_per_trial must be > 0, got {self.cpus_per_trial}")
        if self.gpu_memory_gib <= 0 or self.safety <= 0:
            raise FrugalrayError(f"gpu_memory_gib and safety must be > 0, got {self.gpu_memory_gib} and {self.safety}")
        if self.fixed_fraction is not None and not 0 < self.fixed_fraction <= 1:
            raise FrugalrayError(f"fixed_fraction must be in (0, 1], got {self.fixed_fraction}")
        if not 0 < self.step <= 1 or not 0 < self.min_fraction <= 1:
            raise FrugalrayError("step and min_fraction must be in (0, 1]")
        if self.cpu_fallback and not self.gpus:
            raise FrugalrayError("cpu_fallback is the fallback of a GPU sweep: set gpus too, or leave both off")

    def gpu_fraction(self, estimate_gib: float, gpu_memory_gib: float | None = None) -> float:
        """The share of one GPU of ``gpu_memory_gib`` (default: ``self.gpu_memory_gib``) a trial of
        ``estimate_gib`` gets; more than one GPU: whole GPUs."""
        if self.fixed_fraction is not None:
            return self.fixed_fraction
        share = estimate_gib * self.safety / (gpu_memory_gib or self.gpu_memory_gib)
        if share > 1:
            return float(math.ceil(share))  # a trial larger than one GPU takes whole GPUs
        return round(max(self.min_fraction, math.ceil(share / self.step - 1e-9) * self.step), 4)

    def cpu_demand(self) -> dict[str, float]:
        return {"CPU": self.cpus_per_trial}


@dataclass(frozen=True)
class TrialConfig(Settings):
    """One trial: (task, model, kept layers, LoRA, training settings, seed) -> one result row."""

    task: str = field(metadata={"help": "Registered task name or a task JSON file."})
    model: str = field(default="minilm", metadata={"help": "Alias, local folder or HF hub id."})
    strategy: str = field(default="full", metadata={"help": "Pruning strategy name (frugalray strategies)."})
    n: int | None = field(default=None, metadata={"help": "N for first/last/best/drop_*, k for single."})
    layers: tuple[int, ...] | None = field(default=None, metadata={"help": "Explicit layers for 'mask'."})
    scores: tuple[float | tuple[float, ...], ...] | None = field(
        default=None, metadata={"help": "Per-layer scores for best/drop_worst, higher is better: numbers, or "
                                        "tuples compared in order (single(k) results: dev F1, -dev eval loss)."}
    )
    lora: LoraSettings | None = field(default=None, metadata={
        "help": "LoRA. On: the pruned model is fine-tuned with LoRA adapters. Off: full fine-tuning."})
    training: TrainingSettings = field(
        default_factory=TrainingSettings, metadata={"help": "How the trial trains (HF TrainingArguments' defaults)."}
    )
    recovery: RecoverySettings = field(default_factory=RecoverySettings, metadata={
        "help": "Where a pruned model starts (pretrained or the fine-tuned full model) and how it learns."})
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, batching and dropout."})
    data_dir: str | None = field(default=None, metadata={"help": "Where the task's files are (overrides)."})
    save_model: bool = field(
        default=False, metadata={"help": "Saving the weights. On: the trained weights stay in the store "
                                         "(models/<trial_id>) for export. Off: only the row is kept."}
    )
    sweep: str = field(default="", metadata={"help": "Label grouping the trials of one sweep."})
    stage: str = field(default="", metadata={"help": "Sweep stage that scheduled the trial."})

    def check(self) -> None:
        from frugalray.strategies import STRATEGIES

        STRATEGIES.get(self.strategy)  # unknown names fail here, with a did-you-mean
        check_seeds(self.seed)
        if self.lora and self.recovery.method == "partial":
            raise FrugalrayError("recovery method 'partial' trains whole layers and LoRA trains adapters: they do "
                                 "not combine; use LoRA with recovery finetune or distill, or partial without LoRA")
        if self.recovery.needs_teacher and self.strategy == "full" and not self.lora:
            raise FrugalrayError(f"recovery {self.recovery.label()} learns from the full model fine-tuned on the task: "
                                 f"the full model itself has nothing to recover; prune it (another strategy)")

    @classmethod
    def from_record(cls, values: dict, source: str = "stored row") -> "TrialConfig":
        """From a row's ``config_json``, written by this or an earlier version (read as that version trained)."""
        values = dict(values)
        if isinstance(values.get("training"), dict):
            values["training"] = TrainingSettings.from_record(values["training"], f"{source}: training")
        return cls.from_dict(values, source)

    @property
    def learning_rate(self) -> float:
        return self.training.lora_learning_rate if self.lora else self.training.learning_rate


@dataclass(frozen=True)
class SweepConfig(Settings):
    """Everything a sweep file sets. Unknown keys fail (``from_dict``)."""

    name: str = field(default="study", metadata={"help": "Sweep label, recorded in every row."})
    tasks: tuple[str, ...] = field(default=("wikiner", "ftb_ner", "ftb_pos", "allocine"),
                                   metadata={"help": "Registered task names or task JSON files."})
    model: str = field(default="camembert-base", metadata={"help": "Alias, folder or hub id."})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "Each trial runs once per seed."})
    training: TrainingSettings = field(
        default_factory=TrainingSettings, metadata={"help": "How every trial trains (HF TrainingArguments' defaults)."}
    )
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "Settings of the LoRA stage."})
    data_dirs: tuple[tuple[str, str], ...] = field(default=(), metadata={"help": "(task, folder) pairs."})
    results: str = field(default="results", metadata={"help": "Folder or s3:// gs:// URI all nodes reach."})
    stages: tuple[str, ...] = field(default=("single", "strategies", "lora", "balanced"),
                                    metadata={"help": "Stages to run (frugalray stages lists them)."})
    first_last: tuple[int, ...] | None = field(default=None, metadata={"help": "N for first/last; None: 1..L-1."})
    alternate: bool = field(default=True, metadata={
        "help": "The alternate family (even, odd, drop_every). On: the strategies stage runs it. Off: it is skipped."})
    drop_middle: tuple[int, ...] = field(default=(2, 4, 6, 8, 10), metadata={"help": "N for drop_middle."})
    drop_ends: tuple[int, ...] = field(default=(2, 4, 6, 8, 10), metadata={"help": "N for drop_ends (even)."})
    best: tuple[int, ...] = field(default=(2, 3, 4, 5, 6), metadata={"help": "N for best."})
    drop_worst: tuple[int, ...] = field(default=(1, 2, 3, 4, 5), metadata={"help": "N for drop_worst."})
    lora_max_layers: int = field(default=6, metadata={"help": "Selection: best strategy with at most this many."})
    lora_sizes: tuple[int, ...] = field(default=(2, 3), metadata={"help": "Selection: best with exactly N layers."})
    lora_full: bool = field(default=True, metadata={
        "help": "lora stage, the full model. On: LoRA on the full model too, beside the selection's layer sets. "
                "Off: the selection's layer sets only."})
    recovery: RecoverySettings = field(default_factory=RecoverySettings,
                                       metadata={"help": "Settings of the recover stage's distillation and partial runs."})
    recover_inits: tuple[str, ...] = field(default=("pretrained", "finetuned"),
                                           metadata={"help": "recover stage: where students start."})
    recover_methods: tuple[str, ...] = field(default=("finetune", "distill", "partial"),
                                             metadata={"help": "recover stage: how students train."})
    full_model_epochs: int = field(default=0, metadata={
        "help": "0: the full model trains like every trial. E: it trains until dev F1 has not improved for "
                "full_model_patience epochs, at most E, and keeps its best epoch: the baseline of every view and the "
                "teacher of the recover stage is then the best full model these settings train, not one cut at "
                "training.epochs."})
    full_model_patience: int = field(default=2, metadata={
        "help": "With full_model_epochs: epochs without a better dev F1 before the full model stops."})
    recover_layers: str = field(default="selection", metadata={
        "help": "recover stage's layer sets: selection (those of the lora stage) and first half, or half (first "
                "half only)."})
    drop_block: tuple[int, ...] = field(default=(2, 4, 6, 8, 10), metadata={
        "help": "N for drop_block (the contiguous block the angular-distance proxy ranks lowest)."})
    save_models: tuple[str, ...] = field(
        default=(), metadata={"help": "Stages whose trials keep their weights for export, e.g. lora balanced."}
    )
    report: str | None = field(default=None, metadata={"help": "Folder for the HTML report written at the end."})
    reference_tasks: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"help": "(task, study dataset) pairs shown side by side in the report."}
    )
    resources: ResourceRule = field(
        default_factory=ResourceRule, metadata={"help": "What each trial asks of the cluster."}
    )
    retries: int = field(default=1, metadata={"help": "Extra attempts for a trial that raises (e.g. CUDA OOM)."})
    max_failures: int = field(default=3, metadata={"help": "Reschedules of a trial whose worker or node died."})
    max_concurrent: int | None = field(default=None, metadata={"help": "Cap on trials running at once."})
    autoscale_wait_s: float = field(default=0, metadata={"help": "Wait this long for the autoscaler to add nodes."})
    verbose: int = field(
        default=0, metadata={"help": "Ray Tune's own output: 0 none (frugalray's progress only), 1 status, 2 trials."}
    )

    def check(self) -> None:
        from frugalray.strategies import STAGE_NAMES

        for name in ("name", "results"):
            if not getattr(self, name).strip():
                raise FrugalrayError(f"{name} is empty; give the sweep a {name}")
        if not self.tasks:
            raise FrugalrayError("A sweep needs at least one task")
        for name in ("stages", "save_models"):
            for stage in getattr(self, name):
                if stage not in STAGE_NAMES:
                    raise FrugalrayError(f"{name}: " + did_you_mean("stage", stage, list(STAGE_NAMES)))
        if not self.seeds:
            raise FrugalrayError("A sweep needs at least one seed")
        check_seeds(*self.seeds)
        if self.retries < 0 or self.max_failures < 0:
            raise FrugalrayError("retries and max_failures must be >= 0")
        if self.autoscale_wait_s < 0:
            raise FrugalrayError(f"autoscale_wait_s must be >= 0 seconds, got {self.autoscale_wait_s}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise FrugalrayError(f"max_concurrent must be >= 1 (or None: no cap), got {self.max_concurrent}")
        if self.verbose not in (0, 1, 2, 3):
            raise FrugalrayError(f"verbose must be 0, 1, 2 or 3 (Ray Tune's verbosity), got {self.verbose!r}")
        from frugalray.config.recovery import INITS, METHODS

        for name, valid in (("recover_inits", INITS), ("recover_methods", METHODS)):
            for value in getattr(self, name):
                if value not in valid:
                    raise FrugalrayError(f"{name}: " + did_you_mean(name[8:-1], value, list(valid)))
        if self.full_model_epochs < 0 or self.full_model_patience < 1:
            raise FrugalrayError(f"full_model_epochs must be >= 0 (0: as every trial) and full_model_patience >= 1; got "
                                 f"{self.full_model_epochs} and {self.full_model_patience}")
        if self.recovery.teacher_epochs:
            raise FrugalrayError("recovery.teacher_epochs is set by the sweep from full_model_epochs (the full model it "
                                 "trains is the teacher); set full_model_epochs and full_model_patience instead")
        if self.recover_layers not in ("selection", "half"):
            raise FrugalrayError(f"recover_layers {self.recover_layers!r}; valid: selection, half")
        stray = sorted({task for task, _ in self.data_dirs} - set(self.tasks))
        if stray:
            raise FrugalrayError(f"data_dirs names task(s) {stray} that the sweep does not run: {list(self.tasks)}")

    def data_dir(self, task: str) -> str | None:
        return dict(self.data_dirs).get(task)

    @property
    def full_training(self) -> TrainingSettings:
        """How the full model (fully fine-tuned) trains: as the teacher of the recover stage's students."""
        return self.teacher_recovery.teacher_training(self.training)

    @property
    def teacher_recovery(self) -> RecoverySettings:
        """The recover stage's settings, with how its teacher (the full model) trained."""
        if not self.full_model_epochs:
            return self.recovery
        from dataclasses import replace

        return replace(self.recovery, teacher_epochs=self.full_model_epochs, teacher_patience=self.full_model_patience)
