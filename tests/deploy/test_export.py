import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from frugalray import FrugalrayError, LoraSettings, ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.cli import main
from frugalray.deploy.export import export_trial
from frugalray.model.saved import load_trained
from frugalray.model.loading import MODELS
from frugalray.results.schema import TrialResult

FAST = TrainingSettings(epochs=1, batch_size=2, max_length=32, learning_rate=1e-3, lora_learning_rate=1e-2)


def _predict(model, tokenizer, sentences):
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("lora", [False, True], ids=["full-fine-tuning", "lora-merged"])
@pytest.mark.slow
def test_export_round_trip_gives_the_trained_models_predictions(tmp_path, tiny_model, ner_task_file, lora):
    store = ResultsStore(tmp_path / "results")
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="mask", layers=(0, 2),
                                    lora=LoraSettings() if lora else None, training=FAST, save_model=True), store)
    assert row["status"] == "ok", row["error"]
    assert row["model_path"] == f"models/{row['trial_id']}"
    saved = tmp_path / "results" / row["model_path"]
    if lora:  # LoRA trials keep the adapter and the head, not a copy of the encoder
        assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    assert not list((tmp_path / "results" / ".staging").iterdir())  # the staging folder was moved into place

    assert main(["export", store.location, "--trial", row["trial_id"][:20], "--out", str(tmp_path / "out")]) == 0
    exported = AutoModelForTokenClassification.from_pretrained(tmp_path / "out").eval()
    assert exported.config.num_hidden_layers == 2 and exported.config.frugalray_kept_layers == [0, 2]
    assert len(exported.roberta.encoder.layer) == 2
    assert not any("lora" in name for name, _ in exported.named_parameters())
    assert json.loads((tmp_path / "out" / "frugalray_trial.json").read_text())["lora"] is lora

    trained, _ = load_trained(saved)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    sentences = ["Jean habite à Paris .", "Marie travaille chez Renault à Lyon depuis 2010 ."]
    expected, got = _predict(trained, tokenizer, sentences), _predict(exported, tokenizer, sentences)
    assert torch.allclose(expected, got, atol=1e-5)
    assert torch.equal(expected.argmax(-1), got.argmax(-1))
    if lora:  # merging changed the encoder: the export is not the untrained base
        base = AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=exported.num_labels)
        assert not torch.allclose(base.roberta.encoder.layer[2].attention.self.query.weight,
                                  exported.roberta.encoder.layer[1].attention.self.query.weight)


def test_export_refuses_failed_trials_and_trials_without_weights(tmp_path, tiny_model, ner_task_file):
    store = ResultsStore(tmp_path / "results")
    plain = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=1, training=FAST), store)
    with pytest.raises(FrugalrayError, match=f"Trial {plain['trial_id']} has no saved weights; run it again with --save-model"):
        export_trial(store, plain["trial_id"], tmp_path / "out")
    store.append({"trial_id": "broken-1", "config_hash": "broken", "status": "failed", "error": "RuntimeError: CUDA out of memory"})
    with pytest.raises(FrugalrayError, match="Trial broken-1 failed \\(RuntimeError: CUDA out of memory\\)"):
        export_trial(store, "broken", tmp_path / "out")
    with pytest.raises(FrugalrayError, match="No trial 'nope'"):
        export_trial(store, "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model, ner_task_file):
    """A store holding one trial with saved weights: (store, trial_id)."""
    store = ResultsStore(tmp_path_factory.mktemp("results"))
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=2, training=FAST,
                                    save_model=True), store)
    assert row["status"] == "ok", row["error"]
    return store, row["trial_id"]


def test_export_writes_only_where_it_may_and_keeps_other_files(tmp_path, saved, capsys):
    store, trial = saved
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FrugalrayError, match="is not empty and is not an earlier frugalray export .*--force"):
        export_trial(store, trial, out)
    assert main(["export", store.location, "--trial", trial, "--out", str(out)]) == 2
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not list(tmp_path.glob(".out.*"))

    assert main(["export", store.location, "--trial", trial, "--out", str(out), "--force"]) == 0
    assert (out / "config.json").is_file() and (out / "notes.txt").read_text() == "mine"
    manifest = json.loads((out / "frugalray_trial.json").read_text())
    manifest["exported_files"].append("model-00002-of-00002.safetensors")  # as a larger, sharded export left it
    (out / "frugalray_trial.json").write_text(json.dumps(manifest))
    (out / "model-00002-of-00002.safetensors").write_bytes(b"old shard")
    export_trial(store, trial, out)  # an earlier export: replaced without --force
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "frugalray_trial.json", "model.safetensors",
                                                     "notes.txt", "tokenizer.json", "tokenizer_config.json"]
    assert AutoModelForTokenClassification.from_pretrained(out).config.frugalray_kept_layers == [0, 1]

    (tmp_path / "file").write_text("x")
    with pytest.raises(FrugalrayError, match="Export folder '.*file' is a file; give a folder"):
        export_trial(store, trial, tmp_path / "file")


