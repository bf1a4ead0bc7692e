"""A SQLite results store shared by the harness processes of one machine.

The standard library's :mod:`sqlite3` is enough here: one file, a handful of fixed queries, and
writers that are processes on the same host. WAL mode lets readers run while one process
writes, and the busy timeout makes competing writers wait their turn rather than fail.
SQLAlchemy would add an ORM and a dependency but none of those guarantees.

The schema is versioned in the ``meta`` table and created with ``IF NOT EXISTS``, so opening a
store is idempotent and other packages (the device fleet's leases) can add their own tables to
the same file.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from results.records import TRIAL_STATES, ResultsError, TrialRecord

if TYPE_CHECKING:
    from os import PathLike
    from types import TracebackType

__all__ = ["SCHEMA_VERSION", "STORE_FILENAME", "ResultsStore"]

#: Version of the schema below; bump it and add a migration in ``_migrate`` when it changes.
SCHEMA_VERSION = 1
#: File name of the store inside a results directory.
STORE_FILENAME = "harness.sqlite"

_JSON_FIELDS = ("params", "layers", "metrics", "artifacts", "timings_s", "measurements", "flags")
_COLUMNS = ("study", "trial_number", "candidate_key", "state", "label", *_JSON_FIELDS, "error")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS trials (
        study TEXT NOT NULL,
        trial_number INTEGER NOT NULL,
        candidate_key TEXT NOT NULL,
        state TEXT NOT NULL,
        label TEXT NOT NULL,
        params TEXT NOT NULL,
        layers TEXT NOT NULL,
        metrics TEXT NOT NULL,
        artifacts TEXT NOT NULL,
        timings_s TEXT NOT NULL,
        measurements TEXT NOT NULL,
        flags TEXT NOT NULL,
        error TEXT,
        PRIMARY KEY (study, trial_number)
    )""",
    "CREATE INDEX IF NOT EXISTS trials_by_candidate ON trials (study, candidate_key, state)",
)

_UPSERT = (
    f"INSERT INTO trials ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    "ON CONFLICT (study, trial_number) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[2:])
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM trials"


