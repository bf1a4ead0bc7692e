"""The meter factory: an inventory :class:`~devices.inventory.MeterSpec` -> a working meter.

:func:`build_meter` validates the spec's options (one-line :class:`MeterConfigError`\\ s naming
the device and the option), binds the kind's source to a ``read(timeout_s)`` over the
device's transport, takes one probe reading (so a missing file, a permission problem or a
``rails`` entry the device does not have fails here, not mid-measurement) and returns a
:class:`~devices.meters.base.CounterMeter`, a
:class:`~devices.meters.device_sampler.DeviceSamplingMeter` or a
:class:`~devices.meters.base.SamplingMeter` named ``<device>:<kind>``. Every reading is one
round trip where the source allows it:

========== ================================================================== ===============
kind       what one reading runs (``path`` default)                          meter
========== ================================================================== ===============
odpm       ``cat`` of every ``iio:device*/energy_value`` found once under     counter (µJ)
           ``path`` (``/sys/bus/iio/devices``)
powerstats ``<path or dumpsys> android.hardware.power.stats.IPowerStats/...`` counter (mWs)
rapl       ``cat name energy_uj max_energy_range_uj`` in ``path``             counter (µJ)
           (``/sys/class/powercap/intel-rapl:0``), wrap-aware
command    ``options["command"]``: cumulative joules, or watts with           counter or
           ``unit = "watts"``; on the device, or the host with                sampling
           ``run_on = "host"`` (an external meter plugged into the host)
pi5-pmic   ``<path or vcgencmd> pmic_read_adc``                               sampling (W)
hwmon      the files of the hwmon dir under ``path`` (``/sys/class/hwmon``)   sampling
           whose ``name`` is ``options["name"]`` (found once per meter)
jetson     as hwmon, INA3221 under ``/sys/bus/i2c/drivers/ina3221/1-0040/     sampling
           hwmon``; rails default to ``VDD_IN`` where present (the other
           rails are inside it)
fuelgauge  ``cat current_now voltage_now status`` in ``path``                 sampling
           (``/sys/class/power_supply/battery``); sign and scale detected
           at idle (:func:`~devices.meters.battery.detect_fuel_gauge_convention`)
           unless ``current_unit`` and ``discharge_sign`` are given
simulated  nothing: a :class:`~devices.meters.simulated.SimulatedMeter` with  counter,
           ``idle_mw`` / ``active_mw``, every window labelled ``simulated``   simulated
========== ================================================================== ===============

Options every real kind takes: ``rails`` (the rails summed, each must exist; default all)
and ``read_timeout_s``; sampling kinds take ``interval_s`` (default 0.1 s; at least 0.1 s
for the Pi 5 PMIC, whose reads cost firmware time; 0.25 s for the fuel gauge) and
``sampling``. Anything else is refused.

========== ================================================================================
sampling   where a sampling meter's samples are taken
========== ================================================================================
device     the default: a loop on the device runs the reading's command every
           ``interval_s`` by the device's clock and logs the samples; a window costs two
           round trips, one to start the loop (and take the first sample), one to stop it
           (taking the last) and read the log back
           (:class:`~devices.meters.device_sampler.DeviceSamplingMeter`)
host       the host runs the reading's command over the transport from a background
           thread (:class:`~devices.meters.base.SamplingMeter`): one round trip per sample,
           so over SSH a few samples a second and energy off by a power step times half a
           gap at each edge; the only mode for ``command`` with ``run_on = "host"``
========== ================================================================================

ODPM counters refresh at most every 50 ms, so a host timestamp can be up to 50 ms off the
counter it stamps; the ODPM reader therefore times each reading by the files' own ``t=``
(device boot ms, mapped onto ``time.monotonic()`` by a constant offset fixed at the first
reading), which makes window durations and energies agree exactly.

Thread safety and transports: a host-sampling :class:`SamplingMeter` reads from a background
thread while
the workload runs, possibly over the transport that runs the workload. Both
:class:`~devices.transports.SshTransport` and :class:`~devices.transports.AdbTransport` open
a fresh channel or server connection per command, so that works; the
:class:`~devices.transports.Transport` contract does not promise it, so a transport without
that property must be given to the meter as a second, dedicated connection.

Also here, the small device reads the energy protocol needs: :func:`device_is_charging`,
:func:`read_temperatures` and :func:`read_cpu_max_freqs_khz`.
"""

