"""A store's health and repair while writers are alive: another machine's live folder is kept by its heartbeat."""

import os
import threading
import time
from pathlib import Path

import pytest

from frugalray import ResultsStore
from frugalray.cli import main

HOURS_2 = 2 * 3600


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"waited {timeout} s for {what}")


def _heartbeat_of(folder: Path) -> list[threading.Thread]:
    """The heartbeat thread of ``folder`` (one test's own: other tests' writers may beat meanwhile)."""
    return [t for t in threading.enumerate() if t.name == f"frugalray heartbeat {folder}"]


def test_repair_keeps_another_machines_live_folder_by_its_heartbeat_and_removes_a_dead_ones(tmp_path, monkeypatch,
                                                                                          capsys):
    from frugalray.results import files, health

    store = ResultsStore(tmp_path).check_writable()
    monkeypatch.setattr(files, "HEARTBEAT_S", 0.05, raising=False)  # beats every 50 ms instead of every minute
    with monkeypatch.context() as elsewhere:  # a trial on gpu-node-7 saving weights, its folder made before training
        elsewhere.setattr(files.socket, "gethostname", lambda: "gpu-node-7")
        live = Path(store.staging_folder())
    assert live.name.startswith("gpu-node-7_")
    [heartbeat] = _heartbeat_of(live)
    dead = tmp_path / ".staging" / f"gpu-node-8_4242_{'a' * 32}"  # the folder of a writer killed on gpu-node-8
    dead.mkdir()
    created = time.time() - HOURS_2
    os.utime(live, (created, created))  # made two hours ago, nothing written into it since
    _wait_for(lambda: time.time() - live.stat().st_mtime < 60, "the live writer's heartbeat")
    now = time.time()  # --check and --repair read the time here, whatever the load
    monkeypatch.setattr(health, "clock", lambda: now)
    os.utime(dead, (now - HOURS_2, now - HOURS_2))  # made two hours ago too, by a writer gone since

    assert main(["results", str(tmp_path), "--check"]) == 1
    out = capsys.readouterr().out
    assert f".staging/{live.name} (0 min old, may still be being written)" in out
    assert f".staging/{dead.name} (120 min old, stale)" in out
    assert main(["results", str(tmp_path), "--repair"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"removed stale staging folder .staging/{dead.name}"
    assert live.is_dir() and not dead.exists()

    monkeypatch.setattr(files, "HEARTBEAT_S", 3600.0)  # its next beat an hour away, as in a long training
    time.sleep(0.2)  # the heartbeat waits for that beat now
    (live / "weights.bin").write_bytes(b"trained")  # the trial ends: its weights go in, the folder moves in place
    store.put_folder(live, "models/t-1")
    assert (tmp_path / "models" / "t-1" / "weights.bin").read_bytes() == b"trained"
    heartbeat.join(timeout=5)  # put_folder stops it: it does not linger until a beat finds its folder gone
    assert not heartbeat.is_alive() and not _heartbeat_of(live)
    assert not live.exists()  # the heartbeat made nothing again where the folder was


def test_a_live_writers_folder_a_few_heartbeats_old_is_never_stale(tmp_path, monkeypatch):
    """Another machine's staging entry is judged by its age alone. A live writer touches it every
    ``HEARTBEAT_S``, so an entry last touched one beat ago, or a few (a busy node, a slow network filesystem), has a
    writer: only one untouched for ``STALE_AFTER_S`` has lost it. A threshold as short as a beat would remove
    the weights of every trial that saves them on another node, each time --repair ran between two beats."""
    from frugalray.results import files, health

    assert health.STALE_AFTER_S >= 10 * files.HEARTBEAT_S  # many beats missed in a row, not one late beat
    now = time.time()
    monkeypatch.setattr(health, "clock", lambda: now)
    ages = [files.HEARTBEAT_S, 5 * files.HEARTBEAT_S, health.STALE_AFTER_S + files.HEARTBEAT_S]  # last touched
    for n, age in enumerate(ages):
        folder = tmp_path / ".staging" / f"gpu-node-{n}_4242_{'b' * 32}"
        folder.mkdir(parents=True)
        os.utime(folder, (now - age, now - age))
    checked = health.check_store(ResultsStore(tmp_path))
    assert [left.age_s for left in checked.leftovers] == pytest.approx(ages, abs=1)
    assert [left.stale for left in checked.leftovers] == [False, False, True]
    assert not checked.healthy


# -- many writers, and --check / --repair meanwhile -----------------------------------------------------
WRITER = """
import shutil, sys, time
from pathlib import Path
from frugalray.results.store import ResultsStore

location, writer, rows, work, elsewhere = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5]
if elsewhere == "yes":  # a node writing over NFS: --repair judges its live folder by its heartbeat, not its PID
    import socket
    from frugalray.results import files
    socket.gethostname = lambda: "node-" + writer
    files.HEARTBEAT_S = 0.1

def rounds():  # --check/--repair rounds the checker has finished
    return int((work / "rounds").read_text()) if (work / "rounds").exists() else 0

def two_more_rounds():  # then a whole round ran while this writer waited
    n, deadline = rounds() + 2, time.monotonic() + 240
    while rounds() < n:
        assert time.monotonic() < deadline, f"no --check/--repair round {n}"
        time.sleep(0.02)

store = ResultsStore(location)
created = time.time()
folder = Path(store.staging_folder())  # weights of a trial being trained: live from start to end
for i in range(rows):
    if i == rows // 2:
        two_more_rounds()  # half the rows written: --check and --repair run meanwhile
    store.append({"trial_id": f"{writer}-{i}", "config_hash": f"{writer}-{i}", "status": "ok", "task": "demo_pos",
                  "strategy": "first", "strategy_n": 1, "kept_layers": [0], "n_kept_layers": 1})
while time.time() - created < 7:  # made longer ago than --repair's threshold here (5 s)
    time.sleep(0.05)
two_more_rounds()
(folder / "weights.bin").write_text(writer)  # still there: repair removed nothing live
store.put_folder(folder, f"models/{writer}")
shutil.rmtree(folder, ignore_errors=True)  # a local copy when the store is remote, as a trial leaves none
"""

CHECKER = """
import contextlib, io, json, os, sys
from pathlib import Path
from frugalray.cli import main
from frugalray.results import health

health.STALE_AFTER_S = 5  # another machine's entry untouched for 5 s is stale (an hour outside this test)
location, work = sys.argv[1], Path(sys.argv[2])
with open(work / "checks.jsonl", "w") as log:
    done = 0
    while True:
        last = (work / "writers_done").exists()
        for command in ("--check", "--repair"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                code = main(["results", location, command])
            log.write(json.dumps({"command": command, "code": code, "out": out.getvalue()}) + "\\n")
            log.flush()
        done += 1
        (work / "rounds.tmp").write_text(str(done))
        os.replace(work / "rounds.tmp", work / "rounds")
        if last:
            break
"""


@pytest.mark.parametrize("where", ["folder", "s3"])
@pytest.mark.slow
def test_writers_in_several_processes_with_check_and_repair_meanwhile_lose_nothing(where, tmp_path, request):
    import json
    import subprocess
    import sys
    from collections import Counter

    location = str(tmp_path / "store") if where == "folder" else request.getfixturevalue("s3_results")
    store = ResultsStore(location).check_writable()
    work = tmp_path / "work"
    work.mkdir()
    writers, rows = 4, 20
    run = lambda *argv: subprocess.Popen([sys.executable, "-c", *argv], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)
    checker = run(CHECKER, location, str(work))
    # On a folder, two writers are of this machine (judged by PID), two of others (by their heartbeat).
    started = [run(WRITER, location, f"w{n}", str(rows), str(work), "yes" if where == "folder" and n % 2 else "no")
               for n in range(writers)]
    outputs = [process.communicate(timeout=300)[0] for process in started]
    assert [process.returncode for process in started] == [0] * writers, outputs
    (work / "writers_done").touch()
    assert checker.wait(timeout=300) == 0, checker.communicate()[0]

    # Nothing lost, nothing twice: every appended row, readable, once.
    found = Counter(row["config_hash"] for row in store.table().to_pylist())
    assert found == Counter(f"w{n}-{i}" for n in range(writers) for i in range(rows))
    for n in range(writers):  # each writer's live folder reached its place whole
        assert store.read_bytes(f"models/w{n}/weights.bin") == f"w{n}".encode()
    # --check saw a healthy store every time, writers mid-write included, and --repair never had work
    checks = [json.loads(line) for line in (work / "checks.jsonl").read_text().splitlines()]
    assert len(checks) >= 2 * 3  # rounds ran while writers wrote (they waited for them), then the last
    assert [c for c in checks if c["command"] == "--check" and (c["code"], c["out"].splitlines()[-1]) != (0, "Healthy.")] == []
    repairs = [c for c in checks if c["command"] == "--repair"]
    assert [c for c in repairs if c["code"] != 0 or not c["out"].startswith("nothing to repair\n")] == []
    assert any(0 < int(c["out"].split(" trial file(s)")[0].rsplit(" ", 1)[1]) < writers * rows
               for c in checks if c["command"] == "--check")  # a check saw the store half written
    if where == "folder":
        assert not list((tmp_path / "store" / ".staging").iterdir())


# -- repair's paths and words, the stale threshold's edge, a local writer's signal ------------------------
JUNK = b"not parquet"


def test_a_bad_file_whose_name_is_taken_in_quarantine_goes_to_the_next_numbered_folder(tmp_path):
    from frugalray.results.health import repair_store

    store = ResultsStore(tmp_path).check_writable()
    moved = []
    for _ in range(3):  # the same name goes bad three times
        (tmp_path / "trials" / "x.parquet").write_bytes(JUNK)
        [line] = repair_store(store)
        moved.append(line.split(" (", 1)[0])
    assert moved == ["moved trials/x.parquet to quarantine/x.parquet",
                     "moved trials/x.parquet to quarantine/1/x.parquet",
                     "moved trials/x.parquet to quarantine/2/x.parquet"]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "quarantine").rglob("*.parquet")) == [
        "quarantine/1/x.parquet", "quarantine/2/x.parquet", "quarantine/x.parquet"]
    assert all(p.read_bytes() == JUNK for p in (tmp_path / "quarantine").rglob("*.parquet"))
    assert repair_store(store) == ["nothing to repair"]