@pytest.mark.parametrize("model_path", ["../elsewhere", "/tmp/elsewhere", "models/../../elsewhere", "models/link"])
def test_a_model_path_outside_the_store_is_refused(tmp_path, saved, model_path):
    store, _ = saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    link = Path(store.root) / "models" / "link"
    if model_path == "models/link" and not link.exists():
        link.symlink_to(elsewhere)
    trial_id = f"outside-{len(store.files())}"
    store.append({"trial_id": trial_id, "config_hash": "outside", "status": "ok", "model_path": model_path})
    with pytest.raises(FrugalrayError, match=f"Trial {trial_id}: .*{re.escape(repr(model_path))} is outside the "
                                             f"results store"):
        export_trial(store, trial_id, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_saved_and_exported_files_get_the_permissions_the_umask_gives(tmp_path, tiny_model, ner_task_file):
    mask = os.umask(0o027)  # not the usual 022: the permissions must follow it
    try:
        store = ResultsStore(tmp_path / "results")
        row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=1, training=FAST,
                                        save_model=True), store)
        export_trial(store, row["trial_id"], tmp_path / "out")
    finally:
        os.umask(mask)
    for folder in (tmp_path / "out", Path(store.root) / row["model_path"]):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}
        assert modes == {folder.name: 0o750} | {p.name: 0o640 for p in folder.iterdir()}


@pytest.mark.parametrize("how", ["alias", "relative folder"])
@pytest.mark.slow
def test_saved_and_exported_trials_name_the_base_model_as_the_trial_did(tmp_path, tiny_model, ner_task_file,
                                                                        monkeypatch, how):
    if how == "alias":
        monkeypatch.setitem(MODELS._items, "tiny-alias", lambda: tiny_model)
        name = "tiny-alias"
    else:
        monkeypatch.chdir(Path(tiny_model).parent)
        name = Path(tiny_model).name
    store = ResultsStore(tmp_path / "results")
    row = execute_trial(TrialConfig(task=ner_task_file, model=name, strategy="first", n=2, lora=LoraSettings(),
                                    training=FAST, save_model=True), store)
    assert row["status"] == "ok", row["error"]
    saved = Path(store.root) / row["model_path"]
    assert json.loads((saved / "adapter_config.json").read_text())["base_model_name_or_path"] == name
    export_trial(store, row["trial_id"], tmp_path / "out")
    assert json.loads((tmp_path / "out" / "frugalray_trial.json").read_text())["base_model"] == name
    for path in [*saved.iterdir(), *(tmp_path / "out").iterdir()]:
        if path.suffix in (".json", ".md"):
            assert tiny_model not in path.read_text(), path  # this machine's path to the model appears nowhere


def _stored(store, trial_id):
    return store.query(sql="SELECT * FROM trials WHERE trial_id = $1", params=[trial_id]).to_pylist()[0]


