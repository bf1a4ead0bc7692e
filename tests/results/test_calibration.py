"""Tests of results.calibration: the estimate against measured energy, the fit, the pre-screen,
and the report's estimate-vs-measurement section."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from results import Metric, ResultsError, ResultsStore, TrialRecord, to_frame
from results.calibration import (
    DEFAULT_FEATURES,
    PRECISION_MAC_METRICS,
    TOTAL_MACS_FEATURES,
    CalibrationError,
    FrontPoint,
    calibrate,
    calibrate_all,
    candidate_features,
    front_points,
    macs_by_precision,
    measured_classes,
    precision_class,
    prescreen,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Ground truth of the synthetic device "board": mJ per int8 MAC, float MAC, parameter byte,
# and per inference.
TRUE_INT8 = 2e-9
TRUE_FLOAT = 9e-9
TRUE_BYTE = 4e-8
TRUE_FIXED = 0.01


def _features(rng: np.random.Generator) -> dict[str, float]:
    int8 = float(rng.uniform(1e5, 5e6))
    floating = float(rng.choice([0.0, rng.uniform(1e5, 2e6)]))
    return {
        "macs.binary": 0.0,
        "macs.low": 0.0,
        "macs.int8": int8,
        "macs.wide": 0.0,
        "macs.float": floating,
        "model_bytes_estimated": float(rng.uniform(1e3, 1e5)),
    }


def _truth(features: dict[str, float]) -> float:
    return (
        TRUE_INT8 * features["macs.int8"]
        + TRUE_FLOAT * features["macs.float"]
        + TRUE_BYTE * features["model_bytes_estimated"]
        + TRUE_FIXED
    )


def _record(
    number: int,
    features: dict[str, float],
    *,
    energy: dict[str, tuple[float | None, str]],
    estimate_pj: float,
    accuracy: float = 0.9,
    state: str = "complete",
    label: str = "",
    flags: tuple[str, ...] = (),
) -> TrialRecord:
    metrics = {name: Metric(value, "MACs" if name.startswith("macs") else "bytes", "estimated")
               for name, value in features.items()}  # fmt: skip
    metrics["macs"] = Metric(sum(v for k, v in features.items() if k.startswith("macs.")), "MACs", "estimated")
    metrics["energy_pj_estimated"] = Metric(estimate_pj, "pJ", "estimated")
    metrics["accuracy"] = Metric(accuracy, "fraction", "measured")
    for cls, (value, source) in energy.items():
        metrics[f"energy_mj.{cls}"] = Metric(value, "mJ", source)  # type: ignore[arg-type]
        metrics[f"latency_ms.{cls}"] = Metric(1.0 + number, "ms", "measured")
    values = [v for v, _ in energy.values() if v is not None]
    metrics["energy_mj"] = Metric(max(values) if values else estimate_pj / 1e9, "mJ",
                                  next(iter(energy.values()))[1] if values else "estimated")  # fmt: skip
    return TrialRecord(
        study="cal", trial_number=number, candidate_key=f"k{number}", state=state,  # type: ignore[arg-type]
        label=label, metrics=metrics, flags=list(flags),
    )  # fmt: skip


def _study(
    n: int = 40, *, noise: float = 0.02, source: str = "measured", seed: int = 0
) -> list[TrialRecord]:
    """``n`` trials measured on ``board``: linear ground truth times (1 + noise)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        features = _features(rng)
        truth = _truth(features)
        measured = truth * (1.0 + rng.uniform(-noise, noise))
        # The host estimate prices things differently but grows with the same costs.
        estimate_pj = (
            0.3 * features["macs.int8"] + 1.9 * features["macs.float"] + 5.0 * features["model_bytes_estimated"]
        )
        records.append(_record(i, features, energy={"board": (measured, source)}, estimate_pj=estimate_pj))
    return records


# --- MACs per precision ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    macs: int
    multiplier: str
    input_bits: int
    weight_bits: int


@pytest.mark.parametrize(
    ("multiplier", "bits", "expected"),
    [
        ("fp32", (32, 8), "float"), ("fp16", (8, 16), "float"), ("xor", (1, 1), "binary"),
        ("mux", (8, 2), "binary"), ("and", (8, 1), "binary"), ("fixed", (4, 4), "low"),
        ("shift", (4, 3), "low"), ("fixed", (8, 4), "int8"), ("add", (5, 5), "int8"),
        ("fixed", (16, 8), "wide"),
    ],
)  # fmt: skip
def test_precision_class(multiplier: str, bits: tuple[int, int], expected: str) -> None:
    assert precision_class(multiplier, *bits) == expected


