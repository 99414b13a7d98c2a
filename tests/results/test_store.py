import os
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.results.store import SCHEMA
from frugalray.results.tables import render
from frugalray.testing import synthetic_catalog, synthetic_table
from frugalray.results.aggregate import aggregate
from frugalray.results.views import compute_view


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
    assert _ok_hashes(store) == {"a"}


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


def test_the_trained_row_of_a_config_hash_is_found_by_its_file_name(tmp_path):
    store = ResultsStore(tmp_path).check_writable()
    assert store.trained_row("h1") is None  # an empty store
    store.append(_row(config_hash="h1", status="failed", error="RuntimeError: boom", f1=None))
    store.append(_row(config_hash="h1", strategy="last", reused_from="t0", trial_id="t0-last"))  # an alias row
    store.append(_row(config_hash="h10", trial_id="t10"))  # another hash that starts alike
    Path(store.trials_dir, "h1-broken.parquet").write_bytes(b"PAR1 half written")
    assert store.trained_row("h1") is None
    store.append(_row(config_hash="h1", trial_id="t1", f1=0.7))
    found = store.trained_row("h1")
    assert (found.trial_id, found.f1, found.reused_from) == ("t1", 0.7, None)


def test_a_trained_row_with_kept_weights_is_preferred_and_only_its_hashs_files_are_read(tmp_path, monkeypatch):
    """A hash trained twice (a rerun that kept its weights) answers with the row whose weights exist, whatever the
    order; the lookup opens the files named after the hash, never the rest of the store."""
    for order in (["t-without", "t-with"], ["t-with", "t-without"]):
        store = ResultsStore(tmp_path / order[0]).check_writable()
        for trial in order:
            store.append(_row(config_hash="h1", trial_id=trial, model_path="models/x" if trial == "t-with" else None))
        store.append(_row(config_hash="h2", trial_id="t2", model_path="models/y"))
        read = []
        dataset = store.dataset
        monkeypatch.setattr(store, "dataset", lambda **kwargs: read.append(kwargs.get("files")) or dataset(**kwargs))
        found = store.trained_row("h1")
        assert (found.trial_id, found.model_path) == ("t-with", "models/x")
        [files] = read
        assert len(files) == 2 and all(Path(f).name.startswith("h1-") for f in files)


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_folders_and_files_put_in_the_store_come_back_whole(where, tmp_path, request, monkeypatch):
    """Saved weights (a folder) and small files go into a local or S3 store and come back byte for byte; a
    missing folder is named with the store."""
    monkeypatch.chdir(tmp_path)  # a folder read by a wrong relative path is found in no earlier test's leftovers
    location = str(tmp_path / "store") if where == "folder" else request.getfixturevalue("s3_results")
    store = ResultsStore(location).check_writable()
    content = {"config.json": b'{"a": 1}', "sub/weights.bin": bytes(range(256)) * 8}
    relatives = ["archive/2026/t1", "archive/2026/t2"]  # parents to create, then a parent that exists
    for relative in relatives:
        staged = Path(store.staging_folder())
        for name, data in content.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_bytes(data)
        assert store.put_folder(staged, relative) == relative
    for relative in relatives:
        scratch = tmp_path / "fetched" / relative.rsplit("/", 1)[-1]  # a parent that does not exist yet
        for _ in range(2):  # and again, into the scratch folder the first copy made
            fetched = Path(store.fetch_folder(relative, scratch))
            assert {p.relative_to(fetched).as_posix(): p.read_bytes()
                    for p in fetched.rglob("*") if p.is_file()} == content
        assert (fetched == scratch) == (where == "s3")  # a local store's folder is used in place
    with pytest.raises(FrugalrayError, match=r"Saved weights 'models/none' are missing from '.*'"):
        store.fetch_folder("models/none", tmp_path / "none")
    for folder in ("", "notes", "notes/deeper"):
        written = store.write_bytes(b"hello " + folder.encode(), folder, "note.txt")
        relative = f"{folder}/note.txt".lstrip("/")
        assert written == store.path(relative) and store.read_bytes(relative) == b"hello " + folder.encode()
    assert store.read_bytes("notes/absent.txt") is None


