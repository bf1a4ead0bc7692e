"""Leases and device health in a real SQLite file, from several stores and several processes."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from devices.base import HealthReport
from devices.leases import REACHABLE_FACT, Lease, LeaseStore, LeaseStoreError, make_owner

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """A wall clock the test moves by hand, so expiry needs no sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "results" / "harness.sqlite"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_two_stores_cannot_hold_the_same_lease(db: Path, clock: FakeClock) -> None:
    with LeaseStore(db, clock=clock) as a, LeaseStore(db, clock=clock) as b:
        lease = a.acquire("pi5-a", "host:1:a", ttl_s=60)
        assert lease is not None and lease.owner == "host:1:a"
        assert b.acquire("pi5-a", "host:2:b", ttl_s=60) is None
        assert a.acquire("pi5-a", "host:1:a", ttl_s=60) is None  # not re-entrant, even for its owner
        assert b.acquire("pi5-b", "host:2:b", ttl_s=60) is not None  # other devices are independent
        held = b.holder("pi5-a")
        assert held is not None and held.owner == "host:1:a" and held.token == lease.token
        assert held.expires_at == pytest.approx(clock.now + 60)


def test_an_expired_lease_is_reclaimed_and_logged(db: Path, clock: FakeClock,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with LeaseStore(db, clock=clock) as a, LeaseStore(db, clock=clock) as b:
        old = a.acquire("pi5-a", "host:1:a", ttl_s=10)
        assert old is not None
        clock.advance(9.9)
        assert b.acquire("pi5-a", "host:2:b", ttl_s=10) is None
        clock.advance(0.2)
        assert a.holder("pi5-a") is None  # expired: nobody holds it
        with caplog.at_level(logging.WARNING, logger="devices.leases"):
            new = b.acquire("pi5-a", "host:2:b", ttl_s=10)
        assert new is not None and new.owner == "host:2:b"
        assert any("reclaiming the lease of host:1:a" in r.getMessage() for r in caplog.records)
        # the old holder finds out when it renews, and cannot release the new grant
        assert a.renew(old, ttl_s=10) is None
        assert a.release(old) is False
        assert b.holder("pi5-a") == new


def test_renew_extends_and_keeps_the_lease(db: Path, clock: FakeClock) -> None:
    with LeaseStore(db, clock=clock) as a, LeaseStore(db, clock=clock) as b:
        lease = a.acquire("pi5-a", "host:1:a", ttl_s=10)
        assert lease is not None
        for _ in range(5):  # 40 s in all, four times the ttl
            clock.advance(8)
            renewed = a.renew(lease, ttl_s=10)
            assert renewed is not None and renewed.token == lease.token
            assert renewed.expires_at == pytest.approx(clock.now + 10)
            assert b.acquire("pi5-a", "host:2:b", ttl_s=10) is None


def test_release_only_by_the_holder_and_idempotent(db: Path, clock: FakeClock) -> None:
    with LeaseStore(db, clock=clock) as a, LeaseStore(db, clock=clock) as b:
        lease = a.acquire("pi5-a", "host:1:a", ttl_s=60)
        assert lease is not None
        forged = Lease("pi5-a", "host:2:b", "not-the-token", lease.acquired_at, lease.expires_at)
        assert b.release(forged) is False
        assert b.holder("pi5-a") == lease
        assert a.release(lease) is True
        assert a.release(lease) is False  # idempotent
        again = a.acquire("pi5-a", "host:1:a", ttl_s=60)
        assert again is not None
        assert a.release(lease) is False  # an older grant does not free the newer one
        assert a.holder("pi5-a") == again


def test_a_dead_local_process_lease_is_reclaimed_early(db: Path, clock: FakeClock) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead_pid = int(finished.stdout)
    host = socket.gethostname()
    with LeaseStore(db, clock=clock) as store, LeaseStore(db, clock=clock, reclaim_dead=False) as strict:
        assert store.acquire("pi5-a", make_owner(host, dead_pid), ttl_s=600) is not None
        assert strict.acquire("pi5-a", "other:1:x", ttl_s=60) is None  # opt-out: waits for expiry
        reclaimed = store.acquire("pi5-a", "other:1:x", ttl_s=60)
        assert reclaimed is not None and reclaimed.owner == "other:1:x"
        # a live process of this host, or a process of another host, keeps its lease
        assert store.acquire("pi5-b", make_owner(host, os.getppid()), ttl_s=600) is not None
        assert store.acquire("pi5-b", "other:1:x", ttl_s=60) is None
        assert store.acquire("pi5-c", make_owner("elsewhere", dead_pid), ttl_s=600) is not None
        assert store.acquire("pi5-c", "other:1:x", ttl_s=60) is None


_WORKER = textwrap.dedent("""
    import os, sys, time
    from devices.leases import LeaseStore, make_owner
    db, marker, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    owner = make_owner()
    held = 0
    with LeaseStore(db) as store:
        while held < rounds:
            lease = store.acquire("pi5-a", owner, ttl_s=60)
            if lease is None:
                time.sleep(0.001)
                continue
            # inside the lease: the marker must not exist (O_EXCL fails if another holder made it)
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
            os.unlink(marker)
            assert store.release(lease)
            held += 1
    print(held)
""")


def test_processes_never_hold_one_lease_at_once(db: Path, tmp_path: Path) -> None:
    LeaseStore(db).close()  # create the schema once, as the harness does
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    marker = tmp_path / "inside"
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(db), str(marker), "25"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(3)]
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert out.strip() == "25"