def test_macs_by_precision_sums_to_the_total_and_names_every_class() -> None:
    layers = [_Layer(100, "fixed", 8, 8), _Layer(30, "fp32", 32, 8), _Layer(7, "mux", 8, 2), _Layer(5, "fixed", 8, 8)]
    totals = macs_by_precision(layers)
    assert list(totals) == list(PRECISION_MAC_METRICS)
    assert totals == {"macs.binary": 7, "macs.low": 0, "macs.int8": 105, "macs.wide": 0, "macs.float": 30}
    assert sum(totals.values()) == sum(layer.macs for layer in layers)


def test_estimate_metrics_carry_macs_per_precision() -> None:
    from harness.objectives import estimate_metrics
    from search.estimates import Estimate, LayerEstimate

    def layer(name: str, macs: int, multiplier: str, bits: int) -> LayerEstimate:
        return LayerEstimate(name, "Dense", macs, 1, bits, macs * bits * 8, 8, bits, multiplier, 1.0, 1.0, 2.0)  # type: ignore[arg-type]

    layers = (layer("a", 1000, "fixed", 8), layer("b", 50, "fp32", 32), layer("c", 20, "fixed", 4))
    cost = Estimate(1070, 3, 44, 0, 6, 6.0, 3.0, 3.0, layers)
    metrics = estimate_metrics(cost)
    assert {n: metrics[n].value for n in PRECISION_MAC_METRICS} == {
        "macs.binary": 0.0, "macs.low": 0.0, "macs.int8": 1020.0, "macs.wide": 0.0, "macs.float": 50.0,
    }  # fmt: skip  # fixed 8x4 is int8-like: the wider operand decides
    assert all(metrics[n].unit == "MACs" and metrics[n].source == "estimated" for n in PRECISION_MAC_METRICS)
    assert metrics["macs"].value == 1070.0


# --- calibrate --------------------------------------------------------------------------------


def test_linear_truth_with_noise_is_ranked_and_fitted() -> None:
    cal = calibrate(_study(40, noise=0.02), "board")
    assert cal.source == "measured" and cal.n == 40 and cal.device_class == "board"
    assert cal.spearman > 0.9 and cal.spearman_pvalue < 1e-6
    assert cal.feature_names == DEFAULT_FEATURES
    assert cal.error_method == "leave-one-out"
    assert cal.error_pct < 2.5 and cal.error_pct_p90 < 4.0
    assert cal.spearman_fit > 0.98
    coefficients = dict(zip(cal.feature_names, cal.coefficients, strict=True))
    assert all(c >= 0 for c in cal.coefficients)
    assert coefficients["macs.int8"] == pytest.approx(TRUE_INT8, rel=0.1)
    assert coefficients["macs.float"] == pytest.approx(TRUE_FLOAT, rel=0.1)
    assert coefficients["macs.binary"] == coefficients["macs.low"] == coefficients["macs.wide"] == 0.0
    assert coefficients["const"] == pytest.approx(TRUE_FIXED, rel=0.25)
    features = {"macs.int8": 1e6, "macs.float": 5e5, "model_bytes_estimated": 2e4,
                "macs.binary": 0.0, "macs.low": 0.0, "macs.wide": 0.0}  # fmt: skip
    assert cal.predict(features) == pytest.approx(_truth(features), rel=0.05)


def test_monotone_nonlinear_estimate_keeps_spearman_one() -> None:
    records = _study(25, noise=0.0)
    for record in records:
        measured = record.metrics["energy_mj.board"].value
        assert measured is not None
        record.metrics["energy_pj_estimated"] = Metric(math.exp(30 * measured), "pJ", "estimated")
    cal = calibrate(records, "board")
    assert cal.spearman == pytest.approx(1.0)
    assert cal.error_pct < 1e-3  # noise-free linear truth: the fit is exact


def test_too_few_points_are_refused_with_a_clear_message() -> None:
    # Active features: macs.int8, macs.float, model bytes, const = 4, so 6 trials are needed.
    records = _study(5)
    with pytest.raises(CalibrationError, match=r"'board': 5 measured trial\(s\) usable, too few .*need at least 6"):
        calibrate(records, "board")
    assert calibrate(_study(6), "board").n == 6
    assert calibrate_all(records) == {}  # left out, not raised


def test_no_energy_of_the_class_is_refused() -> None:
    with pytest.raises(CalibrationError, match="'phone'"):
        calibrate(_study(10), "phone")


def test_simulated_energies_are_labelled_and_never_mixed_with_measured() -> None:
    simulated = calibrate(_study(12, source="simulated"), "board")
    assert simulated.source == "simulated"
    assert "simulated meter, not a real figure" in simulated.summary()
    assert simulated.to_dict()["source"] == "simulated"

    extra = [
        _record(100 + i, {n: r.metric_value(n) for n in DEFAULT_FEATURES[:-1]},  # type: ignore[misc]
                energy={"board": (5.0, "simulated")}, estimate_pj=1.0)
        for i, r in enumerate(_study(3, seed=9))
    ]  # fmt: skip
    mixed = _study(12, source="measured") + extra
    cal = calibrate(mixed, "board")
    assert cal.source == "measured" and cal.n == 12
    assert cal.left_out == {"simulated (measured ones used)": 3}


