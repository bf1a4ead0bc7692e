"""Device leases and health records in the results database, shared by every harness process.

Several harness processes (a search, ``harness measure``, an operator's ``harness devices
check``) may want the same board at once; a measurement only means something when the board
runs one model at a time. :class:`LeaseStore` keeps, in the results database file
(``results/harness.sqlite``), beside the results store's own tables:

``fleet_leases``
    one row per leased device: who holds it (an *owner*, ``host:pid:nonce``, see
    :func:`make_owner`), a token naming this particular grant, and when it expires.
``fleet_health``
    one row per device ever seen: consecutive measurement failures, the quarantine flag with
    its reason and start, the last health check (time, result, problems, reachability), the
    last error, and counters of measurements that succeeded or failed.

Leases are exclusive and expire: a holder renews its lease while it works (the fleet's
heartbeat does) and deletes it in a ``finally``; a crashed holder's lease simply runs out and
the next :meth:`LeaseStore.acquire` reclaims it, with a log line. A lease whose owner names
this host and a process that no longer exists is reclaimed at once (``reclaim_dead=True``).

Units and clocks: every timestamp stored is wall-clock seconds since the epoch
(``time.time()``), because several processes, each with its own monotonic clock, compare them.
Durations (``ttl_s``) are seconds.

Lifecycle: open a store on a path (the file and its parent folder are created), use it, then
:meth:`LeaseStore.close` it (also as a context manager). Thread safety: one store may be used
from several threads of one process (the fleet's workers and its heartbeat); its calls are
serialised on one connection, each a short ``BEGIN IMMEDIATE`` transaction, and SQLite's busy
timeout makes other processes' writers wait their turn rather than fail.

Errors: :class:`LeaseStoreError` (a :class:`~devices.base.DeviceError`) when the file is not a
SQLite database or cannot be read or written; its message names the file and what to do.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from devices.base import REACHABLE_FACT, DeviceError, HealthReport

if TYPE_CHECKING:
    from os import PathLike
    from types import TracebackType

__all__ = [
    "DEVICE_STATES",
    "REACHABLE_FACT",
    "DeviceState",
    "DeviceStatus",
    "Lease",
    "LeaseStore",
    "LeaseStoreError",
    "FLEET_SCHEMA_VERSION",
    "make_owner",
]

logger = logging.getLogger(__name__)

DeviceStatus = Literal["available", "leased", "quarantined", "unhealthy", "offline", "unknown"]
DEVICE_STATES: tuple[DeviceStatus, ...] = (
    "available", "leased", "quarantined", "unhealthy", "offline", "unknown")
"""Every state :meth:`LeaseStore.states` reports, in no particular order."""

"""The :attr:`~devices.base.HealthReport.facts` key a device sets to ``"false"`` when it could
not be reached at all; a failing check with it is recorded as *offline* rather than *unhealthy*."""

#: Version of the fleet tables; bump it (and migrate in ``_check_version``) when they change.
#: Kept in a table of their own: the results store's ``meta`` marks a file as a results store.
FLEET_SCHEMA_VERSION = 1
_VERSION_KEY = "schema_version"

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fleet_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS fleet_leases (
        device TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        token TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS fleet_health (
        device TEXT PRIMARY KEY,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        quarantined INTEGER NOT NULL DEFAULT 0,
        quarantine_reason TEXT,
        quarantined_since REAL,
        checked_at REAL,
        check_ok INTEGER,
        check_reachable INTEGER,
        check_problems TEXT NOT NULL DEFAULT '[]',
        last_error TEXT,
        last_error_at REAL,
        measurements_ok INTEGER NOT NULL DEFAULT 0,
        measurements_failed INTEGER NOT NULL DEFAULT 0
    )""",
)
_HEALTH_COLUMNS = ("device", "consecutive_failures", "quarantined", "quarantine_reason",
                   "quarantined_since", "checked_at", "check_ok", "check_reachable",
                   "check_problems", "last_error", "last_error_at", "measurements_ok",
                   "measurements_failed")


class LeaseStoreError(DeviceError):
    """The lease database cannot be opened, read or written; the message names the file."""


