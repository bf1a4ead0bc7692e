"""Calibration of the host energy estimate against energy measured on devices.

The host estimate (:mod:`search.estimates`, method.md §1) ranks candidates; it is not an
absolute energy. Once a device class has measured some candidates, this module answers two
questions for that class:

1. **How well does the estimate rank them?** Spearman's rank correlation between the
   estimate (``energy_pj_estimated``) and the measured energy (``energy_mj.<class>``).
2. **What would this candidate measure?** A linear model fitted to the measurements from
   features known *before* a device runs: MACs per precision class (``macs.<class>``, see
   :func:`macs_by_precision`), the bytes of parameters moved (``model_bytes_estimated``) and a
   fixed cost per inference (``const``). Energy is a sum of non-negative costs, so the fit is
   non-negative least squares (:func:`scipy.optimize.nnls`). It minimises *relative* error
   (each row is divided by its measured energy), since energies of one study span orders of
   magnitude and the error reported is relative too: the median and 90th percentile of
   ``|predicted - measured| / measured`` over held-out trials (leave-one-out up to
   :data:`LOO_MAX_POINTS` trials, else :data:`KFOLDS`-fold).

:func:`prescreen` uses such a fit to keep clearly dominated candidates off the devices.

Which trials count: complete trials (not re-used ones, whose numbers are another trial's)
whose ``energy_mj.<class>`` source is ``measured``; when a class has no measured trial but
simulated ones, those are used and the calibration says ``source = "simulated"`` — a simulated
meter is never a real figure. Measured and simulated values are never mixed in one fit.

Latency as a feature: a device's own latency (``latency_ms.<class>``) is measured together with
its energy, so a fit that uses it explains measurements but cannot pre-screen. Pass
``latency_metric`` only with a latency the host knows before the devices run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

import numpy as np
import pandas as pd
from scipy.optimize import nnls
from scipy.stats import spearmanr

from results.export import to_frame
from results.pareto import pareto_mask
from results.records import Metric, ResultsError, TrialRecord

__all__ = [
    "CONST_FEATURE",
    "DEFAULT_FEATURES",
    "ESTIMATE_METRIC",
    "KFOLDS",
    "LOO_MAX_POINTS",
    "PRECISION_CLASSES",
    "PRECISION_MAC_METRICS",
    "TOTAL_MACS_FEATURES",
    "Calibration",
    "CalibrationError",
    "FrontPoint",
    "LayerCost",
    "PrecisionClass",
    "calibrate",
    "calibrate_all",
    "candidate_features",
    "front_points",
    "macs_by_precision",
    "measured_classes",
    "precision_class",
    "prescreen",
]

PrecisionClass = Literal["binary", "low", "int8", "wide", "float"]
CalibrationSource = Literal["measured", "simulated"]

#: The precision classes of a MAC, from the cheapest hardware to the dearest.
PRECISION_CLASSES: tuple[PrecisionClass, ...] = ("binary", "low", "int8", "wide", "float")
#: Metric names of the MACs per precision class (written by ``harness.objectives.estimate_metrics``).
PRECISION_MAC_METRICS: tuple[str, ...] = tuple(f"macs.{c}" for c in PRECISION_CLASSES)
#: The feature that is 1 for every candidate: the fixed cost of one inference.
CONST_FEATURE = "const"
#: Features of a fit: MACs per precision class, bytes of parameters moved, a fixed cost.
DEFAULT_FEATURES: tuple[str, ...] = (*PRECISION_MAC_METRICS, "model_bytes_estimated", CONST_FEATURE)
#: Features used when the trials predate the per-precision MAC metrics: total MACs instead.
TOTAL_MACS_FEATURES: tuple[str, ...] = ("macs", "model_bytes_estimated", CONST_FEATURE)
#: Up to this many trials the fit error is leave-one-out; above, :data:`KFOLDS`-fold.
LOO_MAX_POINTS = 200
KFOLDS = 10
#: The metric the estimate is read from, for the rank correlation. Units: pJ.
ESTIMATE_METRIC = "energy_pj_estimated"

_FLOAT_MULTIPLIERS = frozenset({"fp16", "fp32"})
_GATE_MULTIPLIERS = frozenset({"xor", "and", "mux"})  # binary, {0,1} or ternary operand


class CalibrationError(ResultsError):
    """A calibration cannot be made (too few trials, missing features) or used (a feature
    missing from a candidate). The message names the device class, count or feature at fault."""


# --- MACs per precision ---------------------------------------------------------------------


class LayerCost(Protocol):
    """What :func:`macs_by_precision` reads of a layer (``search.estimates.LayerEstimate``)."""

    @property
    def macs(self) -> int: ...
    @property
    def multiplier(self) -> str: ...
    @property
    def input_bits(self) -> int: ...
    @property
    def weight_bits(self) -> int: ...


def precision_class(multiplier: str, input_bits: int, weight_bits: int) -> PrecisionClass:
    """The precision class of a MAC from its multiplier and operand widths.

    ``float`` when either operand is float (``fp16``/``fp32`` multiplier); ``binary`` when one is
    ±1, {0, 1} or ternary (an XOR, AND or mux instead of a multiplier); otherwise by the wider
    operand: ``low`` up to 4 bits, ``int8`` up to 8 bits, ``wide`` above (e.g. ``fixed(16)``).
    Fixed-point, power-of-two (shift) and po2 × po2 (add) units are classed by width alike.
    """
    if multiplier in _FLOAT_MULTIPLIERS:
        return "float"
    if multiplier in _GATE_MULTIPLIERS:
        return "binary"
    widest = max(input_bits, weight_bits)
    if widest <= 4:
        return "low"
    return "int8" if widest <= 8 else "wide"


def macs_by_precision(layers: Iterable[LayerCost]) -> dict[str, int]:
    """MACs per precision class, keyed by :data:`PRECISION_MAC_METRICS` (every class present,
    zeros included). Their sum is the estimate's total ``macs``."""
    totals = dict.fromkeys(PRECISION_MAC_METRICS, 0)
    for layer in layers:
        cls = precision_class(layer.multiplier, layer.input_bits, layer.weight_bits)
        totals[f"macs.{cls}"] += int(layer.macs)
    return totals