def test_failures_quarantine_and_a_passing_check_clears_it(db: Path, clock: FakeClock) -> None:
    with LeaseStore(db, clock=clock) as store:
        assert store.record_failure("pi5-a", "device 'pi5-a': ssh\nconnection lost", 3) is False
        store.record_success("pi5-a")  # a success resets the run of failures
        assert store.record_failure("pi5-a", "e1", 3) is False
        assert store.record_failure("pi5-a", "e2", 3) is False
        assert store.state("pi5-a").consecutive_failures == 2
        clock.advance(1)
        assert store.record_failure("pi5-a", "e3", 3) is True
        state = store.state("pi5-a")
        assert state.state == "quarantined" and state.quarantined
        assert state.quarantine_reason == "3 consecutive failures; last: e3"
        assert state.quarantined_since == clock.now
        assert (state.measurements_ok, state.measurements_failed) == (1, 4)
        assert state.last_error == "e3"
        store.record_health(HealthReport("pi5-a", ("too hot: 91 C",)))
        assert store.state("pi5-a").state == "quarantined"  # a failing check keeps it there
        store.record_health(HealthReport("pi5-a"))
        state = store.state("pi5-a")
        assert state.state == "available" and not state.quarantined
        assert state.consecutive_failures == 0 and state.quarantine_reason is None


def test_states_are_explicit(db: Path, clock: FakeClock) -> None:
    with LeaseStore(db, clock=clock) as store:
        store.record_health(HealthReport("ok"))
        store.record_health(HealthReport("sick", ("free disk 3 MB < 100 MB",)))
        store.record_health(HealthReport("gone", ("ssh: connection refused",), {REACHABLE_FACT: "false"}))
        store.quarantine("bad", "operator: flaky USB")
        store.record_health(HealthReport("busy"))
        lease = store.acquire("busy", "host:9:z", ttl_s=30)
        assert lease is not None
        states = {s.device: s for s in store.states(["ok", "sick", "gone", "bad", "busy", "new"])}
        assert {n: s.state for n, s in states.items()} == {
            "ok": "available", "sick": "unhealthy", "gone": "offline", "bad": "quarantined",
            "busy": "leased", "new": "unknown"}
        assert states["busy"].holder == "host:9:z" and states["busy"].lease_expires_at == lease.expires_at
        assert states["sick"].problems == ("free disk 3 MB < 100 MB",) and states["sick"].reachable
        assert states["gone"].reachable is False and states["new"].reachable is None
        assert states["sick"].summary() == "unhealthy: free disk 3 MB < 100 MB"
        assert states["ok"].checked_at == clock.now and states["ok"].check_ok is True
        assert [s.device for s in store.states()] == ["bad", "busy", "gone", "ok", "sick"]
        store.clear_quarantine("bad")
        assert store.state("bad").state == "unknown"  # never checked
        clock.advance(31)
        assert store.state("busy").state == "available"  # the lease ran out


def test_lives_beside_the_results_store(db: Path) -> None:
    from results.store import ResultsStore

    results = ResultsStore(db)
    try:
        with LeaseStore(db) as store:
            assert store.acquire("pi5-a", "host:1:a", ttl_s=5) is not None
        assert results.schema_version >= 1
    finally:
        results.close()
    with LeaseStore(db) as store:  # reopening keeps the rows (CREATE ... IF NOT EXISTS)
        holder = store.holder("pi5-a")
        assert holder is not None and holder.owner == "host:1:a"


def test_fleet_tables_are_versioned_and_a_newer_file_is_refused(db: Path) -> None:
    import sqlite3

    from devices.leases import FLEET_SCHEMA_VERSION

    with LeaseStore(db):
        pass
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("SELECT value FROM fleet_meta WHERE key = 'schema_version'").fetchone()
        assert int(version) == FLEET_SCHEMA_VERSION
        conn.execute("UPDATE fleet_meta SET value = ? WHERE key = 'schema_version'", (str(FLEET_SCHEMA_VERSION + 1),))
    with pytest.raises(LeaseStoreError, match=rf"{db.name}: fleet schema version {FLEET_SCHEMA_VERSION + 1} is newer"):
        LeaseStore(db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE fleet_meta SET value = 'x' WHERE key = 'schema_version'")
    with pytest.raises(LeaseStoreError, match="is not a number"):
        LeaseStore(db)


def test_errors_name_the_file_and_the_value(tmp_path: Path, db: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_text("not a database at all")
    with pytest.raises(LeaseStoreError, match="junk.sqlite: not a SQLite database"):
        LeaseStore(junk)
    store = LeaseStore(db)
    with pytest.raises(ValueError, match="ttl_s must be a positive"):
        store.acquire("pi5-a", "o", ttl_s=0)
    with pytest.raises(ValueError, match="quarantine_after must be >= 1"):
        store.record_failure("pi5-a", "x", 0)
    store.close()
    store.close()
    with pytest.raises(LeaseStoreError, match="lease store is closed"):
        store.acquire("pi5-a", "o", ttl_s=1)