def make_owner(host: str | None = None, pid: int | None = None) -> str:
    """An owner name for this process: ``host:pid:nonce``.

    The host and pid let another process on the same host see that the owner died (and reclaim
    its leases early); the random nonce tells apart two fleets of one process, and a process
    whose pid was reused.
    """
    return f"{host or socket.gethostname()}:{os.getpid() if pid is None else pid}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Lease:
    """One grant of exclusive use of a device.

    Attributes:
        device: The device's name.
        owner: Who holds it (see :func:`make_owner`).
        token: Names this grant: releasing or renewing an older grant of the same device by the
            same owner does nothing.
        acquired_at: When it was granted. Units: s since the epoch (wall clock).
        expires_at: When it lapses unless renewed. Units: s since the epoch (wall clock).
    """

    device: str
    owner: str
    token: str
    acquired_at: float
    expires_at: float


@dataclass(frozen=True)
class DeviceState:
    """What the database knows of one device, with one explicit :attr:`state`.

    ``state`` is, first match wins: ``leased`` (an unexpired lease exists: ``holder`` and
    ``lease_expires_at`` say by whom and until when), ``quarantined`` (too many consecutive
    failures, until a passing health check or an operator clears it), ``offline`` (the last
    health check could not reach it), ``unhealthy`` (the last health check found problems),
    ``unknown`` (never checked), else ``available``.

    Timestamps are seconds since the epoch (wall clock); ``None`` when it never happened.
    ``check_ok`` and ``reachable`` describe the last health check (``None``: none recorded),
    whatever the state: a leased device may also be quarantined.
    """

    device: str
    state: DeviceStatus
    holder: str | None = None
    lease_expires_at: float | None = None
    consecutive_failures: int = 0
    quarantined: bool = False
    quarantine_reason: str | None = None
    quarantined_since: float | None = None
    checked_at: float | None = None
    check_ok: bool | None = None
    reachable: bool | None = None
    problems: tuple[str, ...] = ()
    last_error: str | None = None
    last_error_at: float | None = None
    measurements_ok: int = 0
    measurements_failed: int = 0

    def summary(self) -> str:
        """One line for ``harness devices``: the state and why."""
        if self.state == "leased":
            return f"leased by {self.holder} until {_clock_text(self.lease_expires_at)}"
        if self.state == "quarantined":
            return f"quarantined since {_clock_text(self.quarantined_since)}: {self.quarantine_reason}"
        if self.state in ("offline", "unhealthy"):
            return f"{self.state}: {'; '.join(self.problems) or 'no problems recorded'}"
        return self.state


