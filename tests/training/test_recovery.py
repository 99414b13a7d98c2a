"""Students of the fine-tuned full model: pruned after fine-tuning, distilled, partially fine-tuned."""

import dataclasses
from pathlib import Path

import pytest
import torch

from frugalray import FrugalrayError, ResultsStore
from frugalray.config import LoraSettings, RecoverySettings, TrainingSettings, TrialConfig
from frugalray.training import recovery
from frugalray.training.prepared import prepare_trial
from frugalray.training.trial import execute_trial

FAST = TrainingSettings(epochs=2, batch_size=2, learning_rate=1e-3, lora_learning_rate=1e-3, max_length=32)


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory, tiny_model, ner_task_file):
    """A store holding the teacher: the full model fine-tuned on the task, its weights kept (trained once)."""
    store = ResultsStore(tmp_path_factory.mktemp("teacher") / "r")
    teacher = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, training=FAST, save_model=True), store)
    assert teacher.status == "ok" and teacher.model_path
    return Path(store.root), teacher


@pytest.fixture
def taught(tmp_path, trained_teacher):
    """A copy of the teacher's store, for one test's students (and the logits they cache) alone."""
    import shutil

    template, teacher = trained_teacher
    shutil.copytree(template, tmp_path / "r")
    return ResultsStore(tmp_path / "r"), teacher


def _student(tiny_model, ner_task_file, **recovery_values) -> TrialConfig:
    return TrialConfig(task=ner_task_file, model=tiny_model, strategy="mask", layers=(0, 2), training=FAST,
                       recovery=RecoverySettings(**recovery_values))


@pytest.mark.slow
def test_a_distilled_student_names_its_teacher_and_caches_its_logits_for_the_next(taught, tiny_model,
                                                                                   ner_task_file):
    store, teacher = taught
    first = execute_trial(_student(tiny_model, ner_task_file, method="distill"), store)
    assert first.status == "ok", first.error
    assert (first.teacher_trial_id, first.teacher_seconds) == (teacher.trial_id, teacher.train_seconds)
    assert (first.recovery, first.init, first.distill_temperature, first.distill_alpha) == ("distill", "pretrained", 2.0, 0.5)
    assert first.teacher_logits_seconds > 0  # the first student computed the teacher's logits...
    cached = list(Path(store.root, "teachers").rglob("logits.safetensors"))
    assert len(cached) == 1
    other = dataclasses.replace(_student(tiny_model, ner_task_file, method="distill", init="finetuned"), layers=(1,))
    second = execute_trial(other, store)
    assert second.status == "ok", second.error
    assert second.teacher_logits_seconds is None  # ...the next one read them from the store


def test_a_finetuned_start_keeps_the_teachers_kept_layers_and_head(taught, tiny_model, ner_task_file):
    store, _ = taught
    prepared = prepare_trial(_student(tiny_model, ner_task_file, init="finetuned"))
    teacher = recovery.find_teacher(store, prepared)
    reference = recovery.load_teacher(teacher)
    student = recovery.student_model(prepared, teacher, "token", prepared.task.labels)
    assert student.config.frugalray_kept_layers == [0, 2]
    with torch.no_grad():
        for mine, theirs in zip(student.roberta.encoder.layer, [reference.roberta.encoder.layer[k] for k in (0, 2)]):
            assert torch.equal(mine.output.dense.weight, theirs.output.dense.weight)
        assert torch.equal(student.classifier.weight, reference.classifier.weight)
    pretrained = recovery.student_model(prepare_trial(_student(tiny_model, ner_task_file)), None, "token",
                                        prepared.task.labels)
    assert not torch.equal(pretrained.classifier.weight, reference.classifier.weight)  # a new head


