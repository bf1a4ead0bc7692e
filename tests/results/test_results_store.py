from __future__ import annotations

import multiprocessing
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from results import SCHEMA_VERSION, ResultsError, ResultsStore, TrialRecord
from tests.results._results_factories import make_record


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    record = make_record(3, energy_mj=None, energy_source="none")
    record.error = "partial: retried once"
    with ResultsStore(tmp_path / "h.sqlite") as store:
        store.put(record)
        got = store.get("study-a", 3)
    assert got == record
    assert got is not None and got.metrics["energy_mj"].value is None
    assert got.params["sizes"] == [8, 16] and got.params["per_channel"] is True


def test_reopened_store_reads_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "h.sqlite"  # parent directory is created
    with ResultsStore(path) as store:
        store.put(make_record(0))
    with ResultsStore(path, create=False) as store:
        assert store.records("study-a") == [make_record(0)]
        assert store.schema_version == SCHEMA_VERSION


def test_put_replaces_same_trial(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "h.sqlite") as store:
        store.put(make_record(1, state="running", accuracy=None))
        store.put(make_record(1, state="complete", accuracy=0.75))
        records = store.records("study-a")
    assert len(records) == 1
    assert records[0].state == "complete" and records[0].metric_value("accuracy") == 0.75


def test_records_sorted_and_studies_listed(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "h.sqlite") as store:
        for n in (5, 2, 9):
            store.put(make_record(n))
        store.put(make_record(0, study="study-b"))
        assert [r.trial_number for r in store.records("study-a")] == [2, 5, 9]
        assert store.studies() == ["study-a", "study-b"]
        assert store.records("nope") == []
        assert store.get("study-a", 4) is None


