"""A task's labels: checked across splits (named by file and line), and the majority-class baseline that
tells a model that learnt something from one that answers the same thing everywhere.

>>> majority_baseline(load_task("demo_ner"))["test"]["f1"]  # doctest: +SKIP
0.0
"""

from __future__ import annotations

from collections import Counter

from frugalray._registry import FrugalrayError
from frugalray.data.metrics import METRICS
from frugalray.data.readers import Example
from frugalray.data.spec import TaskData, TaskSpec


def check_labels(spec: TaskSpec, splits: dict[str, list[Example]]) -> list[str]:
    def labels_of(example: Example) -> tuple[str, ...]:
        return example.labels if isinstance(example.labels, tuple) else (example.labels,)

    known = sorted({label for example in splits["train"] for label in labels_of(example)})
    if spec.metric == "ner":
        bad = [label for label in known if label != "O" and label[:2] not in {"B-", "I-", "E-", "S-"}]
        if bad:
            where = next(e.origin for e in splits["train"] if set(labels_of(e)) & set(bad))
            raise FrugalrayError(
                f"{where}: tag {bad[0]!r} is not an IOB/IOBES entity tag (expected O, B-TYPE, I-TYPE, "
                f"E-TYPE or S-TYPE); check tag_column={spec.tag_column}"
            )
    for split in ("dev", "test"):
        for example in splits[split]:
            unseen = [i for i, label in enumerate(labels_of(example)) if label not in known]
            if unseen:
                raise FrugalrayError(
                    f"{_origin_of(example, unseen[0])}: {split} label {labels_of(example)[unseen[0]]!r} "
                    f"of task '{spec.name}' never occurs in "
                    f"train, so the model cannot predict it; train labels: {', '.join(known)}"
                )
    return known


def _origin_of(example: Example, index: int) -> str:
    """file:line of the index-th word of a CoNLL sentence (one word per line)."""
    path, _, line = example.origin.rpartition(":")
    if example.words is not None and line.isdigit():
        return f"{path}:{int(line) + index}"
    return example.origin


def majority_baseline(task: TaskData) -> dict[str, dict[str, float]]:
    """Metrics on dev and test of always answering train's most frequent label (per token for token tasks).

    A model that does no better has learnt nothing: its row is marked ``degenerate``.

    >>> majority_baseline(load_task("demo_ner"))["test"]["f1"]
    0.0
    """
    metric = METRICS.get(task.spec.metric)
    token_task = bool(task.train) and task.train[0].words is not None
    counts = Counter(label for e in task.train for label in (e.labels if token_task else (e.labels,)))
    majority = counts.most_common(1)[0][0]
    out = {}
    for split, examples in (("dev", task.dev), ("test", task.test)):
        if token_task:
            gold = [list(e.labels) for e in examples]
            out[split] = metric(gold, [[majority] * len(tags) for tags in gold])
        else:
            out[split] = metric([e.labels for e in examples], [majority] * len(examples))
    return out