from __future__ import annotations

import functools
import math
import posixpath
import re
import shlex
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from devices.meters.base import (
    CounterMeter,
    CounterReading,
    PowerMeter,
    PowerReading,
    SamplingMeter,
)
from devices.meters.battery import FuelGaugeConvention, detect_fuel_gauge_convention
from devices.meters.device_sampler import DeviceSamplingMeter
from devices.meters.errors import MeterError, MeterParseError, MeterReadError
from devices.meters.parsers import (
    HWMON_SINGLE_CHANNEL_CHIPS,
    BatteryReading,
    parse_battery,
    parse_odpm_energy_values,
)
from devices.meters.simulated import SimulatedMeter
from devices.meters.sources import (
    battery_power_reading,
    command_counter_reading,
    command_power_reading,
    hwmon_power_reading,
    odpm_counter_reading,
    pmic_adc_power_reading,
    powerstats_counter_reading,
    rapl_counter_reading,
)
from devices.transports.base import TransportError

if TYPE_CHECKING:
    from devices.inventory import MeterSpec
    from devices.transports.base import Transport

__all__ = [
    "MeterConfigError",
    "build_meter",
    "device_is_charging",
    "read_temperatures",
    "read_cpu_max_freqs_khz",
    "DEFAULT_PATHS",
    "BATTERY_STATUS_PATH",
]

DEFAULT_PATHS: Mapping[str, str] = {
    "odpm": "/sys/bus/iio/devices",
    "powerstats": "dumpsys",
    "rapl": "/sys/class/powercap/intel-rapl:0",
    "pi5-pmic": "vcgencmd",
    "hwmon": "/sys/class/hwmon",
    "jetson": "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon",
    "fuelgauge": "/sys/class/power_supply/battery",
}
"""Each kind's ``path`` when the inventory gives none (a directory, or a tool for
``powerstats`` and ``pi5-pmic``)."""

BATTERY_STATUS_PATH = "/sys/class/power_supply/battery/status"
"""Where :func:`device_is_charging` looks first (then ``dumpsys battery``)."""

_POWERSTATS_SERVICE = "android.hardware.power.stats.IPowerStats/default"
_PMIC_MIN_INTERVAL_S = 0.1  # devices.md: a read costs ~23 ms of firmware time; sample at <= 10 Hz
_DEFAULT_INTERVAL_S: Mapping[str, float] = {"fuelgauge": 0.25}
_FALLBACK_INTERVAL_S = 0.1
_COUNTER_TIMEOUT_S = 5.0
_DISCOVERY_TIMEOUT_S = 10.0
_SAMPLING_TIMEOUT_S = 2.0
_SAMPLER_COMMAND_S = 8.0  # a device sampler's start/stop command: a sample plus this. Units: s
_FUEL_GAUGE_IDLE_SAMPLES = 5
_HWMON_FILE = re.compile(r"name|update_interval|(?:in|curr|power)\d+_(?:input|label)")

_COMMON = frozenset({"rails", "read_timeout_s"})
_SAMPLING = frozenset({"interval_s", "sampling"})
_OPTIONS: Mapping[str, frozenset[str]] = {
    "odpm": _COMMON,
    "powerstats": _COMMON,
    "rapl": _COMMON,
    "command": _COMMON | _SAMPLING | {"command", "unit", "run_on"},
    "pi5-pmic": _COMMON | _SAMPLING,
    "hwmon": _COMMON | _SAMPLING | {"name"},
    "jetson": _COMMON | _SAMPLING,
    "fuelgauge": _COMMON | _SAMPLING | {"current_unit", "discharge_sign"},
    "simulated": frozenset({"idle_mw", "active_mw"}),
}

T = TypeVar("T")


class _Required:
    """Marks an option without a default."""


_REQUIRED = _Required()


class MeterConfigError(MeterError):
    """An inventory meter entry that cannot work: a bad or unknown option, a rail or sensor
    the device does not have. One line naming the device, the meter kind and the option."""


# --- the factory ---------------------------------------------------------------------------------