def test_unusable_trials_are_left_out_and_counted() -> None:
    records = _study(10)
    records[0].state = "failed"
    records[1].flags.append("reused:7")
    records[2].metrics["energy_mj.board"] = Metric(None, "mJ", "none")
    records[3].metrics["energy_mj.board"] = Metric(0.02, "mJ", "estimated")  # not a measurement
    del records[4].metrics["macs.float"]  # falls back to total MACs (recorded before macs.*)
    cal = calibrate(records, "board")
    assert cal.n == 6
    assert cal.feature_names == TOTAL_MACS_FEATURES
    assert cal.left_out == {"not complete": 1, "re-used another trial's measurement": 1}
    assert 0 not in cal.trial_numbers and 1 not in cal.trial_numbers


def test_latency_feature_and_kfold_above_the_loo_limit() -> None:
    cal = calibrate(_study(230, noise=0.01), "board", latency_metric="latency_ms.board")
    assert cal.feature_names == (*DEFAULT_FEATURES[:-1], "latency_ms.board", "const")
    assert cal.error_method == "10-fold" and cal.n == 230
    assert cal.error_pct < 1.5


def test_predict_to_dict_and_features() -> None:
    cal = calibrate(_study(20), "board")
    record = _study(1, seed=5)[0]
    features = cal.features(record.metrics)
    assert list(features) == list(cal.feature_names) and features["const"] == 1.0
    assert cal.predict(features) == pytest.approx(cal.predict(list(features.values())))
    with pytest.raises(CalibrationError, match="3 feature values"):
        cal.predict([1.0, 2.0, 3.0])
    with pytest.raises(CalibrationError, match="board: no value of feature 'macs.binary'"):
        cal.predict({"macs.int8": 1.0})
    data = json.loads(json.dumps(cal.to_dict()))
    assert data["n"] == 20 and len(data["points"]) == 20
    assert set(data["coefficients_mj"]) == set(DEFAULT_FEATURES)
    assert "board (measured): n=20" in cal.summary()


def test_candidate_features_need_every_metric() -> None:
    metrics = {"macs": 10.0, "model_bytes_estimated": Metric(4.0, "bytes", "estimated")}
    assert candidate_features(metrics, TOTAL_MACS_FEATURES) == {
        "macs": 10.0, "model_bytes_estimated": 4.0, "const": 1.0
    }
    with pytest.raises(CalibrationError, match="'macs.binary'"):
        candidate_features(metrics)
    with pytest.raises(CalibrationError, match="'macs'"):
        candidate_features({"macs": Metric(None, "MACs", "none"), "model_bytes_estimated": 1.0}, TOTAL_MACS_FEATURES)


def test_measured_classes_and_calibrate_all() -> None:
    records = _study(12)
    for record in records:
        energy = record.metrics["energy_mj.board"].value
        assert energy is not None
        record.metrics["energy_mj.phone"] = Metric(energy * 3, "mJ", "measured")
        record.metrics["energy_mj.mcu"] = Metric(None, "mJ", "none")
    frame = to_frame(records)
    assert measured_classes(frame) == ["board", "phone"]
    cals = calibrate_all(frame)
    assert sorted(cals) == ["board", "phone"]
    assert cals["phone"].predict(cals["phone"].features(records[0].metrics)) == pytest.approx(
        3 * cals["board"].predict(cals["board"].features(records[0].metrics)), rel=1e-6
    )


# --- pre-screen -------------------------------------------------------------------------------


def test_front_points_are_the_measured_front_of_the_class() -> None:
    features = _features(np.random.default_rng(1))
    rows = [
        _record(0, features, energy={"board": (1.0, "measured")}, estimate_pj=1, accuracy=0.90, label="int8"),
        _record(1, features, energy={"board": (2.0, "measured")}, estimate_pj=1, accuracy=0.95),
        _record(2, features, energy={"board": (3.0, "measured")}, estimate_pj=1, accuracy=0.93),  # dominated
        _record(3, features, energy={"board": (0.5, "simulated")}, estimate_pj=1, accuracy=0.99),  # other source
        _record(4, features, energy={"board": (0.1, "measured")}, estimate_pj=1, accuracy=0.99,
                flags=("constraint:latency_ms=9>1",)),  # infeasible
    ]  # fmt: skip
    assert front_points(rows, "board") == [FrontPoint(0.90, 1.0, "trial 0 (int8)"), FrontPoint(0.95, 2.0, "trial 1")]
    assert front_points(rows, "phone") == []