def test_an_int8_export_is_re_evaluated_and_stored_beside_its_source(tmp_path, saved, capsys, activity):
    from frugalray.data.encoding import encode_examples
    from frugalray.data.tasks import load_task
    from frugalray.deploy.variants import load_variant
    from frugalray.results.views import compute_view
    from frugalray.training.loop import evaluate

    store, trial = saved
    source = _stored(store, trial)
    earlier = {r["trial_id"] for r in store.table().to_pylist()}  # the module's other tests export it too
    assert main(["export", store.location, "--trial", trial, "--out", str(tmp_path / "int8"), "--int8"]) == 0
    assert f"int8: test F1 {source['f1']:.4f} -> " in capsys.readouterr().out
    [row] = [r for r in store.query(sql="SELECT * FROM trials WHERE source_trial_id = $1", params=[trial]).to_pylist()
             if r["trial_id"] not in earlier]
    assert (row["variant"], row["stage"], row["status"]) == ("int8", "export", "ok")
    assert row["config_hash"] != source["config_hash"] and row["kept_layers"] == source["kept_layers"]
    assert _stored(store, trial)["f1"] == source["f1"] and source["variant"] == "fp32"  # the source keeps its own
    # quality is measured, not assumed: the row holds what the int8 model scores on test and dev
    model, manifest = load_variant(tmp_path / "int8")
    assert manifest["variant"] == "int8" and type(model.roberta.encoder.layer[0].attention.self.query).__module__.startswith("torch.ao")
    task = load_task(json.loads(source["config_json"])["task"])
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "int8")
    labels = {label: i for i, label in enumerate(task.labels)}
    for examples, column in ((task.test, "f1"), (task.dev, "dev_f1")):
        data = encode_examples(examples, tokenizer, labels, 32)
        expected = evaluate(model, data, examples, task.labels, task.spec.metric, 8, tokenizer.pad_token_id,
                            torch.device("cpu"), "fp32")
        assert row[column] == pytest.approx(expected["f1"])
    assert row["model_mib"] < source["model_mib"]  # packed int8 weights
    assert row["train_seconds"] == source["train_seconds"]  # the cost of the model is its source's training
    assert row["latency_isolated"] is True and row["latency_ms"] > 0 and row["device"] == "cpu"
    assert 0 < row["eval_seconds"] <= row["total_seconds"] < 600  # seconds of this evaluation, not a clock reading
    assert re.fullmatch(r"[0-9a-f]{16}", row["config_hash"])  # as long as every trial's
    strategies = compute_view(store, "strategies", where=[f"task={source['task']}"]).table
    assert set(strategies.column("strategy").to_pylist()) == {"first_2"} and strategies.num_rows == 1  # fp32 only


def test_an_exports_latency_is_not_isolated_while_another_frugalray_process_runs(tmp_path, saved,
                                                                               another_frugalray_process):
    store, trial = saved
    row = export_trial(store, trial, tmp_path / "int8", int8=True, int8_fp32="none")["variant_row"]
    assert row["latency_ms"] > 0 and row["latency_isolated"] is False


@pytest.mark.parametrize("int8", [False, True], ids=["onnx", "onnx-int8"])
@pytest.mark.slow
def test_an_onnx_export_is_run_by_onnx_runtime_and_re_evaluated(tmp_path, saved, int8):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from frugalray.deploy.onnx import OnnxModel
    from frugalray.deploy.variants import load_variant

    store, trial = saved
    out = tmp_path / "onnx"
    done = export_trial(store, trial, out, onnx=True, int8=int8)
    graph = out / ("model.int8.onnx" if int8 else "model.onnx")
    assert graph.is_file() and not (out / ("model.onnx" if int8 else "model.int8.onnx")).exists()
    assert graph.name in json.loads((out / "frugalray_trial.json").read_text())["exported_files"]
    model, _ = load_variant(out)
    assert isinstance(model, OnnxModel)
    row = done["variant_row"]
    assert row["variant"] == ("onnx-int8" if int8 else "onnx") and row["source_trial_id"] == done["trial_id"]
    assert row == TrialResult.from_row(_stored(store, row["trial_id"]))
    if not int8:  # the same logits, so the same predictions and the same F1 as the trained model
        torch_model = AutoModelForTokenClassification.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        batch = tokenizer(["Jean habite à Paris .", "Marie travaille chez Renault à Lyon depuis 2010 ."],
                          return_tensors="pt", padding=True)
        with torch.no_grad():
            expected = torch_model(**batch).logits
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert torch.allclose(expected, got, atol=1e-4)
        assert row["f1"] == _stored(store, trial)["f1"] and row["dev_f1"] == _stored(store, trial)["dev_f1"]


