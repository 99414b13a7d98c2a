"""Training on the task's own vocabulary leaves the trained model as training the whole embedding does."""

import dataclasses

import pytest
import torch

from frugalray import LoraSettings, TrainingSettings, TrialConfig, prepare_trial
from frugalray.testing import conll_words, tiny_model_dir
from frugalray.training.trial import run_trial
from frugalray.training.vocab import untouched_decay

# decay on (rows outside the task shrink), warm-up then decay of the rate, clipping that bites; fp32 and the whole
# embedding unless a test trims it
RECIPE = TrainingSettings(epochs=2, batch_size=4, learning_rate=2e-3, max_length=32, weight_decay=0.1,
                          warmup_ratio=0.2, max_grad_norm=0.5, energy=False, dtype="fp32", trim_vocabulary=False)
UNUSED = [f"mot{i}" for i in range(300)]  # in the tokenizer, never in the task


@pytest.fixture(scope="module", params=["bert", "camembert", "mpnet"])
def roomy_model(request, tmp_path_factory, data_dir):
    """A tiny encoder whose vocabulary is mostly words the task never uses (as a real one's is). CamemBERT and
    MPNet number positions from the ids (``input_ids != padding_idx``; the tiny MPNet's padding id is 1, as
    all-mpnet-base-v2's): a remapped padding id would shift every position."""
    words = conll_words(*data_dir.glob("ner_*.conll")) | set(UNUSED)
    return str(tiny_model_dir(tmp_path_factory.mktemp("roomy"), words, request.param, num_layers=2))


def _trained(model, task, folder, **training):
    from frugalray.model.saved import load_trained

    config = TrialConfig(task=task, model=model, strategy="first", n=1, training=dataclasses.replace(RECIPE, **training))
    row = run_trial(prepare_trial(config), device="cpu", save_to=str(folder))
    trained, _ = load_trained(str(folder))
    return row, trained.state_dict()


@pytest.mark.slow
def test_the_trimmed_vocabulary_trains_the_same_model_with_fewer_rows(tmp_path, roomy_model, ner_task_file):
    whole_row, whole = _trained(roomy_model, ner_task_file, tmp_path / "whole")
    trim_row, trim = _trained(roomy_model, ner_task_file, tmp_path / "trim", trim_vocabulary=True)
    name = next(n for n in whole if n.endswith("embeddings.word_embeddings.weight"))
    vocabulary = whole[name].shape[0]
    assert whole_row["embedding_rows_trained"] == vocabulary
    assert 0 < trim_row["embedding_rows_trained"] < vocabulary - len(UNUSED)  # it really trained fewer rows
    assert trim.keys() == whole.keys()
    for name, tensor in whole.items():  # every weight, the rows outside the task (decayed) included
        torch.testing.assert_close(trim[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert trim_row["f1"] == pytest.approx(whole_row["f1"], abs=1e-9)
    assert trim_row["dev_f1"] == pytest.approx(whole_row["dev_f1"], abs=1e-9)


@pytest.mark.slow
def test_the_comparison_sees_rows_that_missed_their_decay(tmp_path, roomy_model, ner_task_file, monkeypatch):
    import frugalray.training.vocab

    _, whole = _trained(roomy_model, ner_task_file, tmp_path / "whole")
    monkeypatch.setattr(frugalray.training.vocab, "untouched_decay", lambda *args: 1.0)
    _, trim = _trained(roomy_model, ner_task_file, tmp_path / "trim", trim_vocabulary=True)
    name = next(n for n in whole if n.endswith("embeddings.word_embeddings.weight"))
    with pytest.raises(AssertionError):
        torch.testing.assert_close(trim[name], whole[name], rtol=1e-5, atol=1e-6)


def test_frozen_embeddings_are_not_trimmed(roomy_model, ner_task_file):
    config = TrialConfig(task=ner_task_file, model=roomy_model, strategy="first", n=1, lora=LoraSettings(),
                         training=dataclasses.replace(RECIPE, trim_vocabulary=True))
    row = run_trial(prepare_trial(config), device="cpu")
    assert row["embedding_rows_trained"] == 0 and row["f1"] is not None


def test_untouched_decay_is_what_adamw_does_to_a_row_without_gradient():
    settings = dataclasses.replace(RECIPE, lr_schedule="cosine")
    weight = torch.nn.Parameter(torch.ones(2, 3))
    optimizer = torch.optim.AdamW([weight], lr=1e-2, weight_decay=settings.weight_decay)
    from frugalray.training.loop import make_scheduler

    scheduler = make_scheduler(optimizer, settings, 20)
    for _ in range(15):
        weight.grad = torch.zeros_like(weight)
        weight.grad[0] = torch.randn(3)
        optimizer.step()
        scheduler.step()
    assert weight[1].tolist() == pytest.approx([untouched_decay(settings, 1e-2, 15, 20)] * 3, rel=1e-6)
    assert untouched_decay(dataclasses.replace(settings, weight_decay=0.0), 1e-2, 15, 20) == 1.0


def test_hashes_of_rows_stored_before_the_option_hold():
    assert "trim_vocabulary" not in TrainingSettings(trim_vocabulary=False).identity()
    assert TrainingSettings().identity()["trim_vocabulary"] is True  # the default: hashed


def test_the_default_recipe_never_shares_a_hash_with_the_trainers():
    from frugalray.config import TRAINER_RECIPE

    default, trainer = TrainingSettings(), TrainingSettings(**TRAINER_RECIPE)
    assert (default.dtype, default.trim_vocabulary) == ("native-bf16", True)
    assert (trainer.dtype, trainer.trim_vocabulary) == ("auto", False)
    assert default.identity() != trainer.identity()
    assert default.identity() | TRAINER_RECIPE == trainer.identity() | {"trim_vocabulary": False}


def test_a_row_recorded_before_the_option_reads_back_untrimmed_and_keeps_its_hash():
    from dataclasses import asdict

    recorded = {k: v for k, v in asdict(TrainingSettings(dtype="auto")).items() if k != "trim_vocabulary"}
    settings = TrainingSettings.from_record(recorded)
    assert settings.trim_vocabulary is False and settings.dtype == "auto"
    assert "trim_vocabulary" not in settings.identity()


def test_the_padding_id_keeps_its_index_in_the_trimmed_embedding():
    from types import SimpleNamespace

    from frugalray.data.encoding import Encoded
    from frugalray.training.vocab import keep_rows

    split = [Encoded([0, 7, 9, 2], []), Encoded([0, 3, 2], [])]
    for pad in (0, 1, 4, 5):
        rows = keep_rows(SimpleNamespace(train=split, dev=[], test=split, pad_id=pad))
        assert rows[pad] == pad and sorted(rows) == sorted({0, 2, 3, 7, 9, pad})
    assert keep_rows(SimpleNamespace(train=split, dev=[], test=[], pad_id=50)).index(50) != 50  # too few rows
