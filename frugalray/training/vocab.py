"""Training on the task's own vocabulary: the same updates, less work per step.

A fine-tuning step updates the whole input embedding matrix (MiniLM: 30,522 x 384 = 11.7M parameters,
CamemBERT: 32,005 x 768), although a task's sentences use a few thousand of its rows. Every other row gets
a zero gradient at every step, so AdamW leaves it as it is (its moments stay zero) but for weight decay,
which shrinks it by (1 - lr_t x weight_decay) per step. With ``training.trim_vocabulary`` (the default), a trial trains
with only the rows its splits use (train, dev and test, so that dev checkpoints score the same model), its
token ids remapped; afterwards the trained rows go back into the whole matrix and the others get the decay
they would have had. The model that is scored, timed and saved is the whole one, and its weights are those
of training the whole matrix, up to float rounding (``tests/training/test_vocab.py`` compares both ways).
It pays most where the embedding's update is a large share of the step: small models, small vocabularies
(``python benchmarks/vocab_trim.py``; on CPU, one layer of MiniLM: 1.2-1.3x on wnut16 and conll2003_small,
1.6x on the demo sentiment set with one thread).

It is off where it cannot be exact: frozen embeddings (LoRA, partial fine-tuning: nothing to save), models
whose output layer shares the embedding, and a distillation that runs the teacher on the student's batches
(``recovery.beta > 0``).
"""

from __future__ import annotations

import dataclasses

import torch

from frugalray.config import TrainingSettings, TrialConfig
from frugalray.data.encoding import Encoded


def trimmed_vocabulary(config: TrialConfig, model: torch.nn.Module, data) -> "TrimmedVocabulary | None":
    """The model's embedding cut to the rows ``data`` uses, if ``config`` asks for it and it is exact for
    ``model`` on ``data`` (else None)."""
    embedding = model.get_input_embeddings()
    if not (config.training.trim_vocabulary and isinstance(embedding, torch.nn.Embedding)
            and embedding.weight.requires_grad and model.get_output_embeddings() is None
            and not (config.recovery.method == "distill" and config.recovery.beta > 0)):
        return None
    rows = keep_rows(data)
    return TrimmedVocabulary(model, data, rows) if rows[data.pad_id:data.pad_id + 1] == [data.pad_id] else None


def keep_rows(data) -> list[int]:
    """The embedding rows the task's splits use, in the order the trimmed embedding holds them: ascending, but
    the padding token keeps its own index, as models read it from the ids (RoBERTa and CamemBERT number
    positions by ``input_ids != padding_idx``). Where there are too few rows for that, it is elsewhere and
    ``trimmed_vocabulary`` does not trim.

    >>> from frugalray.data.encoding import Encoded
    >>> split = [Encoded([0, 7, 9, 2], []), Encoded([0, 3, 2], [])]
    >>> from types import SimpleNamespace as Data
    >>> keep_rows(Data(train=split, dev=[], test=[], pad_id=1)), keep_rows(Data(train=split, dev=[], test=[], pad_id=4))
    ([0, 1, 2, 3, 7, 9], [0, 2, 3, 7, 4, 9])
    """
    rows = sorted({i for split in (data.train, data.dev, data.test) for item in split for i in item.input_ids}
                  | {data.pad_id})
    at = rows.index(data.pad_id)
    if data.pad_id < len(rows):
        rows[at], rows[data.pad_id] = rows[data.pad_id], rows[at]
    return rows


class TrimmedVocabulary:
    """The model's input embedding cut to ``rows`` (``keep_rows(data)``), and ``data`` with its ids remapped to
    them (``self.data``), until ``restore``."""

    def __init__(self, model: torch.nn.Module, data, rows: list[int]):
        self.model, self.original = model, model.get_input_embeddings()
        self.rows = rows
        index = {old: new for new, old in enumerate(self.rows)}
        padding = self.original.padding_idx
        trimmed = torch.nn.Embedding.from_pretrained(  # no random initialisation: the dropout stream is unchanged
            self.original.weight.detach()[self.rows].clone(), freeze=False,
            padding_idx=index.get(padding) if padding is not None else None)
        model.set_input_embeddings(trimmed)
        self.data = data._replace(**{split: _remap(getattr(data, split), index) for split in ("train", "dev", "test")},
                                  pad_id=index[data.pad_id])

    def restore(self, untouched_decay: float = 1.0) -> None:
        """The whole embedding back, with the trained rows in it and the others scaled by ``untouched_decay``
        (what weight decay did to them while they were out)."""
        trimmed = self.model.get_input_embeddings()
        with torch.no_grad():
            if untouched_decay != 1.0:
                self.original.weight.mul_(untouched_decay)
            rows = torch.tensor(self.rows, device=self.original.weight.device)
            self.original.weight.index_copy_(0, rows, trimmed.weight.detach().to(self.original.weight.dtype))
        self.model.set_input_embeddings(self.original)


def _remap(items: list[Encoded], index: dict[int, int]) -> list[Encoded]:
    return [dataclasses.replace(item, input_ids=[index[i] for i in item.input_ids]) for item in items]


def untouched_decay(settings: TrainingSettings, learning_rate: float, steps: int, total_steps: int) -> float:
    """The factor AdamW's decoupled weight decay applies over ``steps`` optimizer steps to a parameter that
    never gets a gradient: the product of (1 - lr_t x weight_decay), lr_t from the same schedule."""
    if not settings.weight_decay:
        return 1.0
    from frugalray.training.loop import make_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)
    scheduler = make_scheduler(optimizer, settings, total_steps)
    factor = 1.0
    for _ in range(steps):
        factor *= 1.0 - optimizer.param_groups[0]["lr"] * settings.weight_decay
        optimizer.step()
        scheduler.step()
    return factor
