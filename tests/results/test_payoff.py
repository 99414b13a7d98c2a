from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from frugalray import ResultsStore
from frugalray.cli import main
from frugalray.results.grid_rows import latency_axis, read_grid
from frugalray.results.payoff import family
from frugalray.results.report import write_report
from frugalray.results.views import compute_view
from frugalray.testing import synthetic_table

FULL = [0, 1, 2, 3]
# name, kept layers, variant, dev F1, test F1, MiB, the trial's own latency (ms, batch 32 x 41, in a sweep)
CATALOG = [
    ("full", FULL, "fp32", 0.900, 0.900, 40.0, 10.0),
    ("first_3", [0, 1, 2], "fp32", 0.885, 0.880, 30.0, 7.5),
    ("first_2", [0, 1], "fp32", 0.860, 0.870, 20.0, 5.0),
    # 89% of the full model's dev F1 but 96% of its test F1: chosen on dev, it never qualifies
    ("first_1", [0], "fp32", 0.800, 0.865, 10.0, 2.5),
    ("full", FULL, "int8", 0.899, 0.897, 11.0, 4.0),
    ("first_2", [0, 1], "int8", 0.856, 0.850, 6.0, 2.0),
]
# the isolated grid: speedups against the full fp32 model (first_2 int8 was never put in the grid)
GRID = [(FULL, "fp32", 1.0, 1.0), ([0, 1, 2], "fp32", 1.2, 1.3), ([0, 1], "fp32", 1.5, 1.9), ([0], "fp32", 2.0, 3.7),
        (FULL, "int8", 2.0, 2.5)]


def _catalog() -> list[dict]:
    rows = []
    for name, kept, variant, dev, test, mib, latency in CATALOG:
        strategy, _, n = name.partition("_")
        rows.append({
            "status": "ok", "task": "ner", "model": "tiny", "num_layers": 4, "strategy": strategy,
            "strategy_n": int(n) if n else None, "kept_layers": kept, "n_kept_layers": len(kept), "lora": False,
            "learning_rate": 5e-5, "epochs": 3, "batch_size": 16, "max_length": 128, "f1": test, "accuracy": test,
            "precision": test, "recall": test, "dev_f1": dev, "train_seconds": 1.0 + len(kept), "model_mib": mib,
            "latency_ms": latency, "latency_batch_size": 32, "latency_seq_len": 41, "latency_isolated": False,
            "variant": variant, "train_kwh": 0.001 * len(kept), "eval_kwh": 0.0001, "total_params": 1000,
            "trainable_params": 1000, "init": "pretrained", "recovery": "finetune",  # as trials record the study's
        })
    return rows


def _grid_table(rows=GRID, isolated=True) -> pa.Table:
    when = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return pa.Table.from_pylist([
        {"model": "tiny", "layer_set": "x", "kept_layers": kept, "variant": variant, "batch_size": batch, "seq_len": 128,
         "latency_ms": 10.0 / speed, "speedup": speed, "isolated": isolated, "measured_at": when}
        for kept, variant, one, many in rows for batch, speed in ((1, one), (32, many))])


@pytest.fixture()
def store(tmp_path):
    store = ResultsStore(tmp_path / "results")
    store.write_table(synthetic_table(_catalog(), seeds=1), "trials", "synthetic.parquet")
    return store


def _picks(store) -> dict:
    rows = compute_view(store, "payoff").table.to_pylist()
    return {(r["keeps"], r["pick"]): r for r in rows}


def test_payoff_picks_the_smallest_and_fastest_configuration_per_share_chosen_on_dev(store):
    store.write_table(_grid_table(), "latency", "grid.parquet")
    picks = _picks(store)
    assert sorted(picks) == sorted((f">= {s}%", p) for s in (98, 95, 90) for p in ("smallest", "fastest"))
    chosen = {key: (r["configuration"], r["variant"]) for key, r in picks.items()}
    assert chosen == {
        (">= 98%", "smallest"): ("full", "int8"), (">= 98%", "fastest"): ("full", "int8"),
        (">= 95%", "smallest"): ("first_2", "int8"), (">= 95%", "fastest"): ("first_2", "int8"),
        (">= 90%", "smallest"): ("first_2", "int8"), (">= 90%", "fastest"): ("first_2", "int8"),
    }
    assert all(r["configuration"] != "first_1" for r in picks.values())  # its dev F1 keeps only 89%
    best = picks[(">= 98%", "fastest")]
    assert (best["speedup_b1"], best["speedup_b32"], best["seq_len"], best["speedup_source"]) == (
        2.0, 2.5, 128, "isolated grid")
    assert best["f1_kept"] == pytest.approx(0.897 / 0.900) and best["family"] == "int8"
    assert best["size_vs_full"] == pytest.approx(11 / 40) and best["train_kwh"] == pytest.approx(0.004)
    # not in the grid: its own trial latency against the full model's, and said so
    small = picks[(">= 95%", "fastest")]
    assert small["speedup_b32"] == pytest.approx(10.0 / 2.0) and small["speedup_b1"] is None
    assert small["speedup_source"] == "trials: in a sweep, batch 32x41"
    assert small["family"] == "int8 + pruned"