def test_find_complete_ignores_other_states_and_studies(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "h.sqlite") as store:
        store.put(make_record(0, candidate_key="k", state="failed"))
        store.put(make_record(1, candidate_key="k", state="running"))
        store.put(make_record(2, candidate_key="k", study="other"))
        assert store.find_complete("study-a", "k") is None
        store.put(make_record(4, candidate_key="k"))
        store.put(make_record(3, candidate_key="k"))
        found = store.find_complete("study-a", "k")
    assert found is not None and found.trial_number == 3


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": "done"}, "state 'done'"),
        ({"trial_number": -1}, "trial_number"),
        ({"study": ""}, "study"),
        ({"params": {"f": object()}}, "'params' is not JSON"),
    ],
)
def test_invalid_record_rejected_and_old_row_kept(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with ResultsStore(tmp_path / "h.sqlite") as store:
        store.put(make_record(0))
        bad = make_record(0)
        for key, value in change.items():
            setattr(bad, key, value)
        with pytest.raises(ResultsError, match=message):
            store.put(bad)
        assert store.get("study-a", 0) == make_record(0)


def test_corrupt_file_gives_one_line_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(ResultsError, match=re.escape("junk.sqlite")) as info:
        ResultsStore(path)
    assert "\n" not in str(info.value)


def test_damaged_pages_give_error_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with ResultsStore(path) as store:
        for n in range(50):
            store.put(make_record(n))
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # keep SQLite's magic, wreck the rest
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(ResultsError, match=re.escape("h.sqlite")), ResultsStore(path) as store:
        store.records("study-a")


def test_corrupt_json_row_named(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with ResultsStore(path) as store:
        store.put(make_record(7))
    conn = sqlite3.connect(path)
    conn.execute("UPDATE trials SET metrics = '{not json'")
    conn.commit()
    conn.close()
    with (
        ResultsStore(path) as store,
        pytest.raises(ResultsError, match="trial 7 of study 'study-a'"),
    ):
        store.get("study-a", 7)


def test_missing_file_with_create_false(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=re.escape("missing.sqlite: no results database")):
        ResultsStore(tmp_path / "missing.sqlite", create=False)
    assert not (tmp_path / "missing.sqlite").exists()


def test_foreign_sqlite_file_with_create_false(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(ResultsError, match="not a results database"):
        ResultsStore(path, create=False)


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    ResultsStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
    )
    conn.commit()
    conn.close()
    with pytest.raises(ResultsError, match="newer"):
        ResultsStore(path)


def test_opening_is_idempotent_and_keeps_other_tables(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    with ResultsStore(path) as store:
        store.put(make_record(0))
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE device_leases (device TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO device_leases VALUES ('pixel-1')")
    conn.commit()
    conn.close()
    for _ in range(3):
        with ResultsStore(path) as store:
            assert len(store.records("study-a")) == 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT device FROM device_leases").fetchall() == [("pixel-1",)]
    assert conn.execute("SELECT value FROM meta").fetchall() == [(str(SCHEMA_VERSION),)]
    conn.close()


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "h.sqlite")
    store.close()
    store.close()
    with pytest.raises(ResultsError, match="closed"):
        store.records("study-a")


def _write_many(path: str, study: str, first: int, count: int, barrier, spans) -> None:  # type: ignore[no-untyped-def]
    with ResultsStore(path, busy_timeout_s=60.0) as store:
        barrier.wait(timeout=120)  # both processes have opened the store; start together
        start_s = time.monotonic()
        for n in range(first, first + count):
            store.put(make_record(n, study=study))
            # Both writers also fight over one shared row.
            store.put(make_record(10_000, study="shared", accuracy=float(first + n)))
        spans.put((start_s, time.monotonic()))


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier, spans = ctx.Barrier(2), ctx.Queue()
    workers = [
        ctx.Process(target=_write_many, args=(path, "study-a", 0, 200, barrier, spans)),
        ctx.Process(target=_write_many, args=(path, "study-a", 200, 200, barrier, spans)),
    ]
    for w in workers:
        w.start()
    (start_a, end_a), (start_b, end_b) = spans.get(timeout=240), spans.get(timeout=240)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert max(start_a, start_b) < min(end_a, end_b), "writers did not overlap in time"
    with ResultsStore(path) as store:
        records = store.records("study-a")
        assert [r.trial_number for r in records] == list(range(400))
        assert all(r == make_record(r.trial_number) for r in records)
        assert len(store.records("shared")) == 1


def _write_forever(path: str) -> None:
    with ResultsStore(path) as store:
        n = 0
        while True:
            store.put(make_record(n % 50, accuracy=float(n)))
            n += 1


def test_killed_writer_leaves_only_whole_records(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    ResultsStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_write_forever, args=(path,))
    writer.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with ResultsStore(path) as store:
            if len(store.records("study-a")) >= 20:
                break
        time.sleep(0.05)
    assert writer.pid is not None
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(timeout=30)
    with ResultsStore(path) as store:
        records = store.records("study-a")
    assert len(records) >= 20
    for r in records:
        assert isinstance(r, TrialRecord)
        assert r == make_record(r.trial_number, accuracy=r.metric_value("accuracy"))


def test_writes_stay_visible_to_other_processes_while_the_lease_store_shares_the_file(tmp_path: Path) -> None:
    """Regression: opening the fleet's lease store read the file's header with open()/close(),
    which dropped this process's POSIX locks held by the results store's SQLite connection, and
    other processes stopped seeing its commits until it exited."""
    import subprocess
    import sys

    from devices.leases import LeaseStore

    path = tmp_path / "harness.sqlite"
    script = ("import sys; from results.store import ResultsStore; "
              "print(len(ResultsStore(sys.argv[1], create=False).records('s')))")
    with ResultsStore(path) as store, LeaseStore(path) as leases:
        assert leases.acquire("board", "host:1:x", 60) is not None
        for number in range(3):
            store.put(make_record(study="s", trial_number=number))
            seen = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                                  text=True, timeout=60, check=True).stdout.strip()
            assert seen == str(number + 1)
