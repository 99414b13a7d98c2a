"""A layer-mask search (``SearchConfig``): what Optuna searches, how each mask trains, and how early an
unpromising mask is stopped. Torch-free.

>>> SearchConfig(task="demo_pos", max_layers=3).name
'search-demo_pos-f1'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from frugalray._registry import FrugalrayError, did_you_mean
from frugalray.config._fields import Settings
from frugalray.config.lora import LoraSettings
from frugalray.config.study import ResourceRule, check_seeds
from frugalray.config.training import TrainingSettings

# Search objective -> (result columns, Optuna directions). Quality is dev F1: choosing layers never sees test.
OBJECTIVES = {
    "f1": (("dev_f1",), ("maximize",)),
    "f1_vs_layers": (("dev_f1", "n_kept_layers"), ("maximize", "minimize")),
    "f1_vs_latency": (("dev_f1", "latency_ms"), ("maximize", "minimize")),
}
PRIORS = ("none", "proxy")
# What halving compares at a rung (frugalray.study.masks.rung_score): dev F1 is 0 for every mask early in an NER
# training, while dev loss already orders them
RUNG_SCORES = ("dev_f1", "dev_loss", "dev_f1_then_loss")
SAMPLERS = ("tpe", "random")


@dataclass(frozen=True)
class SearchConfig(Settings):
    """A layer-mask search: Optuna proposes masks, each trained as an ordinary trial."""

    task: str = field(metadata={"help": "Task to search layer masks for."})
    model: str = field(default="minilm", metadata={"help": "Model alias, folder or hub id."})
    name: str = field(default="", metadata={"help": "Study name (default: search-<task>-<objective>)."})
    budget: int = field(default=20, metadata={"help": "New masks to train in this run (with halving and a front "
                                                       "objective: in all, shared out over the kept-layer counts)."})
    min_layers: int = field(default=1, metadata={"help": "Fewest layers a mask keeps."})
    max_layers: int | None = field(default=None, metadata={"help": "Most layers a mask keeps (default: L-1)."})
    exactly: int | None = field(default=None, metadata={"help": "Keep exactly N layers (overrides min/max)."})
    objective: str = field(default="f1", metadata={"help": ", ".join(OBJECTIVES) + "."})
    seed: int = field(default=0, metadata={"help": "Training seed of every search trial."})
    sampler_seed: int = field(default=0, metadata={"help": "Seed of Optuna's sampler."})
    training: TrainingSettings = field(
        default_factory=TrainingSettings, metadata={"help": "How every trial trains (HF TrainingArguments' defaults)."}
    )
    lora: LoraSettings | None = field(default=None, metadata={
        "help": "LoRA. On: the pruned model is fine-tuned with LoRA adapters. Off: full fine-tuning."})
    data_dir: str | None = field(default=None, metadata={"help": "Where the task's files are (overrides)."})
    results: str = field(default="results", metadata={"help": "Results location."})
    storage: str | None = field(default=None, metadata={"help": "Optuna storage URL (default: SQLite file in the results); 'memory': Optuna's in-memory storage, gone when the run ends (replays)."})
    warm_start: bool = field(default=True, metadata={
        "help": "Warm start. On: every stored result of this space is handed to Optuna before it samples. Off: "
                "Optuna starts empty (a mask it samples that has a stored result is still not retrained)."})
    prior: str = field(default="none", metadata={
        "help": "'proxy': first try masks ranked by layer importance (on wnut16 a poor first guess: see the search "
                "cost benchmark); 'none': the sampler from the start."})
    prior_masks: int = field(default=3, metadata={
        "help": "How many masks per kept-layer count the proxy puts first (best by summed layer importance)."})
    sampler: str = field(default="tpe", metadata={"help": "Optuna sampler once the prior's masks are tried: tpe "
                                                          "(NSGA-II for two objectives) or random."})
    startup_trials: int = field(default=2, metadata={
        "help": "tpe: masks drawn at random before TPE models the results (Optuna's n_startup_trials, there 10; "
                "trials told from the store and stopped masks count). 2 needed less compute than 10 on both corpora "
                "of the search cost benchmark."})
    halving: bool = field(default=True, metadata={
        "help": "Early stopping of unpromising masks (the default). On: asynchronous successive halving (Ray Tune's "
                "ASHAScheduler, on rung_score at rungs counted in training steps); only trials trained to the end "
                "are results, and a front objective runs one search per kept-layer count. Off: every mask trains "
                "to the end."})
    grace_steps: int | None = field(default=None, metadata={
        "help": "Training steps before the first rung (default: the whole training / reduction_factor**2, and "
                "never before warm-up ends); dev is scored every this many steps."})
    reduction_factor: int = field(default=3, metadata={
        "help": "Each rung keeps the best 1/reduction_factor of the masks that reach it; rungs at grace_steps "
                "x reduction_factor**k steps, up to the whole training (--training.epochs)."})
    rung_score: str = field(default="dev_loss", metadata={
        "help": "What a rung compares: dev_loss (lower goes on; on wnut16 it ranks masks while every dev F1 is "
                "still 0), dev_f1, or dev_f1_then_loss (dev F1, ties broken by the lower dev loss). Only masks "
                "trained to the end are ever results, whatever the rungs compared."})
    resources: ResourceRule = field(
        default_factory=ResourceRule, metadata={"help": "What each trial asks of the cluster."}
    )
    max_concurrent: int | None = field(default=None, metadata={"help": "Cap on trials running at once."})

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise FrugalrayError(did_you_mean("objective", self.objective, list(OBJECTIVES)))
        if self.prior not in PRIORS:
            raise FrugalrayError(did_you_mean("prior", self.prior, list(PRIORS)))
        if self.sampler not in SAMPLERS:
            raise FrugalrayError(did_you_mean("sampler", self.sampler, list(SAMPLERS)))
        if self.rung_score not in RUNG_SCORES:
            raise FrugalrayError(did_you_mean("rung_score", self.rung_score, list(RUNG_SCORES)))
        if self.startup_trials < 0:
            raise FrugalrayError(f"startup_trials must be >= 0 (got {self.startup_trials})")
        if self.prior_masks < 0 or self.reduction_factor < 2 or (self.grace_steps is not None and self.grace_steps < 1):
            raise FrugalrayError(f"prior_masks must be >= 0 (got {self.prior_masks}), reduction_factor >= 2 (got "
                                 f"{self.reduction_factor}) and grace_steps >= 1 (got {self.grace_steps})")
        if self.budget < 1:
            raise FrugalrayError(f"The search budget must be a positive number of trials, got {self.budget!r}")
        check_seeds(self.seed)
        if not self.name:
            object.__setattr__(self, "name", f"search-{Path(self.task).stem}-{self.objective}")

    def bounds(self, num_layers: int) -> tuple[int, int]:
        """(fewest, most) kept layers; an unsatisfiable constraint is an error."""
        if self.exactly is not None:
            low = high = self.exactly
        else:
            low, high = self.min_layers, self.max_layers if self.max_layers is not None else num_layers - 1
        if not 1 <= low <= high <= num_layers:
            raise FrugalrayError(
                f"No mask satisfies the constraint: keep {low}..{high} layers of a {num_layers}-layer model "
                f"(need 1 <= min <= max <= {num_layers})"
            )
        return low, high