# --- features ---------------------------------------------------------------------------------


def candidate_features(
    metrics: Mapping[str, float | Metric | None],
    feature_names: Sequence[str] = DEFAULT_FEATURES,
) -> dict[str, float]:
    """The feature vector of a candidate, from metrics it has before any device measures it.

    Args:
        metrics: Metric name to value (or :class:`~results.records.Metric`), e.g. a
            record's ``metrics`` after ``estimate_metrics``.
        feature_names: The features wanted, in order: metric names, and :data:`CONST_FEATURE`
            (always 1). Pass a calibration's ``feature_names``.

    Returns:
        Feature name to value, in the order of ``feature_names``.

    Raises:
        CalibrationError: A feature's metric is missing, has no value, or is not finite.
    """
    out: dict[str, float] = {}
    for name in feature_names:
        if name == CONST_FEATURE:
            out[name] = 1.0
            continue
        raw = metrics.get(name)
        value = raw.value if isinstance(raw, Metric) else raw
        if value is None or not math.isfinite(float(value)):
            raise CalibrationError(f"candidate has no value of feature {name!r}")
        out[name] = float(value)
    return out


# --- the calibration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """The host estimate against one device class's measured energies, and a fit to them.

    Attributes:
        device_class: The device class, as in the ``energy_mj.<class>`` metric.
        source: ``measured``, or ``simulated`` when only a simulated meter gave energies.
        n: Trials used.
        spearman: Spearman's rank correlation of the estimate and the measured energy
            (NaN when either is constant).
        spearman_pvalue: Its two-sided p-value.
        feature_names: The fit's features, in order.
        coefficients: mJ per unit of each feature (per MAC, per byte, per inference...).
        error_pct: Median ``|predicted - measured| / measured`` of held-out trials. Units: %.
        error_pct_p90: Its 90th percentile. Units: %.
        error_method: ``leave-one-out`` or ``K-fold``.
        spearman_fit: Spearman's rank correlation of held-out predictions and measurements.
        trial_numbers, estimated_pj, measured_mj, predicted_mj: Per trial used: its number,
            estimate (pJ), measured energy (mJ) and held-out prediction (mJ).
        left_out: Why trials with a value of ``energy_mj.<class>`` were not used, with counts.
    """

    device_class: str
    source: CalibrationSource
    n: int
    spearman: float
    spearman_pvalue: float
    feature_names: tuple[str, ...]
    coefficients: tuple[float, ...]
    error_pct: float
    error_pct_p90: float
    error_method: str
    spearman_fit: float
    trial_numbers: tuple[int, ...] = ()
    estimated_pj: tuple[float, ...] = ()
    measured_mj: tuple[float, ...] = ()
    predicted_mj: tuple[float, ...] = ()
    left_out: dict[str, int] = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """The fit's 90th-percentile held-out relative error, as a fraction: the default
        margin of :func:`prescreen`."""
        return self.error_pct_p90 / 100.0

    def features(self, metrics: Mapping[str, float | Metric | None]) -> dict[str, float]:
        """:func:`candidate_features` of ``metrics`` for this fit's features."""
        return candidate_features(metrics, self.feature_names)

    def predict(self, features: Mapping[str, float] | Sequence[float]) -> float:
        """Predicted energy per inference on this device class. Units: mJ.

        Args:
            features: Feature name to value (e.g. from :meth:`features`), or the values in the
                order of ``feature_names``.

        Raises:
            CalibrationError: A feature is missing, or the sequence has the wrong length.
        """
        if isinstance(features, Mapping):
            missing = [n for n in self.feature_names if n not in features and n != CONST_FEATURE]
            if missing:
                raise CalibrationError(f"{self.device_class}: no value of feature {missing[0]!r}")
            vector = [1.0 if n == CONST_FEATURE else float(features[n]) for n in self.feature_names]
        else:
            vector = [float(v) for v in features]
            if len(vector) != len(self.feature_names):
                raise CalibrationError(
                    f"{self.device_class}: {len(vector)} feature values for "
                    f"{len(self.feature_names)} features ({', '.join(self.feature_names)})"
                )
        return float(np.dot(self.coefficients, vector))

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON-serialisable; NaN stays NaN)."""
        return {
            "device_class": self.device_class,
            "source": self.source,
            "n": self.n,
            "spearman": self.spearman,
            "spearman_pvalue": self.spearman_pvalue,
            "spearman_fit": self.spearman_fit,
            "coefficients_mj": dict(zip(self.feature_names, self.coefficients, strict=True)),
            "error_pct": self.error_pct,
            "error_pct_p90": self.error_pct_p90,
            "error_method": self.error_method,
            "left_out": dict(self.left_out),
            "points": [
                {"trial_number": t, "estimated_pj": e, "measured_mj": m, "predicted_mj": p}
                for t, e, m, p in zip(
                    self.trial_numbers, self.estimated_pj, self.measured_mj, self.predicted_mj, strict=True
                )
            ],
        }

    def summary(self) -> str:
        """Two lines: the rank agreement and the fit's error."""
        label = "simulated meter, not a real figure" if self.source == "simulated" else "measured"
        terms = " + ".join(
            f"{c:.3g}·{n}" for n, c in zip(self.feature_names, self.coefficients, strict=True) if c > 0
        )
        return (
            f"{self.device_class} ({label}): n={self.n}, Spearman(estimate, measured) "
            f"{self.spearman:.3f}\n"
            f"  fit: median |error| {self.error_pct:.1f}% (p90 {self.error_pct_p90:.1f}%, "
            f"{self.error_method}), Spearman(fit, measured) {self.spearman_fit:.3f}; "
            f"mJ = {terms or '0'}"
        )


