"""How a pruned model recovers its quality (``RecoverySettings``): where it starts, and how it trains.

``init``: ``pretrained`` keeps the kept layers of the pretrained encoder under a new head (the study);
``finetuned`` keeps the kept layers and the head of the task's fine-tuned full model (prune after
fine-tuning). ``method``: ``finetune`` trains on the labels (the study); ``distill`` learns from the full
model fine-tuned on the same task and seed, loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)
on the logits (+ beta * (1 - cos) between each kept layer's output and a teacher layer's: the same layer, or
with ``hidden_map="uniform"`` TinyBERT's, student layer i of n to teacher layer (i + 1) * L / n - 1 of L);
``partial`` trains only the head and the last ``partial_layers`` kept layers. ``teacher_epochs`` and
``teacher_patience`` say how that fine-tuned full model trained when not as the student does: a teacher
trained to convergence (``SweepConfig.full_model_epochs``) rather than for the student's own epochs.

>>> RecoverySettings(method="distill").identity()["temperature"]
2.0
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from frugalray._registry import FrugalrayError
from frugalray.config._fields import Settings

INITS = ("pretrained", "finetuned")
METHODS = ("finetune", "distill", "partial")
HIDDEN_MAPS = ("kept", "uniform")


@dataclass(frozen=True)
class RecoverySettings(Settings):
    init: Literal["pretrained", "finetuned"] = field(default="pretrained", metadata={
        "help": "pretrained: kept layers of the pretrained encoder, new head (the study); finetuned: kept layers "
                "and head of the task's fine-tuned full model (prune after fine-tuning)."})
    method: Literal["finetune", "distill", "partial"] = field(default="finetune", metadata={
        "help": "finetune: train on the labels; distill: learn from the fine-tuned full model (the teacher); "
                "partial: train only the head and the last partial_layers kept layers."})
    temperature: float = field(default=2.0, metadata={"help": "distill: softmax temperature T of the logits."})
    alpha: float = field(default=0.5, metadata={"help": "distill: weight of the label loss; 1 - alpha: of the KL."})
    beta: float = field(default=0.0, metadata={
        "help": "distill: weight of 1 - cos between each kept layer's output and a teacher layer's (hidden_map)."})
    hidden_map: Literal["kept", "uniform"] = field(default="kept", metadata={
        "help": "distill with beta > 0: the teacher layer each student layer's output is compared with. kept: the "
                "layer of the same original index; uniform: TinyBERT's, student layer i of n to teacher layer "
                "(i + 1) * L / n - 1 of L, whichever layers were kept."})
    partial_layers: int = field(default=1, metadata={"help": "partial: how many of the last kept layers train."})
    teacher_epochs: int = field(default=0, metadata={
        "help": "0: the teacher (the fine-tuned full model) trained with the student's own training settings. E: it "
                "trained at most E epochs, stopping on dev after teacher_patience epochs without improvement."})
    teacher_patience: int = field(default=0, metadata={
        "help": "With teacher_epochs: the teacher's early-stopping patience on dev (0: all teacher_epochs)."})

    def check(self) -> None:
        if self.init not in INITS:
            raise FrugalrayError(f"recovery init {self.init!r}; valid: {', '.join(INITS)}")
        if self.method not in METHODS:
            raise FrugalrayError(f"recovery method {self.method!r}; valid: {', '.join(METHODS)}")
        if self.hidden_map not in HIDDEN_MAPS:
            raise FrugalrayError(f"recovery hidden_map {self.hidden_map!r}; valid: {', '.join(HIDDEN_MAPS)}")
        if (self.temperature <= 0 or not 0 <= self.alpha <= 1 or self.beta < 0 or self.partial_layers < 0
                or self.teacher_epochs < 0 or self.teacher_patience < 0):
            raise FrugalrayError(f"recovery settings out of range: temperature > 0, 0 <= alpha <= 1, beta >= 0, "
                                 f"partial_layers, teacher_epochs, teacher_patience >= 0; got {self}")
        if self.teacher_patience and not self.teacher_epochs:
            raise FrugalrayError(f"recovery teacher_patience={self.teacher_patience} needs teacher_epochs (the most "
                                 f"the teacher trains)")

    @property
    def needs_teacher(self) -> bool:
        """Whether the trial starts from, or learns from, the fine-tuned full model."""
        return self.init == "finetuned" or self.method == "distill"

    @property
    def teacher_trained_apart(self) -> bool:
        """Whether the trial has a teacher that did not train with the trial's own training settings."""
        return self.needs_teacher and bool(self.teacher_epochs)

    @property
    def remaps_layers(self) -> bool:
        """Whether the hidden-state loss compares student layers with teacher layers other than their own
        (``hidden_map``; hashed, recorded and shown only then, so that earlier rows keep their hashes)."""
        return self.method == "distill" and self.beta > 0 and self.hidden_map != "kept"

    @property
    def is_default(self) -> bool:
        return self.init == "pretrained" and self.method == "finetune"

    def identity(self) -> dict | None:
        """What changes the result: the settings of the chosen method only (None: the study's recovery), how
        the teacher trained when it did not train as the student, and the teacher layer map when not the kept
        layers' own."""
        if self.is_default:
            return None
        fields = {"distill": ("temperature", "alpha", "beta"), "partial": ("partial_layers",)}.get(self.method, ())
        teacher = ("teacher_epochs", "teacher_patience") if self.teacher_trained_apart else ()
        hidden = ("hidden_map",) if self.remaps_layers else ()
        return {"init": self.init, "method": self.method,
                **{name: getattr(self, name) for name in fields + teacher + hidden}}

    def teacher_training(self, training):
        """The training settings of the teacher of a student that trains with ``training``."""
        if not self.teacher_epochs:
            return training
        from dataclasses import replace

        return replace(training, epochs=self.teacher_epochs, early_stopping_patience=self.teacher_patience)

    def teacher_layers(self, kept: tuple[int, ...], teacher_layers: int) -> tuple[int, ...]:
        """The teacher layer whose output each student layer's output is compared with (``hidden_map``).

        >>> RecoverySettings(hidden_map="uniform").teacher_layers((0, 1, 2, 3, 4, 5), 12)
        (1, 3, 5, 7, 9, 11)
        >>> RecoverySettings().teacher_layers((0, 4, 5), 12)
        (0, 4, 5)
        """
        if self.hidden_map == "kept":
            return tuple(kept)
        n = len(kept)
        return tuple((i + 1) * teacher_layers // n - 1 for i in range(n))

    def label(self) -> str:
        """``finetuned+distill``, ``pretrained+distill(hidden_map=uniform)`` — how tables name a recovery."""
        return f"{self.init}+{self.method}" + (f"(hidden_map={self.hidden_map})" if self.remaps_layers else "")
