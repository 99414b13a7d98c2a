"""How a trial trains: the recipe (``TrainingSettings``), as a frozen dataclass, torch-free.

>>> TrainingSettings(epochs=5).max_grad_norm
1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from frugalray.config._fields import Settings
from frugalray._registry import FrugalrayError

DTYPES = ("auto", "fp32", "bf16", "native-bf16")
LR_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")
# The Trainer's arithmetic, frugalray's default recipe before the trimmed vocabulary and native bf16 passed the
# speed rule: fp32 on CPUs, every embedding row trained (--training.dtype auto --training.no-trim-vocabulary).
TRAINER_RECIPE = {"dtype": "auto", "trim_vocabulary": False}
# Named recipes the benchmarks take (--recipe): changes to TrainingSettings' defaults.
RECIPES = {"default": {}, "trainer": TRAINER_RECIPE}
RECIPE_HELP = ("training recipe: frugalray's default, or 'trainer' (fp32 on CPUs, every embedding row trained: the "
               "Trainer's arithmetic, frugalray's default before the trimmed vocabulary and native bf16)")


@dataclass(frozen=True)
class TrainingSettings(Settings):
    """How a trial trains. The defaults are ``transformers.TrainingArguments``' (the recipe users compare
    with) but for two speed choices that passed the README's rule (paired test-F1 difference within one point
    over 10 seeds on two real corpora, at three depths; ``benchmarks/recipe_fidelity.py``): the trimmed
    vocabulary and bf16 autocast where the hardware computes bf16. ``TRAINER_RECIPE`` undoes them. The other
    speed choices (length grouping, bf16 everywhere, compile) stay off."""

    epochs: int = field(default=3, metadata={"help": "Training epochs (the study: 3)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate for full fine-tuning."})
    lora_learning_rate: float = field(
        default=5e-4, metadata={"help": "Peak learning rate when LoRA is on (about 10x the full one)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size (speed only; not in the configuration hash)."})
    max_length: int = field(default=256, metadata={"help": "Sub-tokens per example; longer ones are cut."})
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay; never on biases and LayerNorm weights."}
    )
    warmup_ratio: float = field(default=0.0, metadata={"help": "Share of steps with linear LR warm-up."})
    lr_schedule: str = field(default="linear", metadata={"help": "LR decay: " + ", ".join(LR_SCHEDULES) + "."})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Clip the gradient norm to this (0: no clipping, as frugalray <= 0.1)."}
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    length_grouping: int = field(
        default=0,
        metadata={"help": "0: uniformly shuffled batches (the Trainer's). k: sort each group of k batches by "
                          "length, then shuffle the batches (less padding, less random batches)."},
    )
    dtype: str = field(
        default="native-bf16", metadata={
            "help": "native-bf16 (bf16 autocast where the hardware computes bf16 natively: GPUs that have it and "
                    "CPUs with AVX512-BF16 or AMX; elsewhere fp32, as CPUs emulate bf16 slower than fp32), auto "
                    "(bf16 autocast on GPUs that have it, else fp32: the Trainer's arithmetic), fp32 or bf16. The "
                    "row's autocast column says which ran."}
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad batches to a multiple of this (a speed choice; None: to the longest member)."}
    )
    fused_optimizer: bool = field(default=True, metadata={
        "help": "The fused AdamW kernel (a speed choice). On: used where available. Off: torch's default AdamW."})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile (a speed choice). On: the model is compiled for training. Off: eager PyTorch."})
    trim_vocabulary: bool = field(default=True, metadata={
        "help": "The trimmed vocabulary. On: only the embedding rows of the task's tokens train, then go back in "
                "place (the same weights up to float rounding, faster steps: frugalray.training.vocab). Off: every "
                "row trains, as the Trainer does."})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "0: train every epoch. k: score dev after each epoch, stop after k epochs in a row without a better "
                "dev F1 (ties: lower dev loss) and keep the best epoch's weights; epochs is then the most a trial "
                "trains (frugalray.training.early_stopping)."})
    eval_every_steps: int = field(
        default=0, metadata={"help": "Evaluate dev F1 every this many optimizer steps during training (0: only at the "
                                     "end); the row keeps the curve, and an early-stopping search stops on it "
                                     "(recording only: training is the same)."}
    )
    energy: bool = field(
        default=True, metadata={"help": "Energy recording (recording only). On: the energy (kWh) and CO2-eq of "
                                        "training and evaluation, from codecarbon's offline tracker. Off: not "
                                        "measured (energy columns null, energy_method says off)."}
    )
    energy_country: str = field(
        default="FRA", metadata={"help": "ISO 3166-1 alpha-3 code of the country whose electricity grid gives the "
                                         "CO2-eq of the energy (recording only; the study's: FRA)."}
    )

    # Fields that change what is recorded or how fast evaluation runs, never what a trial learns: left out of the
    # configuration hash. Speed choices of training (padding, fused AdamW, compile, dtype) change the arithmetic
    # and stay in it.
    RECORD_ONLY = ("eval_batch_size", "eval_every_steps", "energy", "energy_country")
    # Fields added after rows were stored: hashed only when not at these values (their values before the field
    # existed), so earlier hashes still hold; a row that lacks one reads back with that value (upgrade_training).
    HASHED_IF_NOT = {"trim_vocabulary": False, "early_stopping_patience": 0}

    def check(self) -> None:
        checks = {
            "epochs": self.epochs >= 1, "learning_rate": self.learning_rate > 0,
            "lora_learning_rate": self.lora_learning_rate > 0, "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 1, "max_length": self.max_length >= 8,
            "warmup_ratio": 0 <= self.warmup_ratio < 1, "weight_decay": self.weight_decay >= 0,
            "max_grad_norm": self.max_grad_norm >= 0, "adam_beta1": 0 <= self.adam_beta1 < 1,
            "adam_beta2": 0 <= self.adam_beta2 < 1, "adam_epsilon": self.adam_epsilon > 0,
            "length_grouping": self.length_grouping >= 0, "eval_every_steps": self.eval_every_steps >= 0,
            "early_stopping_patience": self.early_stopping_patience >= 0,
            "pad_to_multiple_of": self.pad_to_multiple_of is None or self.pad_to_multiple_of >= 1,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or (isinstance(value, float) and not math.isfinite(value)):
                raise FrugalrayError(f"Training setting {name}={value!r} is out of range")
        if self.dtype not in DTYPES:
            raise FrugalrayError(f"Training setting dtype={self.dtype!r}; valid: {', '.join(DTYPES)}")
        if not (len(self.energy_country) == 3 and self.energy_country.isascii() and self.energy_country.isalpha()
                and self.energy_country.isupper()):
            raise FrugalrayError(f"Training setting energy_country={self.energy_country!r}: give a 3-letter ISO "
                                 f"3166-1 alpha-3 country code such as FRA, DEU or USA")
        if self.lr_schedule not in LR_SCHEDULES:
            raise FrugalrayError(f"Training setting lr_schedule={self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")

    def planned_steps(self, examples: int) -> int:
        """Optimizer steps of a whole training on ``examples`` examples: epochs x batches per epoch."""
        return -(-examples // self.batch_size) * self.epochs

    @classmethod
    def from_record(cls, values: dict, source: str = "recorded training settings") -> "TrainingSettings":
        """Settings as a row recorded them, including rows written before a field existed."""
        return cls.from_dict(upgrade_training(values), source)

    def identity(self) -> dict:
        """The fields that change what a trial learns (for the configuration hash)."""
        from dataclasses import asdict

        values = asdict(self)
        for name in self.RECORD_ONLY + ("learning_rate", "lora_learning_rate"):  # the rate used is hashed apart
            values.pop(name)
        for name, value in self.HASHED_IF_NOT.items():
            if values[name] == value:
                values.pop(name)
        return values


def upgrade_training(values: dict) -> dict:
    """Training settings recorded by an earlier frugalray, in today's fields, as that version trained.

    frugalray 0.1 did not clip gradients and its ``length_grouping`` was a flag for groups of 50 batches; a
    row from before a field of HASHED_IF_NOT existed trained as that field's old value says (every
    embedding row, no early stopping); a row that lacks ``dtype`` trained with the Trainer's.

    >>> upgrade_training({"length_grouping": True})["length_grouping"], upgrade_training({})["max_grad_norm"]
    (50, 0.0)
    >>> upgrade_training({})["trim_vocabulary"], upgrade_training({})["dtype"]
    (False, 'auto')
    """
    values = dict(values)
    if isinstance(values.get("length_grouping"), bool):
        values["length_grouping"] = 50 if values["length_grouping"] else 0
    values.setdefault("max_grad_norm", 0.0)
    for name, value in (TrainingSettings.HASHED_IF_NOT | TRAINER_RECIPE).items():
        values.setdefault(name, value)
    return values
