"""Task metrics, registered by name: seqeval for NER, scikit-learn for POS and classification.

Each metric takes gold and predicted labels (lists of tag lists for token tasks, label lists for
sequence tasks) and returns accuracy, precision, recall and f1 (plus extras).

>>> METRICS.get("pos")([["DET", "NOUN"]], [["DET", "VERB"]])["accuracy"]
0.5
"""

from __future__ import annotations

from typing import Callable

from frugalray._registry import Registry

Metric = Callable[[list, list], dict[str, float]]
METRICS: Registry[Metric] = Registry("metric")


def _flat(sequences: list[list[str]]) -> list[str]:
    return [tag for sequence in sequences for tag in sequence]


@METRICS.register("ner")
def ner_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval, CoNLL evaluation) and token accuracy."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "precision": float(precision_score(gold, predicted, zero_division=0)),
        "recall": float(recall_score(gold, predicted, zero_division=0)),
        "f1": float(f1_score(gold, predicted, zero_division=0)),
    }


@METRICS.register("pos")
def pos_metrics(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Token accuracy (= micro F1, the study's figure) and macro F1 over tags."""
    from sklearn.metrics import accuracy_score, f1_score

    gold_tags, predicted_tags = _flat(gold), _flat(predicted)
    accuracy = float(accuracy_score(gold_tags, predicted_tags))
    return {
        "accuracy": accuracy,
        "precision": accuracy,  # micro-averaged over single-label tokens: all three equal accuracy
        "recall": accuracy,
        "f1": float(f1_score(gold_tags, predicted_tags, average="micro")),
        "f1_macro": float(f1_score(gold_tags, predicted_tags, average="macro", zero_division=0)),
    }


@METRICS.register("classification")
def classification_metrics(gold: list[str], predicted: list[str]) -> dict[str, float]:
    """Accuracy and macro-averaged precision/recall/F1 over classes."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(gold, predicted, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }
