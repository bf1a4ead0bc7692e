"""Pure parsers: the raw text every power source prints, turned into typed records.

One function per source; none does I/O. Each returns a frozen record whose field names carry
their units, and raises :class:`~devices.meters.errors.MeterParseError` (one line: the source,
the offending line, what was expected) on anything it does not recognise: empty or truncated
output, missing fields, garbage or non-finite numbers, duplicate rails. Formats follow
``shared/reference/devices.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

from devices.meters.errors import MeterParseError

__all__ = [
    "OdpmEnergy",
    "OdpmRail",
    "PowerStatsEnergy",
    "BatteryReading",
    "PmicAdcReading",
    "HwmonChannel",
    "HwmonReading",
    "TegrastatsReading",
    "RaplReading",
    "CommandMeterReading",
    "HWMON_SINGLE_CHANNEL_CHIPS",
    "parse_odpm_energy_value",
    "parse_odpm_energy_values",
    "parse_odpm_enabled_rails",
    "parse_powerstats_energy_meter",
    "parse_battery",
    "parse_pmic_read_adc",
    "parse_hwmon",
    "parse_jetson_ina3221",
    "parse_tegrastats_line",
    "parse_rapl",
    "parse_command_meter_output",
]

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_INT = r"[-+]?\d+"


def _lines(text: str, source: str, expected: str) -> list[str]:
    """The stripped, non-blank lines of ``text``; raises when there are none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise MeterParseError(source, text, expected)
    return lines


def _single_value(text: str, source: str, pattern: str, expected: str) -> str:
    """The one non-blank line of a sysfs-style file, checked against ``pattern``."""
    lines = _lines(text, source, expected)
    if len(lines) != 1 or not re.fullmatch(pattern, lines[0]):
        raise MeterParseError(source, lines[0] if len(lines) == 1 else text, expected)
    return lines[0]


def _int_file(text: str, source: str, expected: str = "one integer") -> int:
    return int(_single_value(text, source, _INT, expected))


def _finite(value: str, source: str, line: str, expected: str) -> float:
    number = float(value)
    if not math.isfinite(number):  # e.g. 1e999
        raise MeterParseError(source, line, expected)
    return number


def _put(table: dict[str, float] | dict[str, int], key: str, value: float, source: str,
         line: str) -> None:
    if key in table:
        raise MeterParseError(source, line, f"each rail once; {key!r} appears twice")
    table[key] = value  # type: ignore[assignment]


# --- Android: On-Device Power Monitor (ODPM) --------------------------------------------------

_ODPM = "ODPM energy_value"
_ODPM_T = re.compile(r"t=(\d+)")
_ODPM_CH = re.compile(r"CH(\d+)\(T=(\d+)\)\[([^\]\s]+)\],\s*(\d+)")
_ODPM_CH_EXPECTED = "'CH<n>(T=<ms>)[<RAIL>], <uWs>'"


@dataclass(frozen=True)
class OdpmEnergy:
    """One ``energy_value`` file of one ODPM PMIC (one ``iio:device*``).

    Attributes:
        timestamp_ms: The ``t=`` line: boot-time of the PMIC's last refresh. Units: ms.
        energy_uj: Accumulated energy per rail (the driver's µWs). Units: µJ.
        channel_time_ms: Each rail's ``T=`` value (the driver documents it as the time since
            that channel's accumulation started). Units: ms.
        channel: Each rail's channel number (``CH<n>``).
    """

    timestamp_ms: int
    energy_uj: Mapping[str, int]
    channel_time_ms: Mapping[str, int]
    channel: Mapping[str, int]


@dataclass(frozen=True)
class OdpmRail:
    """One ``enabled_rails`` line, ``CH0[S1M_VDD_AMB]:amb``."""

    channel: int
    rail: str
    subsystem: str


