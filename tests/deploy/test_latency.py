import json
import os

import pyarrow.parquet as pq
import pytest
import torch

from frugalray import FrugalrayError, ResultsStore, TrainingSettings, TrialConfig, execute_trial
from frugalray.cli import main
from frugalray.deploy.export import export_trial
from frugalray.deploy.grid import forward_flops
from frugalray.deploy.latency import bench_latency
from frugalray.testing import tiny_config


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """12 layers, hidden 64: a model whose pruned forms do far less work than it."""
    from transformers import AutoModel

    from frugalray.testing import tiny_tokenizer

    config = tiny_config("bert", num_layers=12, vocab_size=200)
    config.hidden_size, config.intermediate_size, config.num_attention_heads = 64, 256, 4
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("deep")
    AutoModel.from_config(config).save_pretrained(path)
    tiny_tokenizer(["a"]).save_pretrained(path)
    return str(path)


@pytest.mark.slow
def test_each_layer_set_is_timed_on_a_model_with_only_its_layers_and_its_figures_follow(deep_model, monkeypatch):
    """What is timed, how often, and on what: the layer sets' models really are the pruned ones (12, then 2
    layers: the kept ones, with their weights), each run on the same batch, after the warm-up, as many times as
    asked. How much faster they are is the machine's business (benchmarks/ times it); the ratios are the rows'."""
    from frugalray.deploy import grid

    timed = []  # (the model an entry runs, the shape of each call)
    real_runner = grid._torch_runner

    def recording_runner(encoder):
        calls, run = [], real_runner(encoder)
        timed.append((encoder, calls))
        return lambda ids, mask: calls.append(tuple(ids.shape)) or run(ids, mask)

    monkeypatch.setattr(grid, "_torch_runner", recording_runner)
    rows = bench_latency(deep_model, [2, [0, 11]], batch_sizes=(8,), seq_lens=(64,), device="cpu", repeats=5,
                         warmup=2, isolated=False)
    assert [r["layer_set"] for r in rows] == ["full", "first_2", "mask 0,11"]
    assert [(r["n_kept_layers"], r["kept_layers"]) for r in rows] == [(12, list(range(12))), (2, [0, 1]), (2, [0, 11])]
    (full, full_calls), (first, first_calls), (ends, ends_calls) = timed
    assert [len(model.encoder.layer) for model, _ in timed] == [12, 2, 2]
    assert full_calls == first_calls == ends_calls == [(8, 64)] * 7  # 2 warm-up calls, then the 5 timed
    layer_weights = lambda model, k: model.encoder.layer[k].output.dense.weight
    assert torch.equal(layer_weights(ends, 0), layer_weights(full, 0))
    assert torch.equal(layer_weights(ends, 1), layer_weights(full, 11))  # layer 11 kept, renumbered 1
    assert torch.equal(layer_weights(first, 1), layer_weights(full, 1))
    # FLOPs of the forward pass, counted from the config: 704,937,984 in full, 117,735,424 with 2 layers
    assert [r["gflops"] for r in rows] == pytest.approx([0.704937984, 0.117735424, 0.117735424])
    assert [r["ideal_speedup"] for r in rows] == pytest.approx([1.0, 5.98747565, 5.98747565])
    for row in rows:
        assert (row["batch_size"], row["seq_len"], row["repeats"]) == (8, 64, 5)
        assert 0 < row["latency_ms"] <= row["latency_p90_ms"]
        assert row["speedup"] == pytest.approx(rows[0]["latency_ms"] / row["latency_ms"])
        assert row["fraction_of_ideal"] == pytest.approx(row["speedup"] / row["ideal_speedup"])
        assert row["tokens_per_second"] == pytest.approx(8 * 64 / (row["latency_ms"] / 1000))
        assert row["sequences_per_second"] == pytest.approx(8 / (row["latency_ms"] / 1000))
        assert row["torch_version"] and row["transformers_version"] and "cpus" in row["hardware"]
        assert (row["variant"], row["runtime"], row["isolated"]) == ("fp32", "torch", False)
    assert rows[0]["speedup"] == 1.0