def test_without_a_grid_every_speedup_is_the_trials_own(store):
    for row in _picks(store).values():
        assert row["speedup_source"].startswith("trials: in a sweep, batch 32x41") and row["speedup_b1"] is None
    assert _picks(store)[(">= 98%", "fastest")]["speedup_b32"] == pytest.approx(10.0 / 4.0)


def test_grid_rows_that_were_not_isolated_or_cannot_be_read_are_not_used(store, caplog):
    store.write_table(_grid_table(isolated=False), "latency", "in-process.parquet")
    old = pa.Table.from_pylist([{"model": "tiny", "variant": "first_2", "kept_layers": [0, 1], "dtype": "fp32",
                                 "batch_size": 32, "seq_len": 128, "speedup": 9.0, "latency_ms": 1.0}])
    store.write_table(old, "latency", "older.parquet")  # written before the grid: measured in the caller's process
    Path(store.root, "latency", "broken.parquet").write_bytes(b"PAR1 not a parquet file")
    grid = read_grid(store)
    assert len(grid) == 11 and {r["layer_set"] for r in grid} == {"x", "first_2"}
    assert "Skipping latency file" in caplog.text and "broken.parquet" in caplog.text
    assert {r["speedup_source"] for r in _picks(store).values()} == {"trials: in a sweep, batch 32x41"}


def test_payoff_from_the_command_line_and_in_the_report(store, tmp_path, capsys):
    store.write_table(_grid_table(), "latency", "grid.parquet")
    assert main(["results", store.location, "--view", "payoff", "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("task,model,keeps,pick,family,configuration")
    assert len(out) == 7
    html = write_report(store, tmp_path / "report").read_text()
    section = html[html.index("<h3>What a smaller model saves: the frugality table"):]
    assert "<th>keeps</th>" in section[:section.index("</table>")]  # the payoff view's table, in its section
    # the latency axis says what it plots: here the isolated grid, which covers every layer set
    assert "against latency, isolated grid (ms per batch of 32 x 128 tokens, encoder)" in html


def test_families_name_the_form_and_only_students_by_their_recovery():
    [full, pruned] = [next(r for r in _catalog() if r["variant"] == "fp32" and len(r["kept_layers"]) == n) for n in (4, 2)]
    assert (family(full), family(pruned)) == ("full", "pruned")
    assert family(pruned | {"variant": "int8"}) == "int8 + pruned" and family(pruned | {"lora": True}) == "LoRA + pruned"
    student = pruned | {"init": "finetuned", "recovery": "distill", "distill_temperature": 2.0, "distill_alpha": 0.5,
                        "distill_beta": 0.0}
    assert family(student) == "finetuned+distill(T=2,a=0.5,b=0)"
    assert family(pruned | {"init": "finetuned"}) == "finetuned+finetune"


def test_the_latency_axis_says_what_was_measured():
    rows = [r | {"variant": "fp32"} for r in _catalog() if r["variant"] == "fp32"]
    values, label = latency_axis(rows, [])
    assert values == [10.0, 7.5, 5.0, 2.5] and label == "latency in a sweep (ms per batch of 32 x 41 tokens)"
    alone = [r | {"latency_isolated": True, "latency_batch_size": 12} for r in rows]
    assert latency_axis(alone, [])[1] == "latency isolated (ms per batch of 12 x 41 tokens)"
    grid = _grid_table().to_pylist()
    values, label = latency_axis(rows, grid)
    assert values == [10.0, 10.0 / 1.3, 10.0 / 1.9, 10.0 / 3.7]
    assert label == "latency, isolated grid (ms per batch of 32 x 128 tokens, encoder)"
    partial = [g for g in grid if g["kept_layers"] != [0]]  # one layer set missing: the trials' own, never a mix
    assert latency_axis(rows, partial)[1] == "latency in a sweep (ms per batch of 32 x 41 tokens)"


def test_views_keep_trained_models_and_show_energy_beside_time(store):
    strategies = compute_view(store, "strategies").table.to_pylist()
    assert len(strategies) == 4  # the int8 rows are forms of trained models: the payoff view shows them
    first_2 = next(r for r in strategies if r["strategy"] == "first_2")
    assert first_2["train_kwh"] == pytest.approx(0.002) and first_2["f1_per_kj"] == pytest.approx(0.870 / 7.2)
    assert first_2["f1_per_s"] == pytest.approx(0.870 / 3.0)
    assert first_2["latency_kind"] == "in a sweep, batch 32x41"
    [full] = compute_view(store, "baselines").table.to_pylist()
    assert full["latency_kind"] == "in a sweep, batch 32x41" and full["train_kwh"] == pytest.approx(0.004)
