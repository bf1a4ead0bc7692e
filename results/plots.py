"""Plots of a study's trade-offs, drawn off-screen with Matplotlib's Agg canvas.

Figures are built from :class:`matplotlib.figure.Figure` and the Agg canvas directly rather
than through :mod:`matplotlib.pyplot`, so plotting never opens a window, never changes the
process's global backend, and leaks no figure into pyplot's registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from results.export import atomic_path
from results.pareto import Direction, pareto_front
from results.records import ResultsError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from os import PathLike

    from matplotlib.axes import Axes

    from results.calibration import Calibration

__all__ = [
    "estimate_vs_measured_figure",
    "pareto_figure",
    "plot_estimate_vs_measured",
    "plot_pareto",
]

#: Labels of the trials annotated on every plot, with the text shown beside them.
_ANNOTATED = {"reference": "reference (float)", "int8": "uniform int8"}


def plot_pareto(
    frame: pd.DataFrame,
    x: str,
    y: str,
    out_path: str | PathLike[str],
    *,
    directions: tuple[Direction, Direction] = ("minimize", "maximize"),
    x_unit: str | None = None,
    y_unit: str | None = None,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw :func:`pareto_figure` and write it as a PNG to ``out_path``.

    The PNG is written to a temporary file beside ``out_path`` and renamed over it, so a
    reader never sees half an image; the directory is created if missing.

    Args:
        out_path: Where to write the PNG.
        dpi: Resolution of the PNG. Units: dots per inch.
        frame, x, y, directions, x_unit, y_unit, title: As for :func:`pareto_figure`.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        ResultsError: As for :func:`pareto_figure`, a non-positive ``dpi``, or the file cannot
            be written.
    """
    if dpi <= 0:
        raise ResultsError(f"dpi must be positive, got {dpi!r}")
    fig = pareto_figure(
        frame, x, y, directions=directions, x_unit=x_unit, y_unit=y_unit, title=title
    )
    return _save_png(fig, Path(out_path), dpi)


def _save_png(fig: Figure, out_path: Path, dpi: int) -> Path:
    """Write ``fig`` as a PNG through a temporary file renamed over ``out_path``."""
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResultsError(f"{out_path.parent}: cannot create plot directory: {e}") from e
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out_path