def test_ideal_speedup_counts_layers_embeddings_and_pooler():
    config = tiny_config("bert", num_layers=12)  # hidden 32, intermediate 64
    h, i, s, b = 32, 64, 16, 2
    layer = 8 * h * h + 4 * h * i + 4 * s * h
    assert forward_flops(config, 3, b, s) == b * s * (7 * h + 3 * layer) + b * 2 * h * h
    assert 3.9 < forward_flops(config, 12, b, s) / forward_flops(config, 3, b, s) < 4.0  # a bit under 12/3


@pytest.mark.slow
def test_the_grid_covers_every_shape_layer_set_and_precision_against_full_fp32(deep_model):
    rows = bench_latency(deep_model, [3], batch_sizes=(1, 4), seq_lens=(8, 16), variants=("int8",), device="cpu",
                         repeats=2, warmup=1, isolated=False)
    shapes = [(1, 8), (1, 16), (4, 8), (4, 16)]
    assert [(r["batch_size"], r["seq_len"]) for r in rows] == [shape for shape in shapes for _ in range(4)]
    for start in range(0, len(rows), 4):
        cell = rows[start:start + 4]
        assert [(r["layer_set"], r["variant"], r["precision"]) for r in cell] == [
            ("full", "fp32", "fp32"), ("full", "int8", "int8"), ("first_3", "fp32", "fp32"), ("first_3", "int8", "int8")]
        full = cell[0]
        assert full["speedup"] == 1.0
        for row in cell:  # each against the full fp32 model of its own shape
            assert row["speedup"] == pytest.approx(full["latency_ms"] / row["latency_ms"])
        config = tiny_config("bert", num_layers=12)
        config.hidden_size, config.intermediate_size = 64, 256
        ideal = forward_flops(config, 12, full["batch_size"], full["seq_len"]) / forward_flops(
            config, 3, full["batch_size"], full["seq_len"])
        assert [r["ideal_speedup"] for r in cell] == pytest.approx([1.0, 1.0, ideal, ideal])  # precision: no FLOPs


def test_a_grid_with_cpu_only_precisions_runs_on_the_cpu_where_cuda_is_the_default():
    from frugalray.deploy.grid import default_device

    assert default_device(["fp32", "int8"], cuda=True) == "cpu" and default_device(["fp32", "onnx"], cuda=True) == "cpu"
    assert default_device(["fp32", "fp16"], cuda=True) == "cuda" and default_device(["fp32"], cuda=False) == "cpu"


