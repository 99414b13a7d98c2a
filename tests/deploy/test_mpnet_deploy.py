"""A trained, pruned tiny MPNet (hidden 32, padding id 1 as all-mpnet-base-v2's) exported as torch int8 and as
ONNX, each re-evaluated, and timed by the latency grid in every precision."""

import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from frugalray import FrugalrayError, ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.deploy.export import export_trial
from frugalray.deploy.latency import bench_latency
from frugalray.deploy.variants import load_variant
from frugalray.testing import conll_words, tiny_model_dir

FAST = TrainingSettings(epochs=1, batch_size=2, max_length=32, learning_rate=1e-3, energy=False)
SENTENCES = ["Jean habite à Paris .", "Marie travaille chez Renault à Lyon depuis 2010 ."]  # two lengths: padding


@pytest.fixture(scope="module")
def mpnet_dir(tmp_path_factory, data_dir) -> str:
    words = conll_words(*data_dir.glob("ner_*.conll"))
    return str(tiny_model_dir(tmp_path_factory.mktemp("tiny_mpnet"), words, "mpnet", num_layers=4))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, mpnet_dir, ner_task_file):
    """A store holding one MPNet trial that kept layers 0 and 2, with its weights: (store, its row)."""
    store = ResultsStore(tmp_path_factory.mktemp("results"))
    row = execute_trial(TrialConfig(task=ner_task_file, model=mpnet_dir, strategy="mask", layers=(0, 2),
                                    training=FAST, save_model=True), store)
    assert row.status == "ok", row.error
    return store, row


def test_an_mpnet_trial_exported_as_int8_is_re_evaluated_as_a_row_of_its_own(tmp_path, saved):
    store, source = saved
    done = export_trial(store, source.trial_id, tmp_path / "int8", int8=True, int8_fp32="none")
    row = done["variant_row"]
    assert (row["variant"], row["status"], row["source_trial_id"]) == ("int8", "ok", source.trial_id)
    assert row["kept_layers"] == [0, 2] and row["f1"] is not None and row["model_mib"] < source.model_mib
    model, manifest = load_variant(tmp_path / "int8")
    assert manifest["variant"] == "int8"
    attention = model.mpnet.encoder.layer[1].attention.attn
    assert all(type(getattr(attention, name)).__module__.startswith("torch.ao") for name in ("q", "k", "v", "o"))
    assert len(model.mpnet.encoder.layer) == 2 and model.mpnet.encoder.relative_attention_bias.weight.shape[0] == 32


@pytest.mark.parametrize("int8", [False, True], ids=["onnx", "onnx-int8"])
def test_an_mpnet_trial_exported_to_onnx_answers_like_torch_on_padded_batches(tmp_path, saved, int8):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    store, source = saved
    out = tmp_path / "onnx"
    row = export_trial(store, source.trial_id, out, onnx=True, int8=int8)["variant_row"]
    assert (row["variant"], row["status"]) == ("onnx-int8" if int8 else "onnx", "ok")
    model, _ = load_variant(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
    assert tokenizer.pad_token_id == 1 and (batch["input_ids"] == 1).any()  # the shorter sentence is padded
    got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    if not int8:  # the same logits as the torch model, so the same F1 as the trained model
        with torch.no_grad():
            expected = AutoModelForTokenClassification.from_pretrained(out).eval()(**batch).logits
        assert torch.allclose(expected, got, atol=1e-4)
        assert (row["f1"], row["dev_f1"]) == (source.f1, source.dev_f1)
    else:
        assert got.shape[:2] == batch["input_ids"].shape and torch.isfinite(got).all()


def test_the_latency_grid_times_a_pruned_mpnet_in_each_precision(mpnet_dir):
    variants = ("int8", "onnx") if _has_onnx() else ("int8",)
    rows = bench_latency(mpnet_dir, [2], batch_sizes=(2,), seq_lens=(128,), variants=variants, device="cpu",
                         repeats=2, warmup=1, isolated=False)
    assert [(r["layer_set"], r["variant"]) for r in rows] == [
        (layer_set, variant) for layer_set in ("full", "first_2") for variant in ("fp32", *variants)]
    assert all(r["latency_ms"] > 0 and r["num_layers"] == 4 for r in rows)
    assert rows[0]["speedup"] == 1.0 and rows[-1]["ideal_speedup"] > 1.5
    # positions start after the padding id: 130 positions hold 128 tokens, not 129
    with pytest.raises(FrugalrayError, match=r"--seq-len 129 is longer than model .* accepts \(128 tokens\)"):
        bench_latency(mpnet_dir, [2], seq_lens=(129,), device="cpu", isolated=False)


def _has_onnx() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime", "onnxscript"))
