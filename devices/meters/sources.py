"""Raw text of each power source -> the reading a meter expects (pure; no I/O).

A transport binds one of these into a meter's ``read(timeout_s)``, e.g. for ODPM (one
``cat`` of every PMIC's file, so one round trip per reading)::

    def read(timeout_s: float) -> CounterReading:
        paths = " ".join(shlex.quote(p) for p in energy_value_paths)
        result = transport.run_checked(f"cat {paths}", timeout_s=timeout_s)
        return odpm_counter_reading([result.stdout])

    meter = CounterMeter("pixel7:odpm", read, rails=["S10M_VDD_TPU", "S2M_VDD_CPUCL2"])

Counter sources (for :class:`~devices.meters.base.CounterMeter`): ODPM, PowerStats, RAPL,
a joules command. Power sources (for :class:`~devices.meters.base.SamplingMeter`): Pi 5
PMIC, hwmon, Jetson INA3221 and tegrastats, the fuel gauge, a watts command.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from devices.meters.base import CounterReading, PowerReading
from devices.meters.battery import FuelGaugeConvention
from devices.meters.errors import MeterError
from devices.meters.parsers import (
    parse_battery,
    parse_command_meter_output,
    parse_hwmon,
    parse_odpm_energy_values,
    parse_pmic_read_adc,
    parse_powerstats_energy_meter,
    parse_rapl,
    parse_tegrastats_line,
)

__all__ = [
    "odpm_counter_reading",
    "powerstats_counter_reading",
    "rapl_counter_reading",
    "command_counter_reading",
    "command_power_reading",
    "pmic_adc_power_reading",
    "hwmon_power_reading",
    "tegrastats_power_reading",
    "battery_power_reading",
]


def odpm_counter_reading(energy_value_texts: Sequence[str]) -> CounterReading:
    """Merge the ``energy_value`` files of every ODPM iio device into one reading (µJ -> mJ).

    Each text holds one file or several printed back to back.

    Raises:
        MeterError: no files, or a rail name on two devices.
    """
    if not energy_value_texts:
        raise MeterError("ODPM: no energy_value files read; expected one per iio:device*")
    energy_mj: dict[str, float] = {}
    pmics = [pmic for text in energy_value_texts for pmic in parse_odpm_energy_values(text)]
    for pmic in pmics:
        for rail, energy_uj in pmic.energy_uj.items():
            if rail in energy_mj:
                raise MeterError(f"ODPM: rail {rail!r} appears on two iio devices; read each "
                                 "device's energy_value once")
            energy_mj[rail] = energy_uj / 1000.0
    return CounterReading(energy_mj, raw="\n".join(energy_value_texts))


def powerstats_counter_reading(dumpsys_text: str) -> CounterReading:
    """The PowerStats HAL energy-meter block as cumulative counters (mWs = mJ)."""
    parsed = parse_powerstats_energy_meter(dumpsys_text)
    return CounterReading(dict(parsed.energy_mj), raw=dumpsys_text)


def rapl_counter_reading(
    energy_uj_text: str, max_energy_range_uj_text: str, rail: str = "package"
) -> CounterReading:
    """One RAPL zone as a counter that wraps at ``max_energy_range_uj`` (µJ -> mJ)."""
    parsed = parse_rapl(energy_uj_text, max_energy_range_uj_text)
    return CounterReading(
        {rail: parsed.energy_uj / 1000.0},
        range_mj={rail: parsed.max_energy_range_uj / 1000.0},
        raw=f"energy_uj={parsed.energy_uj} max_energy_range_uj={parsed.max_energy_range_uj}",
    )


def command_counter_reading(output: str, rail: str = "command") -> CounterReading:
    """A meter command's cumulative joules as a counter.

    Raises:
        MeterError: the command printed watts (use :func:`command_power_reading`).
    """
    parsed = parse_command_meter_output(output)
    if parsed.energy_mj is None:
        raise MeterError(f"meter command printed power ({output.strip()!r}), not cumulative "
                         "energy; configure it as a sampling meter")
    return CounterReading({rail: parsed.energy_mj}, raw=output)


def command_power_reading(output: str, rail: str = "command") -> PowerReading:
    """A meter command's watts as a power sample.

    Raises:
        MeterError: the command printed joules (use :func:`command_counter_reading`).
    """
    parsed = parse_command_meter_output(output)
    if parsed.power_mw is None:
        raise MeterError(f"meter command printed energy ({output.strip()!r}), not power; "
                         "configure it as a counter meter")
    return PowerReading({rail: parsed.power_mw}, raw=output)


def pmic_adc_power_reading(output: str) -> PowerReading:
    """Pi 5 ``vcgencmd pmic_read_adc``: the paired rails only (voltage-only rails are not
    powers and stay out)."""
    return PowerReading(dict(parse_pmic_read_adc(output).power_mw), raw=output)


def hwmon_power_reading(files: Mapping[str, str]) -> PowerReading:
    """An INA2xx/INA3221 hwmon snapshot (file name -> contents), channels keyed by label."""
    raw = "\n".join(f"{name}={files[name].strip()}" for name in sorted(files))
    return PowerReading(parse_hwmon(files).power_mw, raw=raw)


def tegrastats_power_reading(line: str) -> PowerReading:
    """One tegrastats line: the instantaneous (not the averaged) value of each rail."""
    return PowerReading(dict(parse_tegrastats_line(line).power_mw), raw=line)


def battery_power_reading(
    current_now_text: str,
    voltage_now_text: str,
    convention: FuelGaugeConvention,
    rail: str = "battery",
) -> PowerReading:
    """Power drawn from the battery, per the device's detected convention.

    Raises:
        MeterError: the battery is being charged (negative discharge power): readings are
            useless while USB charges the phone.
    """
    reading = parse_battery(current_now_text, voltage_now_text)
    power_mw = convention.discharge_power_mw(reading)
    if power_mw < 0:
        raise MeterError(
            f"battery is charging ({power_mw:.0f} mW into it): the fuel gauge cannot measure "
            "the workload; use adb over Wi-Fi or a switchable hub"
        )
    return PowerReading({rail: power_mw},
                        raw=f"current_now={reading.current_raw} voltage_now={reading.voltage_uv}")