def parse_odpm_energy_value(text: str) -> OdpmEnergy:
    """Parse one ODPM ``energy_value`` file (``t=<ms>`` then one line per channel)."""
    lines = _lines(text, _ODPM, "'t=<ms>' then " + _ODPM_CH_EXPECTED + " lines")
    head = _ODPM_T.fullmatch(lines[0])
    if head is None:
        raise MeterParseError(_ODPM, lines[0], "'t=<ms>' as the first line")
    if len(lines) == 1:
        raise MeterParseError(_ODPM, text, "at least one " + _ODPM_CH_EXPECTED + " line after t=")
    energy_uj: dict[str, int] = {}
    time_ms: dict[str, int] = {}
    channel: dict[str, int] = {}
    for line in lines[1:]:
        match = _ODPM_CH.fullmatch(line)
        if match is None:
            raise MeterParseError(_ODPM, line, _ODPM_CH_EXPECTED)
        number, t_ms, rail, uj = match.groups()
        if int(number) in channel.values():
            raise MeterParseError(_ODPM, line, f"each channel once; CH{number} appears twice")
        _put(energy_uj, rail, int(uj), _ODPM, line)
        time_ms[rail] = int(t_ms)
        channel[rail] = int(number)
    return OdpmEnergy(int(head.group(1)), energy_uj, time_ms, channel)


def parse_odpm_energy_values(text: str) -> tuple[OdpmEnergy, ...]:
    """Parse several ``energy_value`` files printed back to back (one ``cat`` of every iio
    device): a new file starts at each ``t=`` line."""
    lines = _lines(text, _ODPM, "'t=<ms>' then " + _ODPM_CH_EXPECTED + " lines")
    if _ODPM_T.fullmatch(lines[0]) is None:
        raise MeterParseError(_ODPM, lines[0], "'t=<ms>' as the first line")
    starts = [i for i, line in enumerate(lines) if _ODPM_T.fullmatch(line)] + [len(lines)]
    return tuple(
        parse_odpm_energy_value("\n".join(lines[a:b])) for a, b in pairwise(starts)
    )


_RAILS = "ODPM enabled_rails"
_RAILS_LINE = re.compile(r"CH(\d+)\[([^\]\s]+)\]:(.*)")


def parse_odpm_enabled_rails(text: str) -> tuple[OdpmRail, ...]:
    """Parse an ODPM ``enabled_rails`` file: ``CH<n>[<RAIL>]:<subsystem>`` lines."""
    expected = "'CH<n>[<RAIL>]:<subsystem>'"
    rails: list[OdpmRail] = []
    for line in _lines(text, _RAILS, expected + " lines"):
        match = _RAILS_LINE.fullmatch(line)
        if match is None:
            raise MeterParseError(_RAILS, line, expected)
        if any(r.rail == match.group(2) for r in rails):
            raise MeterParseError(_RAILS, line, f"each rail once; {match.group(2)!r} appears twice")
        rails.append(OdpmRail(int(match.group(1)), match.group(2), match.group(3).strip()))
    return tuple(rails)


# --- Android: PowerStats HAL ------------------------------------------------------------------

_PS = "PowerStats HAL dumpsys"
_PS_HEADER = re.compile(r"=+ PowerStats HAL 2\.0 energy meter =+")
_PS_END = re.compile(r"=+ End of PowerStats HAL 2\.0 energy meter =+")
_PS_LINE = re.compile(
    rf"\[(?P<rail>[^\]]+)\]:(?P<subsystem>.*?)\s+(?P<mj>{_NUM})\s*mWs(?:\s*\(\s*{_NUM}\s*\))?"
)
# The column header and, in `delta` mode, an "Elapsed time" line (the HAL sometimes prints the
# two on one line).
_PS_SKIP = re.compile(
    r"(?:Elapsed time:\s*\d+\s*ms)?\s*(?:Channel\s+Cumulative Energy(?:\s*\(\s*Delta\s*\))?)?"
)


@dataclass(frozen=True)
class PowerStatsEnergy:
    """The ``PowerStats HAL 2.0 energy meter`` block of ``dumpsys ...IPowerStats/default``.

    Attributes:
        energy_mj: Cumulative energy per rail (the HAL's mWs). Units: mJ. The HAL formats them
            through a 32-bit float with 2 decimals, so resolution coarsens as counters grow.
        subsystem: Each rail's subsystem label (``[VSYS_PWR_MODEM]:Modem`` -> ``Modem``).
    """

    energy_mj: Mapping[str, float]
    subsystem: Mapping[str, str]