def test_prescreen_rejects_a_clearly_dominated_candidate_and_names_the_point() -> None:
    cal = calibrate(_study(30), "board")
    front = [FrontPoint(0.95, 0.02, "trial 3"), FrontPoint(0.97, 0.05, "trial 8 (int8)")]
    features = {**dict.fromkeys(PRECISION_MAC_METRICS, 0.0), "macs.float": 5e6, "model_bytes_estimated": 1e5}
    predicted = cal.predict(features)
    assert predicted > 0.04  # far above trial 3, at lower accuracy
    send, reason = prescreen(cal, features, front, accuracy=0.90, margin=0.2)
    assert not send
    assert "dominated by trial 3" in reason and "board (measured)" in reason


def test_prescreen_sends_a_borderline_candidate_within_the_margin() -> None:
    cal = calibrate(_study(30), "board")
    features = {**dict.fromkeys(PRECISION_MAC_METRICS, 0.0), "macs.int8": 1e6, "model_bytes_estimated": 1e4}
    predicted = cal.predict(features)
    front = [FrontPoint(0.95, predicted / 1.1, "trial 3")]  # 10 % cheaper and more accurate
    send, reason = prescreen(cal, features, front, accuracy=0.90, margin=0.2)
    assert send and "not dominated" in reason
    send, reason = prescreen(cal, features, front, accuracy=0.90, margin=0.05)
    assert not send and "trial 3" in reason
    # the default margin is the fit's p90 held-out error
    assert prescreen(cal, features, front, accuracy=0.90)[0] == (predicted / (1 + cal.margin) < predicted / 1.1)


def test_prescreen_sends_what_it_cannot_judge() -> None:
    cal = calibrate(_study(30), "board")
    features = {**dict.fromkeys(PRECISION_MAC_METRICS, 1e6), "model_bytes_estimated": 1e4}
    front = [(0.99, 1e-6)]
    assert prescreen(cal, features, front, accuracy=0.9, margin=0.1)[0] is False
    assert prescreen(cal, features, [], accuracy=0.9, margin=0.1)[0] is True
    assert prescreen(cal, features, front, accuracy=None, margin=0.1)[0] is True
    assert prescreen(cal, features, front, accuracy=math.nan, margin=0.1)[0] is True
    send, reason = prescreen(cal, {"macs.int8": 1.0}, front, accuracy=0.9, margin=0.1)
    assert send and "cannot predict" in reason
    assert prescreen(cal, features, front, accuracy=0.995, margin=0.1)[0] is True  # more accurate
    assert prescreen(cal, features, [(0.9, cal.predict(features))], accuracy=0.9, margin=0.0)[0] is True  # equal
    with pytest.raises(ResultsError, match="margin"):
        prescreen(cal, features, front, accuracy=0.9, margin=-0.1)


# --- report -----------------------------------------------------------------------------------


def _store(results_dir: Path, records: list[TrialRecord]) -> None:
    with ResultsStore(results_dir / "harness.sqlite") as store:
        for record in records:
            store.put(record)


def test_report_adds_the_estimate_vs_measurement_section(tmp_path: Path) -> None:
    from harness.report import CALIBRATION_PLOT, build_report

    records = _study(12)
    for record in records[:3]:  # a second class with too few trials: named, not fitted
        value = record.metrics["energy_mj.board"].value
        record.metrics["energy_mj.phone"] = Metric(value, "mJ", "measured")
    _store(tmp_path, records)
    report = build_report(tmp_path, "cal")
    assert list(report.calibrations) == ["board"] and report.calibrations["board"].n == 12
    text = report.calibration_text
    assert text.startswith("Estimate vs measurement")
    assert "board (measured): n=12, Spearman(estimate, measured)" in text and "median |error|" in text
    assert "'phone': 3 measured trial(s) usable, too few" in text
    assert report.calibration_plot_path == tmp_path / "cal" / CALIBRATION_PLOT
    assert report.calibration_plot_path.read_bytes().startswith(PNG_MAGIC)
    assert report.plot_path is not None and report.csv_path.is_file() and len(report.front)


def test_report_without_measured_energy_has_no_section(tmp_path: Path) -> None:
    from harness.report import CALIBRATION_PLOT, build_report

    records = [
        _record(i, _features(np.random.default_rng(i)), energy={"board": (None, "none")}, estimate_pj=1e6 * (i + 1),
                accuracy=0.8 + 0.01 * i)
        for i in range(10)
    ]  # fmt: skip
    _store(tmp_path, records)
    report = build_report(tmp_path, "cal")
    assert report.calibrations == {} and report.calibration_text == ""
    assert report.calibration_plot_path is None
    assert not (tmp_path / "cal" / CALIBRATION_PLOT).exists()
    assert report.plot_path is not None  # the rest of the report is unchanged
