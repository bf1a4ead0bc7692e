"""Fuel-gauge conventions: how one phone's ``current_now`` is scaled and signed.

The kernel documents ``current_now`` in µA with positive = charging, but vendors differ in
both. :func:`detect_fuel_gauge_convention` decides per device from idle samples (taken on
battery, screen state fixed) by asking which interpretation gives a plausible idle power.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from devices.meters.errors import MeterError
from devices.meters.parsers import BatteryReading

__all__ = ["FuelGaugeConvention", "detect_fuel_gauge_convention", "CurrentUnit"]

CurrentUnit = Literal["uA", "mA"]
_MA_PER_UNIT: dict[str, float] = {"uA": 1e-3, "mA": 1.0}
# A phone battery's voltage_now in µV falls in this band; a gauge that reports mV does not.
_BATTERY_VOLTAGE_BAND_UV = (1_000_000, 30_000_000)


@dataclass(frozen=True)
class FuelGaugeConvention:
    """How to read one device's ``current_now``.

    Attributes:
        current_unit: ``"uA"`` (the documented unit) or ``"mA"``.
        discharge_sign: The sign ``current_now`` has while the battery discharges: ``-1`` for
            the documented convention (positive = charging), ``+1`` for vendors that flip it.
    """

    current_unit: CurrentUnit
    discharge_sign: Literal[-1, 1]

    def __post_init__(self) -> None:
        if self.current_unit not in _MA_PER_UNIT:
            raise ValueError(f"current_unit must be 'uA' or 'mA', got {self.current_unit!r}")
        if self.discharge_sign not in (-1, 1):
            raise ValueError(f"discharge_sign must be -1 or 1, got {self.discharge_sign!r}")

    def discharge_current_ma(self, reading: BatteryReading) -> float:
        """Current drawn from the battery (negative while charging). Units: mA."""
        return reading.current_raw * _MA_PER_UNIT[self.current_unit] * self.discharge_sign

    def discharge_power_mw(self, reading: BatteryReading) -> float:
        """Power drawn from the battery (negative while charging). Units: mW."""
        return self.discharge_current_ma(reading) * reading.voltage_uv / 1e6


def detect_fuel_gauge_convention(
    idle_samples: Sequence[BatteryReading],
    *,
    min_power_mw: float = 100.0,
    max_power_mw: float = 10_000.0,
) -> FuelGaugeConvention:
    """Decide a device's current unit and sign from readings taken at idle, on battery.

    The unit is the one whose median ``|V × I|`` lands in ``[min_power_mw, max_power_mw]``
    (0.1–10 W by default; µA and mA differ by 1000×, so at most one can). The discharge sign
    is the sign every idle current shares.

    Raises:
        MeterError: no samples; a ``voltage_now`` outside 1–30 V (not µV); currents of mixed
            sign or zero (charging, or the gauge is idle); or no plausible unit. The message
            gives the values and what to check.
    """
    if min_power_mw <= 0 or max_power_mw <= min_power_mw:
        raise ValueError(
            f"need 0 < min_power_mw < max_power_mw, got {min_power_mw} and {max_power_mw}"
        )
    if not idle_samples:
        raise MeterError("fuel gauge: no idle samples given; read current_now/voltage_now a few "
                         "times at idle, on battery")
    low_uv, high_uv = _BATTERY_VOLTAGE_BAND_UV
    for sample in idle_samples:
        if not low_uv <= sample.voltage_uv <= high_uv:
            raise MeterError(
                f"fuel gauge: voltage_now={sample.voltage_uv} is not a battery voltage in µV "
                f"(expected {low_uv}..{high_uv}); this gauge may report another unit"
            )
    currents = [s.current_raw for s in idle_samples]
    if all(c < 0 for c in currents):
        sign: Literal[-1, 1] = -1
    elif all(c > 0 for c in currents):
        sign = 1
    else:
        raise MeterError(
            f"fuel gauge: idle current_now values {currents} are zero or change sign; the "
            "battery may be charging or full: disconnect USB power (adb over Wi-Fi) and retry"
        )
    medians_mw: dict[str, float] = {}
    for unit, ma_per_unit in _MA_PER_UNIT.items():
        medians_mw[unit] = statistics.median(
            abs(s.current_raw) * ma_per_unit * s.voltage_uv / 1e6 for s in idle_samples
        )
    plausible = [u for u, p in medians_mw.items() if min_power_mw <= p <= max_power_mw]
    if len(plausible) != 1:
        shown = ", ".join(f"{p:.4g} mW if {u}" for u, p in medians_mw.items())
        raise MeterError(
            f"fuel gauge: median idle power is {shown}; expected exactly one in "
            f"[{min_power_mw:g}, {max_power_mw:g}] mW. Check the device is idle, on battery and "
            "not charging; otherwise its gauge reports neither µA nor mA"
        )
    return FuelGaugeConvention(plausible[0], sign)  # type: ignore[arg-type]
