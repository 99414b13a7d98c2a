"""The store's promises at their edges: what each error says, which paths stay inside the store, how files are
named and where they are staged, what an empty store gives each reader."""

import logging
import os
import re
from pathlib import Path

import duckdb
import pytest

from frugalray import FrugalrayError, ResultsStore
from frugalray.results.store import SCHEMA, STAGING
from tests.results.test_store import _row


def test_a_location_that_cannot_be_opened_or_listed_is_named_in_the_error(tmp_path):
    with pytest.raises(FrugalrayError, match=r"^Results location 'nosuch://x/y' cannot be opened: .*nosuch"):
        ResultsStore("nosuch://x/y")
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "trials").write_text("a file where the trials folder goes")
    with pytest.raises(FrugalrayError, match=rf"^Results location '{re.escape(str(tmp_path / 'store'))}' cannot be "
                                             r"read: .*trials"):
        ResultsStore(tmp_path / "store").files()
    with pytest.raises(FrugalrayError, match=r"is not writable \((FileExistsError|NotADirectoryError|OSError|"
                                             r"ArrowInvalid|PermissionError): .+\); give a folder you can write to"):
        ResultsStore(blocker / "results").check_writable()


def test_an_empty_store_says_whether_it_exists(tmp_path):
    ResultsStore(tmp_path / "empty").check_writable()
    for location, where in [(tmp_path / "empty", "exists but has no trials/\\*.parquet"),
                            (tmp_path / "none", "does not exist")]:
        message = rf"^No results in '{re.escape(str(location))}': it {where}; run a trial or a sweep"
        with pytest.raises(FrugalrayError, match=message):
            ResultsStore(location).table(require=True)
        with pytest.raises(FrugalrayError, match=message):
            ResultsStore(location).dataset()  # requires rows unless told otherwise


def test_an_empty_store_reads_as_empty_tables_when_rows_are_not_required(tmp_path):
    store = ResultsStore(tmp_path / "empty")
    assert store.table().num_rows == 0 and store.table().schema == SCHEMA  # rows are not required by default
    assert store.table(columns=["task", "f1"]).column_names == ["task", "f1"]
    assert store.query(require=False).num_rows == 0
    assert store.query(sql="SELECT count(*) AS n FROM trials", require=False).column("n").to_pylist() == [0]


def test_a_table_of_some_columns_reads_only_those(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(_row(f1=0.7))
    table = store.table(columns=["f1", "seed"])
    assert table.column_names == ["f1", "seed"] and table.to_pylist() == [{"f1": 0.7, "seed": 0}]


@pytest.mark.parametrize("relative", ["s3://bucket/models/x", "/etc/passwd", "models/../../outside", "..", "",
                                      "models/../trials/../.."])
def test_a_path_leaving_the_store_is_refused_on_every_store(tmp_path, relative):
    for store in (ResultsStore(tmp_path), ResultsStore("s3://bucket/results?region=us-east-1")):
        with pytest.raises(FrugalrayError, match=rf"^Path {re.escape(repr(relative))} is outside the results "
                                                 rf"store .*; store paths are relative to it, e.g. models/<trial_id>"):
            store.path(relative)


def test_dots_inside_the_store_are_refused_too_and_plain_paths_are_joined(tmp_path):
    store = ResultsStore(tmp_path)
    with pytest.raises(FrugalrayError, match="outside the results store"):
        store.path("models/../trials")  # stays inside once resolved, but a row's path never has ".."
    assert store.path("models/abc") == f"{tmp_path.resolve()}/models/abc"
    assert ResultsStore("s3://bucket/results?region=us-east-1").path("models/abc") == "bucket/results/models/abc"


def test_a_symbolic_link_out_of_a_local_store_is_refused(tmp_path):
    (tmp_path / "store" / "models").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "store" / "models" / "link")
    store = ResultsStore(tmp_path / "store")
    with pytest.raises(FrugalrayError, match="outside the results store"):
        store.path("models/link")
    assert store.read_bytes("models/missing") is None


def test_a_file_that_cannot_be_read_is_an_error_naming_it(tmp_path):
    store = ResultsStore(tmp_path)
    (tmp_path / "models" / "folder").mkdir(parents=True)
    with pytest.raises(FrugalrayError, match=rf"^{re.escape(str(tmp_path.resolve()))}/models/folder cannot be read: "):
        store.read_bytes("models/folder")  # a folder, not a missing file


