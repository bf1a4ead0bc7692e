"""The seam between the search and whatever runs a .tflite: a device that measures it.

Lifecycle: a :class:`Device` is created from an inventory entry (or is the built-in ``local``
host), used for any number of :meth:`Device.measure` calls and closed with :meth:`Device.close`
(also as a context manager). A device is not thread-safe: the fleet gives each device to one
worker at a time.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = ["DeviceError", "MeasureSettings", "Measurement", "Device", "EnergySource", "HealthReport",
           "REACHABLE_FACT"]

REACHABLE_FACT = "reachable"
"""The :attr:`HealthReport.facts` key saying whether the device answered at all (``"true"`` /
``"false"``): the fleet records a failing check of an unreachable device as *offline*."""

EnergySource = Literal["measured", "simulated", "none"]


class DeviceError(RuntimeError):
    """A device could not measure; the message names the device and what went wrong."""


@dataclass(frozen=True)
class MeasureSettings:
    """How to time a model. Units are in the names.

    Attributes:
        threads: Interpreter threads (fixed so runs compare).
        warmup_runs: Untimed inferences before the timed loop.
        min_seconds: The timed loop runs at least this long...
        min_runs: ...and at least this many inferences.
    """

    threads: int = 1
    warmup_runs: int = 5
    min_seconds: float = 1.0
    min_runs: int = 20

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.warmup_runs < 0:
            raise ValueError(f"warmup_runs must be >= 0, got {self.warmup_runs}")
        if self.min_seconds < 0:
            raise ValueError(f"min_seconds must be >= 0, got {self.min_seconds}")
        if self.min_runs < 1:
            raise ValueError(f"min_runs must be >= 1, got {self.min_runs}")


@dataclass(frozen=True)
class Measurement:
    """What one device measured for one model.

    Latency is per inference in ms, from the timed loop only (warm-up excluded). Energy is net
    per inference in mJ, ``None`` when the device has no meter (``energy_source == "none"``).
    ``output_checksum`` digests the model's output for the fixed probe input, so a device that
    answers wrongly can be told from one that answers fast; ``output_matches`` says whether it
    equals the host's digest for the same model and input (``None``: not compared).
    With a meter, ``energy_mj_median`` is the median over the protocol's repeats of net energy
    per inference (per iteration of the runner's timed loop, so its bookkeeping between
    inferences, about a microsecond, is included: +4 % on a 36 µs model in bench/RESULTS.md),
    ``energy_mj_spread`` their spread, ``power_mw_mean`` the net power while inferring,
    ``energy_window_s`` the configured minimum measured window, and ``energy_detail`` every
    repeat's raw readings, baseline, temperatures and flags
    (:meth:`devices.energy_protocol.EnergyResult.to_dict`).
    """

    device: str
    latency_ms_median: float
    latency_ms_p90: float
    n_inferences: int
    window_s: float
    threads: int
    energy_mj_median: float | None = None
    energy_mj_spread: float | None = None
    power_mw_mean: float | None = None
    energy_source: EnergySource = "none"
    output_checksum: str | None = None
    output_matches: bool | None = None
    energy_window_s: float | None = None
    energy_detail: Mapping[str, object] | None = None
    fingerprint: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["fingerprint"] = dict(self.fingerprint)
        data["energy_detail"] = None if self.energy_detail is None else dict(self.energy_detail)
        data["notes"] = list(self.notes)
        return data


@dataclass(frozen=True)
class HealthReport:
    """The result of :meth:`Device.health_check`: healthy, or the problems found (one line each).

    ``facts`` holds what was read (free disk in MB, temperature in C, runtime version ...), as
    strings, for ``harness devices check`` and the fleet's records.
    """

    device: str
    problems: tuple[str, ...] = ()
    facts: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return "healthy" if self.ok else "; ".join(self.problems)


class Device(abc.ABC):
    """Something that runs a .tflite and reports latency (and energy when it has a meter).

    Raises:
        DeviceError: from :meth:`measure` when the model cannot be run or timed; the message
            names the device and the model.
    """

    def __init__(self, name: str, tags: tuple[str, ...] = (), device_class: str | None = None) -> None:
        self.name = name
        self.tags = tags
        self.device_class = device_class or (tags[0] if tags else name)

    @property
    @abc.abstractmethod
    def has_energy_meter(self) -> bool:
        """Whether :meth:`measure` can fill ``energy_mj_median``."""

    @abc.abstractmethod
    def measure(
        self, model_path: Path, settings: MeasureSettings, probe_input: np.ndarray | None = None
    ) -> Measurement:
        """Time ``model_path``; ``probe_input`` (one batch) feeds the output checksum."""

    def health_check(self) -> HealthReport:
        """Whether the device can measure now (reachable, runner works, disk, temperature).

        Never raises for a sick device: problems are reported. The default has nothing to check.
        """
        return HealthReport(self.name)

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract: most devices hold nothing
        """Release connections; a no-op where there are none."""

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