def build_meter(spec: MeterSpec, device_name: str, transport: Transport | None) -> PowerMeter:
    """Build the meter an inventory entry describes, bound to ``transport``.

    Options are checked before any I/O; then the source is discovered (ODPM files, the hwmon
    directory) and read once, so the returned meter is known to work and its ``rails`` to
    exist. The transport must be open; the meter does not own it (closing the meter leaves
    it open).

    Args:
        spec: The inventory's meter table (``kind``, ``path``, ``options``).
        device_name: The device's name, used in the meter's name (``<device>:<kind>``) and
            in every error.
        transport: How to reach the device; ``None`` only for ``simulated`` and for a
            ``command`` meter with ``run_on = "host"``. A device-sampling meter keeps it for
            its windows (two commands each).

    Raises:
        MeterConfigError: an unknown kind or option, a bad value, a missing transport, a rail
            or sensor the device does not have.
        MeterReadError: the probe reading failed (the file is missing or root-only, the tool
            is not installed); the message holds the transport's evidence. A
            :class:`~devices.meters.device_sampler.DeviceSamplerError` when the device cannot
            run a sampling loop (no clock with sub-second steps, a ``sleep`` without
            fractions, an unwritable workdir).
        MeterParseError: the probe reading's output is malformed.
    """
    options = _Options(spec, device_name)
    options.check_allowed()
    kind = spec.kind
    if kind == "simulated":
        return SimulatedMeter(f"{device_name}:simulated",
                              idle_power_mw=options.required_number("idle_mw", minimum=0.0),
                              active_power_mw=options.required_number("active_mw", minimum=0.0))
    plan = _Plan.from_options(options)
    if transport is None and plan.run_on == "device":
        raise MeterConfigError(f"device {device_name!r}: meter {kind}: needs a transport (ssh or "
                               "adb) to reach the device; none was given")
    reader = _Reader(device_name, kind, transport)
    path = spec.path or DEFAULT_PATHS.get(kind, "")
    source: _PowerSource | None = None
    read: Callable[[float], CounterReading] | Callable[[float], PowerReading]
    if plan.interval_s is None:
        read = _bind_counter(reader, plan, path)
    elif plan.run_on == "host":
        command = plan.command
        read = reader.bind(lambda t: _run_on_host(device_name, command, t), command_power_reading)
    else:
        source = _power_source(reader, plan, path)
        read = source.read_with(reader)
    probe = read(plan.timeout_s)
    available = probe.energy_mj if isinstance(probe, CounterReading) else probe.power_mw
    rails = plan.rails
    if rails is not None:
        missing = [r for r in rails if r not in available]
        if missing:
            raise options.fail("rails", f"rail {missing[0]!r} not found on the device "
                                        f"(available: {', '.join(sorted(available))})")
    elif kind == "jetson" and "VDD_IN" in available:
        rails = ("VDD_IN",)  # the board's input; the other rails are parts of it
    name = f"{device_name}:{kind}"
    if plan.interval_s is None:
        return CounterMeter(name, read, rails=rails,  # type: ignore[arg-type]
                            read_timeout_s=plan.timeout_s)
    if source is None or plan.sampling == "host":
        return SamplingMeter(name, read, rate_hz=1.0 / plan.interval_s,  # type: ignore[arg-type]
                             rails=rails, read_timeout_s=plan.timeout_s)
    assert transport is not None
    meter = DeviceSamplingMeter(name, transport, source.command, source.parse,
                                interval_s=plan.interval_s, rails=rails,
                                sample_timeout_s=plan.timeout_s,
                                timeout_s=plan.timeout_s + _SAMPLER_COMMAND_S, device=device_name)
    meter.prepare()
    return meter


