"""The layer map of hidden-state distillation: each kept layer against the teacher layer of its own index
(``kept``, the default), or TinyBERT's uniform map, student layer i of n against teacher layer (i + 1) * L / n - 1.
The map is hashed, recorded and named only where it changes a run, so earlier results keep their hashes."""

import copy
import dataclasses

import pyarrow as pa
import pytest
import torch
from torch.nn import functional
from transformers import AutoModelForTokenClassification

from frugalray import FrugalrayError
from frugalray.config import RecoverySettings, TrialConfig
from frugalray.data.encoding import IGNORE
from frugalray.model.surgery import prune_layers
from frugalray.results.schema import SCHEMA
from frugalray.testing import tiny_config
from frugalray.training import recovery
from frugalray.training.columns import recovery_columns
from frugalray.training.identity import config_hash

HIDDEN = RecoverySettings(method="distill", beta=0.5)
UNIFORM = dataclasses.replace(HIDDEN, hidden_map="uniform")


@pytest.mark.parametrize("teacher_layers,kept,uniform", [
    (12, (0, 1, 2, 3, 4, 5), (1, 3, 5, 7, 9, 11)),
    (12, (0, 5, 6, 11), (2, 5, 8, 11)),
    (12, (3, 4, 5, 6, 7), (1, 3, 6, 8, 11)),  # 12 / 5 is not whole: 2.4, 4.8, 7.2, 9.6, 12 rounded down, minus 1
    (4, (0, 2), (1, 3)),
    (4, (2,), (3,)),
])
def test_uniform_maps_student_layer_i_of_n_to_teacher_layer_i_plus_1_times_l_over_n_minus_1(teacher_layers, kept,
                                                                                             uniform):
    assert UNIFORM.teacher_layers(kept, teacher_layers) == uniform
    assert HIDDEN.teacher_layers(kept, teacher_layers) == kept  # the kept map: the student's own original indices


def test_the_map_is_hashed_recorded_and_named_only_where_it_changes_a_run():
    assert "hidden_map" not in HIDDEN.identity() and UNIFORM.identity()["hidden_map"] == "uniform"
    assert (HIDDEN.label(), UNIFORM.label()) == ("pretrained+distill", "pretrained+distill(hidden_map=uniform)")
    no_hidden_loss = RecoverySettings(method="distill", hidden_map="uniform")  # beta 0: the map maps nothing
    assert no_hidden_loss.identity() == RecoverySettings(method="distill").identity()
    assert no_hidden_loss.label() == "pretrained+distill"
    assert [recovery_columns(r)["distill_hidden_map"] for r in (HIDDEN, UNIFORM, no_hidden_loss)] == [None, "uniform",
                                                                                                       None]
    assert SCHEMA.field("distill_hidden_map").type == pa.string()

    student = TrialConfig(task="demo_pos", strategy="first", n=2, recovery=HIDDEN)
    assert config_hash(student, (0, 1), "sha256:abc") == "f6518c831500ee46"  # its hash before the map existed
    assert config_hash(dataclasses.replace(student, recovery=UNIFORM), (0, 1), "sha256:abc") != "f6518c831500ee46"
    with pytest.raises(FrugalrayError, match="hidden_map must be one of 'kept', 'uniform', got 'tinybert'"):
        RecoverySettings.from_dict({"method": "distill", "hidden_map": "tinybert"})


def _cosine_loss(student_output, teacher_output, mask) -> torch.Tensor:
    return (1 - functional.cosine_similarity(student_output, teacher_output, dim=-1))[mask].mean()


def test_the_hidden_state_loss_compares_each_student_layer_with_the_teacher_layer_it_maps_to():
    """A student that keeps the teacher's first two layers computes exactly their outputs: under the kept map the
    hidden-state loss is zero; under the uniform map its layers 0 and 1 face the teacher's layers 1 and 3."""
    config = tiny_config("mpnet", 4)
    config.initializer_range = 0.5  # layers that change their input enough for the maps to differ clearly
    torch.manual_seed(0)
    teacher = AutoModelForTokenClassification.from_config(config).eval()
    student = prune_layers(copy.deepcopy(teacher), [0, 1]).eval()
    batch = {"input_ids": torch.tensor([[0, 7, 9, 12, 40, 2], [0, 33, 8, 2, 1, 1]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]),
             "labels": torch.tensor([[IGNORE, 1, 0, 1, 0, IGNORE], [IGNORE, 0, 1, IGNORE, IGNORE, IGNORE]])}
    with torch.no_grad():
        own = student(**batch)
        states = teacher(**batch, output_hidden_states=True).hidden_states
        losses = {}
        for settings in (RecoverySettings(method="distill", alpha=1.0, beta=1.0),
                         RecoverySettings(method="distill", alpha=1.0, beta=1.0, hidden_map="uniform")):
            objective = recovery.distillation(settings, list(own.logits), (0, 1), teacher)
            losses[settings.hidden_map] = float(objective(student, batch, [0, 1]))
    mask = batch["attention_mask"].bool()
    assert losses["kept"] == pytest.approx(float(own.loss), abs=1e-6)
    expected = (_cosine_loss(states[1], states[2], mask) + _cosine_loss(states[2], states[4], mask)) / 2
    assert losses["uniform"] == pytest.approx(float(own.loss) + float(expected), abs=1e-6)
    assert float(expected) > 0.1