def parse_powerstats_energy_meter(text: str) -> PowerStatsEnergy:
    """Parse the energy-meter block of a PowerStats HAL dump; other blocks are ignored.

    Cumulative values are read; the ``(delta)`` column of ``dumpsys ... delta`` is ignored
    (that baseline is shared by every caller: subtract cumulative values yourself).
    """
    expected_line = "'[<RAIL>]:<Subsystem>   <value> mWs'"
    lines = _lines(text, _PS, "a 'PowerStats HAL 2.0 energy meter' block")
    start = next((i for i, line in enumerate(lines) if _PS_HEADER.fullmatch(line)), None)
    if start is None:
        raise MeterParseError(_PS, lines[0], "a '=== PowerStats HAL 2.0 energy meter ===' header")
    end = next((i for i in range(start + 1, len(lines)) if _PS_END.fullmatch(lines[i])), None)
    if end is None:
        raise MeterParseError(
            _PS, lines[-1], "an '=== End of PowerStats HAL 2.0 energy meter ===' line (truncated?)"
        )
    energy_mj: dict[str, float] = {}
    subsystem: dict[str, str] = {}
    for line in lines[start + 1 : end]:
        if _PS_SKIP.fullmatch(line):
            continue
        match = _PS_LINE.fullmatch(line)
        if match is None:
            raise MeterParseError(_PS, line, expected_line)
        rail = match.group("rail")
        _put(energy_mj, rail, _finite(match.group("mj"), _PS, line, expected_line), _PS, line)
        subsystem[rail] = match.group("subsystem").strip()
    if not energy_mj:
        raise MeterParseError(_PS, lines[start], f"at least one {expected_line} line in the block")
    return PowerStatsEnergy(energy_mj, subsystem)


# --- Android: battery fuel gauge --------------------------------------------------------------


@dataclass(frozen=True)
class BatteryReading:
    """``current_now`` and ``voltage_now`` of ``/sys/class/power_supply/battery``.

    Attributes:
        current_raw: ``current_now`` as printed: µA per the kernel docs (positive = charging),
            but vendors differ in sign and scale: interpret it through a
            :class:`~devices.meters.battery.FuelGaugeConvention`.
        voltage_uv: ``voltage_now``. Units: µV.
    """

    current_raw: int
    voltage_uv: int


def parse_battery(current_now_text: str, voltage_now_text: str) -> BatteryReading:
    """Parse the fuel gauge's ``current_now`` and ``voltage_now`` files (one integer each)."""
    current = _int_file(current_now_text, "battery current_now", "one integer (µA or mA)")
    voltage = _int_file(voltage_now_text, "battery voltage_now", "one non-negative integer (µV)")
    if voltage < 0:
        raise MeterParseError("battery voltage_now", voltage_now_text.strip(),
                              "one non-negative integer (µV)")
    return BatteryReading(current, voltage)


# --- Raspberry Pi 5: vcgencmd pmic_read_adc ---------------------------------------------------

_PMIC = "vcgencmd pmic_read_adc"
_PMIC_LINE = re.compile(
    rf"(?P<rail>\S+)_(?P<suffix>[AV])\s+(?P<kind>current|volt)\((?P<ch>\d+)\)="
    rf"(?P<value>{_NUM})(?P<unit>[AV])"
)
_PMIC_EXPECTED = "'<RAIL>_A current(<n>)=<x>A' or '<RAIL>_V volt(<n>)=<y>V'"


@dataclass(frozen=True)
class PmicAdcReading:
    """One ``vcgencmd pmic_read_adc`` output, currents paired with voltages by rail name.

    Attributes:
        power_mw: Rails with both a current and a voltage: V × I. Units: mW. Their sum omits
            regulator losses and the 5 V input.
        voltage_only_mv: Rails with a voltage but no current (``EXT5V``, ``BATT``); not powers,
            never summed. Units: mV.
        current_only_ma: Rails with a current but no voltage (not in ``power_mw``). Units: mA.
    """

    power_mw: Mapping[str, float]
    voltage_only_mv: Mapping[str, float]
    current_only_ma: Mapping[str, float]


