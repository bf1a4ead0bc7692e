"""The record of one trial: what was tried, what it cost, and where every number came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

__all__ = [
    "Metric",
    "Artifact",
    "TrialRecord",
    "MetricSource",
    "TrialState",
    "METRIC_SOURCES",
    "TRIAL_STATES",
    "ResultsError",
]

MetricSource = Literal["measured", "estimated", "simulated", "none"]
TrialState = Literal["running", "complete", "rejected", "pruned", "failed"]

#: Every value a :class:`Metric` ``source`` may take, for validating data read back from disk.
METRIC_SOURCES: tuple[str, ...] = get_args(MetricSource)
#: Every value a :class:`TrialRecord` ``state`` may take.
TRIAL_STATES: tuple[str, ...] = get_args(TrialState)


class ResultsError(Exception):
    """Base exception of the ``results`` package.

    Raised for a missing or unreadable store or export file, a record that cannot be stored,
    and invalid arguments to the analysis and plotting functions. The message is one line that
    names the file, study or value at fault.
    """


@dataclass(frozen=True)
class Metric:
    """One number with its unit and where it came from.

    ``source`` is ``measured`` (taken on a device or by evaluating a model), ``estimated``
    (the host's energy model), ``simulated`` (a simulated meter: never a real figure) or
    ``none`` (the value is missing, e.g. energy on a device without a meter).
    """

    value: float | None
    unit: str
    source: MetricSource


@dataclass(frozen=True)
class Artifact:
    """A file kept for a trial, with its sha256 so a result can be traced to its bytes."""

    path: str
    sha256: str


@dataclass
class TrialRecord:
    """Everything known about one trial; the results store keeps one per (study, trial)."""

    study: str
    trial_number: int
    candidate_key: str
    state: TrialState
    label: str = ""
    params: dict[str, object] = field(default_factory=dict)
    layers: dict[str, dict[str, object]] = field(default_factory=dict)
    metrics: dict[str, Metric] = field(default_factory=dict)
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    measurements: list[dict[str, object]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> TrialRecord:
        values = dict(data)
        values["metrics"] = {
            k: Metric(**v) for k, v in dict(values.get("metrics") or {}).items()  # type: ignore[arg-type]
        }
        values["artifacts"] = {
            k: Artifact(**v) for k, v in dict(values.get("artifacts") or {}).items()  # type: ignore[arg-type]
        }
        return cls(**values)  # type: ignore[arg-type]

    def metric_value(self, name: str) -> float | None:
        metric = self.metrics.get(name)
        return None if metric is None else metric.value
