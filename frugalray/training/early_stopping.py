"""Early stopping on dev (``training.early_stopping_patience``): train until dev stops improving, keep the best.

After every epoch the trial scores dev; an epoch improves on the best so far when its dev F1 is higher, or the
same with a lower dev loss (a stretch of ties, e.g. F1 0 while a small model learns its first entities, is
then still told apart). Training stops after ``patience`` epochs in a row without improvement, or at
``training.epochs``, and the weights of the best epoch are put back: the model that is scored, timed and
saved is that one (transformers' ``EarlyStoppingCallback`` with ``load_best_model_at_end``, on dev F1). Its
row records the epochs trained (``epochs_trained``, all of them counted in its training time) and the best
(``best_epoch``).
"""

from __future__ import annotations

from typing import Callable

import torch


class EarlyStopping:
    """The ``after_epoch`` hook of ``frugalray.training.loop.train``: True once training should stop."""

    def __init__(self, model: torch.nn.Module, patience: int, score_dev: Callable[[], dict]):
        self.model, self.patience, self.score_dev = model, patience, score_dev
        self.best: tuple[float, float] | None = None
        self.best_epoch = self.epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def __call__(self, epoch: int) -> bool:
        metrics = self.score_dev()
        self.model.train()
        self.epochs = epoch + 1
        score = (metrics["f1"], -metrics["eval_loss"])
        if self.best is None or score > self.best:
            self.best, self.best_epoch = score, self.epochs
            self.best_state = {name: value.detach().to("cpu", copy=True) for name, value in self.model.state_dict().items()}
        return self.epochs - self.best_epoch >= self.patience

    def restore(self) -> None:
        """The best epoch's weights back into the model (nothing to do when the last epoch was the best)."""
        if self.best_state is not None and self.best_epoch != self.epochs:
            self.model.load_state_dict(self.best_state)
        self.best_state = None

    def columns(self) -> dict:
        return {"epochs_trained": self.epochs, "best_epoch": self.best_epoch}