def test_the_check_text_says_what_needs_attention_and_only_then(tmp_path, monkeypatch):
    from frugalray.results import files, health

    store = ResultsStore(tmp_path).check_writable()
    assert "Needs attention" not in health.check_store(store).text()
    now = time.time()
    monkeypatch.setattr(health, "clock", lambda: now)
    stale = tmp_path / ".staging" / f"gpu-node-9_4242_{'c' * 32}"  # another machine's, not touched for long
    stale.mkdir(parents=True)
    os.utime(stale, (now - health.STALE_AFTER_S - files.HEARTBEAT_S,) * 2)
    text = health.check_store(store).text()  # no bad file: the stale entry alone needs the repair
    assert text.splitlines()[-1] == (f"Needs attention: `frugalray results {tmp_path} --repair` moves bad files "
                                     f"to quarantine/ and removes stale staging files.")
    assert health.repair_store(store) == [f"removed stale staging folder .staging/{stale.name}"]
    (tmp_path / ".staging" / f"gpu-node-9_4243_{'d' * 32}.tmp").write_bytes(b"half")
    os.utime(tmp_path / ".staging" / f"gpu-node-9_4243_{'d' * 32}.tmp", (now - 10 * health.STALE_AFTER_S,) * 2)
    assert health.repair_store(store) == [f"removed stale staging file .staging/gpu-node-9_4243_{'d' * 32}.tmp"]
    row = {"config_hash": "h", "status": "ok", "trial_id": "t1", "task": "demo_pos", "seed": 0}
    store.append(row), store.append(row | {"trial_id": "t2"})  # one configuration trained twice, nothing else
    checked = health.check_store(store)
    assert checked.duplicates == [("h", 2)] and not checked.healthy
    assert checked.text().splitlines()[-3:] == [
        "Config hashes trained more than once (1; views use the latest row):", "  h: 2 successful rows",
        "Needs attention: configurations were trained more than once (compute spent twice); their rows are kept."]