def test_the_sql_view_types_every_column_and_reads_files_whose_path_has_a_quote(tmp_path):
    """DuckDB's view over a local store: a column no file has is NULL of its SCHEMA type, and a store folder with
    a quote in its name is read (the file list is SQL-quoted)."""
    store = ResultsStore(tmp_path / "it's results").check_writable()
    # a file of an older version, alone at first: the required columns and f1, nothing else
    pq.write_table(pa.table({"trial_id": ["t-b"], "config_hash": ["b"], "status": ["ok"], "f1": [0.5]}),
                   Path(store.trials_dir) / "b-old.parquet")
    assert store.query(sql="SELECT f1, model, teacher_seconds FROM trials").to_pylist() == [
        {"f1": 0.5, "model": None, "teacher_seconds": None}]  # columns no file has
    store.append(_row(config_hash="a", f1=0.75))
    rows = store.query(sql="SELECT config_hash, f1, teacher_seconds, model FROM trials ORDER BY 1").to_pylist()
    assert rows == [{"config_hash": "a", "f1": 0.75, "teacher_seconds": None, "model": "m"},
                    {"config_hash": "b", "f1": 0.5, "teacher_seconds": None, "model": None}]
    kinds = store.query(sql="SELECT DISTINCT typeof(teacher_seconds) AS t, typeof(model) AS m FROM trials").to_pylist()
    assert kinds == [{"t": "DOUBLE", "m": "VARCHAR"}]
    import duckdb

    connection = duckdb.connect()
    store.register(connection, "mine")
    assert connection.execute('SELECT count(*) FROM "mine"').fetchone() == (2,)


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


def _bad_files(folder):
    """One of each kind of file a reader must skip, by name."""
    good = pa.Table.from_pylist([_row(config_hash="bad")], schema=SCHEMA)
    whole = pa.BufferOutputStream()
    pq.write_table(good, whole)
    return {
        "empty": b"",
        "truncated": whole.getvalue().to_pybytes()[:200],
        "not_parquet": b"config_hash,status\nbad,ok\n",
        "f1_as_text": good.set_column(SCHEMA.get_field_index("f1"), "f1", pa.array(["0.5"])),
        "no_config_hash": good.drop_columns(["config_hash"]),
        "n_kept_layers_too_big": good.set_column(SCHEMA.get_field_index("n_kept_layers"), "n_kept_layers",
                                                 pa.array([2**40], pa.int64())),
    }


@pytest.mark.parametrize("kind", ["empty", "truncated", "not_parquet", "f1_as_text", "no_config_hash",
                                  "n_kept_layers_too_big"])
def test_one_bad_file_is_skipped_by_every_reader_with_one_warning(tmp_path, caplog, kind):
    store = ResultsStore(tmp_path).check_writable()
    store.append(_row(config_hash="a", f1=0.8))
    store.append(_row(config_hash="b", f1=0.6, n_kept_layers=3))
    bad = tmp_path / "trials" / f"{kind}.parquet"
    content = _bad_files(tmp_path)[kind]
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        pq.write_table(content, bad)

    assert sorted(store.table().column("config_hash").to_pylist()) == ["a", "b"]
    assert store.table().schema == SCHEMA
    assert store.dataset().to_table().num_rows == 2
    assert store.query(where=["f1>0.5"]).num_rows == 2
    assert store.query(sql="SELECT count(*) AS n FROM trials").column("n").to_pylist() == [2]
    assert _ok_hashes(store) == {"a", "b"}
    connection = duckdb.connect()
    store.register(connection, "mine")
    assert connection.sql("SELECT sum(n_kept_layers) FROM mine").fetchall() == [(5,)]
    warned = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelname == "WARNING" and "--repair" in warned[0].getMessage()


def test_views_read_past_a_bad_file(tmp_path, caplog):
    store = ResultsStore(tmp_path)
    store.write_table(synthetic_table(synthetic_catalog(tasks=("pos",))), "trials", "synthetic.parquet")
    expected = aggregate(store).to_pylist()
    (tmp_path / "trials" / "zz-broken.parquet").write_bytes(b"PAR1")
    assert aggregate(store).to_pylist() == expected
    assert compute_view(store, "budget").table.num_rows > 0
    assert sum("zz-broken.parquet" in r.getMessage() for r in caplog.records) == 1


def test_compatible_columns_are_cast_to_the_schema(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_row(config_hash="typed", f1=0.5))
    loose = pa.table({  # what another writer (pandas, an older version) may leave: wider ints, float32, ns
        "trial_id": ["t-loose"], "config_hash": ["loose"], "status": ["ok"], "task": ["demo_pos"],
        "n_kept_layers": pa.array([2], pa.int64()), "f1": pa.array([0.75], pa.float32()),
        "kept_layers": pa.array([[0, 3]], pa.list_(pa.int64())),
        "started_at": pa.array([1_700_000_000_123_456_000], pa.timestamp("ns")),
        "lora": pa.array([None], pa.null()), "not_a_column": [1],
    })
    pq.write_table(loose, tmp_path / "trials" / "loose.parquet")
    table = store.table()
    assert table.schema == SCHEMA
    row = next(r for r in table.to_pylist() if r["config_hash"] == "loose")
    assert (row["n_kept_layers"], row["f1"], row["kept_layers"]) == (2, 0.75, [0, 3])
    assert row["started_at"] == datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc)
    types = store.query(sql="SELECT typeof(n_kept_layers) AS n, typeof(f1) AS f1, typeof(kept_layers) AS k, "
                            "typeof(model_path) AS p FROM trials WHERE config_hash = 'loose'").to_pylist()
    assert types == [{"n": "INTEGER", "f1": "DOUBLE", "k": "INTEGER[]", "p": "VARCHAR"}]
    assert store.query(where=["n_kept_layers<=2", "f1>0.6"]).column("config_hash").to_pylist() == ["loose"]