@dataclass(frozen=True)
class _Plan:
    """A real meter's validated options (every check done before any I/O).

    ``interval_s`` is ``None`` for a counter meter, the sampling period otherwise;
    ``sampling`` (``"device"`` or ``"host"``) says where a sampling meter samples.
    """

    kind: str
    rails: tuple[str, ...] | None
    timeout_s: float
    interval_s: float | None
    run_on: str = "device"
    sampling: str = "device"
    command: str = ""
    chip: str = "ina3221"
    convention: FuelGaugeConvention | None = None

    @classmethod
    def from_options(cls, options: _Options) -> _Plan:
        kind = options.spec.kind
        sampling = kind in ("pi5-pmic", "hwmon", "jetson", "fuelgauge") or (
            kind == "command" and options.choice("unit", ("joules", "watts"), "joules") == "watts")
        interval_s: float | None = None
        if sampling:
            interval_s = options.number(
                "interval_s", default=_DEFAULT_INTERVAL_S.get(kind, _FALLBACK_INTERVAL_S),
                minimum=_PMIC_MIN_INTERVAL_S if kind == "pi5-pmic" else 0.001)
        else:
            for option in ("interval_s", "sampling"):
                if option in options.values:
                    raise options.fail(option, "applies only to sampling meters (this one reads "
                                               "cumulative counters)")
        run_on = options.choice("run_on", ("device", "host"), "device")
        mode = options.choice("sampling", ("device", "host"), run_on)
        if run_on == "host" and mode != "host":
            raise options.fail("sampling", "a command run on the host (run_on = \"host\") is "
                                           "sampled by the host; remove 'sampling' or set it to "
                                           "\"host\"")
        timeout_s = options.number("read_timeout_s", default=None, minimum=0.0, exclusive=True)
        return cls(
            kind=kind,
            rails=options.rails(),
            timeout_s=timeout_s or (_SAMPLING_TIMEOUT_S if sampling else _COUNTER_TIMEOUT_S),
            interval_s=interval_s,
            run_on=run_on,
            sampling=mode,
            command=options.command() if kind == "command" else "",
            chip=options.hwmon_name() if kind == "hwmon" else "ina3221",
            convention=options.fuel_gauge_convention() if kind == "fuelgauge" else None,
        )


def _bind_counter(reader: _Reader, plan: _Plan, path: str) -> Callable[[float], CounterReading]:
    """A counter kind's ``read(timeout_s)`` over the transport (discovering the source first)."""
    kind = plan.kind
    if kind == "odpm":
        return _OdpmReader(reader, _find_odpm_files(reader, path))
    if kind == "powerstats":
        dumpsys = f"{shlex.quote(path)} {_POWERSTATS_SERVICE}"
        return reader.bind(lambda t: reader.run(dumpsys, t), powerstats_counter_reading)
    if kind == "rapl":
        return _rapl_reader(reader, path)
    assert kind == "command", kind
    command = plan.command
    if plan.run_on == "host":
        run: Callable[[float], str] = \
            lambda t: _run_on_host(reader.device, command, t)  # noqa: E731
    else:
        run = lambda t: reader.run(command, t)  # noqa: E731
    return reader.bind(run, command_counter_reading)


@dataclass(frozen=True)
class _PowerSource:
    """One power sample on the device: the command printing it and the parser of its stdout
    (errors naming the device and the meter). Host polling runs the command per read; a
    :class:`DeviceSamplingMeter` runs it in its loop on the device."""

    command: str
    parse: Callable[[str], PowerReading]

    def read_with(self, reader: _Reader) -> Callable[[float], PowerReading]:
        """``read(timeout_s)``: one round trip running :attr:`command`."""
        return lambda timeout_s: self.parse(reader.run(self.command, timeout_s))


def _power_source(reader: _Reader, plan: _Plan, path: str) -> _PowerSource:
    """A sampling kind's source on the device (discovering it first)."""
    kind = plan.kind
    if kind == "command":
        return _PowerSource(plan.command, reader.converter(command_power_reading))
    if kind == "pi5-pmic":
        return _PowerSource(f"{shlex.quote(path)} pmic_read_adc",
                            reader.converter(pmic_adc_power_reading))
    if kind in ("hwmon", "jetson"):
        return _hwmon_source(reader, path, plan.chip)
    assert kind == "fuelgauge", kind
    return _fuel_gauge_source(reader, plan.convention, path,
                              plan.interval_s or _FALLBACK_INTERVAL_S)