def test_row_files_are_named_by_their_hash_or_nohash_and_a_random_suffix(tmp_path):
    store = ResultsStore(tmp_path)
    named = Path(store.append(_row(config_hash="3f2a"))).name
    unnamed = Path(store.append(_row(config_hash=None))).name
    assert re.fullmatch(r"3f2a-[0-9a-f]{12}\.parquet", named)
    assert re.fullmatch(r"nohash-[0-9a-f]{12}\.parquet", unnamed)


def test_a_file_at_the_root_of_a_store_whose_name_ends_in_x_lands_there(tmp_path):
    store = ResultsStore(tmp_path / "resultsX")
    written = store.write_bytes(b"{}", "", "metadata.json")
    assert written == f"{(tmp_path / 'resultsX').resolve()}/metadata.json"
    assert (tmp_path / "resultsX" / "metadata.json").read_bytes() == b"{}"


def test_a_write_that_fails_leaves_no_staging_file_and_raises_its_own_error(tmp_path):
    store = ResultsStore(tmp_path).check_writable()

    def fails(where, filesystem):
        with filesystem.open_output_stream(where) as out:
            out.write(b"half")
        raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full"):
        store._write("trials", "x.parquet", fails)
    assert list((tmp_path / STAGING).iterdir()) == [] and not (tmp_path / "trials" / "x.parquet").exists()


def test_staging_folders_are_inside_a_local_store_even_a_new_one(tmp_path):
    folder = Path(ResultsStore(tmp_path / "new" / "store").staging_folder())  # .staging does not exist yet
    assert folder.is_dir() and folder.parent == (tmp_path / "new" / "store" / STAGING).resolve()


def test_staging_folders_of_a_remote_store_are_private_temporary_folders(s3_results):
    folder = Path(ResultsStore(s3_results).staging_folder())
    try:
        assert folder.is_dir() and folder.name.startswith("frugalray-model-") and not any(folder.iterdir())
    finally:
        folder.rmdir()


def test_a_remote_store_is_queried_and_its_trained_rows_found(s3_results):
    store = ResultsStore(s3_results).check_writable()
    store.append(_row(config_hash="a", f1=0.8))
    store.append(_row(config_hash="b", f1=0.3))
    assert store.trained_row("a").f1 == 0.8 and store.trained_row("c") is None
    assert store.query(where=["f1>0.5"]).column("config_hash").to_pylist() == ["a"]
    connection = duckdb.connect()
    store.register(connection)  # the view is named trials unless told otherwise
    assert connection.sql("SELECT count(*) FROM trials").fetchall() == [(2,)]


def test_sql_takes_parameters(tmp_path):
    store = ResultsStore(tmp_path)
    for n, f1 in [(1, 0.4), (2, 0.6), (3, 0.9)]:
        store.append(_row(config_hash=f"h{n}", n_kept_layers=n, f1=f1))
    result = store.query(sql="SELECT count(*) AS n FROM trials WHERE f1 > ? AND n_kept_layers < ?", params=[0.5, 3])
    assert result.column("n").to_pylist() == [1]
    connection = duckdb.connect()
    store.register(connection)
    assert connection.sql("SELECT max(f1) FROM trials").fetchall() == [(0.9,)]


def test_a_skipped_file_is_named_with_its_problem_and_the_repair_command(tmp_path, caplog):
    store = ResultsStore(tmp_path)
    store.append(_row())
    bad = tmp_path / "trials" / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING):
        assert store.table().num_rows == 1
    [message] = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    [problem] = [c.problem for c in store.checked_files() if c.path == str(bad)]
    assert problem and message == (f"Skipping {bad}: {problem}. `frugalray results {tmp_path} --repair` moves it to "
                                   "quarantine/")


def test_a_store_whose_filesystem_cannot_say_whether_it_exists_is_reported_missing(tmp_path):
    class Unreachable:
        def get_file_info(self, path):
            raise OSError("connection refused")

    store = ResultsStore(tmp_path)
    store.fs = Unreachable()
    assert "it does not exist;" in store._empty_message()
