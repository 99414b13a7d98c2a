"""Tokenization, word-label alignment, length-grouped batches and dynamic padding.

Word labels go on the first sub-token of each word; other sub-tokens and special tokens get -100.

>>> encoded = encode_examples(examples, tokenizer, {"O": 0, "B-PER": 1}, max_length=32)  # doctest: +SKIP
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from frugalray.data.readers import Example

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | int
    # token tasks: position of each word's first sub-token (None when truncated or empty)
    word_positions: list[int | None] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> tuple[list[int], list[int | None]]:
    """Labels per sub-token (first sub-token of a word gets its label, the rest -100) and word positions.

    >>> align_labels([None, 0, 0, 1, None], [3, 5])
    ([-100, 3, -100, 5, -100], [1, 3])
    """
    labels = [IGNORE] * len(word_ids)
    positions: list[int | None] = [None] * len(word_labels)
    previous = None
    for position, word in enumerate(word_ids):
        if word is not None and word != previous:
            labels[position] = word_labels[word]
            positions[word] = position
        previous = word
    return labels, positions


def encode_examples(examples: list[Example], tokenizer, label2id: dict[str, int], max_length: int) -> list[Encoded]:
    if not examples:
        return []
    if examples[0].words is not None:
        batch = tokenizer(
            [list(e.words) for e in examples], is_split_into_words=True, truncation=True, max_length=max_length
        )
        encoded = []
        for i, example in enumerate(examples):
            labels, positions = align_labels(batch.word_ids(i), [label2id[tag] for tag in example.labels])
            encoded.append(Encoded(batch["input_ids"][i], labels, positions))
        return encoded
    batch = tokenizer([e.text for e in examples], truncation=True, max_length=max_length)
    return [Encoded(ids, label2id[e.labels]) for ids, e in zip(batch["input_ids"], examples)]


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, megabatch: int = 0) -> list[list[int]]:
    """Shuffled batches of indices; with ``megabatch`` k > 0, examples of similar length share a batch.

    k = 0 is uniform shuffling (the Trainer's default). Otherwise, as HF's LengthGroupedSampler: shuffle,
    cut into groups of k batches, sort each group by length, then shuffle the batch order: padding shrinks
    while batches stay random across groups. A group that holds the whole training set sorts it outright.

    >>> length_grouped_batches([5, 1, 4, 2], 2, seed=0, megabatch=2)
    [[0, 2], [3, 1]]
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if megabatch:
        size = batch_size * megabatch
        order = [i for start in range(0, len(order), size)
                 for i in sorted(order[start : start + size], key=lambda j: -lengths[j])]
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if megabatch:
        rng.shuffle(batches)
    return batches


def collate(items: list[Encoded], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member (dynamic padding)."""
    width = max(len(item) for item in items)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    token_labels = isinstance(items[0].labels, list)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long) if token_labels else None
    for row, item in enumerate(items):
        input_ids[row, : len(item)] = torch.tensor(item.input_ids)
        attention_mask[row, : len(item)] = 1
        if token_labels:
            labels[row, : len(item)] = torch.tensor(item.labels)
    if not token_labels:
        labels = torch.tensor([item.labels for item in items], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
