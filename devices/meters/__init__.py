"""Power meters: raw readings -> energy over measurement windows, with no device I/O.

A :class:`PowerMeter` measures energy over named windows (``begin_window(key)`` /
``end_window(key) -> EnergyWindow``). :class:`CounterMeter` subtracts cumulative counters
(ODPM, PowerStats HAL, RAPL, a joules command); :class:`SamplingMeter` integrates power
sampled on a background thread (Pi 5 PMIC, hwmon INA2xx, Jetson, fuel gauge, a watts
command). Both read through an injected ``read(timeout_s)`` callable: transports plug in
there, using :mod:`devices.meters.sources` to turn raw text into readings.
:mod:`devices.meters.parsers` holds one pure parser per source and
:mod:`devices.meters.integrate` the energy arithmetic. :class:`EmptyMeter` stands in for a
device without a meter; :class:`SimulatedMeter` and :class:`ReplayMeter` serve tests and
dry runs and label their windows ``source="simulated"``.

Units: energy mJ, power mW, time s (``time.monotonic()``).
"""

from devices.meters.base import (
    CounterMeter,
    CounterReading,
    EmptyMeter,
    EnergyWindow,
    PowerMeter,
    PowerReading,
    SamplingMeter,
    WindowSource,
)
from devices.meters.battery import FuelGaugeConvention, detect_fuel_gauge_convention
from devices.meters.errors import (
    MeterError,
    MeterNotConfiguredError,
    MeterParseError,
    MeterReadError,
)
from devices.meters.simulated import ReplayMeter, ReplayReader, SimulatedMeter

__all__ = [
    "PowerMeter",
    "CounterMeter",
    "SamplingMeter",
    "EmptyMeter",
    "SimulatedMeter",
    "ReplayMeter",
    "ReplayReader",
    "EnergyWindow",
    "CounterReading",
    "PowerReading",
    "WindowSource",
    "FuelGaugeConvention",
    "detect_fuel_gauge_convention",
    "MeterError",
    "MeterParseError",
    "MeterReadError",
    "MeterNotConfiguredError",
]
