"""Trial records: a shared SQLite store, CSV/Parquet export, Pareto analysis and plots.

``results.load`` turns whatever a user has at hand (an exported file, a study's directory, the
store, or just a study name) into the table described in :mod:`results.export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from results.export import CSV_FILENAME, PARQUET_FILENAME, export_study, read_table, to_frame
from results.pareto import Direction, hypervolume, pareto_front, pareto_mask
from results.plots import pareto_figure, plot_pareto
from results.records import (
    METRIC_SOURCES,
    TRIAL_STATES,
    Artifact,
    Metric,
    MetricSource,
    ResultsError,
    TrialRecord,
    TrialState,
)
from results.store import SCHEMA_VERSION, STORE_FILENAME, ResultsStore

if TYPE_CHECKING:
    from os import PathLike

    import pandas as pd

__all__ = [
    "CSV_FILENAME",
    "METRIC_SOURCES",
    "PARQUET_FILENAME",
    "SCHEMA_VERSION",
    "STORE_FILENAME",
    "TRIAL_STATES",
    "Artifact",
    "Direction",
    "Metric",
    "MetricSource",
    "ResultsError",
    "ResultsStore",
    "TrialRecord",
    "TrialState",
    "export_study",
    "hypervolume",
    "load",
    "pareto_figure",
    "pareto_front",
    "pareto_mask",
    "plot_pareto",
    "read_table",
    "to_frame",
]

_TABLE_SUFFIXES = (".csv", ".parquet")


def load(
    path_or_study: str | PathLike[str], results_dir: str | PathLike[str] = "results"
) -> pd.DataFrame:
    """The trials table of a study, from whichever form it is kept in.

    ``path_or_study`` is tried, in order, as:

    1. a ``trials.csv`` / ``trials.parquet`` file (any ``.csv`` / ``.parquet`` name);
    2. a study's results directory holding ``trials.parquet`` (preferred) or ``trials.csv``;
    3. a results store file (every study in it);
    4. a study name: its records in the store ``<results_dir>/harness.sqlite`` (the live
       source, preferred), else ``<results_dir>/<study>/trials.parquet`` or ``trials.csv``.

    An existing path always wins over a study of the same name.

    Raises:
        ResultsError: Nothing matches (the message lists where it looked), or the file found
            cannot be read.
    """
    path = Path(path_or_study)
    if path.is_file():
        if path.suffix in _TABLE_SUFFIXES:
            return read_table(path)
        with ResultsStore(path, create=False) as store:
            return to_frame(r for study in store.studies() for r in store.records(study))
    if path.is_dir():
        for name in (PARQUET_FILENAME, CSV_FILENAME):
            if (path / name).is_file():
                return read_table(path / name)
        raise ResultsError(f"{path}: directory has neither {PARQUET_FILENAME} nor {CSV_FILENAME}")
    if path.suffix in (*_TABLE_SUFFIXES, ".sqlite", ".db") or len(path.parts) != 1:
        raise ResultsError(f"{path}: no such results file or directory")
    return _load_study(str(path), Path(results_dir))


def _load_study(study: str, results_dir: Path) -> pd.DataFrame:
    store_path = results_dir / STORE_FILENAME
    if store_path.is_file():
        with ResultsStore(store_path, create=False) as store:
            records = store.records(study)
        if records:
            return to_frame(records)
    for name in (PARQUET_FILENAME, CSV_FILENAME):
        if (results_dir / study / name).is_file():
            return read_table(results_dir / study / name)
    raise ResultsError(
        f"study {study!r} not found: looked in {store_path}, "
        f"{results_dir / study / PARQUET_FILENAME} and {results_dir / study / CSV_FILENAME}"
    )
