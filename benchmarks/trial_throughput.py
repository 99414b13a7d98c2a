"""Training throughput: frugalray's trial vs a plain HF Trainer script, same data, model and settings.

    python benchmarks/trial_throughput.py [--epochs 1] [--repeats 3]

Both train MiniLM (6 layers, pretrained) on the shipped POS corpus with the HF token-classification
example's defaults (batch 8, lr 5e-5, no warm-up, no weight decay). The baseline is written the
straightforward way, as the study did: ``Trainer`` + ``DataCollatorForTokenClassification`` (dynamic
padding), no length grouping. Tokens/s counts non-padding training tokens over measured training seconds.
Prints both, their ratio, and both test F1 scores. Target: frugalray >= 1.3x at equal F1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from frugalray import TrainingSettings, TrialConfig, execute_trial, load_task
from frugalray.metrics import METRICS
from frugalray.models import load_model, load_tokenizer


def frugalray_run(epochs: int, seed: int) -> tuple[float, float]:
    settings = TrainingSettings(epochs=epochs, batch_size=8, learning_rate=5e-5)
    row = execute_trial(TrialConfig(task="demo_pos", model="minilm", training=settings, seed=seed))
    assert row["status"] == "ok", row["error"]
    return row["train_tokens_per_second"], row["f1"]


def trainer_run(epochs: int, seed: int) -> tuple[float, float]:
    """The HF example's recipe: tokenize, label the first sub-token, Trainer with the default collator."""
    from datasets import Dataset
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments, set_seed

    set_seed(seed)
    task = load_task("demo_pos")
    tokenizer = load_tokenizer("minilm")
    label2id = {label: i for i, label in enumerate(task.labels)}

    def encode(examples):
        batch = tokenizer([list(e.words) for e in examples], is_split_into_words=True, truncation=True)
        rows = []
        for i, example in enumerate(examples):
            labels, previous = [], None
            for word in batch.word_ids(i):
                labels.append(-100 if word is None or word == previous else label2id[example.labels[word]])
                previous = word
            rows.append({"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
                         "labels": labels})
        return Dataset.from_list(rows)

    train, test = encode(task.train), encode(task.test)
    model = load_model("minilm", "token", task.labels)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=8, per_device_eval_batch_size=8,
                                 learning_rate=5e-5, num_train_epochs=epochs, seed=seed, report_to=[],
                                 save_strategy="no", logging_strategy="no", disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=train,
                          data_collator=DataCollatorForTokenClassification(tokenizer))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        logits = trainer.predict(test).predictions
    tokens = sum(len(ids) for ids in train["input_ids"]) * epochs
    predicted, gold = [], []
    for row, example in zip(np.argmax(logits, -1), test):
        keep = [i for i, label in enumerate(example["labels"]) if label != -100]
        predicted.append([task.labels[row[i]] for i in keep])
        gold.append([task.labels[example["labels"][i]] for i in keep])
    return tokens / seconds, METRICS.get("pos")(gold, predicted)["f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternated; medians are shown")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    frugalray_run(1, seed=99), trainer_run(1, seed=99)  # warm-up: file cache, allocator, thread pools
    ours, theirs = [], []
    for repeat in range(args.repeats):  # alternate so that machine noise hits both alike
        ours.append(frugalray_run(args.epochs, seed=repeat))
        theirs.append(trainer_run(args.epochs, seed=repeat))
    ours_tps, theirs_tps = statistics.median(t for t, _ in ours), statistics.median(t for t, _ in theirs)
    ours_f1, theirs_f1 = statistics.median(f for _, f in ours), statistics.median(f for _, f in theirs)
    print(f"MiniLM on demo_pos, {args.epochs} epoch(s), batch 8, lr 5e-5, {args.repeats} run(s) each, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':22}{'train tokens/s':>16}{'test F1':>10}")
    print(f"{'HF Trainer (example)':22}{theirs_tps:16.1f}{theirs_f1:10.4f}")
    print(f"{'frugalray':22}{ours_tps:16.1f}{ours_f1:10.4f}")
    print(f"speed-up: {ours_tps / theirs_tps:.2f}x (target >= 1.3x); F1 difference: {ours_f1 - theirs_f1:+.4f}")


if __name__ == "__main__":
    main()