def test_an_export_describes_its_own_run_and_its_sources_training(tmp_path, saved):
    """Of its source the row keeps what the model is and cost (training seconds); of its own run, where it ran
    (the CPU) and that it kept no weights of its own."""
    store, trial = saved
    source = _stored(store, trial)
    # a copy of the source, trained on a GPU, whose file sorts first: the export must read the trial it is asked
    store.append(source | {"trial_id": "0-trained-on-gpu", "config_hash": "0" * 16, "device": "cuda:0",
                           "train_seconds": 12345.0, "total_seconds": 12400.0})
    mine = export_trial(store, trial, tmp_path / "a", int8=True, int8_fp32="none")["variant_row"]
    theirs = export_trial(store, "0-trained-on-gpu", tmp_path / "b", int8=True, int8_fp32="none")["variant_row"]
    assert (mine["train_seconds"], theirs["train_seconds"]) == (source["train_seconds"], 12345.0)
    assert mine["source_trial_id"] == trial and theirs["source_trial_id"] == "0-trained-on-gpu"
    assert (theirs["device"], theirs["model_path"]) == ("cpu", None)
    assert 0 < theirs["eval_seconds"] <= theirs["total_seconds"] < 600  # its own seconds, not its source's


def test_an_export_whose_labels_the_task_no_longer_has_names_it(tmp_path, saved):
    from frugalray.deploy.variants import evaluate_variant
    from frugalray.model.saved import MANIFEST

    store, trial = saved
    out = tmp_path / "int8"
    export_trial(store, trial, out, int8=True, int8_fp32="none")
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps(manifest | {"labels": ["O", "B-X"]}))
    with pytest.raises(FrugalrayError, match=rf"Export '{re.escape(str(out))}' predicts labels \['O', 'B-X'\] but "
                                             rf"task '.*' now has .*its data changed since trial {trial} ran"):
        evaluate_variant(store, trial, out)


def test_a_variants_data_is_cut_to_the_trials_length_and_padded_with_its_tokenizers_pad(tmp_path, tiny_model,
                                                                                         ner_task_file):
    import shutil

    from frugalray.data.tasks import load_task
    from frugalray.deploy.variants import _Data

    fixtures = Path(ner_task_file).parent
    for name in ("ner_task.json", "ner_train.conll", "ner_dev.conll", "ner_test.conll"):
        shutil.copy(fixtures / name, tmp_path / name)
    with open(tmp_path / "ner_dev.conll", "a") as dev:  # a dev sentence of 12 words, longer than 8 tokens
        dev.write("\n" + "".join(f"{word} O\n" for word in ["Paul", "habite", "à", "Paris", "."] * 2 + ["à", "."]))
    task_file = str(tmp_path / "ner_task.json")
    task, tokenizer = load_task(task_file), AutoTokenizer.from_pretrained(tiny_model)
    config = TrialConfig(task=task_file, model=tiny_model, training=TrainingSettings(max_length=8))
    assert max(len(e.input_ids) for e in _Data(task, tokenizer, config).dev) == 8
    tokenizer.pad_token = tokenizer.eos_token  # a pad other than id 0 is the one used
    assert _Data(task, tokenizer, config).pad_id == tokenizer.eos_token_id != 0
    tokenizer.pad_token = None  # a tokenizer without a pad token pads with id 0
    assert tokenizer.pad_token_id is None and _Data(task, tokenizer, config).pad_id == 0


def test_an_export_is_metered_on_the_cpu_for_its_trials_country(tmp_path, saved, monkeypatch):
    import contextlib

    from frugalray.training import energy

    store, trial = saved
    config = json.loads(_stored(store, trial)["config_json"])
    asked = []
    real = energy.measured_energy

    @contextlib.contextmanager
    def spy(*args, **kwargs):
        asked.append((args, kwargs))
        with real(*args, **kwargs) as reading:
            yield reading

    monkeypatch.setattr(energy, "measured_energy", spy)
    export_trial(store, trial, tmp_path / "int8", int8=True, int8_fp32="none")
    training = TrainingSettings(**config["training"])
    assert asked == [((training.energy, training.energy_country, "cpu"), {})]


def test_an_fp32_variants_size_is_its_parameters(tiny_model):
    from frugalray.deploy.variants import size_mib
    from frugalray.model.surgery import parameter_mib

    model = AutoModelForTokenClassification.from_pretrained(tiny_model, num_labels=3)
    assert size_mib(model, "fp32") == parameter_mib(model) > 0


