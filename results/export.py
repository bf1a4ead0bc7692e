"""Flatten trial records into one table, and export a study as CSV and Parquet.

Column layout of the table (one row per trial):

* ``study``, ``trial_number``, ``state``, ``label``, ``candidate_key``;
* ``param_<name>`` per parameter (lists and mappings as JSON text);
* ``<name>``, ``<name>_unit``, ``<name>_source`` per metric (the value is a float, NaN when
  missing; the unit lives in its own column so the metric's column name stays the metric's);
* ``time_<stage>_s`` per timing (units: s);
* ``<name>_path``, ``<name>_sha256`` per artifact;
* ``flags`` (joined by ``;``) and ``error``.

Per-layer choices and raw measurements stay in the store: they do not flatten to one row.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from results.records import ResultsError, TrialRecord

if TYPE_CHECKING:
    from os import PathLike

    from results.store import ResultsStore

__all__ = [
    "CSV_FILENAME",
    "PARQUET_FILENAME",
    "export_study",
    "read_table",
    "to_frame",
]

CSV_FILENAME = "trials.csv"
PARQUET_FILENAME = "trials.parquet"

_HEAD_COLUMNS = ("study", "trial_number", "state", "label", "candidate_key")
_TAIL_COLUMNS = ("flags", "error")
_TEXT_COLUMNS = ("study", "state", "label", "candidate_key", "flags", "error")
_TEXT_SUFFIXES = ("_unit", "_source", "_path", "_sha256")
_NEVER_MISSING = ("label", "flags")


def to_frame(records: Iterable[TrialRecord]) -> pd.DataFrame:
    """One row per record, with the columns described in the module docstring.

    Columns appear in the order their names are first met, grouped by kind.

    Raises:
        ResultsError: Two parts of the records map to the same column name (e.g. a metric
            called ``model_path`` and an artifact called ``model``).
    """
    records = list(records)
    origin: dict[str, str] = {name: "a fixed column" for name in _HEAD_COLUMNS + _TAIL_COLUMNS}
    groups: dict[str, list[str]] = {"params": [], "metrics": [], "timings": [], "artifacts": []}

    def claim(group: str, column: str, what: str) -> None:
        known = origin.setdefault(column, what)
        if known == what:
            if column not in groups[group]:
                groups[group].append(column)
        else:
            raise ResultsError(f"column {column!r} would hold both {known} and {what}")

    rows: list[dict[str, object]] = []
    for record in records:
        row: dict[str, object] = {c: getattr(record, c) for c in _HEAD_COLUMNS}
        for name, value in record.params.items():
            claim("params", f"param_{name}", f"parameter {name!r}")
            row[f"param_{name}"] = _scalar(value)
        for name, metric in record.metrics.items():
            for column, value in (
                (name, metric.value),
                (f"{name}_unit", metric.unit),
                (f"{name}_source", metric.source),
            ):
                claim("metrics", column, f"metric {name!r}")
                row[column] = value
        for stage, seconds in record.timings_s.items():
            claim("timings", f"time_{stage}_s", f"timing {stage!r}")
            row[f"time_{stage}_s"] = seconds
        for name, artifact in record.artifacts.items():
            for column, value in (
                (f"{name}_path", artifact.path),
                (f"{name}_sha256", artifact.sha256),
            ):
                claim("artifacts", column, f"artifact {name!r}")
                row[column] = value
        row["flags"] = ";".join(record.flags)
        row["error"] = record.error
        rows.append(row)

    columns = [*_HEAD_COLUMNS, *(c for g in groups.values() for c in g), *_TAIL_COLUMNS]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for column in groups["params"]:
        frame[column] = _uniform(frame[column])
    metric_columns = [c for c in groups["metrics"] if not c.endswith(("_unit", "_source"))]
    return _normalize(frame, float_columns=[*metric_columns, *groups["timings"]])


def read_table(path: str | PathLike[str]) -> pd.DataFrame:
    """Read a ``trials.csv`` or ``trials.parquet`` written by :func:`export_study`.

    Raises:
        ResultsError: The file is missing, has another suffix, or cannot be parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"{path}: no such results file")
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix == ".csv":
            frame = pd.read_csv(path)
        else:
            raise ResultsError(f"{path}: not a results table (expected .csv or .parquet)")
    except (OSError, ValueError) as e:
        raise ResultsError(f"{path}: unreadable results table: {e}") from e
    missing = [c for c in _HEAD_COLUMNS if c not in frame.columns]
    if missing:
        raise ResultsError(f"{path}: not a results table (no column {missing[0]!r})")
    # CSV cannot tell a missing value from an empty string or a float from an int; put back
    # what the naming rules say each column holds.
    float_columns = [c[: -len("_unit")] for c in frame.columns if c.endswith("_unit")]
    float_columns += [c for c in frame.columns if c.startswith("time_") and c.endswith("_s")]
    return _normalize(frame, float_columns=[c for c in float_columns if c in frame.columns])


def export_study(
    store: ResultsStore, study: str, out_dir: str | PathLike[str]
) -> tuple[Path, Path]:
    """Write ``trials.csv`` and ``trials.parquet`` of ``study`` into ``out_dir``.

    Each file is written to a temporary file in ``out_dir`` and renamed over the old one, so
    a reader never sees a partial file. ``out_dir`` is created if missing.

    Returns:
        The paths of the CSV and the Parquet file.

    Raises:
        ResultsError: The store has no trial of ``study``, or a file cannot be written.
    """
    records = store.records(study)
    if not records:
        raise ResultsError(f"{store.path}: no trials of study {study!r}")
    frame = to_frame(records)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"{out_dir}: cannot create results directory: {e}") from e
    csv_path, parquet_path = out_dir / CSV_FILENAME, out_dir / PARQUET_FILENAME
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(parquet_path) as tmp:
        try:
            frame.to_parquet(tmp, index=False)
        except (ValueError, TypeError) as e:
            raise ResultsError(f"{parquet_path}: cannot write study {study!r}: {e}") from e
    return csv_path, parquet_path


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it over ``target``.

    The temporary file lives in the same directory, so :func:`os.replace` is an atomic rename;
    its contents are flushed to disk first. On error the temporary file is removed and
    ``target`` is left as it was.

    Raises:
        ResultsError: The temporary file cannot be created, synced or renamed.
    """
    try:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise ResultsError(f"{target}: cannot create a temporary file beside it: {e}") from e
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise ResultsError(f"{target}: cannot write: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def _scalar(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _uniform(column: pd.Series) -> pd.Series:
    """A parameter column Parquet can store: text if its values mix bools, numbers and text."""
    kinds = {
        "bool" if isinstance(v, bool) else "number" if isinstance(v, (int, float)) else "text"
        for v in column
        if v is not None and not (isinstance(v, float) and v != v)
    }
    if len(kinds) <= 1:
        return column
    return column.map(lambda v: v if v is None or (isinstance(v, float) and v != v) else str(v))


def _normalize(frame: pd.DataFrame, float_columns: list[str]) -> pd.DataFrame:
    """Give every column the dtype its name promises, the same whichever way it was read."""
    frame = frame.copy()
    frame["trial_number"] = frame["trial_number"].astype("int64")
    for column in frame.columns:
        if column in _TEXT_COLUMNS or (
            column.endswith(_TEXT_SUFFIXES) and not column.startswith("param_")
        ):
            frame[column] = frame[column].astype("str")
        elif column in float_columns or (frame[column].dtype == object and frame[column].isna().all()):
            frame[column] = frame[column].astype("float64")
    for column in _NEVER_MISSING:
        frame[column] = frame[column].fillna("")
    return frame
