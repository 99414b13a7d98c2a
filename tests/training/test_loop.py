"""The training loop reproduces transformers.Trainer step by step on the same batches (the parity test)."""

import dataclasses
import random

import pytest
import torch

from frugalray import FrugalrayError, load_task
from frugalray.config import TRAINER_RECIPE, TrainingSettings
from frugalray.data.encoding import encode_examples
from frugalray.testing import tiny_config, tiny_tokenizer
from frugalray.training.loop import decay_parameter_names, train

# A recipe where every part matters: clipping bites, the schedule warms up then decays, decay is on; in the
# Trainer's arithmetic (fp32 on CPUs), which the loop must reproduce.
RECIPE = TrainingSettings(epochs=3, batch_size=8, learning_rate=3e-3, max_grad_norm=0.5, warmup_ratio=0.2,
                          weight_decay=0.05, adam_beta1=0.85, adam_beta2=0.99, adam_epsilon=1e-7, **TRAINER_RECIPE)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny token classifier without dropout (so both trainers see the same function), its data and a
    fixed batch order per epoch."""
    from transformers import AutoModelForTokenClassification

    task = load_task("demo_ner")
    tokenizer = tiny_tokenizer(w for e in task.train for w in e.words)
    config = tiny_config("bert", num_layers=2, vocab_size=len(tokenizer))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.num_labels = len(task.labels)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("parity_model")
    AutoModelForTokenClassification.from_config(config).save_pretrained(folder)
    encoded = encode_examples(task.train[:64], tokenizer, {label: i for i, label in enumerate(task.labels)}, 32)
    rng = random.Random(0)
    orders = []
    for _ in range(RECIPE.epochs):
        order = list(range(len(encoded)))
        rng.shuffle(order)
        orders.append(order)
    return folder, tokenizer, encoded, orders


def _load(folder):
    from transformers import AutoModelForTokenClassification

    return AutoModelForTokenClassification.from_pretrained(folder)


def _trainer_run(setup, recipe: TrainingSettings):
    """The reference: transformers.Trainer with these settings, replaying the same batch order."""
    from transformers import DataCollatorForTokenClassification, Trainer, TrainingArguments

    folder, tokenizer, encoded, orders = setup

    class Replay(torch.utils.data.Sampler):
        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return len(encoded)

        def __iter__(self):
            order = orders[min(self.epoch, len(orders) - 1)]
            self.epoch += 1
            return iter(order)

    class RecordingTrainer(Trainer):
        losses: list[float] = []

        def _get_train_sampler(self, train_dataset=None):
            return Replay()

        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            self.losses.append(float(loss))
            return loss

    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e), "labels": e.labels} for e in encoded]
    model = _load(folder)
    args = TrainingArguments(
        output_dir=str(folder / "trainer"), per_device_train_batch_size=recipe.batch_size,
        num_train_epochs=recipe.epochs, learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay,
        warmup_steps=recipe.warmup_ratio, max_grad_norm=recipe.max_grad_norm, adam_beta1=recipe.adam_beta1,
        adam_beta2=recipe.adam_beta2, adam_epsilon=recipe.adam_epsilon, lr_scheduler_type=recipe.lr_schedule,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True, seed=0,
    )
    trainer = RecordingTrainer(model=model, args=args, train_dataset=rows,
                               data_collator=DataCollatorForTokenClassification(tokenizer))
    trainer.losses = []
    trainer.train()
    return trainer.losses, model


def _frugalray_run(setup, recipe: TrainingSettings):
    folder, tokenizer, encoded, orders = setup
    model = _load(folder)
    size = recipe.batch_size
    stats = train(model, encoded, recipe, recipe.learning_rate, tokenizer.pad_token_id, torch.device("cpu"), seed=0,
                  batches=lambda epoch: [orders[epoch][i : i + size] for i in range(0, len(encoded), size)])
    return stats.step_losses, model


def _max_weight_difference(a, b) -> float:
    other = dict(b.named_parameters())
    with torch.no_grad():
        return max(float((p - other[n]).abs().max()) for n, p in a.named_parameters())


@pytest.fixture(scope="module")
def reference(setup):
    return _trainer_run(setup, RECIPE)


@pytest.mark.slow
def test_losses_and_final_weights_equal_the_trainers(setup, reference):
    theirs, their_model = reference
    ours, our_model = _frugalray_run(setup, RECIPE)
    assert len(ours) == len(theirs) >= 20
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)
    assert _max_weight_difference(our_model, their_model) < 1e-5
    assert ours[-1] < ours[0] * 0.8  # it learnt something: the comparison is not between two frozen models


@pytest.mark.parametrize("drift", [
    dict(max_grad_norm=0.0),  # clipping off
    dict(lr_schedule="constant"),  # schedule
    dict(warmup_ratio=0.0),
    dict(adam_beta2=0.999),  # optimizer settings
    dict(adam_epsilon=1e-5),
    dict(weight_decay=0.0),
])
@pytest.mark.slow
def test_the_comparison_sees_any_drift_of_the_recipe(setup, reference, drift):
    theirs, their_model = reference
    ours, our_model = _frugalray_run(setup, dataclasses.replace(RECIPE, **drift))
    same_losses = ours == pytest.approx(theirs, rel=1e-5, abs=1e-5)
    assert not same_losses or _max_weight_difference(our_model, their_model) > 1e-5


def test_decay_spares_biases_and_layer_norms(setup):
    model = _load(setup[0])
    decay = decay_parameter_names(model)
    names = [n for n, _ in model.named_parameters()]
    assert {n for n in names if n.endswith("query.weight")} <= decay
    assert not {n for n in names if n.endswith(".bias") or "LayerNorm" in n} & decay


def test_a_diverging_loss_fails_with_the_step(setup):
    _, tokenizer, encoded, _ = setup
    model = _load(setup[0])
    recipe = dataclasses.replace(RECIPE, learning_rate=1e6, max_grad_norm=0.0, warmup_ratio=0.0)
    with pytest.raises(FrugalrayError, match=r"loss diverged at step \d+"):
        train(model, encoded, recipe, recipe.learning_rate, tokenizer.pad_token_id, torch.device("cpu"), seed=0)