def test_partial_fine_tuning_trains_only_the_head_and_the_last_layers(tiny_model, ner_task_file):
    prepared = prepare_trial(_student(tiny_model, ner_task_file, method="partial", partial_layers=1))
    model = recovery.student_model(prepared, None, "token", prepared.task.labels)
    recovery.freeze_all_but_last(model, 1)
    trainable = {name.split(".")[0] if "encoder" not in name else ".".join(name.split(".")[:4])
                 for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier", "roberta.encoder.layer.1"}  # layer 1 of the pruned model: original layer 2


def test_partial_trains_and_records_k(tmp_path, tiny_model, ner_task_file):
    row = execute_trial(_student(tiny_model, ner_task_file, method="partial", partial_layers=1), ResultsStore(tmp_path))
    assert row.status == "ok", row.error
    assert (row.recovery, row.partial_layers, row.teacher_trial_id) == ("partial", 1, None)
    assert row.trainable_params < row.total_params / 2


def test_distillation_is_the_label_loss_at_alpha_one_and_zero_kl_against_itself(tiny_model, ner_task_file):
    from frugalray.data.encoding import collate, encode_examples
    from frugalray.model.loading import load_model, load_tokenizer

    prepared = prepare_trial(_student(tiny_model, ner_task_file))
    tokenizer = load_tokenizer(tiny_model)
    data = encode_examples(prepared.task.train, tokenizer, {l: i for i, l in enumerate(prepared.task.labels)}, 32)
    model = load_model(tiny_model, "token", prepared.task.labels).eval()
    batch = collate(data[:2], tokenizer.pad_token_id)
    own = recovery._logits(model, data[:2], tokenizer.pad_token_id, torch.device("cpu"), 8)
    with torch.no_grad():
        ce = model(**batch).loss
        only_labels = recovery.distillation(RecoverySettings(method="distill", alpha=1.0), own)(model, batch, [0, 1])
        only_kl = recovery.distillation(RecoverySettings(method="distill", alpha=0.0), own)(model, batch, [0, 1])
    assert float(only_labels) == pytest.approx(float(ce))
    assert float(only_kl) == pytest.approx(0.0, abs=1e-6)


def test_a_student_without_its_teacher_is_a_clear_error(tmp_path, tiny_model, ner_task_file):
    with pytest.raises(FrugalrayError, match=r"needs its teacher, the full model fine-tuned on task 'tiny_ner'.*"
                                             r"is not in the results.*--strategy full --seed 0 --save-model"):
        execute_trial(_student(tiny_model, ner_task_file, method="distill"), ResultsStore(tmp_path),
                      raise_input_errors=True)


def test_a_teacher_whose_weights_are_gone_is_a_clear_error_and_an_older_copy_still_teaches(taught, tiny_model,
                                                                                            ner_task_file):
    import shutil

    store, teacher = taught
    prepared = prepare_trial(_student(tiny_model, ner_task_file, init="finetuned"))
    shutil.rmtree(store.path(teacher.model_path))
    with pytest.raises(FrugalrayError, match=r"needs its teacher.*has no saved weights left in the results"):
        recovery.find_teacher(store, prepared)
    again = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, training=FAST, save_model=True), store)
    assert recovery.find_teacher(store, prepared).trial_id == again.trial_id
    third = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, training=FAST, save_model=True), store)
    shutil.rmtree(store.path(third.model_path))  # the newest copy lost: the one before it teaches
    assert recovery.find_teacher(store, prepared).trial_id == again.trial_id != third.trial_id


@pytest.mark.parametrize("values,message", [
    (dict(lora=LoraSettings(), recovery=RecoverySettings(method="partial")), "'partial' trains whole layers"),
    (dict(strategy="full", recovery=RecoverySettings(method="distill")), "the full model itself has nothing"),
    (dict(recovery={"method": "distil"}), "method must be one of 'finetune', 'distill', 'partial', got 'distil'"),
    (dict(recovery={"init": "finetuned", "teacher_patience": 2}), "teacher_patience=2 needs teacher_epochs"),
])
def test_recoveries_that_do_not_combine_are_refused(values, message):
    with pytest.raises(FrugalrayError, match=message):
        TrialConfig(**(dict(task="demo_pos", strategy="first", n=2) | values))


def test_recovery_changes_the_configuration_hash_and_the_study_recovery_does_not(tiny_model, ner_task_file):
    plain = prepare_trial(_student(tiny_model, ner_task_file)).config_hash
    explicit = prepare_trial(_student(tiny_model, ner_task_file, init="pretrained", method="finetune")).config_hash
    assert plain == explicit
    hashes = {prepare_trial(_student(tiny_model, ner_task_file, **values)).config_hash for values in (
        {}, {"method": "distill"}, {"method": "distill", "temperature": 4.0}, {"init": "finetuned"},
        {"method": "partial"}, {"method": "partial", "partial_layers": 2})}
    assert len(hashes) == 6
    # settings of another method do not change a run
    assert prepare_trial(_student(tiny_model, ner_task_file, temperature=9.0)).config_hash == plain
    # how the teacher trained changes a student of the teacher, and nothing else
    assert prepare_trial(_student(tiny_model, ner_task_file, teacher_epochs=9)).config_hash == plain
    taught = prepare_trial(_student(tiny_model, ner_task_file, init="finetuned")).config_hash
    assert prepare_trial(_student(tiny_model, ner_task_file, init="finetuned", teacher_epochs=9)).config_hash != taught