@pytest.mark.slow
def test_an_onnx_variant_loads_with_the_threads_asked(tmp_path, saved):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from frugalray.deploy.variants import load_variant

    store, trial = saved
    export_trial(store, trial, tmp_path / "onnx", onnx=True)
    for threads in (1, 2):
        model, _ = load_variant(tmp_path / "onnx", threads=threads)
        assert model.session.get_session_options().intra_op_num_threads == threads


def test_onnx_export_without_the_extra_names_it_and_writes_nothing(tmp_path, saved, monkeypatch, capsys):
    import importlib.util

    store, trial = saved
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    assert main(["export", store.location, "--trial", trial, "--out", str(tmp_path / "out"), "--onnx"]) == 2
    assert "needs the optional 'onnx' extra (onnxscript not installed): pip install 'frugalray[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_export_check_compares_with_the_unmerged_trained_model_on_the_tasks_test_examples(
        tmp_path, tiny_model, ner_task_file, monkeypatch):
    from frugalray.deploy import export
    from frugalray.model import lora

    store = ResultsStore(tmp_path / "results")
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="first", n=2, lora=LoraSettings(),
                                    training=FAST, save_model=True), store)
    assert row["status"] == "ok", row["error"]
    compared = []
    real_logits = export._logits
    monkeypatch.setattr(export, "_logits", lambda model, inputs: compared.append((model, inputs)) or
                        real_logits(model, inputs))
    done = export_trial(store, row["trial_id"], tmp_path / "good")
    assert done["max_logit_difference"] < 1e-4
    (trained, inputs), (loaded, _) = compared
    assert type(trained).__name__ == "PeftModel"  # as the trial evaluated it: the adapter not merged
    assert type(loaded).__name__ == "CamembertForTokenClassification"  # the export, loaded back
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first_test_sentence = tokenizer(["Marie travaille chez Airbus à Lyon ."]).input_ids[0]  # ner_test.conll
    assert inputs[0]["input_ids"][0, :len(first_test_sentence)].tolist() == first_test_sentence

    real_merged = lora.merged

    def tampered(model):  # a merge that gets the LoRA-updated weights wrong
        model = real_merged(model)
        with torch.no_grad():
            model.roberta.encoder.layer[1].attention.self.value.weight.mul_(1.5)
        return model

    monkeypatch.setattr(lora, "merged", tampered)
    with pytest.raises(FrugalrayError, match=f"Exported model of {row['trial_id']} differs from the trained one "
                                             f"\\(max logit difference .*\\); nothing was written"):
        export_trial(store, row["trial_id"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_int8_groups_kept_fp32_are_chosen_greedily_on_dev_and_stop_once_within_tolerance():
    """The greedy choice, on a model whose dev score is known from which of its Linear layers are int8."""
    from frugalray.deploy.int8 import choose_fp32_groups
    from frugalray.model.quantize import int8_groups
    from frugalray.testing import tiny_config

    model = AutoModelForTokenClassification.from_config(tiny_config("camembert", 3))
    # int8 costs 3 points in layer 1's feed-forward output, 0.4 in the head, nothing elsewhere
    cost = {"layer.1.output": 0.03, "classifier": 0.004}

    def score(candidate):
        quantized = {g for g in int8_groups(model) for name, m in candidate.named_modules()
                     if type(m).__module__.startswith("torch.ao") and f".{g}." in f".{name}."}
        return 0.8 - sum(cost.get(g, 0.0) for g in quantized)

    groups, steps = choose_fp32_groups(model, score, tolerance=0.005)
    assert groups == ["layer.1.output"]  # within half a point with the head in int8: the head stays int8
    assert [s["dev_f1"] for s in steps] == pytest.approx([0.8 - 0.034, 0.8 - 0.004])
    assert choose_fp32_groups(model, score, tolerance=0.001)[0] == ["layer.1.output", "classifier"]
    # a group that brings back less than min_gain stays int8, however far from the tolerance
    assert choose_fp32_groups(model, score, tolerance=0.001, min_gain=0.005)[0] == ["layer.1.output"]
    assert choose_fp32_groups(model, score, tolerance=0.001, min_gain=0.0035)[0] == ["layer.1.output", "classifier"]
    assert choose_fp32_groups(model, lambda candidate: 0.5)[0] == []  # nothing lost, nothing kept


@pytest.mark.slow
def test_a_budget_keeps_only_the_fp32_groups_that_fit_in_it():
    """Shares are of the Linear weights: here a layer's attention has 4 h x h weights, its feed-forward input and
    output 2 h x h each (intermediate size 2 h); the head is a sliver."""
    from frugalray.deploy.int8 import choose_fp32_groups
    from frugalray.model.quantize import group_shares, int8_groups
    from frugalray.testing import tiny_config

    model = AutoModelForTokenClassification.from_config(tiny_config("camembert", 3))
    shares = group_shares(model)
    assert sum(shares.values()) == pytest.approx(1.0) and shares["classifier"] < 0.01
    assert shares["layer.0.attention"] == pytest.approx(2 * shares["layer.0.output"], rel=0.05)
    assert shares["layer.0.output"] == pytest.approx(shares["layer.2.intermediate"], rel=0.05)
    cost = {"layer.1.output": 0.03, "layer.0.output": 0.02, "layer.2.attention": 0.01, "classifier": 0.004}

    def score(candidate):
        quantized = {g for g in int8_groups(model) for name, m in candidate.named_modules()
                     if type(m).__module__.startswith("torch.ao") and f".{g}." in f".{name}."}
        return 0.8 - sum(cost.get(g, 0.0) for g in quantized)

    unbounded, _ = choose_fp32_groups(model, score, tolerance=0.001)
    assert unbounded == ["layer.1.output", "layer.0.output", "layer.2.attention", "classifier"]
    # two feed-forward outputs fit in a quarter of the weights, the head beside them; an attention does not
    groups, steps = choose_fp32_groups(model, score, tolerance=0.001, max_fp32_share=0.25)
    assert groups == ["layer.1.output", "layer.0.output", "classifier"]
    assert steps[-1]["fp32_share"] == pytest.approx(sum(shares[g] for g in groups)) and steps[-1]["fp32_share"] <= 0.25
    assert choose_fp32_groups(model, score, tolerance=0.001, max_fp32_share=0.0)[0] == []


def test_the_agreement_score_compares_with_the_fp32_models_own_predictions_on_dev_and_training_sentences(
        tmp_path, saved, monkeypatch):
    """No gold label counts: a candidate is scored against the reference's predictions, on dev + train."""
    import dataclasses

    from frugalray.data.encoding import encode_examples
    from frugalray.data.metrics import ner_metrics
    from frugalray.deploy import variants
    from frugalray.training import loop

    store, trial = saved
    source = _stored(store, trial)
    folder = store.fetch_folder(source["model_path"], tmp_path / "m")
    _, config, task, data = variants._variant_data(store, trial, folder)
    reference, _ = load_trained(folder, merge=False)
    candidate, _ = load_trained(folder, merge=False)
    with torch.no_grad():  # a different model: its head leans towards its second label
        candidate.classifier.bias[1] += 1.0 + float(candidate.classifier.bias.abs().max())
    read = []
    real_predict = loop.predict
    monkeypatch.setattr(loop, "predict", lambda model, rows, *a: read.append(len(rows)) or real_predict(model, rows, *a))
    score = data.agreement(reference)
    assert read == [len(task.dev) + len(task.train)]  # the reference's answers, on dev and every training sentence
    assert score(reference) == 1.0

    rows = data.dev + encode_examples(task.train, data.tokenizer, data.label2id, config.training.max_length)

    def words(model):
        predicted, _ = real_predict(model, rows, 8, data.pad_id, torch.device("cpu"), "fp32")
        return [[task.labels[i] if i is not None else "O" for i in row] for row in predicted]

    expected = ner_metrics(words(reference), words(candidate))["f1"]
    assert expected < 1.0 and score(candidate) == pytest.approx(expected)
    # gold labels play no part: the same score with every gold label replaced by "O"
    data.task = dataclasses.replace(task, dev=[dataclasses.replace(e, labels=("O",) * len(e.words)) for e in task.dev],
                                    train=[dataclasses.replace(e, labels=("O",) * len(e.words)) for e in task.train])
    assert data.agreement(reference)(candidate) == pytest.approx(expected)
    data.agreement(reference, limit=1)
    assert len(task.train) > 1 and read[-1] == len(task.dev) + 1  # at most ``limit`` training sentences


def test_an_int8_budget_is_recorded_and_a_budget_without_a_choice_is_refused(tmp_path, saved, capsys):
    store, trial = saved
    assert main(["export", store.location, "--trial", trial, "--out", str(tmp_path / "int8"), "--int8",
                 "--int8-fp32", "agreement", "--int8-max-fp32-share", "0.2"]) == 0
    manifest = json.loads((tmp_path / "int8" / "frugalray_trial.json").read_text())
    assert all(step["max_fp32_share"] == 0.2 and step["fp32_share"] <= 0.2 for step in manifest["int8_choice"])
    assert main(["export", store.location, "--trial", trial, "--out", str(tmp_path / "none"), "--int8",
                 "--int8-fp32", "none", "--int8-max-fp32-share", "0.2"]) == 2
    assert "--int8-max-fp32-share 0.2: a share from 0 to 1" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_an_int8_budget_changes_which_groups_an_export_keeps_fp32(tmp_path, saved, monkeypatch):
    """Through the command line, on a model whose dev F1 is known from which of its Linear groups are int8: the
    unbounded choice keeps an attention (a quarter of the weights); within a budget of 0.2 it cannot, and keeps
    the head instead."""
    from frugalray.deploy import variants
    from frugalray.model.quantize import group_shares

    store, trial = saved
    cost = {"layer.1.output": 0.03, "layer.0.attention": 0.02, "classifier": 0.004}  # dev F1 that int8 costs

    def dev_f1(model) -> float:
        quantized = {g for g in cost for name, m in model.named_modules()
                     if type(m).__module__.startswith("torch.ao") and f".{g}." in f".{name}."}
        return 0.8 - sum(cost[g] for g in quantized)

    real_score = variants._Data.score
    monkeypatch.setattr(variants._Data, "score", lambda self, model, split: real_score(self, model, split) | (
        {"f1": dev_f1(model)} if split == "dev" else {}))

    def chosen(*budget) -> tuple[list[str], dict]:
        out = tmp_path / f"int8{budget}"
        assert main(["export", store.location, "--trial", trial, "--out", str(out), "--int8", *budget]) == 0
        manifest = json.loads((out / "frugalray_trial.json").read_text())
        model = AutoModelForTokenClassification.from_pretrained(out)
        return manifest["int8_fp32_groups"], group_shares(model)

    unbounded, shares = chosen()
    assert unbounded == ["layer.1.output", "layer.0.attention"]  # then within half a point: the head stays int8
    assert shares["layer.0.attention"] == pytest.approx(0.25, abs=0.01) and shares["layer.1.output"] < 0.2
    bounded, _ = chosen("--int8-max-fp32-share", "0.2")
    assert bounded == ["layer.1.output", "classifier"]  # the attention does not fit beside the feed-forward output
    assert sum(shares[g] for g in bounded) <= 0.2


@pytest.mark.parametrize("choice", ["auto", "agreement", "none", "classifier"])
@pytest.mark.slow
def test_an_int8_export_keeps_the_chosen_groups_fp32_wherever_it_is_loaded(tmp_path, saved, choice):
    from frugalray.deploy.variants import load_variant

    store, trial = saved
    assert main(["export", store.location, "--trial", trial, "--out", str(tmp_path / "int8"), "--int8",
                 "--int8-fp32", choice]) == 0
    manifest = json.loads((tmp_path / "int8" / "frugalray_trial.json").read_text())
    row = store.query(sql="SELECT * FROM trials WHERE source_trial_id = $1 ORDER BY finished_at DESC LIMIT 1",
                      params=[trial]).to_pylist()[0]
    assert row["int8_fp32_groups"] == manifest["int8_fp32_groups"]
    if choice in ("auto", "agreement"):  # the choice is recorded with the score of every step, fp32's beside it
        name = {"auto": "dev_f1", "agreement": "agreement_f1"}[choice]
        first = manifest["int8_choice"][0]
        assert first["fp32_groups"] == [] and first["criterion"] == choice and f"fp32_{name}" in first
        if choice == "agreement":
            assert first[f"fp32_{name}"] == 1.0 and all(step[name] <= 1.0 for step in manifest["int8_choice"])
    else:
        assert manifest["int8_fp32_groups"] == ([] if choice == "none" else ["classifier"])
    model, _ = load_variant(tmp_path / "int8")
    fp32 = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert all(any(f".{g}." in f".{name}." for g in manifest["int8_fp32_groups"]) for name in fp32)
    assert bool(fp32) == bool(manifest["int8_fp32_groups"])