def parse_pmic_read_adc(text: str) -> PmicAdcReading:
    """Parse Pi 5 ``vcgencmd pmic_read_adc`` output; rails are paired by name, not channel."""
    current_a: dict[str, float] = {}
    voltage_v: dict[str, float] = {}
    for line in _lines(text, _PMIC, _PMIC_EXPECTED + " lines"):
        match = _PMIC_LINE.fullmatch(line)
        if match is None:
            raise MeterParseError(_PMIC, line, _PMIC_EXPECTED)
        suffix, kind, unit = match.group("suffix", "kind", "unit")
        if (suffix, kind, unit) not in {("A", "current", "A"), ("V", "volt", "V")}:
            raise MeterParseError(_PMIC, line, _PMIC_EXPECTED)
        table = current_a if suffix == "A" else voltage_v
        value = _finite(match.group("value"), _PMIC, line, _PMIC_EXPECTED)
        _put(table, match.group("rail"), value, _PMIC, line)
    paired = sorted(current_a.keys() & voltage_v.keys())
    return PmicAdcReading(
        power_mw={rail: current_a[rail] * voltage_v[rail] * 1000.0 for rail in paired},
        voltage_only_mv={r: v * 1000.0 for r, v in voltage_v.items() if r not in current_a},
        current_only_ma={r: a * 1000.0 for r, a in current_a.items() if r not in voltage_v},
    )


# --- Linux hwmon (INA2xx) and Jetson INA3221 ---------------------------------------------------

HWMON_SINGLE_CHANNEL_CHIPS = frozenset({"ina219", "ina220", "ina226", "ina230", "ina231", "ina260"})
"""hwmon ``name`` values of the single-channel ``ina2xx`` chips :func:`parse_hwmon` reads."""


@dataclass(frozen=True)
class HwmonChannel:
    """One sensor channel of an INA2xx/INA3221 hwmon device.

    Attributes:
        label: ``in<N>_label`` when present, else the chip name (single-channel chips) or
            ``in<N>``.
        power_mw: ``power<N>_input`` (µW) / 1000 when the chip has it, else V × I. Units: mW.
        voltage_mv: Bus voltage ``in<N>_input``, when present. Units: mV.
        current_ma: ``curr<N>_input``, when present. Units: mA.
        power_from_sensor: True when ``power_mw`` came from ``power<N>_input``.
    """

    label: str
    power_mw: float
    voltage_mv: float | None
    current_ma: float | None
    power_from_sensor: bool


@dataclass(frozen=True)
class HwmonReading:
    """A snapshot of one hwmon directory: the chip and its channels keyed by label.

    Attributes:
        chip: The ``name`` file, e.g. ``ina226``.
        channels: Channels keyed by :attr:`HwmonChannel.label`.
        update_interval_ms: ``update_interval`` when the chip has one. Units: ms.
    """

    chip: str
    channels: Mapping[str, HwmonChannel]
    update_interval_ms: int | None

    @property
    def power_mw(self) -> dict[str, float]:
        """Power per channel label. Units: mW."""
        return {label: ch.power_mw for label, ch in self.channels.items()}


def _hwmon_int(files: Mapping[str, str], name: str, source: str, unit: str) -> int | None:
    if name not in files:
        return None
    return _int_file(files[name], f"{source} {name}", f"one integer ({unit})")


def _hwmon_label(files: Mapping[str, str], name: str, source: str) -> str | None:
    if name not in files:
        return None
    return _single_value(files[name], f"{source} {name}", r".+", "a non-empty label")


def _listing(files: Mapping[str, str]) -> str:
    """How a snapshot shows in an error: the files it has."""
    return "files: " + (", ".join(sorted(files)) or "(none)")


def _chip_name(files: Mapping[str, str], source: str) -> str | None:
    if "name" not in files:
        return None
    return _single_value(files["name"], f"{source} name", r"\S+", "one chip name, e.g. ina226")