class ResultsStore:
    """Trial records of any number of studies in one SQLite file.

    A store object belongs to the thread that opened it; every process (or thread) opens its own
    store on the same path, and SQLite serialises their writes. Each :meth:`put` is one
    transaction, so a crash never leaves half a record behind.

    Args:
        path: The database file. Created, with its parent directories, unless ``create`` is
            false.
        create: Whether to create a missing database; when false a missing file is an error.
        busy_timeout_s: How long a write waits for another process's lock. Units: s.

    Raises:
        ResultsError: The file is missing (with ``create=False``), is not a SQLite database, or
            was written by a newer schema version.
    """

    def __init__(
        self, path: str | PathLike[str], *, create: bool = True, busy_timeout_s: float = 30.0
    ) -> None:
        if busy_timeout_s <= 0:
            raise ResultsError(f"busy_timeout_s must be positive, got {busy_timeout_s!r}")
        self.path = Path(path)
        if self.path.is_dir():
            raise ResultsError(f"{self.path}: is a directory, not a results database")
        if not self.path.exists():
            if not create:
                raise ResultsError(f"{self.path}: no results database here")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        # No pre-check of the file's header with open(): closing any other descriptor of
        # the file drops this process's POSIX locks on it, which SQLite's other connections
        # here (the fleet's lease store) rely on. SQLite itself refuses a non-database below.
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        except sqlite3.Error as e:
            raise ResultsError(f"{self.path}: cannot open results database: {e}") from e
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if not create and not _has_table(conn, "meta"):
                raise ResultsError(f"{self.path}: not a results database (no meta table)")
            conn.execute("PRAGMA journal_mode = WAL")
            self._init_schema(conn)
        except (sqlite3.Error, ValueError) as e:  # ValueError: a non-numeric schema version
            self.close()
            if isinstance(e, sqlite3.DatabaseError) and "not a database" in str(e):
                raise ResultsError(
                    f"{self.path}: not a SQLite results database (bad header); "
                    "move it aside or choose another path"
                ) from e
            raise ResultsError(f"{self.path}: unreadable results database: {e}") from e
        except ResultsError:
            self.close()
            raise

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = SCHEMA_VERSION if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise ResultsError(
                    f"{self.path}: schema version {version} is newer than this code's "
                    f"{SCHEMA_VERSION}; update the harness"
                )
            if row is None or version < SCHEMA_VERSION:
                self._migrate(conn, version)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _migrate(self, conn: sqlite3.Connection, from_version: int) -> None:
        """Bring a store written at ``from_version`` up to :data:`SCHEMA_VERSION`.

        Version 1 is the first, so there is nothing to migrate yet.
        """

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file."""
        row = self._query("SELECT value FROM meta WHERE key = 'schema_version'", ())
        return int(str(row[0][0]))

    def put(self, record: TrialRecord) -> None:
        """Insert ``record``, or replace the one with the same (study, trial_number), atomically.

        Raises:
            ResultsError: The record is invalid (empty study, negative trial number, unknown
                state, a field that is not JSON-serialisable) or the database cannot be written.
        """
        row = _to_row(record)
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(_UPSERT, row)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            raise ResultsError(
                f"{self.path}: cannot write trial {record.trial_number} of study "
                f"{record.study!r}: {e}"
            ) from e

    def get(self, study: str, trial_number: int) -> TrialRecord | None:
        """The record of one trial, or ``None`` if the store has none.

        Raises:
            ResultsError: The database or the stored row is unreadable.
        """
        rows = self._query(f"{_SELECT} WHERE study = ? AND trial_number = ?", (study, trial_number))
        return self._from_row(rows[0]) if rows else None

    def records(self, study: str) -> list[TrialRecord]:
        """Every record of ``study`` ordered by trial number; empty for an unknown study.

        Raises:
            ResultsError: The database or a stored row is unreadable.
        """
        rows = self._query(f"{_SELECT} WHERE study = ? ORDER BY trial_number", (study,))
        return [self._from_row(row) for row in rows]

    def find_complete(self, study: str, candidate_key: str) -> TrialRecord | None:
        """The first complete trial of ``study`` that measured ``candidate_key``, if any.

        The search uses it to resume: a candidate with a complete record is never measured
        again.

        Raises:
            ResultsError: The database or the stored row is unreadable.
        """
        rows = self._query(
            f"{_SELECT} WHERE study = ? AND candidate_key = ? AND state = 'complete' "
            "ORDER BY trial_number LIMIT 1",
            (study, candidate_key),
        )
        return self._from_row(rows[0]) if rows else None

    def studies(self) -> list[str]:
        """Names of the studies with at least one record, sorted.

        Raises:
            ResultsError: The database is unreadable.
        """
        rows = self._query("SELECT DISTINCT study FROM trials ORDER BY 1", ())
        return [str(row[0]) for row in rows]

    def close(self) -> None:
        """Close the connection; calling it again does nothing."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ResultsError(f"{self.path}: results store is closed")
        return self._conn

    def _query(self, sql: str, args: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            return self._connection().execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise ResultsError(f"{self.path}: cannot read results database: {e}") from e

    def _from_row(self, row: tuple[object, ...]) -> TrialRecord:
        data = dict(zip(_COLUMNS, row, strict=True))
        try:
            for name in _JSON_FIELDS:
                data[name] = json.loads(str(data[name]))
            return TrialRecord.from_dict(data)
        except (ValueError, TypeError) as e:
            raise ResultsError(
                f"{self.path}: corrupt record for trial {data['trial_number']} of study "
                f"{data['study']!r}: {e}"
            ) from e


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
    ).fetchone()
    return row is not None


def _to_row(record: TrialRecord) -> tuple[object, ...]:
    where = f"trial {record.trial_number!r} of study {record.study!r}"
    if not isinstance(record.study, str) or not record.study:
        raise ResultsError(f"study must be a non-empty string, got {record.study!r}")
    if isinstance(record.trial_number, bool) or not isinstance(record.trial_number, int):
        raise ResultsError(f"{where}: trial_number must be an int")
    if record.trial_number < 0:
        raise ResultsError(f"{where}: trial_number must be >= 0")
    if record.state not in TRIAL_STATES:
        raise ResultsError(f"{where}: state {record.state!r} is not one of {TRIAL_STATES}")
    data = record.to_dict()
    encoded: dict[str, object] = {}
    for name in _JSON_FIELDS:
        try:
            encoded[name] = json.dumps(data[name])
        except (TypeError, ValueError) as e:
            raise ResultsError(f"{where}: field {name!r} is not JSON-serialisable: {e}") from e
    return tuple(encoded[c] if c in encoded else data[c] for c in _COLUMNS)