class LeaseStore:
    """Exclusive, expiring device leases and per-device health, in one SQLite file.

    Args:
        path: The database file, typically the results database. Created, with its parent
            folders, when missing; other tables in it are left alone.
        busy_timeout_s: How long a write waits for another process's lock. Units: s.
        reclaim_dead: Reclaim at once a lease whose owner is a process of this host that no
            longer exists (the owner must look like :func:`make_owner`'s).
        clock: Wall-clock source (``time.time``); tests pass a fake one to expire leases
            without sleeping.

    Raises:
        LeaseStoreError: The file is not a SQLite database, or cannot be opened or written.
        ValueError: ``busy_timeout_s`` is not positive.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        *,
        busy_timeout_s: float = 30.0,
        reclaim_dead: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not busy_timeout_s > 0:
            raise ValueError(f"busy_timeout_s must be positive, got {busy_timeout_s!r}")
        self.path = Path(path)
        self.reclaim_dead = reclaim_dead
        self._clock = clock
        self._host = socket.gethostname()
        # one connection shared by this process's threads; the lock keeps their transactions
        # from interleaving on it (SQLite itself serialises other processes)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if self.path.is_dir():
            raise LeaseStoreError(f"{self.path}: is a directory, not a database file")
        # No header pre-check with open(): closing another descriptor of the file would drop
        # this process's POSIX locks on it, held by the results store's connection (SQLite
        # FAQ "How to corrupt": POSIX locks cancelled by close()). SQLite refuses a non-database.
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise LeaseStoreError(f"{self.path}: cannot open the lease database: {e}") from e
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            with self._transaction("create the fleet tables") as c:
                for statement in _SCHEMA:
                    c.execute(statement)
                self._check_version(c)
        except (sqlite3.Error, LeaseStoreError) as e:
            self.close()
            if isinstance(e, LeaseStoreError):
                raise
            if isinstance(e, sqlite3.DatabaseError) and "not a database" in str(e):
                raise LeaseStoreError(f"{self.path}: not a SQLite database (bad header); "
                                      "point the lease store at the results database") from e
            raise LeaseStoreError(f"{self.path}: unusable lease database: {e}") from e

    def _check_version(self, c: sqlite3.Cursor) -> None:
        """Records the version in a new file; refuses a file written by newer fleet tables."""
        row = c.execute("SELECT value FROM fleet_meta WHERE key = ?", (_VERSION_KEY,)).fetchone()
        if row is None:
            c.execute("INSERT INTO fleet_meta (key, value) VALUES (?, ?)", (_VERSION_KEY, str(FLEET_SCHEMA_VERSION)))
            return
        try:
            version = int(row[0])
        except ValueError:
            raise LeaseStoreError(f"{self.path}: fleet schema version {row[0]!r} is not a number") from None
        if version > FLEET_SCHEMA_VERSION:
            raise LeaseStoreError(f"{self.path}: fleet schema version {version} is newer than this code's "
                                  f"{FLEET_SCHEMA_VERSION}; update the harness")

    # --- leases -------------------------------------------------------------------------------

    def acquire(self, device: str, owner: str, ttl_s: float) -> Lease | None:
        """Lease ``device`` to ``owner`` for ``ttl_s`` seconds, or ``None`` when someone holds it.

        "Someone" includes ``owner`` itself: a lease is not re-entrant. A lease that has
        expired, or whose holder is a dead process of this host (with ``reclaim_dead``), is
        reclaimed, and a warning names the previous holder.

        Raises:
            ValueError: ``ttl_s`` is not positive or ``owner`` is empty.
            LeaseStoreError: The database cannot be written.
        """
        _check_ttl(ttl_s)
        if not owner:
            raise ValueError("owner must be a non-empty string (see make_owner)")
        with self._transaction(f"lease {device!r}") as c:
            now = self._clock()
            row = c.execute("SELECT owner, expires_at FROM fleet_leases WHERE device = ?",
                            (device,)).fetchone()
            if row is not None:
                holder, expires_at = str(row[0]), float(row[1])
                if expires_at > now and not self._is_dead(holder):
                    return None
                why = (f"expired {now - expires_at:.1f} s ago" if expires_at <= now
                       else "its process is gone")
                logger.warning("device %r: reclaiming the lease of %s (%s) for %s",
                               device, holder, why, owner)
            lease = Lease(device, owner, uuid.uuid4().hex, now, now + ttl_s)
            c.execute("INSERT OR REPLACE INTO fleet_leases (device, owner, token, acquired_at, "
                      "expires_at) VALUES (?, ?, ?, ?, ?)",
                      (lease.device, lease.owner, lease.token, lease.acquired_at, lease.expires_at))
            return lease

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        """Extend ``lease`` to ``ttl_s`` seconds from now; ``None`` when it is no longer held.

        A lease is lost when it expired and another owner reclaimed it, or was released; the
        caller must then stop using the device.

        Raises:
            ValueError: ``ttl_s`` is not positive.
            LeaseStoreError: The database cannot be written.
        """
        _check_ttl(ttl_s)
        with self._transaction(f"renew the lease of {lease.device!r}") as c:
            expires_at = self._clock() + ttl_s
            # an expired lease nobody reclaimed yet is still ours: renewing it is harmless
            updated = c.execute("UPDATE fleet_leases SET expires_at = ? WHERE device = ? AND token = ?",
                                (expires_at, lease.device, lease.token)).rowcount
        if not updated:
            return None
        return Lease(lease.device, lease.owner, lease.token, lease.acquired_at, expires_at)

    def release(self, lease: Lease) -> bool:
        """Give ``lease`` back; whether it was still held. Idempotent.

        Only this grant is deleted: a lease another owner (or a later grant) now holds on the
        same device is left alone.

        Raises:
            LeaseStoreError: The database cannot be written.
        """
        with self._transaction(f"release the lease of {lease.device!r}") as c:
            return bool(c.execute("DELETE FROM fleet_leases WHERE device = ? AND token = ?",
                                  (lease.device, lease.token)).rowcount)

    def holder(self, device: str) -> Lease | None:
        """The unexpired lease on ``device``, whoever holds it, or ``None``.

        Raises:
            LeaseStoreError: The database cannot be read.
        """
        with self._transaction(f"read the lease of {device!r}", write=False) as c:
            row = c.execute("SELECT device, owner, token, acquired_at, expires_at FROM fleet_leases "
                            "WHERE device = ? AND expires_at > ?", (device, self._clock())).fetchone()
        return None if row is None else Lease(str(row[0]), str(row[1]), str(row[2]),
                                              float(row[3]), float(row[4]))

    # --- health -------------------------------------------------------------------------------

    def record_success(self, device: str) -> None:
        """A measurement on ``device`` succeeded: count it and reset its consecutive failures.

        Raises:
            LeaseStoreError: The database cannot be written.
        """
        with self._transaction(f"record a success of {device!r}") as c:
            self._ensure_row(c, device)
            c.execute("UPDATE fleet_health SET consecutive_failures = 0, "
                      "measurements_ok = measurements_ok + 1 WHERE device = ?", (device,))

    def record_failure(self, device: str, error: str, quarantine_after: int) -> bool:
        """A measurement on ``device`` failed with ``error``; whether the device is now quarantined.

        The ``quarantine_after``-th consecutive failure quarantines it; it stays quarantined
        until a passing health check (:meth:`record_health`) or :meth:`clear_quarantine`.

        Raises:
            ValueError: ``quarantine_after`` is below 1.
            LeaseStoreError: The database cannot be written.
        """
        if quarantine_after < 1:
            raise ValueError(f"quarantine_after must be >= 1, got {quarantine_after!r}")
        error = _one_line(error)
        with self._transaction(f"record a failure of {device!r}") as c:
            self._ensure_row(c, device)
            now = self._clock()
            c.execute("UPDATE fleet_health SET consecutive_failures = consecutive_failures + 1, "
                      "measurements_failed = measurements_failed + 1, last_error = ?, "
                      "last_error_at = ? WHERE device = ?", (error, now, device))
            failures, quarantined = c.execute(
                "SELECT consecutive_failures, quarantined FROM fleet_health WHERE device = ?",
                (device,)).fetchone()
            if quarantined:
                return True
            if failures < quarantine_after:
                return False
            reason = f"{failures} consecutive failures; last: {error}"
            c.execute("UPDATE fleet_health SET quarantined = 1, quarantine_reason = ?, "
                      "quarantined_since = ? WHERE device = ?", (reason, now, device))
        logger.warning("device %r: quarantined after %d consecutive failures (last: %s)",
                       device, failures, error)
        return True

    def record_health(self, report: HealthReport) -> None:
        """Store a health check of ``report.device``; a passing one lifts any quarantine.

        A failing check is recorded as *offline* when ``report.facts[REACHABLE_FACT]`` is
        ``"false"``, else as *unhealthy*; it does not count as a measurement failure.

        Raises:
            LeaseStoreError: The database cannot be written.
        """
        reachable = report.facts.get(REACHABLE_FACT, "true").lower() != "false"
        problems = json.dumps([_one_line(p) for p in report.problems])
        with self._transaction(f"record a health check of {report.device!r}") as c:
            self._ensure_row(c, report.device)
            c.execute("UPDATE fleet_health SET checked_at = ?, check_ok = ?, check_reachable = ?, "
                      "check_problems = ? WHERE device = ?",
                      (self._clock(), int(report.ok), int(reachable), problems, report.device))
            if report.ok:
                was = c.execute("SELECT quarantined FROM fleet_health WHERE device = ?",
                                (report.device,)).fetchone()[0]
                c.execute("UPDATE fleet_health SET consecutive_failures = 0, quarantined = 0, "
                          "quarantine_reason = NULL, quarantined_since = NULL WHERE device = ?",
                          (report.device,))
                if was:
                    logger.info("device %r: a passing health check lifts its quarantine", report.device)

    def quarantine(self, device: str, reason: str) -> None:
        """Quarantine ``device`` by hand (an operator's decision) with ``reason``.

        Raises:
            LeaseStoreError: The database cannot be written.
        """
        with self._transaction(f"quarantine {device!r}") as c:
            self._ensure_row(c, device)
            c.execute("UPDATE fleet_health SET quarantined = 1, quarantine_reason = ?, "
                      "quarantined_since = ? WHERE device = ?",
                      (_one_line(reason), self._clock(), device))

    def clear_quarantine(self, device: str) -> None:
        """Lift ``device``'s quarantine and reset its consecutive failures (an operator's call).

        Raises:
            LeaseStoreError: The database cannot be written.
        """
        with self._transaction(f"clear the quarantine of {device!r}") as c:
            c.execute("UPDATE fleet_health SET consecutive_failures = 0, quarantined = 0, "
                      "quarantine_reason = NULL, quarantined_since = NULL WHERE device = ?", (device,))

    def states(self, devices: Iterable[str] | None = None) -> list[DeviceState]:
        """The state of ``devices`` (``None``: every device the database knows), in that order.

        A device the database has never seen is ``unknown`` (or ``leased``).

        Raises:
            LeaseStoreError: The database cannot be read.
        """
        with self._transaction("read device states", write=False) as c:
            now = self._clock()
            leases = {str(r[0]): (str(r[1]), float(r[2])) for r in c.execute(
                "SELECT device, owner, expires_at FROM fleet_leases WHERE expires_at > ?", (now,))}
            health = {str(r[0]): r for r in c.execute(
                f"SELECT {', '.join(_HEALTH_COLUMNS)} FROM fleet_health")}
        names = list(dict.fromkeys(devices)) if devices is not None else sorted(set(leases) | set(health))
        return [_state(name, leases.get(name), health.get(name)) for name in names]

    def state(self, device: str) -> DeviceState:
        """The state of one device (see :meth:`states`)."""
        return self.states([device])[0]

    def now(self) -> float:
        """The store's clock: wall-clock seconds since the epoch, comparable with its timestamps."""
        return self._clock()

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; idempotent. Leases stay in the database until released."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __enter__(self) -> LeaseStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, what: str, *, write: bool = True) -> Iterator[sqlite3.Cursor]:
        """One short transaction; ``BEGIN IMMEDIATE`` takes the write lock up front so a
        read-then-write (acquire) cannot be overtaken by another process between the two."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise LeaseStoreError(f"{self.path}: lease store is closed; cannot {what}")
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn.cursor()
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                raise LeaseStoreError(f"{self.path}: cannot {what}: {e}") from e

    @staticmethod
    def _ensure_row(c: sqlite3.Cursor, device: str) -> None:
        c.execute("INSERT INTO fleet_health (device) VALUES (?) ON CONFLICT (device) DO NOTHING",
                  (device,))

    def _is_dead(self, owner: str) -> bool:
        """Whether ``owner`` names a process of this host that no longer exists.

        Conservative: an owner of another host, an unparsable one, or a pid we may not signal
        counts as alive (the lease then runs out by expiry). A reused pid also counts as alive.
        """
        if not self.reclaim_dead:
            return False
        host, _, rest = owner.rpartition(":")
        host, _, pid_text = host.rpartition(":")
        if host != self._host or not pid_text.isdigit() or not rest:
            return False
        pid = int(pid_text)
        if pid == os.getpid() or pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # EPERM: exists, belongs to another user
            return False
        return False


def _state(name: str, lease: tuple[str, float] | None, row: tuple[object, ...] | None) -> DeviceState:
    values = dict(zip(_HEALTH_COLUMNS, row, strict=True)) if row is not None else {}
    checked = values.get("check_ok")
    fields = DeviceState(
        name, "unknown",
        holder=lease[0] if lease else None,
        lease_expires_at=lease[1] if lease else None,
        consecutive_failures=int(values.get("consecutive_failures") or 0),  # type: ignore[call-overload]
        quarantined=bool(values.get("quarantined")),
        quarantine_reason=values.get("quarantine_reason"),  # type: ignore[arg-type]
        quarantined_since=values.get("quarantined_since"),  # type: ignore[arg-type]
        checked_at=values.get("checked_at"),  # type: ignore[arg-type]
        check_ok=None if checked is None else bool(checked),
        reachable=None if values.get("check_reachable") is None else bool(values["check_reachable"]),
        problems=tuple(json.loads(str(values.get("check_problems") or "[]"))),
        last_error=values.get("last_error"),  # type: ignore[arg-type]
        last_error_at=values.get("last_error_at"),  # type: ignore[arg-type]
        measurements_ok=int(values.get("measurements_ok") or 0),  # type: ignore[call-overload]
        measurements_failed=int(values.get("measurements_failed") or 0),  # type: ignore[call-overload]
    )
    state: DeviceStatus
    if lease is not None:
        state = "leased"
    elif fields.quarantined:
        state = "quarantined"
    elif fields.check_ok is None:
        state = "unknown"
    elif not fields.check_ok:
        state = "offline" if fields.reachable is False else "unhealthy"
    else:
        state = "available"
    return replace(fields, state=state)


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return (line[:300] + "...") if len(line) > 300 else line


def _clock_text(timestamp: float | None) -> str:
    if timestamp is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))
