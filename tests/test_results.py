import os
import threading
from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.results import SCHEMA
from frugalray.tables import render


def _row(**values):
    row = {"config_hash": "h", "status": "ok", "task": "demo_pos", "model": "m", "strategy": "first",
           "strategy_n": 2, "kept_layers": [0, 1], "n_kept_layers": 2, "seed": 0, "f1": 0.5,
           "started_at": datetime.now(timezone.utc)}
    return row | values


def test_append_then_read_back_typed_rows(tmp_path):
    store = ResultsStore(tmp_path).check_writable()
    store.append(_row(config_hash="a", f1=0.8))
    store.append(_row(config_hash="b", status="failed", error="RuntimeError: boom", f1=None))
    table = store.table()
    assert table.schema == SCHEMA
    rows = sorted(table.to_pylist(), key=lambda r: r["config_hash"])
    assert [(r["config_hash"], r["status"], r["f1"]) for r in rows] == [("a", "ok", 0.8), ("b", "failed", None)]
    assert rows[1]["error"] == "RuntimeError: boom"
    assert rows[0]["kept_layers"] == [0, 1]
    assert store.completed_hashes() == {"a"}


def test_readers_never_see_staging_files(tmp_path):
    store = ResultsStore(tmp_path).check_writable()
    store.append(_row())
    # a writer that died mid-write leaves only a staging file behind
    (tmp_path / "trials" / ".staging-dead.tmp").write_bytes(b"PAR1 half written")
    assert store.table().num_rows == 1
    assert all(not os.path.basename(f).startswith(".") for f in store.files())


def test_each_row_is_a_complete_parquet_file(tmp_path):
    store = ResultsStore(tmp_path)
    path = store.append(_row())
    assert pq.read_table(path).num_rows == 1
    assert not [p for p in (tmp_path / "trials").iterdir() if p.name.startswith(".staging")]


def test_many_concurrent_writers_lose_nothing(tmp_path):
    store = ResultsStore(tmp_path).check_writable()
    threads = [threading.Thread(target=lambda i=i: [store.append(_row(config_hash=f"{i}-{j}")) for j in range(10)])
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(store.table().column("config_hash").to_pylist()) == sorted(f"{i}-{j}" for i in range(8) for j in range(10))


def test_unknown_columns_are_refused(tmp_path):
    with pytest.raises(FrugalrayError, match="unknown columns"):
        ResultsStore(tmp_path).append(_row(f1_score=1.0))


def test_filters_and_sql(tmp_path):
    store = ResultsStore(tmp_path)
    for n, f1 in [(1, 0.4), (2, 0.6), (4, 0.9)]:
        store.append(_row(config_hash=f"h{n}", n_kept_layers=n, f1=f1, strategy_n=n))
    assert store.query(where=["n_kept_layers<=2"]).column("f1").to_pylist() == [0.4, 0.6]
    assert store.query(where=["f1>0.5", "task=demo_pos"]).num_rows == 2
    assert store.query(where=["task=other"]).num_rows == 0
    result = store.query(sql="SELECT max(f1) AS best FROM trials WHERE n_kept_layers < 4")
    assert result.column("best").to_pylist() == [0.6]


def test_bad_queries_are_clear(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_row())
    with pytest.raises(FrugalrayError, match=r"(?s)SQL failed: .*nope.*columns: trial_id, config_hash"):
        store.query(sql="SELECT nope FROM trials")
    with pytest.raises(FrugalrayError, match="Unknown column 'f11'. Did you mean 'f1'"):
        store.query(where=["f11>0.5"])
    with pytest.raises(FrugalrayError, match="not 'column<op>value'"):
        store.query(where=["f1 ~ 3"])
    with pytest.raises(FrugalrayError, match="not a valid"):
        store.query(where=["n_kept_layers=two"])


def test_empty_or_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FrugalrayError, match="No results in"):
        ResultsStore(tmp_path / "none").query()


def test_unwritable_location_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(FrugalrayError, match="is not writable"):
        ResultsStore(blocker / "results").check_writable()


def test_file_uri_works_like_a_path(tmp_path):
    store = ResultsStore(f"file://{tmp_path}")
    store.check_writable().append(_row())
    assert ResultsStore(tmp_path).table().num_rows == 1


def test_render_formats(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_row(f1=0.91234))
    table = store.table()
    text = render(table)
    assert text.splitlines()[0].split()[:3] == ["task", "model", "strategy"]
    assert "0.9123" in text and "0,1" in text
    assert render(table, ["task", "f1"], "csv") == "task,f1\ndemo_pos,0.91234"  # CSV keeps full precision
    assert render(table, ["task", "f1"], "markdown").splitlines()[2] == "| demo_pos | 0.9123 |"
    with pytest.raises(FrugalrayError, match="Unknown column"):
        render(table, ["nope"])