def measured_classes(frame: pd.DataFrame) -> list[str]:
    """Device classes of ``frame`` with at least one measured or simulated energy, sorted."""
    classes = []
    for column in frame.columns:
        if column.startswith("energy_mj.") and column.endswith("_source"):
            cls = column[len("energy_mj.") : -len("_source")]
            if frame[column].isin(("measured", "simulated")).any() and cls:
                classes.append(cls)
    return sorted(classes)


def calibrate(
    frame_or_records: pd.DataFrame | Iterable[TrialRecord],
    device_class: str,
    *,
    feature_names: Sequence[str] | None = None,
    latency_metric: str | None = None,
) -> Calibration:
    """Rank agreement of the estimate and measurements on ``device_class``, and a fit to them.

    Args:
        frame_or_records: A results table (:func:`results.load`) or trial records.
        device_class: The class whose ``energy_mj.<class>`` is calibrated against.
        feature_names: The fit's features; default :data:`DEFAULT_FEATURES`, or
            :data:`TOTAL_MACS_FEATURES` when some trial lacks a per-precision MAC metric
            (recorded before they existed).
        latency_metric: A latency metric to add as a feature (see the module docstring: only
            one known before the devices run can serve the pre-screen).

    Raises:
        CalibrationError: No trial has a measured or simulated ``energy_mj.<class>``, or fewer
            trials have every feature than the fit's active features + 2 (features that are
            zero in every trial, e.g. MACs of an unused precision, do not count).
    """
    frame = _as_frame(frame_or_records)
    energy = f"energy_mj.{device_class}"
    if f"{energy}_source" not in frame.columns:
        raise CalibrationError(f"device class {device_class!r}: no trial has {energy!r}")
    rows, source, left_out = _eligible(frame, energy)
    if not len(rows):
        raise CalibrationError(
            f"device class {device_class!r}: no complete trial has a measured or simulated {energy!r}"
        )
    names = _feature_names(rows, feature_names, latency_metric)
    if ESTIMATE_METRIC not in rows.columns:
        raise CalibrationError(f"device class {device_class!r}: no trial has {ESTIMATE_METRIC!r}")
    columns = [n for n in names if n != CONST_FEATURE]
    values = rows[list(dict.fromkeys([*columns, ESTIMATE_METRIC]))].apply(pd.to_numeric, errors="coerce")
    usable = np.isfinite(values.to_numpy(dtype=float)).all(axis=1)
    if (~usable).any():
        left_out["missing a feature or the estimate"] = int((~usable).sum())
    rows, values = rows[usable], values[usable]
    y = pd.to_numeric(rows[energy], errors="coerce").to_numpy(dtype=float)
    x = np.column_stack(
        [np.ones(len(rows)) if n == CONST_FEATURE else values[n].to_numpy(dtype=float) for n in names]
    )
    active = int((x != 0).any(axis=0).sum())
    needed = active + 2
    if len(rows) < needed:
        why = "; ".join(f"{k}: {v}" for k, v in left_out.items())
        raise CalibrationError(
            f"device class {device_class!r}: {len(rows)} {source} trial(s) usable, too few to fit "
            f"{active} feature(s) ({', '.join(names)}); need at least {needed}"
            + (f" (left out: {why})" if why else "")
        )
    coefficients = _fit(x, y)
    predicted, method = _held_out(x, y)
    relative = np.abs(predicted - y) / y * 100.0
    estimated = values[ESTIMATE_METRIC].to_numpy(dtype=float)
    rho, pvalue = _spearman(estimated, y)
    rho_fit, _ = _spearman(predicted, y)
    return Calibration(
        device_class=device_class,
        source=source,
        n=len(rows),
        spearman=rho,
        spearman_pvalue=pvalue,
        feature_names=tuple(names),
        coefficients=tuple(float(c) for c in coefficients),
        error_pct=float(np.median(relative)),
        error_pct_p90=float(np.percentile(relative, 90)),
        error_method=method,
        spearman_fit=rho_fit,
        trial_numbers=tuple(int(t) for t in rows["trial_number"]),
        estimated_pj=tuple(float(v) for v in estimated),
        measured_mj=tuple(float(v) for v in y),
        predicted_mj=tuple(float(v) for v in predicted),
        left_out=left_out,
    )