@pytest.mark.slow
def test_an_isolated_grid_runs_in_a_process_of_its_own_with_pinned_threads(deep_model, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rows = bench_latency(deep_model, [2], batch_sizes=(2,), seq_lens=(8,), device="cpu", repeats=2, warmup=1,
                         threads=1)
    assert {(r["isolated"], r["threads"], r["omp_num_threads"]) for r in rows} == {(True, 1, "1")}
    assert "OMP_NUM_THREADS" not in os.environ  # set in the child only


@pytest.mark.slow
def test_bench_latency_command_stores_its_rows(deep_model, tmp_path, capsys):
    assert main(["bench-latency", "--model", deep_model, "--keep", "3", "--batch-size", "1", "2", "--seq-len", "16",
                 "--repeats", "2", "--device", "cpu", "--threads", "1", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0].split()[:4] == ["batch_size", "seq_len", "layer_set", "variant"]
    assert "cpu, isolated process, 1 threads; speedup: against the full fp32 model" in out.err
    [stored] = (tmp_path / "latency").glob("*.parquet")
    table = pq.read_table(stored)
    assert table.column("layer_set").to_pylist() == ["full", "first_3"] * 2
    assert table.column("batch_size").to_pylist() == [1, 1, 2, 2]
    assert {"hardware", "torch_version", "transformers_version", "ideal_speedup", "threads", "kept_layers", "precision",
            "runtime", "isolated"} <= set(table.column_names)


def test_bad_latency_requests_are_refused(deep_model, monkeypatch):
    with pytest.raises(FrugalrayError, match="a model with 12 layers keeps 1..11"):
        bench_latency(deep_model, [12], seq_lens=(64,), device="cpu")
    with pytest.raises(FrugalrayError, match="longer than model"):
        bench_latency(deep_model, [2], seq_lens=(4096,), device="cpu")
    with pytest.raises(FrugalrayError, match="Unknown precision 'int3'. Available: fp32, bf16"):
        bench_latency(deep_model, [2], seq_lens=(64,), variants=("int3",), device="cpu")
    monkeypatch.setattr("frugalray.training.environment.check_device", lambda device: None)  # as on a GPU machine
    with pytest.raises(FrugalrayError, match="run on CPU only .* --device cpu"):
        bench_latency(deep_model, [2], variants=("int8",), device="cuda")


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, tiny_model, ner_task_file):
    """A trial of the tiny model keeping layers 0 and 2, exported as int8: (export folder, store)."""
    folder = tmp_path_factory.mktemp("exported")
    store = ResultsStore(folder / "results")
    fast = TrainingSettings(epochs=1, batch_size=2, max_length=32, learning_rate=1e-3, energy=False)
    row = execute_trial(TrialConfig(task=ner_task_file, model=tiny_model, strategy="mask", layers=(0, 2),
                                    training=fast, save_model=True), store)
    export_trial(store, row["trial_id"], folder / "out", int8=True)
    return folder / "out", store


@pytest.mark.slow
def test_an_exported_trial_is_timed_with_its_own_weights_against_its_base_model(int8_export, tiny_model):
    out, _ = int8_export
    rows = bench_latency(str(out), [1], batch_sizes=(2,), seq_lens=(8,), device="cpu", repeats=2, warmup=1,
                         isolated=False)
    # its manifest's variant (int8) is measured without being asked; rows name the base model and original layers
    assert [(r["layer_set"], r["variant"], r["kept_layers"]) for r in rows] == [
        ("full", "fp32", [0, 1, 2, 3]), ("full", "int8", [0, 1, 2, 3]), ("export", "fp32", [0, 2]),
        ("export", "int8", [0, 2]), ("first_1", "fp32", [0]), ("first_1", "int8", [0])]
    assert {r["model"] for r in rows} == {json.loads((out / "frugalray_trial.json").read_text())["base_model"]}
    assert [r["source"] for r in rows if r["layer_set"] == "export"] == [str(out)] * 2


@pytest.mark.slow
def test_onnx_variants_are_timed_by_onnx_runtime(deep_model):
    pytest.importorskip("onnxruntime")  # the 'onnx' extra (in the test extra too)
    pytest.importorskip("onnxscript")
    rows = bench_latency(deep_model, [], batch_sizes=(1, 3), seq_lens=(8,), variants=("onnx", "onnx-int8"),
                         device="cpu", repeats=2, warmup=1, isolated=False)
    assert [(r["batch_size"], r["variant"], r["runtime"], r["precision"]) for r in rows] == [
        (b, v, runtime, precision) for b in (1, 3) for v, runtime, precision in (
            ("fp32", "torch", "fp32"), ("onnx", "onnxruntime", "fp32"), ("onnx-int8", "onnxruntime", "int8"))]
    assert all(r["latency_ms"] > 0 and r["onnxruntime_version"] for r in rows)


def test_onnx_without_the_extra_names_it(deep_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(FrugalrayError, match=r"needs the optional 'onnx' extra \(onnxruntime not installed\): "
                                             r"pip install 'frugalray\[onnx\]'"):
        bench_latency(deep_model, [2], variants=("onnx",), device="cpu")