class _Options:
    """A meter table's options, read one by one with errors that name the device and option."""

    def __init__(self, spec: MeterSpec, device: str) -> None:
        self.spec = spec
        self.device = device
        self.values = dict(spec.options)

    def fail(self, option: str, problem: str) -> MeterConfigError:
        return MeterConfigError(f"device {self.device!r}: meter {self.spec.kind}: option "
                                f"{option!r}: {problem}")

    def check_allowed(self) -> None:
        allowed = _OPTIONS.get(self.spec.kind)
        if allowed is None:
            raise MeterConfigError(f"device {self.device!r}: meter kind {self.spec.kind!r} is "
                                   f"unknown (known: {', '.join(_OPTIONS)})")
        if self.spec.kind == "simulated" and self.spec.path is not None:
            raise MeterConfigError(f"device {self.device!r}: meter simulated: 'path' means "
                                   "nothing for a simulated meter; remove it")
        for option in sorted(self.values):
            if option not in allowed:
                raise self.fail(option, f"unknown for this kind of meter (allowed: "
                                        f"{', '.join(sorted(allowed)) or 'none'})")

    def number(self, option: str, *, default: float | None | _Required = _REQUIRED,
               minimum: float, exclusive: bool = False) -> float | None:
        """The option as a float (``default`` when absent; a missing required one fails)."""
        if option not in self.values:
            if isinstance(default, _Required):
                raise self.fail(option, "missing")
            return default
        value = self.values[option]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and (value > minimum if exclusive else value >= minimum)
        if not ok:
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            raise self.fail(option, f"expected a number {bound}, got {value!r}")
        return float(value)  # type: ignore[arg-type]

    def required_number(self, option: str, *, minimum: float) -> float:
        value = self.number(option, minimum=minimum)
        assert value is not None
        return value

    def choice(self, option: str, choices: tuple[str, ...], default: str) -> str:
        value = self.values.get(option, default)
        if value not in choices:
            raise self.fail(option, f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    def rails(self) -> tuple[str, ...] | None:
        value = self.values.get("rails")
        if value is None:
            return None
        if (not isinstance(value, list) or not value
                or not all(isinstance(r, str) and r.strip() for r in value)
                or len(set(value)) != len(value)):
            raise self.fail("rails", f"expected a non-empty list of distinct rail names, got "
                                     f"{value!r}")
        return tuple(value)

    def command(self) -> str:
        value = self.values.get("command")
        if isinstance(value, list) and value and all(isinstance(a, str) and a for a in value):
            return shlex.join(value)
        if not isinstance(value, str) or not value.strip():
            raise self.fail("command", f"expected a command line (string or list of strings) "
                                       f"printing joules or watts, got {value!r}")
        return value

    def fuel_gauge_convention(self) -> FuelGaugeConvention | None:
        """``current_unit`` and ``discharge_sign`` as a convention (both or neither given)."""
        unit = self.values.get("current_unit")
        sign = self.values.get("discharge_sign")
        if (unit is None) != (sign is None):
            given, missing = (("current_unit", "discharge_sign") if sign is None
                              else ("discharge_sign", "current_unit"))
            raise self.fail(missing, f"give it with {given!r}, or neither (to detect both at "
                                     "idle)")
        if unit is None:
            return None
        if unit not in ("uA", "mA"):
            raise self.fail("current_unit", f"{unit!r} is not one of uA, mA")
        if sign not in (-1, 1) or isinstance(sign, bool):
            raise self.fail("discharge_sign", f"expected -1 or 1 (the sign of current_now while "
                                              f"discharging), got {sign!r}")
        return FuelGaugeConvention(unit, sign)  # type: ignore[arg-type]

    def hwmon_name(self) -> str:
        chips = sorted(HWMON_SINGLE_CHANNEL_CHIPS | {"ina3221"})
        value = self.values.get("name")
        if value is None:
            raise self.fail("name", f"missing; the hwmon chip to find, one of {', '.join(chips)}")
        if value not in chips:
            raise self.fail("name", f"{value!r} is not one of {', '.join(chips)}")
        return str(value)


class _Reader:
    """Runs one reading's command over the transport; errors name the device and the meter."""

    def __init__(self, device: str, kind: str, transport: Transport | None) -> None:
        self.device = device
        self.kind = kind
        self.transport = transport

    def run(self, command: str, timeout_s: float) -> str:
        """stdout of ``command``; a non-zero exit is a :class:`MeterReadError`."""
        assert self.transport is not None
        try:
            result = self.transport.run(command, timeout_s=timeout_s)
        except TransportError as e:  # its message already names the device and the command
            raise MeterReadError(f"meter {self.kind}: {e}") from e
        if not result.ok:
            lines = (result.stderr or result.stdout).strip().splitlines()
            evidence = lines[-1].strip() if lines else "no output"
            hint = "; energy counters are often root-only" if "denied" in evidence else ""
            if result.exit_code == 127:
                hint = "; command not found on the device (install it, or set the meter's path)"
            raise MeterReadError(f"device {self.device!r}: meter {self.kind}: {command!r} exited "
                                 f"with {result.exit_code}: {evidence}{hint}")
        return result.stdout

    def bind(
        self, run: Callable[[float], str], convert: Callable[[str], T]
    ) -> Callable[[float], T]:
        """``read(timeout_s)``: ``run`` then ``convert`` its text, errors naming the device."""
        parse = self.converter(convert)
        return lambda timeout_s: parse(run(timeout_s))

    def converter(self, convert: Callable[[str], T]) -> Callable[[str], T]:
        """``convert`` with its errors naming the device and the meter."""
        return lambda text: self.parse(lambda: convert(text))

    def parse(self, parse: Callable[[], T]) -> T:
        """Call a parser, re-raising its errors with the device and meter in front."""
        try:
            return parse()
        except MeterParseError as e:
            raise MeterParseError(f"device {self.device!r}: meter {self.kind}: {e.source}",
                                  e.line, e.expected) from e
        except MeterError as e:
            raise type(e)(f"device {self.device!r}: meter {self.kind}: {e}") from e


def _run_on_host(device: str, command: str, timeout_s: float) -> str:
    """Run a host-side meter command (an external meter plugged into the host)."""
    try:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise MeterReadError(f"device {device!r}: meter command {command!r} on the host did not "
                             f"finish within {timeout_s:g} s") from e
    except OSError as e:
        raise MeterReadError(f"device {device!r}: meter command {command!r} on the host: "
                             f"{e}") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()
        raise MeterReadError(f"device {device!r}: meter command {command!r} on the host exited "
                             f"with {done.returncode}: {tail[-1] if tail else 'no output'}")
    return done.stdout


# --- per-kind readers --------------------------------------------------------------------------


def _find_odpm_files(reader: _Reader, path: str) -> tuple[str, ...]:
    """Every ``iio:device*/energy_value`` under ``path``, found once (one round trip)."""
    base = path.rstrip("/") or "/"
    listing = reader.run(f"for f in {shlex.quote(base)}/iio:device*/energy_value; do "
                         f'[ -r "$f" ] && echo "$f"; done; true', _DISCOVERY_TIMEOUT_S)
    files = [line.strip() for line in listing.splitlines() if line.strip()]
    if not files:
        raise MeterConfigError(
            f"device {reader.device!r}: meter odpm: no readable iio:device*/energy_value under "
            f"{base!r}; ODPM needs a Pixel 6 or later (or set the meter's path)")

    def number(f: str) -> tuple[int, str]:
        match = re.search(r"iio:device(\d+)/energy_value$", f)
        return (int(match.group(1)) if match else 1 << 30, f)

    return tuple(sorted(files, key=number))


class _OdpmReader:
    """One ``cat`` of every PMIC's ``energy_value``; timed by the files' ``t=`` (see the
    module docstring), mapped onto ``time.monotonic()`` by the offset of the first read."""

    def __init__(self, reader: _Reader, files: Sequence[str]) -> None:
        self._reader = reader
        self._files = tuple(files)
        self._command = "cat " + " ".join(shlex.quote(f) for f in self._files)
        self._offset_s: float | None = None

    def __call__(self, timeout_s: float) -> CounterReading:
        start_s = time.monotonic()
        text = self._reader.run(self._command, timeout_s)
        mid_s = (start_s + time.monotonic()) / 2.0
        pmics = self._reader.parse(lambda: parse_odpm_energy_values(text))
        if len(pmics) != len(self._files):
            raise MeterReadError(
                f"device {self._reader.device!r}: meter odpm: read {len(pmics)} energy_value "
                f"blocks from {len(self._files)} files; a PMIC went away? Build the meter again")
        reading = self._reader.parse(lambda: odpm_counter_reading([text]))
        device_s = statistics.fmean(p.timestamp_ms for p in pmics) / 1000.0
        if self._offset_s is None:
            self._offset_s = mid_s - device_s
        return CounterReading(reading.energy_mj, time_s=self._offset_s + device_s, raw=text)


def _rapl_reader(reader: _Reader, path: str) -> Callable[[float], CounterReading]:
    zone = path.rstrip("/")
    command = (f"cd {shlex.quote(zone)} && cat energy_uj max_energy_range_uj && "
               "{ cat name 2>/dev/null || echo package; }")

    def read(timeout_s: float) -> CounterReading:
        lines = reader.run(command, timeout_s).splitlines()
        if len(lines) != 3:
            raise MeterParseError(f"device {reader.device!r}: meter rapl", "\n".join(lines),
                                  "energy_uj, max_energy_range_uj and name, one line each")
        energy, limit, rail = lines
        return reader.parse(lambda: rapl_counter_reading(energy, limit, rail.strip() or "package"))

    return read


def _hwmon_source(reader: _Reader, path: str, chip: str) -> _PowerSource:
    """Find the hwmon directory named ``chip`` (``path`` itself or ``path/hwmon*``), list its
    sensor files once; a sample reads them all in one command."""
    base = path.rstrip("/") or "/"
    quoted = shlex.quote(base)
    listing = reader.run(f'for d in {quoted} {quoted}/hwmon*; do [ -r "$d/name" ] && '
                         f'printf "%s\\t%s\\n" "$d" "$(cat "$d/name")"; done; true',
                         _DISCOVERY_TIMEOUT_S)
    found = [tuple(line.split("\t", 1)) for line in listing.splitlines() if "\t" in line]
    matches = [d for d, name in found if name.strip() == chip]
    if len(matches) != 1:
        seen = ", ".join(f"{posixpath.basename(d)}={n.strip()}" for d, n in found) or "none"
        problem = "no" if not matches else "several"
        raise MeterConfigError(
            f"device {reader.device!r}: meter {reader.kind}: {problem} hwmon device named "
            f"{chip!r} under {base!r} (found: {seen}); "
            + ("check the chip's driver is loaded" if not matches
               else "set the meter's path to the hwmonN directory to use"))
    directory = matches[0]
    names = reader.run(f"ls {shlex.quote(directory)}", _DISCOVERY_TIMEOUT_S).split()
    files = sorted(n for n in names if _HWMON_FILE.fullmatch(n))
    command = (f"cd {shlex.quote(directory)} && for f in {' '.join(files)}; do "
               'v=$(cat "$f") || exit 1; printf "%s=%s\\n" "$f" "$v"; done')

    def parse(text: str) -> PowerReading:
        snapshot = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return reader.parse(lambda: hwmon_power_reading(snapshot))

    return _PowerSource(command, parse)


def _fuel_gauge_source(
    reader: _Reader, convention: FuelGaugeConvention | None, path: str, interval_s: float
) -> _PowerSource:
    """``cat current_now voltage_now status``; the convention is detected from idle samples
    (taken now, polled from the host) unless given."""
    directory = path.rstrip("/")
    command = (f"cd {shlex.quote(directory)} && cat current_now voltage_now && "
               "{ cat status 2>/dev/null || echo Unknown; }")

    def split(text: str) -> tuple[str, str]:
        lines = text.splitlines()
        if len(lines) != 3:
            raise MeterParseError(f"device {reader.device!r}: meter fuelgauge", "\n".join(lines),
                                  "current_now, voltage_now and status, one line each")
        if lines[2].strip() == "Charging":
            raise MeterReadError(
                f"device {reader.device!r}: meter fuelgauge: the battery reports Charging; the "
                "fuel gauge cannot measure while USB charges it (use adb over Wi-Fi or a "
                "switchable hub)")
        return lines[0], lines[1]

    if convention is None:  # detect at idle: the device must be idle and on battery now
        samples: list[BatteryReading] = []
        for i in range(_FUEL_GAUGE_IDLE_SAMPLES):
            if i:
                time.sleep(interval_s)
            current, voltage = split(reader.run(command, _SAMPLING_TIMEOUT_S))
            samples.append(reader.parse(functools.partial(parse_battery, current, voltage)))
        convention = reader.parse(lambda: detect_fuel_gauge_convention(samples))
    known: FuelGaugeConvention = convention

    def parse(text: str) -> PowerReading:
        current, voltage = split(text)
        return reader.parse(lambda: battery_power_reading(current, voltage, known))

    return _PowerSource(command, parse)


# --- device state the energy protocol reads ------------------------------------------------------

_DUMPSYS_STATUS = re.compile(r"^\s*status:\s*(\d+)\s*$", re.MULTILINE)
_CHARGING_WORDS = {"Charging": True, "Discharging": False, "Not charging": False, "Full": False}
_BATTERY_MANAGER_STATUS = {2: True, 3: False, 4: False, 5: False}  # BatteryManager.BATTERY_STATUS_*


def device_is_charging(
    transport: Transport, timeout_s: float, *, status_path: str = BATTERY_STATUS_PATH
) -> bool | None:
    """Whether the device's battery reports charging, in one round trip.

    Reads ``status_path`` (``Charging`` / ``Discharging`` / ``Not charging`` / ``Full``) and,
    where that file is missing, Android's ``dumpsys battery`` (``status: 2`` is charging).
    ``Full`` counts as not charging (the battery takes no current, though the phone is on
    external power).

    Returns:
        ``True`` / ``False``, or ``None`` when neither source says (a board without a
        battery, an unknown status).

    Raises:
        TransportError: the device could not be reached.
    """
    quoted = shlex.quote(status_path)
    result = transport.run(f"cat {quoted} 2>/dev/null || dumpsys battery 2>/dev/null; true",
                           timeout_s=timeout_s)
    text = result.stdout.strip()
    first = text.splitlines()[0].strip() if text else ""
    if first in _CHARGING_WORDS:
        return _CHARGING_WORDS[first]
    match = _DUMPSYS_STATUS.search(text)
    if match is not None:
        return _BATTERY_MANAGER_STATUS.get(int(match.group(1)))
    return None


def _read_files(transport: Transport, paths: Sequence[str], timeout_s: float) -> dict[str, str]:
    """``path -> first line`` for each readable file of ``paths``, in one round trip."""
    if not paths:
        return {}
    for path in paths:
        if not path.startswith("/") or "\n" in path or "\t" in path:
            raise ValueError(f"device file paths must be absolute, without tabs or newlines, "
                             f"got {path!r}")
    quoted = " ".join(shlex.quote(p) for p in paths)
    result = transport.run(f'for f in {quoted}; do v=$(cat "$f" 2>/dev/null) && '
                           f'printf "%s\\t%s\\n" "$f" "$v"; done; true', timeout_s=timeout_s)
    return dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)