def parse_hwmon(files: Mapping[str, str]) -> HwmonReading:
    """Parse a snapshot of an INA219/226/260/3221 hwmon directory (file name -> contents).

    Single-channel chips: ``power1_input`` (µW) is preferred; without it power is
    ``in1_input`` (mV) × ``curr1_input`` (mA). ``ina3221`` is read by
    :func:`parse_jetson_ina3221`. Find the directory by its ``name`` file on every boot.
    """
    source = "hwmon"
    chip = _chip_name(files, source)
    if chip is None:
        raise MeterParseError(source, _listing(files), "a 'name' file in the snapshot")
    if chip == "ina3221":
        return parse_jetson_ina3221(files)
    if chip not in HWMON_SINGLE_CHANNEL_CHIPS:
        raise MeterParseError(
            f"{source} name", chip,
            f"one of {', '.join(sorted(HWMON_SINGLE_CHANNEL_CHIPS))}, ina3221",
        )
    power_uw = _hwmon_int(files, "power1_input", source, "µW")
    voltage_mv = _hwmon_int(files, "in1_input", source, "mV")
    current_ma = _hwmon_int(files, "curr1_input", source, "mA")
    if power_uw is not None:
        power_mw = power_uw / 1000.0
    elif voltage_mv is not None and current_ma is not None:
        power_mw = voltage_mv * current_ma / 1000.0
    else:
        raise MeterParseError(
            source, _listing(files), "power1_input, or both in1_input and curr1_input"
        )
    label = _hwmon_label(files, "in1_label", source) or _hwmon_label(files, "power1_label", source)
    channel = HwmonChannel(
        label or chip,
        power_mw,
        None if voltage_mv is None else float(voltage_mv),
        None if current_ma is None else float(current_ma),
        power_uw is not None,
    )
    interval = _hwmon_int(files, "update_interval", source, "ms")
    return HwmonReading(chip, {channel.label: channel}, interval)


def parse_jetson_ina3221(files: Mapping[str, str]) -> HwmonReading:
    """Parse a snapshot of an INA3221 hwmon directory (Jetson, JetPack 5+).

    Every ``curr<N>_input`` (mA) is paired with ``in<N>_input`` (mV) and named by
    ``in<N>_label`` (e.g. ``VDD_IN``); power is V × I. Channels without a current (the
    "sum of shunt voltages" channel) are skipped.
    """
    source = "ina3221 hwmon"
    chip = _chip_name(files, source)
    if chip is not None and chip != "ina3221":
        raise MeterParseError(f"{source} name", chip, "ina3221")
    channels: dict[str, HwmonChannel] = {}
    numbers = sorted(int(m.group(1)) for f in files if (m := re.fullmatch(r"curr(\d+)_input", f)))
    for n in numbers:
        current_ma = _hwmon_int(files, f"curr{n}_input", source, "mA")
        voltage_mv = _hwmon_int(files, f"in{n}_input", source, "mV")
        if voltage_mv is None:
            raise MeterParseError(source, f"curr{n}_input without in{n}_input",
                                  f"in{n}_input (bus voltage, mV) next to curr{n}_input")
        assert current_ma is not None
        label = _hwmon_label(files, f"in{n}_label", source) or f"in{n}"
        if label in channels:
            raise MeterParseError(source, f"in{n}_label: {label}", "a distinct label per channel")
        channels[label] = HwmonChannel(
            label, voltage_mv * current_ma / 1000.0, float(voltage_mv), float(current_ma), False
        )
    if not channels:
        raise MeterParseError(source, _listing(files),
                              "at least one curr<N>_input with its in<N>_input")
    return HwmonReading("ina3221", channels, _hwmon_int(files, "update_interval", source, "ms"))


_TEGRA = "tegrastats"
_TEGRA_POWER = re.compile(r"(\d+)mW/(\d+)mW")
_TEGRA_RAIL = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


@dataclass(frozen=True)
class TegrastatsReading:
    """Rail powers from one ``tegrastats`` line (``VDD_IN 5765mW/5800mW ...``).

    Attributes:
        power_mw: The instantaneous value (before the slash) per rail. Units: mW.
        average_power_mw: tegrastats' running average (after the slash). Units: mW.
    """

    power_mw: Mapping[str, float]
    average_power_mw: Mapping[str, float]


