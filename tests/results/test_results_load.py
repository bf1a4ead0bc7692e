from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

import results
from results import ResultsError, ResultsStore, export_study, to_frame
from tests.results._results_factories import make_record

RECORDS = [
    make_record(0, label="reference"),
    make_record(1, label="int8", energy_source="simulated"),
    make_record(2, state="failed", energy_mj=None, energy_source="none"),
    make_record(3, state="running", accuracy=None),
]


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    with ResultsStore(root / "harness.sqlite") as store:
        for r in RECORDS:
            store.put(r)
        store.put(make_record(0, study="study-b"))
        export_study(store, "study-a", root / "study-a")
    return root


def _expected() -> pd.DataFrame:
    return to_frame(RECORDS)


@pytest.mark.parametrize("relative", ["study-a/trials.csv", "study-a/trials.parquet", "study-a"])
def test_load_exported_forms_round_trip(results_dir: Path, relative: str) -> None:
    pd.testing.assert_frame_equal(results.load(results_dir / relative), _expected())


def test_load_directory_prefers_parquet(results_dir: Path) -> None:
    (results_dir / "study-a" / "trials.csv").write_text("garbage\n")
    pd.testing.assert_frame_equal(results.load(results_dir / "study-a"), _expected())


def test_load_directory_falls_back_to_csv(results_dir: Path) -> None:
    (results_dir / "study-a" / "trials.parquet").unlink()
    pd.testing.assert_frame_equal(results.load(results_dir / "study-a"), _expected())


def test_load_store_path_has_every_study(results_dir: Path) -> None:
    frame = results.load(results_dir / "harness.sqlite")
    assert sorted(set(frame["study"])) == ["study-a", "study-b"]
    pd.testing.assert_frame_equal(
        frame[frame["study"] == "study-a"].dropna(axis=1, how="all").reset_index(drop=True),
        _expected().dropna(axis=1, how="all"),
    )


def test_load_study_name_from_store(results_dir: Path) -> None:
    with ResultsStore(results_dir / "harness.sqlite") as store:
        store.put(make_record(9))  # newer than the export: the store is preferred
    frame = results.load("study-a", results_dir=results_dir)
    assert frame["trial_number"].tolist() == [0, 1, 2, 3, 9]


def test_load_study_name_from_export_without_store(results_dir: Path) -> None:
    (results_dir / "harness.sqlite").unlink()
    pd.testing.assert_frame_equal(results.load("study-a", results_dir=results_dir), _expected())


def test_load_study_name_from_csv_only(results_dir: Path) -> None:
    (results_dir / "harness.sqlite").unlink()
    (results_dir / "study-a" / "trials.parquet").unlink()
    pd.testing.assert_frame_equal(results.load("study-a", results_dir=results_dir), _expected())


def test_load_relative_default_results_dir(
    results_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(results_dir.parent)
    assert results.load("study-b")["study"].tolist() == ["study-b"]


def test_load_unknown_study_says_where_it_looked(results_dir: Path) -> None:
    with pytest.raises(ResultsError) as info:
        results.load("ghost", results_dir=results_dir)
    message = str(info.value)
    assert "'ghost'" in message and "harness.sqlite" in message
    assert "ghost/trials.parquet" in message and "\n" not in message


@pytest.mark.parametrize("name", ["missing.csv", "missing.parquet", "missing.sqlite", "a/b"])
def test_load_missing_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(ResultsError, match="no such results file or directory"):
        results.load(tmp_path / name)


def test_load_directory_without_tables(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=re.escape("neither trials.parquet nor trials.csv")):
        results.load(tmp_path)


def test_load_file_that_is_no_store(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ResultsError, match=re.escape("notes.txt: not a SQLite results database")):
        results.load(path)
