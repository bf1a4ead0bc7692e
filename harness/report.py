"""A study's report: CSV/Parquet exports, the Pareto table and plot, the kept artifacts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna
import pandas as pd

from harness.errors import InputError
from harness.objectives import OBJECTIVE_METRIC
from harness.search_loop import copy_pareto_artifacts, study_storage_url
from results.calibration import Calibration, CalibrationError, calibrate, measured_classes
from results.export import export_study, to_frame
from results.pareto import pareto_front
from results.plots import plot_estimate_vs_measured, plot_pareto
from results.store import ResultsStore

__all__ = ["CALIBRATION_PLOT", "StudyReport", "build_report", "study_objectives"]

#: File name, in the study's results directory, of the estimate-vs-measurement plot.
CALIBRATION_PLOT = "estimate_vs_measured.png"

_TABLE_COLUMNS = (
    "trial_number", "label", "accuracy", "proxy_accuracy", "keras_accuracy", "energy_mj", "energy_mj_source",
    "energy_pj_estimated", "latency_ms", "size_bytes", "bops", "lowering_mode",
)


@dataclass(frozen=True)
class StudyReport:
    """What :func:`build_report` made.

    ``calibrations``, ``calibration_text`` and ``calibration_plot_path`` are the estimate vs
    measurement section: empty (and no plot) when no device class measured energy.
    ``calibration_text`` also names the classes with too few trials to fit.
    """

    study: str
    objectives: dict[str, str]  # metric column -> direction
    front: pd.DataFrame
    table: str
    csv_path: Path
    parquet_path: Path
    plot_path: Path | None
    kept: tuple[Path, ...]
    calibrations: dict[str, Calibration] = field(default_factory=dict)
    calibration_text: str = ""
    calibration_plot_path: Path | None = None


def study_objectives(results_dir: Path, study_name: str) -> dict[str, str]:
    """Metric column -> direction, as the study was created (accuracy vs energy if unknown)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=study_storage_url(results_dir))
        names = list(study.user_attrs.get("objectives", []))
        directions = list(study.user_attrs.get("directions", []))
    except KeyError:
        names, directions = [], []
    if not names or names == ["score"]:
        names, directions = ["accuracy", "energy"], ["maximize", "minimize"]
    return {OBJECTIVE_METRIC[n]: d for n, d in zip(names, directions, strict=True)}


def build_report(results_dir: str | Path, study_name: str, objectives_of: str | None = None) -> StudyReport:
    """Export the study, compute its Pareto front and, when devices measured energy, compare
    the host estimate with the measurements (:mod:`results.calibration`; plot
    ``<study>/estimate_vs_measured.png``).

    ``objectives_of`` names the Optuna study whose objectives define the front (default: this
    one); a fine-tuned set has no study of its own and uses its search's.

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
    objectives = study_objectives(results_dir, objectives_of or study_name)
    feasible = frame[~frame["flags"].fillna("").str.contains("constraint:")]
    missing = [c for c in objectives if c not in frame.columns]
    front = feasible.iloc[0:0] if missing else pareto_front(feasible, objectives)
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
    calibrations, calibration_text = _calibrations(frame)
    calibration_plot = None
    if calibrations:
        calibration_plot = plot_estimate_vs_measured(
            calibrations, study_dir / CALIBRATION_PLOT,
            title=f"{study_name}: host estimate vs measured energy per inference",
        )
    return StudyReport(
        study_name, objectives, front, table, csv_path, parquet_path, plot_path, tuple(kept),
        calibrations, calibration_text, calibration_plot,
    )


def _calibrations(frame: pd.DataFrame) -> tuple[dict[str, Calibration], str]:
    """Per device class with measured (or simulated) energy: its calibration, and the
    section's text ("" when no class measured energy)."""
    classes = measured_classes(frame)
    if not classes:
        return {}, ""
    calibrations: dict[str, Calibration] = {}
    lines = ["Estimate vs measurement (energy per inference, per device class):"]
    for cls in classes:
        try:
            calibrations[cls] = calibrate(frame, cls)
        except CalibrationError as e:
            lines.append(str(e))
            continue
        lines.append(calibrations[cls].summary())
    return calibrations, "\n".join(lines)


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