def parse_tegrastats_line(line: str) -> TegrastatsReading:
    """Parse the ``<RAIL> <now>mW/<avg>mW`` pairs of one tegrastats line; other fields are
    ignored, but any token mentioning ``mW`` must be a well-formed pair."""
    expected = "'<RAIL> <now>mW/<avg>mW' pairs"
    lines = _lines(line, _TEGRA, expected)
    if len(lines) != 1:
        raise MeterParseError(_TEGRA, line, "one tegrastats line")
    tokens = lines[0].split()
    power_mw: dict[str, float] = {}
    average_mw: dict[str, float] = {}
    for i, token in enumerate(tokens):
        if "mW" not in token:
            continue
        match = _TEGRA_POWER.fullmatch(token)
        if match is None or i == 0 or not _TEGRA_RAIL.fullmatch(tokens[i - 1]):
            shown = " ".join(tokens[max(i - 1, 0) : i + 1])
            raise MeterParseError(_TEGRA, shown, "'<RAIL> <now>mW/<avg>mW'")
        _put(power_mw, tokens[i - 1], float(match.group(1)), _TEGRA, lines[0])
        average_mw[tokens[i - 1]] = float(match.group(2))
    if not power_mw:
        raise MeterParseError(_TEGRA, lines[0], f"{expected} (does this board report power?)")
    return TegrastatsReading(power_mw, average_mw)


# --- Intel/AMD RAPL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplReading:
    """One powercap zone: ``energy_uj`` and the range at which it wraps. Units: µJ."""

    energy_uj: int
    max_energy_range_uj: int


def parse_rapl(energy_uj_text: str, max_energy_range_uj_text: str) -> RaplReading:
    """Parse a RAPL zone's ``energy_uj`` and ``max_energy_range_uj`` files."""
    energy = _int_file(energy_uj_text, "RAPL energy_uj", "one non-negative integer (µJ)")
    limit = _int_file(max_energy_range_uj_text, "RAPL max_energy_range_uj",
                      "one positive integer (µJ)")
    if limit <= 0:
        raise MeterParseError("RAPL max_energy_range_uj", max_energy_range_uj_text.strip(),
                              "one positive integer (µJ)")
    if not 0 <= energy <= limit:
        raise MeterParseError("RAPL energy_uj", energy_uj_text.strip(),
                              f"an integer in [0, max_energy_range_uj={limit}] (µJ)")
    return RaplReading(energy, limit)


# --- External command meter -------------------------------------------------------------------

_CMD = "meter command output"
_CMD_LINE = re.compile(rf"(?P<value>{_NUM})\s*(?P<unit>J|W)?")
_CMD_EXPECTED = "one line: cumulative joules ('12.345' or '12.345 J') or watts ('3.2 W')"


@dataclass(frozen=True)
class CommandMeterReading:
    """What an external meter command printed: exactly one of the two fields is set.

    Attributes:
        energy_mj: Cumulative energy (the command printed joules). Units: mJ.
        power_mw: Instantaneous power (the command printed watts). Units: mW.
    """

    energy_mj: float | None = None
    power_mw: float | None = None

    def __post_init__(self) -> None:
        if (self.energy_mj is None) == (self.power_mw is None):
            raise ValueError("exactly one of energy_mj and power_mw must be set")


def parse_command_meter_output(text: str) -> CommandMeterReading:
    """Parse an external meter command's output: ``12.345``/``12.345 J`` (cumulative energy)
    or ``3.2 W`` (power). The value must be finite and non-negative."""
    lines = _lines(text, _CMD, _CMD_EXPECTED)
    if len(lines) != 1:
        raise MeterParseError(_CMD, text, _CMD_EXPECTED)
    match = _CMD_LINE.fullmatch(lines[0])
    if match is None:
        raise MeterParseError(_CMD, lines[0], _CMD_EXPECTED)
    value = _finite(match.group("value"), _CMD, lines[0], _CMD_EXPECTED)
    if value < 0:
        raise MeterParseError(_CMD, lines[0], "a non-negative value")
    if match.group("unit") == "W":
        return CommandMeterReading(power_mw=value * 1000.0)
    return CommandMeterReading(energy_mj=value * 1000.0)