def test_a_file_is_checked_once_per_version(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    path = store.append(_row())
    opened = []
    original = pq.ParquetFile
    monkeypatch.setattr(pq, "ParquetFile", lambda *a, **k: opened.append(a[0]) or original(*a, **k))
    store.table(), store.query(), store.table()
    assert opened == [path]  # its footer was read once, by the first reader
    os.utime(path, ns=(1, 1))  # a new version of the file
    store.table()
    assert opened == [path, path]


def test_a_killed_writer_leaves_nothing_in_trials(tmp_path, kill_a_writer):
    store = ResultsStore(tmp_path).check_writable()
    store.append(_row(config_hash="kept"))
    assert kill_a_writer(tmp_path) == -signal.SIGKILL
    assert [p.name for p in (tmp_path / "trials").iterdir()] == [Path(store.files()[0]).name]
    assert len(list((tmp_path / ".staging").iterdir())) == 2  # half a row, and a model folder
    glob = str(tmp_path / "trials" / "*")
    assert duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall() == [(1,)]
    assert store.table().num_rows == 1


def _ok_hashes(store) -> set[str]:
    """Configuration hashes that have a successful row."""
    return {row["config_hash"] for row in store.table().to_pylist() if row["status"] == "ok"}


def test_store_metadata_merges_runs_by_name_and_later_reports_use_its_reference_pairs(tmp_path, capsys, caplog):
    import json
    from concurrent.futures import ThreadPoolExecutor

    from frugalray import __version__
    from frugalray.cli import main
    from frugalray.results.metadata import FILE, read_metadata, record_run, reference_tasks, run_file

    store = ResultsStore(tmp_path)
    store.write_table(synthetic_table(synthetic_catalog(tasks=("demo_pos",), num_layers=6), seeds=2), "trials", "s.parquet")
    record_run(store, "sweeps", "quick", {"seeds": [0]}, reference_tasks={"demo_pos": "FTB_NER"})
    record_run(store, "sweeps", "other", {"seeds": [1]}, reference_tasks={})
    record_run(store, "sweeps", "quick", {"seeds": [0, 1]}, reference_tasks={"demo_pos": "FTB_POS"})  # re-run
    metadata = read_metadata(store)
    assert sorted(metadata["sweeps"]) == ["other", "quick"]
    assert metadata["sweeps"]["quick"]["settings"] == {"seeds": [0, 1]}
    assert metadata["sweeps"]["quick"]["frugalray_version"] == __version__
    assert json.loads((tmp_path / "runs" / "sweeps" / run_file("quick")).read_text())["name"] == "quick"
    assert reference_tasks(store) == {"demo_pos": "FTB_POS"}
    assert not list((tmp_path / ".staging").iterdir())  # written through the staging folder, then renamed

    # many runs starting at once on one store: none loses another's entry
    names = [f"sweep {i}/x" for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda name: record_run(store, "searches", name, {"n": name}), names))
    assert {name: entry["settings"]["n"] for name, entry in read_metadata(store)["searches"].items()} == {
        name: name for name in names}

    # a store of an earlier version kept every entry in one file: still read, a run file of the same name wins
    (tmp_path / FILE).write_text(json.dumps({"frugalray_version": "0.1.0", "sweeps": {
        "old": {"settings": {}, "reference_tasks": {"demo_ner": "FTB_NER"}, "updated_at": "2025-01-01T00:00:00"},
        "quick": {"settings": {"seeds": [9]}, "reference_tasks": {}, "updated_at": "2025-01-01T00:00:00"}}}))
    metadata = read_metadata(store)
    assert sorted(metadata["sweeps"]) == ["old", "other", "quick"]
    assert metadata["sweeps"]["quick"]["settings"] == {"seeds": [0, 1]}
    assert reference_tasks(store) == {"demo_pos": "FTB_POS", "demo_ner": "FTB_NER"}
    (tmp_path / FILE).unlink()

    # No --reference-task: the pairs the sweep recorded apply (the full model is the study's full model).
    assert main(["results", str(tmp_path), "--view", "baselines", "--format", "csv"]) == 0
    assert "FTB_POS full, study: 12/12 layers" in capsys.readouterr().out
    assert main(["results", str(tmp_path), "--view", "baselines", "--format", "csv",
                 "--reference-task", "demo_pos=WikiNER"]) == 0  # the command line adds to (and wins over) the store
    assert "WikiNER full, study: 12/12 layers" in capsys.readouterr().out

    (tmp_path / "runs" / "sweeps" / run_file("quick")).write_text("{half")
    assert "quick" not in read_metadata(store)["sweeps"] and "Ignoring" in caplog.text
    assert run_file("quick") in caplog.text and reference_tasks(store) == {}