def pareto_figure(
    frame: pd.DataFrame,
    x: str,
    y: str,
    *,
    directions: tuple[Direction, Direction] = ("minimize", "maximize"),
    x_unit: str | None = None,
    y_unit: str | None = None,
    title: str | None = None,
) -> Figure:
    """Scatter the complete trials on ``x`` against ``y`` and highlight their Pareto front.

    The front is drawn connected, in order of ``x``. Trials labelled ``reference`` and ``int8``
    are annotated. An axis unit comes from ``x_unit``/``y_unit``, else from the table's
    ``<column>_unit`` column; values whose source is not ``measured`` are noted under the plot.

    Args:
        frame: A table from :func:`results.to_frame` or :func:`results.load`.
        x: Column on the horizontal axis, e.g. ``"energy_mj"``.
        y: Column on the vertical axis, e.g. ``"accuracy"``.
        directions: Direction of ``x`` and of ``y`` for the front.
        x_unit: Unit of ``x``, overriding the table's.
        y_unit: Unit of ``y``, overriding the table's.
        title: Title of the plot; the study name(s) by default.

    Returns:
        A figure attached to an Agg canvas (not registered with pyplot).

    Raises:
        ResultsError: A column is missing, a column mixes units, or no complete trial has both
            values.
    """
    front = pareto_front(frame, {x: directions[0], y: directions[1]})
    complete = frame[frame["state"] == "complete"]
    xs = pd.to_numeric(complete[x], errors="coerce").to_numpy(dtype=float)
    ys = pd.to_numeric(complete[y], errors="coerce").to_numpy(dtype=float)
    shown = np.isfinite(xs) & np.isfinite(ys)
    if not shown.any():
        raise ResultsError(f"no complete trial has both {x!r} and {y!r}; nothing to plot")
    complete = complete[shown]

    fig = Figure(figsize=(7.0, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(xs[shown], ys[shown], s=18, color="0.65", label="complete trials", zorder=2)
    ax.plot(
        front[x].astype(float), front[y].astype(float), marker="o", markersize=6,
        color="tab:blue", label="Pareto front", zorder=3,
    )  # fmt: skip
    _annotate(ax, complete, x, y)
    ax.set_xlabel(_axis_label(frame, x, x_unit))
    ax.set_ylabel(_axis_label(frame, y, y_unit))
    ax.set_title(title if title is not None else ", ".join(sorted(set(frame["study"].astype(str)))))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    note = _source_note(complete, (x, y))
    if note:
        fig.supxlabel(note, fontsize="small", color="tab:red")
    return fig


def _annotate(ax: Axes, complete: pd.DataFrame, x: str, y: str) -> None:
    if "label" not in complete.columns:
        return
    middle_x = sum(ax.get_xlim()) / 2
    for label, text in _ANNOTATED.items():
        rows = complete[complete["label"] == label]
        for _, row in rows.iterrows():
            point = (float(row[x]), float(row[y]))
            ax.scatter(*point, s=70, marker="D", facecolors="none", edgecolors="tab:red", zorder=4)
            right_half = point[0] > middle_x  # put the text toward the middle of the plot
            ax.annotate(
                text, point, xytext=(-8 if right_half else 8, -12), textcoords="offset points",
                ha="right" if right_half else "left", fontsize="small", color="tab:red",
            )  # fmt: skip


def _axis_label(frame: pd.DataFrame, column: str, unit: str | None) -> str:
    if unit is None and f"{column}_unit" in frame.columns:
        units = sorted(set(frame[f"{column}_unit"].dropna().astype(str)))
        if len(units) > 1:
            raise ResultsError(f"column {column!r} mixes units {units}; convert them first")
        unit = units[0] if units else None
    return column if not unit else f"{column} [{unit}]"


def _source_note(complete: pd.DataFrame, columns: tuple[str, str]) -> str:
    """A line naming the axes whose plotted values were not all measured."""
    parts = []
    for column in columns:
        source_column = f"{column}_source"
        if source_column in complete.columns:
            sources = sorted(set(complete[source_column].dropna().astype(str)) - {"measured"})
            if sources:
                parts.append(f"{column}: some values {'/'.join(sources)}, not measured")
    return "; ".join(parts)


def plot_estimate_vs_measured(
    calibrations: Mapping[str, Calibration],
    out_path: str | PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 150,
) -> Path:
    """Draw :func:`estimate_vs_measured_figure` and write it as a PNG to ``out_path``.

    Written like :func:`plot_pareto` (temporary file renamed over ``out_path``).

    Raises:
        ResultsError: As for :func:`estimate_vs_measured_figure`, a non-positive ``dpi``, or
            the file cannot be written.
    """
    if dpi <= 0:
        raise ResultsError(f"dpi must be positive, got {dpi!r}")
    return _save_png(estimate_vs_measured_figure(calibrations, title=title), Path(out_path), dpi)


def estimate_vs_measured_figure(
    calibrations: Mapping[str, Calibration], *, title: str | None = None
) -> Figure:
    """Per device class (one row each): the host estimate against the measured energy, and
    the calibrated fit's held-out prediction against it.

    Left panel: estimate (pJ) vs measured (mJ), titled with Spearman's rho and n. Right panel:
    held-out prediction vs measured (both mJ) with the line ``predicted = measured``, titled
    with the fit's median and p90 error. Axes are logarithmic when every value is positive.
    A class calibrated on a simulated meter says so in red.

    Args:
        calibrations: Device class to its :class:`~results.calibration.Calibration`.
        title: Title of the figure; none by default.

    Returns:
        A figure attached to an Agg canvas (not registered with pyplot).

    Raises:
        ResultsError: ``calibrations`` is empty.
    """
    if not calibrations:
        raise ResultsError("no calibration to plot")
    fig = Figure(figsize=(10.0, 4.0 * len(calibrations)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(calibrations), 2, squeeze=False)
    for (cls, cal), (left, right) in zip(calibrations.items(), axes, strict=True):
        measured = np.asarray(cal.measured_mj, dtype=float)
        estimated = np.asarray(cal.estimated_pj, dtype=float)
        predicted = np.asarray(cal.predicted_mj, dtype=float)
        simulated = cal.source == "simulated"
        colour = "tab:red" if simulated else "tab:blue"
        what = "simulated meter" if simulated else "measured"

        left.scatter(estimated, measured, s=18, color=colour, zorder=2)
        left.set_xlabel("host estimate [pJ]")
        left.set_ylabel(f"{cls}: {what} [mJ]")
        left.set_title(f"{cls}: Spearman rho = {cal.spearman:.3f}, n = {cal.n}")
        _log_if_positive(left, estimated, measured)

        right.scatter(predicted, measured, s=18, color=colour, zorder=2)
        both = np.concatenate([predicted, measured])
        lo, hi = float(both.min()), float(both.max())
        right.plot([lo, hi], [lo, hi], linestyle="--", color="0.5", label="predicted = measured")
        right.set_xlabel(f"fit, held out ({cal.error_method}) [mJ]")
        right.set_ylabel(f"{cls}: {what} [mJ]")
        right.set_title(
            f"median |error| {cal.error_pct:.1f}%, p90 {cal.error_pct_p90:.1f}%"
        )
        right.legend(loc="best", fontsize="small")
        _log_if_positive(right, predicted, measured)
        for ax in (left, right):
            ax.grid(True, alpha=0.3)
            if simulated:
                ax.text(
                    0.02, 0.98, "simulated meter: not a real figure", transform=ax.transAxes,
                    va="top", fontsize="small", color="tab:red",
                )  # fmt: skip
    if title is not None:
        fig.suptitle(title)
    return fig


def _log_if_positive(ax: Axes, xs: np.ndarray, ys: np.ndarray) -> None:
    if len(xs) and (xs > 0).all():
        ax.set_xscale("log")
    if len(ys) and (ys > 0).all():
        ax.set_yscale("log")
