from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from results import (
    Artifact,
    Metric,
    ResultsError,
    ResultsStore,
    TrialRecord,
    export_study,
    read_table,
    to_frame,
)
from tests.results._results_factories import make_record


def test_columns_in_documented_layout() -> None:
    frame = to_frame([make_record(0)])
    assert list(frame.columns) == [
        "study", "trial_number", "state", "label", "candidate_key",
        "param_width_mult", "param_bits", "param_scheme", "param_per_channel", "param_sizes",
        "energy_mj", "energy_mj_unit", "energy_mj_source",
        "accuracy", "accuracy_unit", "accuracy_source",
        "time_build_s", "time_measure_s",
        "tflite_path", "tflite_sha256",
        "flags", "error",
    ]  # fmt: skip
    row = frame.iloc[0]
    assert row["energy_mj"] == 1.5 and row["energy_mj_unit"] == "mJ"
    assert row["energy_mj_source"] == "measured"
    assert row["time_measure_s"] == 10.0
    assert row["tflite_path"] == "/runs/0/model.tflite" and row["tflite_sha256"] == "ab" * 32
    assert row["flags"] == "resumed;thermal-warning"
    assert row["param_sizes"] == "[8, 16]"
    assert pd.isna(row["error"])


def test_sources_and_missing_values_per_row() -> None:
    records = [
        make_record(0, energy_source="simulated"),
        make_record(1, energy_mj=None, energy_source="none", state="failed"),
        TrialRecord(
            "study-a", 2, "k2", "pruned", metrics={"accuracy": Metric(0.5, "fraction", "estimated")}
        ),
    ]
    frame = to_frame(records)
    assert frame["energy_mj_source"].tolist()[:2] == ["simulated", "none"]
    assert pd.isna(frame["energy_mj_source"].iloc[2])
    assert math.isnan(frame["energy_mj"].iloc[1]) and frame["energy_mj"].dtype == "float64"
    assert frame["accuracy_source"].tolist() == ["measured", "measured", "estimated"]
    assert frame["error"].iloc[1] == "device lost"
    assert frame["flags"].iloc[2] == "" and frame["label"].iloc[2] == ""


def test_empty_records_give_fixed_columns() -> None:
    frame = to_frame([])
    assert len(frame) == 0
    assert list(frame.columns) == [
        "study",
        "trial_number",
        "state",
        "label",
        "candidate_key",
        "flags",
        "error",
    ]


def test_colliding_column_names_refused() -> None:
    record = TrialRecord(
        "s", 0, "k", "complete",
        metrics={"model_path": Metric(1.0, "B", "measured")},
        artifacts={"model": Artifact("/m", "00")},
    )  # fmt: skip
    with pytest.raises(ResultsError, match="'model_path'"):
        to_frame([record])


def test_mixed_parameter_types_become_text_and_export(tmp_path: Path) -> None:
    records = [
        TrialRecord("s", 0, "a", "complete", params={"size": 8}),
        TrialRecord("s", 1, "b", "complete", params={"size": "auto"}),
        TrialRecord("s", 2, "c", "complete", params={"size": None}),
    ]
    with ResultsStore(tmp_path / "h.sqlite") as store:
        for r in records:
            store.put(r)
        _, parquet = export_study(store, "s", tmp_path / "s")
    assert read_table(parquet)["param_size"].tolist()[:2] == ["8", "auto"]


def test_export_writes_both_files_and_no_temporaries(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "h.sqlite") as store:
        for n in range(4):
            store.put(make_record(n))
        store.put(make_record(0, study="other"))
        out = tmp_path / "results" / "study-a"
        csv_path, parquet_path = export_study(store, "study-a", out)
        # A second export replaces the files in place.
        store.put(make_record(4))
        export_study(store, "study-a", out)
    assert csv_path == out / "trials.csv" and parquet_path == out / "trials.parquet"
    assert sorted(p.name for p in out.iterdir()) == ["trials.csv", "trials.parquet"]
    assert read_table(parquet_path)["trial_number"].tolist() == [0, 1, 2, 3, 4]
    assert read_table(csv_path)["trial_number"].tolist() == [0, 1, 2, 3, 4]


def test_export_unknown_study_fails(tmp_path: Path) -> None:
    with (
        ResultsStore(tmp_path / "h.sqlite") as store,
        pytest.raises(ResultsError, match="no trials of study 'ghost'"),
    ):
        export_study(store, "ghost", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_read_table_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "notes.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ResultsError, match=re.escape("notes.csv: not a results table")):
        read_table(bad)
    with pytest.raises(ResultsError, match="no such results file"):
        read_table(tmp_path / "none.parquet")
    broken = tmp_path / "trials.parquet"
    broken.write_bytes(b"PAR1 garbage")
    with pytest.raises(ResultsError, match=re.escape("trials.parquet: unreadable")):
        read_table(broken)