def calibrate_all(
    frame_or_records: pd.DataFrame | Iterable[TrialRecord],
    *,
    feature_names: Sequence[str] | None = None,
) -> dict[str, Calibration]:
    """:func:`calibrate` for every class of :func:`measured_classes`; a class with too few
    usable trials is left out of the result (call :func:`calibrate` to hear why)."""
    frame = _as_frame(frame_or_records)
    out: dict[str, Calibration] = {}
    for cls in measured_classes(frame):
        try:
            out[cls] = calibrate(frame, cls, feature_names=feature_names)
        except CalibrationError:
            continue
    return out


def _as_frame(frame_or_records: pd.DataFrame | Iterable[TrialRecord]) -> pd.DataFrame:
    if isinstance(frame_or_records, pd.DataFrame):
        return frame_or_records
    return to_frame(frame_or_records)


def _eligible(frame: pd.DataFrame, energy: str) -> tuple[pd.DataFrame, CalibrationSource, dict[str, int]]:
    """Complete, not re-used trials with a positive measured (else simulated) ``energy``."""
    left_out: dict[str, int] = {}
    sources = frame[f"{energy}_source"].astype(str)
    values = pd.to_numeric(frame[energy], errors="coerce")
    has = sources.isin(("measured", "simulated")) & values.notna()
    complete = frame["state"] == "complete"
    reused = frame["flags"].fillna("").astype(str).str.contains("reused:", regex=False)
    if (has & ~complete).any():
        left_out["not complete"] = int((has & ~complete).sum())
    if (has & complete & reused).any():
        left_out["re-used another trial's measurement"] = int((has & complete & reused).sum())
    has &= complete & ~reused
    not_positive = has & ~(values > 0)
    if not_positive.any():
        left_out["energy not positive"] = int(not_positive.sum())
    has &= values > 0
    source: CalibrationSource = "measured" if (has & (sources == "measured")).any() else "simulated"
    if source == "measured" and (has & (sources == "simulated")).any():
        left_out["simulated (measured ones used)"] = int((has & (sources == "simulated")).sum())
    return frame[has & (sources == source)], source, left_out