def read_temperatures(
    transport: Transport, zones: Sequence[str], timeout_s: float
) -> dict[str, float]:
    """Read thermal zone files (millidegrees C, as the inventory's ``thermal_zones``) in one
    round trip. Units: °C, keyed by the zone's path.

    Raises:
        MeterReadError: a zone could not be read (the message names the device and zone).
        MeterParseError: a zone did not hold an integer.
        TransportError: the device could not be reached.
    """
    values = _read_files(transport, zones, timeout_s)
    temperatures: dict[str, float] = {}
    for zone in zones:
        if zone not in values:
            raise MeterReadError(f"device {transport.name!r}: thermal zone {zone!r} is not "
                                 "readable; fix the inventory's thermal_zones")
        text = values[zone].strip()
        if not re.fullmatch(r"-?\d+", text):
            raise MeterParseError(f"device {transport.name!r}: thermal zone {zone}", text,
                                  "one integer (millidegrees C)")
        temperatures[zone] = int(text) / 1000.0
    return temperatures


def read_cpu_max_freqs_khz(
    transport: Transport, timeout_s: float, *, cpu_dir: str = "/sys/devices/system/cpu"
) -> dict[str, float]:
    """Each CPU's current frequency cap (``cpufreq/scaling_max_freq``), in one round trip.
    Units: kHz, keyed by CPU (``cpu0``...). Thermal throttling lowers this cap, so a drop
    during a run marks the run throttled. Empty when the device exposes no cpufreq.

    Raises:
        TransportError: the device could not be reached.
    """
    base = shlex.quote(cpu_dir.rstrip("/"))
    result = transport.run(f'for f in {base}/cpu[0-9]*/cpufreq/scaling_max_freq; do '
                           f'v=$(cat "$f" 2>/dev/null) && printf "%s=%s\\n" "$f" "$v"; done; true',
                           timeout_s=timeout_s)
    freqs: dict[str, float] = {}
    for line in result.stdout.splitlines():
        path, _, value = line.partition("=")
        cpu = re.search(r"/(cpu\d+)/cpufreq/", path)
        if cpu is not None and value.strip().isdigit():
            freqs[cpu.group(1)] = float(value.strip())
    return freqs
