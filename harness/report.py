"""A study's report: CSV/Parquet exports, the Pareto table and plot, the kept artifacts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from harness.errors import InputError
from harness.objectives import OBJECTIVE_METRIC
from harness.search_loop import copy_pareto_artifacts, study_storage_url
from results.export import export_study, to_frame
from results.pareto import pareto_front
from results.plots import plot_pareto
from results.store import ResultsStore

__all__ = ["StudyReport", "build_report"]

_TABLE_COLUMNS = (
    "trial_number", "label", "accuracy", "keras_accuracy", "energy_mj", "energy_mj_source",
    "energy_pj_estimated", "latency_ms", "size_bytes", "bops", "lowering_mode",
)


@dataclass(frozen=True)
class StudyReport:
    study: str
    objectives: dict[str, str]  # metric column -> direction
    front: pd.DataFrame
    table: str
    csv_path: Path
    parquet_path: Path
    plot_path: Path | None
    kept: tuple[Path, ...]


def _objectives(results_dir: Path, study_name: str) -> dict[str, str]:
    """Metric column -> direction, as the study was created (accuracy vs energy if unknown)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=study_storage_url(results_dir))
        names = list(study.user_attrs.get("objectives", []))
        directions = list(study.user_attrs.get("directions", []))
    except KeyError:
        names, directions = [], []
    if not names or names == ["score"]:
        names, directions = ["accuracy", "energy"], ["maximize", "minimize"]
    return {OBJECTIVE_METRIC[n]: d for n, d in zip(names, directions)}


def build_report(results_dir: str | Path, study_name: str) -> StudyReport:
    """Export the study and compute its Pareto front.

    Raises:
        InputError: no results store under ``results_dir`` or no trial of ``study_name``.
    """
    results_dir = Path(results_dir)
    store_path = results_dir / "harness.sqlite"
    if not store_path.exists():
        raise InputError(f"no results store at {store_path}: run 'harness search' first or pass --results-dir")
    with ResultsStore(store_path) as store:
        records = store.records(study_name)
        if not records:
            known = ", ".join(store.studies()) or "none"
            raise InputError(f"study {study_name!r} has no trials in {store_path} (studies: {known})")
        study_dir = results_dir / study_name
        csv_path, parquet_path = export_study(store, study_name, study_dir)
    frame = to_frame(records)
    objectives = _objectives(results_dir, study_name)
    feasible = frame[~frame["flags"].fillna("").str.contains("constraint:")]
    missing = [c for c in objectives if c not in frame.columns]
    if missing:
        front = feasible.iloc[0:0]
    else:
        front = pareto_front(feasible, objectives)
    front = _with_reduction(front, frame)
    plot_path = None
    if {"energy_mj", "accuracy"} <= set(frame.columns) and (feasible["state"] == "complete").any():
        plot_path = plot_pareto(
            feasible, "energy_mj", "accuracy", study_dir / "pareto.png",
            title=f"{study_name}: accuracy vs energy per inference",
        )
    kept = copy_pareto_artifacts(records, set(front["trial_number"].astype(int)), study_dir / "pareto")
    columns = [c for c in (*_TABLE_COLUMNS, "energy_vs_int8_pct") if c in front.columns]
    columns = [c if c in front.columns else f"param_{c}" for c in columns]
    table = front[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}") if len(front) else "(empty)"
    return StudyReport(study_name, objectives, front, table, csv_path, parquet_path, plot_path, tuple(kept))


def _with_reduction(front: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """Adds each front member's energy change against the uniform int8 reference, in %."""
    baseline = frame[(frame["label"] == "int8") & (frame["state"] == "complete")]
    front = front.copy()
    if "param_lowering_mode" in front.columns:
        front["lowering_mode"] = front["param_lowering_mode"]
    if len(baseline) and "energy_mj" in front.columns:
        reference = float(baseline["energy_mj"].iloc[0])
        front["energy_vs_int8_pct"] = (front["energy_mj"] / reference - 1.0) * 100.0
    return front