def _feature_names(
    rows: pd.DataFrame, requested: Sequence[str] | None, latency_metric: str | None
) -> list[str]:
    if requested is not None:
        names = list(requested)
    elif all(m in rows.columns and rows[m].notna().all() for m in PRECISION_MAC_METRICS):
        names = list(DEFAULT_FEATURES)
    else:
        names = list(TOTAL_MACS_FEATURES)
    if latency_metric is not None and latency_metric not in names:
        at = names.index(CONST_FEATURE) if CONST_FEATURE in names else len(names)
        names.insert(at, latency_metric)
    absent = [n for n in names if n != CONST_FEATURE and n not in rows.columns]
    if absent:
        raise CalibrationError(f"no trial has feature {absent[0]!r}")
    return names


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimising the squared relative error of ``x @ c`` to ``y``.

    Columns that are zero in every row get coefficient 0; the others are scaled to unit
    maximum before :func:`scipy.optimize.nnls` (whose result does not depend on a positive
    column scale, but whose arithmetic does) and the coefficients scaled back.
    """
    a = x / y[:, None]
    active = (x != 0).any(axis=0)
    coefficients = np.zeros(x.shape[1])
    if not active.any():
        return coefficients
    scale = np.abs(a[:, active]).max(axis=0)
    solution, _ = nnls(a[:, active] / scale, np.ones(len(y)))
    coefficients[active] = solution / scale
    return coefficients


def _held_out(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, str]:
    """Each trial's prediction by a fit without it: leave-one-out, or K-fold above
    :data:`LOO_MAX_POINTS` trials (folds from a fixed permutation, so reproducible)."""
    n = len(y)
    if n <= LOO_MAX_POINTS:
        folds = [np.array([i]) for i in range(n)]
        method = "leave-one-out"
    else:
        folds = np.array_split(np.random.default_rng(0).permutation(n), KFOLDS)
        method = f"{KFOLDS}-fold"
    predicted = np.empty(n)
    for held in folds:
        train = np.ones(n, dtype=bool)
        train[held] = False
        predicted[held] = x[held] @ _fit(x[train], y[train])
    return predicted, method


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


# --- the pre-screen ---------------------------------------------------------------------------


class FrontPoint(NamedTuple):
    """A measured trade-off point: accuracy (fraction) and energy per inference (mJ)."""

    accuracy: float
    energy_mj: float
    name: str = ""


def front_points(
    frame_or_records: pd.DataFrame | Iterable[TrialRecord],
    device_class: str,
    *,
    source: CalibrationSource = "measured",
) -> list[FrontPoint]:
    """The Pareto front on (accuracy max, ``energy_mj.<class>`` min) of complete trials whose
    energy on ``device_class`` has ``source``, sorted by energy; named ``trial N (label)``.

    Trials flagged ``constraint:`` (infeasible) are left out: they must not screen others.
    """
    frame = _as_frame(frame_or_records)
    energy = f"energy_mj.{device_class}"
    if not {energy, f"{energy}_source", "accuracy"} <= set(frame.columns):
        return []
    rows = frame[
        (frame["state"] == "complete")
        & (frame[f"{energy}_source"] == source)
        & ~frame["flags"].fillna("").astype(str).str.contains("constraint:", regex=False)
    ]
    values = np.column_stack(
        [pd.to_numeric(rows["accuracy"], errors="coerce"), pd.to_numeric(rows[energy], errors="coerce")]
    ) if len(rows) else np.zeros((0, 2))
    front = rows[pareto_mask(values, ["maximize", "minimize"])]
    points = [
        FrontPoint(
            float(r["accuracy"]),
            float(r[energy]),
            f"trial {int(r['trial_number'])}" + (f" ({r['label']})" if r.get("label") else ""),
        )
        for _, r in front.iterrows()
    ]
    return sorted(points, key=lambda p: (p.energy_mj, -p.accuracy))


def prescreen(
    calibration: Calibration,
    candidate_features: Mapping[str, float],
    pareto_points: Iterable[FrontPoint | tuple[float, float] | tuple[float, float, str]],
    *,
    accuracy: float | None,
    margin: float | None = None,
) -> tuple[bool, str]:
    """Whether a candidate should go to the devices of ``calibration``'s class.

    The candidate's energy is predicted, then lowered by the fit's margin in its favour: with
    a relative error of at most ``margin`` the lowest energy it can measure is
    ``predicted / (1 + margin)``. It is not sent only when a point with at least its accuracy
    and at most that optimistic energy (better in one of them) exists: it would land dominated
    whatever the device says, within the fit's error. Anything that cannot be judged (no
    accuracy, a feature missing, no points) is sent.

    Args:
        calibration: The device class's fit.
        candidate_features: The candidate's features (:meth:`Calibration.features`).
        pareto_points: Measured (accuracy, energy mJ[, name]) points of the same class and
            source, e.g. :func:`front_points`; any measured points do (a point dominated by one
            of them dominates nothing the front does not).
        accuracy: The candidate's accuracy (fraction), measured on the host before sending.
        margin: Relative error allowed to the prediction (0.2 = 20 %); default
            :attr:`Calibration.margin`, the fit's 90th-percentile held-out error.

    Returns:
        ``(send, reason)``; the reason names the dominating point when ``send`` is false.

    Raises:
        ResultsError: ``margin`` is negative or not finite.
    """
    margin = calibration.margin if margin is None else float(margin)
    if not math.isfinite(margin) or margin < 0:
        raise ResultsError(f"margin must be a finite fraction >= 0, got {margin!r}")
    if accuracy is None or not math.isfinite(accuracy):
        return True, "no accuracy to compare: sent"
    try:
        predicted = calibration.predict(candidate_features)
    except CalibrationError as e:
        return True, f"cannot predict ({e}): sent"
    optimistic = predicted / (1.0 + margin)
    dominating = [
        p
        for p in (FrontPoint(*point) for point in pareto_points)
        if p.accuracy >= accuracy
        and p.energy_mj <= optimistic
        and (p.accuracy > accuracy or p.energy_mj < optimistic)
    ]
    where = f"{calibration.device_class} ({calibration.source})"
    if not dominating:
        return True, (
            f"predicted {predicted:.4g} mJ on {where}, at best {optimistic:.4g} mJ within a "
            f"{margin:.0%} margin: not dominated"
        )
    best = min(dominating, key=lambda p: (p.energy_mj, -p.accuracy))
    name = best.name or f"point ({best.accuracy:.4g}, {best.energy_mj:.4g} mJ)"
    return False, (
        f"dominated by {name}: accuracy {best.accuracy:.4f} >= {accuracy:.4f} at "
        f"{best.energy_mj:.4g} mJ, while this candidate is predicted {predicted:.4g} mJ on "
        f"{where}, at best {optimistic:.4g} mJ within a {margin:.0%} margin"
    )