def test_a_store_written_by_hand_or_by_an_older_version_is_checked_without_error(tmp_path, monkeypatch):
    """No .staging/ folder (a store copied by hand), a file at the store's root, and the ``.staging-*`` file an
    older version left beside the trial files: checked, the old leftover found and stale."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from frugalray.results import health

    (tmp_path / "trials").mkdir()
    pq.write_table(pa.table({"trial_id": ["t"], "config_hash": ["h"], "status": ["ok"]}), tmp_path / "trials" / "h-1.parquet")
    (tmp_path / "metadata.json").write_text("{}")
    old = tmp_path / "trials" / ".staging-1234.parquet"
    old.write_bytes(b"half")
    now = time.time()
    monkeypatch.setattr(health, "clock", lambda: now)
    os.utime(old, (now - 2 * health.STALE_AFTER_S,) * 2)
    checked = health.check_store(ResultsStore(tmp_path))
    assert (checked.files, checked.rows, checked.bad) == (1, 1, [])
    assert [(left.path, left.stale, left.folder) for left in checked.leftovers] == [("trials/.staging-1234.parquet",
                                                                                     True, False)]
    assert checked.leftovers[0].age_s == pytest.approx(2 * health.STALE_AFTER_S)


def test_an_entry_exactly_at_the_threshold_is_not_yet_stale():
    from frugalray.results.health import STALE_AFTER_S, _stale

    other = f"gpu-node-9_4242_{'e' * 32}"
    assert _stale(other, STALE_AFTER_S) is False and _stale(other, STALE_AFTER_S + 0.001) is True


def test_a_local_writer_is_asked_whether_it_lives_and_left_running(tmp_path):
    """This machine's entries name their writer's pid: a live one is never stale (however old), a dead one
    always; asking must not signal the writer."""
    import socket
    import subprocess
    import sys

    from frugalray.results.health import _stale

    # a writer that any signal but 0 would end (SIGHUP's default action restored, should its parent ignore it)
    writer = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGHUP, "
                               "signal.SIG_DFL); print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"ready\n"  # its SIGHUP handler is the default from here on
        name = f"{socket.gethostname()}_{writer.pid}_{'f' * 32}"
        assert _stale(name, 10 ** 6) is False
        time.sleep(0.5)
        assert writer.poll() is None  # still running: nothing was sent to it
    finally:
        writer.kill()
        writer.wait()
    assert _stale(name, 0.0) is True  # its process is gone
