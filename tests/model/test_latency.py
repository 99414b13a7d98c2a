import pyarrow.parquet as pq
import pytest

from frugalray import FrugalrayError
from frugalray.cli import main
from frugalray.model.latency import bench_latency, forward_flops
from frugalray.testing import tiny_config


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """12 layers, hidden 64: enough layers that removing 10 of them must show in the timings."""
    import torch
    from transformers import AutoModel

    from frugalray.testing import tiny_tokenizer

    config = tiny_config("bert", num_layers=12, vocab_size=200)
    config.hidden_size, config.intermediate_size, config.num_attention_heads = 64, 256, 4
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("deep")
    AutoModel.from_config(config).save_pretrained(path)
    tiny_tokenizer(["a"]).save_pretrained(path)
    return str(path)


def test_pruned_model_is_faster_and_figures_are_positive(deep_model):
    rows = bench_latency(deep_model, [2, [0, 11]], batch_size=8, seq_len=64, device="cpu", repeats=5, warmup=2)
    assert [r["variant"] for r in rows] == ["full", "first_2", "mask 0,11"]
    assert [r["n_kept_layers"] for r in rows] == [12, 2, 2]
    for row in rows:
        assert row["latency_ms"] > 0 and row["sequences_per_second"] > 0 and row["tokens_per_second"] > 0
        assert row["latency_p90_ms"] >= row["latency_ms"]
        assert row["torch_version"] and row["transformers_version"] and "cpus" in row["hardware"]
    full, pruned = rows[0], rows[1]
    assert pruned["latency_ms"] < full["latency_ms"]
    assert pruned["speedup"] > 1.5 and full["speedup"] == 1.0
    assert pruned["tokens_per_second"] == pytest.approx(8 * 64 / (pruned["latency_ms"] / 1000))


def test_ideal_speedup_counts_layers_embeddings_and_pooler():
    config = tiny_config("bert", num_layers=12)  # hidden 32, intermediate 64
    h, i, s, b = 32, 64, 16, 2
    layer = 8 * h * h + 4 * h * i + 4 * s * h
    assert forward_flops(config, 3, b, s) == b * s * (7 * h + 3 * layer) + b * 2 * h * h
    assert 3.9 < forward_flops(config, 12, b, s) / forward_flops(config, 3, b, s) < 4.0  # a bit under 12/3


def test_bench_latency_command_stores_its_rows(deep_model, tmp_path, capsys):
    assert main(["bench-latency", "--model", deep_model, "--keep", "3", "--batch-size", "2", "--seq-len", "16",
                 "--repeats", "2", "--device", "cpu", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0].split()[:3] == ["variant", "n_kept_layers", "latency_ms"]
    assert "cpu, fp32, batch 2 x 16 tokens" in out.err
    [stored] = (tmp_path / "latency").glob("*.parquet")
    table = pq.read_table(stored)
    assert table.column("variant").to_pylist() == ["full", "first_3"]
    assert {"hardware", "torch_version", "transformers_version", "ideal_speedup"} <= set(table.column_names)


def test_bad_latency_requests_are_refused(deep_model):
    with pytest.raises(FrugalrayError, match="a model with 12 layers keeps 1..11"):
        bench_latency(deep_model, [12], seq_len=64, device="cpu")
    with pytest.raises(FrugalrayError, match="longer than model"):
        bench_latency(deep_model, [2], seq_len=4096, device="cpu")
    with pytest.raises(FrugalrayError, match="Unknown dtype 'int3'"):
        bench_latency(deep_model, [2], seq_len=64, dtype="int3", device="cpu")
