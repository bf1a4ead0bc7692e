"""From a host outcome and device measurements to metrics (with sources) and objective values."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from devices.base import Measurement
from devices.files import sha256_file
from devices.fleet import FleetResult
from harness.config import SearchConfig
from harness.evaluate import PJ_PER_MJ, HostOutcome
from results.calibration import macs_by_precision
from results.records import Artifact, Metric, TrialRecord
from search.estimates import Estimate

__all__ = [
    "estimate_metrics",
    "estimated_energy_metric",
    "host_metrics",
    "measurement_metrics",
    "apply_fleet_result",
    "apply_host_outcome",
    "objective_values",
    "OBJECTIVE_METRIC",
]

# Which metric each objective reads.
OBJECTIVE_METRIC = {
    "accuracy": "accuracy",
    "energy": "energy_mj",
    "latency": "latency_ms",
    "size": "size_bytes",
    "bops": "bops",
}


def estimate_metrics(cost: Estimate) -> dict[str, Metric]:
    """The host estimate's metrics, including MACs per precision class (``macs.binary``,
    ``macs.low``, ``macs.int8``, ``macs.wide``, ``macs.float``; see
    :func:`results.calibration.precision_class`), the features of the energy calibration."""
    metrics = {
        "energy_pj_estimated": Metric(float(cost.energy_pj), "pJ", "estimated"),
        "bops": Metric(float(cost.bops), "bit-ops", "estimated"),
        "macs": Metric(float(cost.macs), "MACs", "estimated"),
        "param_bits": Metric(float(cost.param_bits), "bits", "estimated"),
        "model_bytes_estimated": Metric(float(cost.model_bytes), "bytes", "estimated"),
    }
    for name, macs in macs_by_precision(cost.layers).items():
        metrics[name] = Metric(float(macs), "MACs", "estimated")
    return metrics


def estimated_energy_metric(cost: Estimate) -> Metric:
    """The host estimate as the ``energy_mj`` metric (mJ per inference, source estimated)."""
    return Metric(cost.energy_pj / PJ_PER_MJ, "mJ", "estimated")


def host_metrics(outcome: HostOutcome, config: SearchConfig) -> dict[str, Metric]:
    accuracy = outcome.tflite_accuracy if config.accuracy_from == "tflite" else outcome.keras_accuracy
    metrics = {
        "accuracy": Metric(accuracy, "fraction", "measured"),
        "keras_accuracy": Metric(outcome.keras_accuracy, "fraction", "measured"),
        "tflite_accuracy": Metric(outcome.tflite_accuracy, "fraction", "measured"),
    }
    if outcome.tflite_bytes is not None:
        metrics["size_bytes"] = Metric(float(outcome.tflite_bytes), "bytes", "measured")
    return metrics


def measurement_metrics(
    by_class: Mapping[str, Measurement], cost: Estimate, aggregate: str
) -> dict[str, Metric]:
    """Latency (and energy where a class has a meter) per device class, and aggregated over
    classes (``max`` or ``mean``) as the objective.

    ``energy_mj`` aggregates the metered classes (source measured, or simulated when any is);
    with no meter anywhere it falls back to the host estimate and says so.
    """
    reduce = np.max if aggregate == "max" else np.mean
    measurements = list(by_class.values())
    metrics: dict[str, Metric] = {}
    if measurements:
        metrics["latency_ms"] = Metric(float(reduce([m.latency_ms_median for m in measurements])), "ms", "measured")
        metrics["latency_ms_p90"] = Metric(float(reduce([m.latency_ms_p90 for m in measurements])), "ms", "measured")
        for device_class, m in by_class.items():
            metrics[f"latency_ms.{device_class}"] = Metric(m.latency_ms_median, "ms", "measured")
    metered = {c: m for c, m in by_class.items() if m.energy_mj_median is not None}
    for device_class, m in metered.items():
        metrics[f"energy_mj.{device_class}"] = Metric(m.energy_mj_median, "mJ", m.energy_source)
    if metered:
        # the objective is what was measured: classes without a meter have no energy to add
        simulated = any(m.energy_source == "simulated" for m in metered.values())
        source = "simulated" if simulated else "measured"
        energies = [m.energy_mj_median for m in metered.values()]
        metrics["energy_mj"] = Metric(float(reduce(energies)), "mJ", source)  # type: ignore[arg-type]
    else:
        metrics["energy_mj"] = estimated_energy_metric(cost)
    return metrics


def apply_host_outcome(record: TrialRecord, outcome: HostOutcome, config: SearchConfig) -> None:
    """Puts what the host learnt into ``record``: stage times, accuracies and size, flags, the
    artifacts with their sha256, and the lowering mode."""
    record.timings_s.update(outcome.timings_s)
    record.metrics.update(host_metrics(outcome, config))
    record.flags.extend(outcome.flags)
    for name, path in (("tflite", outcome.tflite_path), ("keras", outcome.keras_path)):
        if path is not None:
            record.artifacts[name] = Artifact(str(path), sha256_file(path))
    record.params["lowering_mode"] = outcome.lowering_mode


def apply_fleet_result(record: TrialRecord, result: FleetResult, cost: Estimate, aggregate: str) -> str | None:
    """Puts a fleet measurement into ``record``: a row per device class, the attempts that were
    retried (which device failed, and why), the measure time and the metrics. Returns why the
    measurement failed, or ``None``."""
    measurements = result.measurements
    record.measurements = [{**m.to_dict(), "device_class": c} for c, m in measurements.items()]
    record.flags.extend(f"retried:{f.line()}" for f in result.failures if measurements.get(f.device_class))
    if measurements:
        record.timings_s["measure"] = sum(m.window_s for m in measurements.values())
    if not result.ok:
        return "measurement failed: " + "; ".join(line for lines in result.errors.values() for line in lines)
    record.metrics.update(measurement_metrics(measurements, cost, aggregate))
    return None


def objective_values(metrics: dict[str, Metric], config: SearchConfig) -> list[float]:
    """Values in the order of the study's objectives (``score`` alone in score mode)."""
    if config.mode == "score":
        return [_value(metrics, "score")]
    return [_value(metrics, OBJECTIVE_METRIC[name]) for name in config.objectives]


def _value(metrics: dict[str, Metric], name: str) -> float:
    metric = metrics.get(name)
    if metric is None or metric.value is None:
        raise KeyError(f"objective metric {name!r} has no value")
    return float(metric.value)
