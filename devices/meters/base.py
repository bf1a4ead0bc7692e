"""The meter seam: :class:`PowerMeter` and its measurement windows (after Zeus's monitor).

A window is opened with ``begin_window(key)`` and closed with ``end_window(key)``, which
returns an :class:`EnergyWindow`. Two kinds of meter implement it: :class:`CounterMeter`
reads cumulative energy counters at both ends and subtracts; :class:`SamplingMeter` samples
power on a background thread while a window is open and integrates. Both read through an
injected ``read(timeout_s)`` callable, so any transport (adb, SSH, local files, a replay)
plugs in; :mod:`devices.meters.sources` turns raw text into the readings they expect.
"""

from __future__ import annotations

import abc
import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Literal, TypeVar

from devices.base import EnergySource
from devices.meters.errors import MeterError, MeterNotConfiguredError, MeterReadError
from devices.meters.integrate import energy_deltas_mj, integrate_rails_mj, sum_rails_mj

__all__ = [
    "WindowSource",
    "CounterReading",
    "PowerReading",
    "EnergyWindow",
    "PowerMeter",
    "CounterMeter",
    "SamplingMeter",
    "EmptyMeter",
]

WindowSource = Literal["measured", "simulated"]
"""Where a window's energy came from: a real sensor, or a simulated/replayed one."""


@dataclass(frozen=True)
class CounterReading:
    """Cumulative energy counters at one instant.

    Attributes:
        energy_mj: Cumulative energy per rail since some origin. Units: mJ.
        range_mj: Per rail, the range after which the counter wraps to 0 (RAPL's
            ``max_energy_range_uj``); rails not listed never wrap. Units: mJ.
        time_s: When the reading applies, on the meter's clock (``time.monotonic()``);
            ``None`` lets the meter stamp it with the midpoint of the read call. Units: s.
        raw: The text as read, kept with the window for provenance.
    """

    energy_mj: Mapping[str, float]
    range_mj: Mapping[str, float] = field(default_factory=dict)
    time_s: float | None = None
    raw: str = ""


@dataclass(frozen=True)
class PowerReading:
    """Instantaneous power per rail at one instant.

    Attributes:
        power_mw: Power per rail. Units: mW.
        time_s: As :attr:`CounterReading.time_s`. Units: s.
        raw: The text as read.
    """

    power_mw: Mapping[str, float]
    time_s: float | None = None
    raw: str = ""


Reading = TypeVar("Reading", CounterReading, PowerReading)


@dataclass(frozen=True)
class EnergyWindow:
    """The energy one meter measured over one window.

    Attributes:
        key: The window's key.
        meter: The meter's name.
        source: ``"measured"`` or ``"simulated"`` (never report a simulated one as real).
        start_time_s: Start, on the meter's clock (``time.monotonic()``). Units: s.
        duration_s: Length of the window. Units: s.
        energy_mj: Energy per rail, for every rail read. Units: mJ.
        rails: The rails summed into ``total_energy_mj``.
        total_energy_mj: Sum of ``energy_mj`` over ``rails``. Units: mJ.
        avg_power_mw: ``total_energy_mj / duration_s``. Units: mW.
        readings: The raw readings the window was computed from (begin/end counters, or every
            power sample in the window).
        notes: Caveats found while computing it (e.g. a gap between power samples).
    """

    key: str
    meter: str
    source: WindowSource
    start_time_s: float
    duration_s: float
    energy_mj: Mapping[str, float]
    rails: tuple[str, ...]
    total_energy_mj: float
    avg_power_mw: float
    readings: tuple[CounterReading | PowerReading, ...]
    notes: tuple[str, ...] = ()


class PowerMeter(abc.ABC):
    """Measures the energy a device uses over named windows.

    Lifecycle:
        Build one per device from its inventory entry, call ``begin_window(key)`` /
        ``end_window(key)`` any number of times, then :meth:`close` (or use ``with``).
        Windows with different keys may overlap or nest (a whole run and its timed loop).
        A closed meter refuses new windows.

    Thread safety:
        Every method may be called from any thread. A meter never calls its ``read``
        concurrently, so transports need not be thread-safe.

    Reads and deadlines:
        A meter calls ``read(timeout_s)``; the transport must return or raise by then. The
        meter times every call with its clock and rejects one that returns late, since
        its timestamp would be uncertain.

    Units:
        Energy mJ, power mW, times and durations s (``time.monotonic()``).

    Raises:
        MeterError: from ``begin_window`` when the key is already open or the meter is
            closed, and from ``end_window`` when the key is not open or the readings cannot
            make a window (a counter reset, rails changing, zero duration, a missing rail).
        MeterReadError: from either when ``read`` fails or overruns its deadline; a window
            whose end read fails is discarded.
        MeterParseError: from either when the raw output is malformed.
        MeterNotConfiguredError: from :class:`EmptyMeter`, always.
    """

    def __init__(self, name: str, source: EnergySource) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"meter name must be a non-empty string, got {name!r}")
        self._name = name
        self._source: EnergySource = source

    @property
    def name(self) -> str:
        """The meter's name (usually ``<device>:<kind>``)."""
        return self._name

    @property
    def source(self) -> EnergySource:
        """``"measured"``, ``"simulated"``, or ``"none"`` for :class:`EmptyMeter`."""
        return self._source

    @abc.abstractmethod
    def begin_window(self, key: str) -> None:
        """Open window ``key``, taking its first reading now."""

    @abc.abstractmethod
    def end_window(self, key: str) -> EnergyWindow:
        """Close window ``key``, taking its last reading now, and return its energy."""

    @abc.abstractmethod
    def cancel_window(self, key: str) -> None:
        """Discard window ``key`` without reading; a no-op when it is not open (safe in
        ``finally``). Never raises."""

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract: most meters hold nothing
        """Stop background work and discard open windows; a no-op where there is none."""

    def __enter__(self) -> PowerMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ReadingMeter(PowerMeter):
    """Shared by the two real kinds: argument checks, serialised timed reads, key checks."""

    def __init__(
        self,
        name: str,
        *,
        rails: Sequence[str] | None,
        read_timeout_s: float,
        source: WindowSource,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(name, source)
        if source not in ("measured", "simulated"):
            raise ValueError(f"meter {name!r}: source must be 'measured' or 'simulated', "
                             f"got {source!r}")
        if not read_timeout_s > 0:
            raise ValueError(f"meter {name!r}: read_timeout_s must be > 0, got {read_timeout_s}")
        if rails is not None:
            rails = tuple(rails)
            if not rails or len(set(rails)) != len(rails) or not all(rails):
                raise ValueError(f"meter {name!r}: rails must be distinct non-empty names, "
                                 f"got {list(rails)}")
        self._rails: tuple[str, ...] | None = rails
        self._read_timeout_s = read_timeout_s
        self._window_source: WindowSource = source
        self._clock = clock
        self._read_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False

    def _timed_read(self, read: Callable[[float], Reading], kind: type[Reading]) -> Reading:
        """Call ``read`` under the read lock, enforce the deadline, stamp the reading."""
        with self._read_lock:
            start_s = self._clock()
            try:
                reading = read(self._read_timeout_s)
            except MeterError:
                raise
            except Exception as e:  # a transport's own error: translate at the boundary
                raise MeterReadError(
                    f"meter {self.name!r}: read failed: {type(e).__name__}: {e}"
                ) from e
            end_s = self._clock()
        if end_s - start_s > self._read_timeout_s:
            raise MeterReadError(
                f"meter {self.name!r}: read took {end_s - start_s:.3f} s, past its "
                f"{self._read_timeout_s:g} s deadline; the transport must give up by timeout_s "
                "(or raise read_timeout_s for this meter)"
            )
        if not isinstance(reading, kind):
            raise MeterReadError(f"meter {self.name!r}: read returned "
                                 f"{type(reading).__name__}, expected {kind.__name__}")
        if reading.time_s is None:
            reading = dataclasses.replace(reading, time_s=(start_s + end_s) / 2.0)
        return reading

    def _check_can_open(self, key: str, open_keys: Mapping[str, object]) -> None:
        """Raise unless ``key`` may be opened now (caller holds the state lock)."""
        if self._closed:
            raise MeterError(f"meter {self.name!r} is closed; build a new one")
        if key in open_keys:
            raise MeterError(f"window {key!r} is already open on meter {self.name!r}; "
                             "end or cancel it first")

    def _not_open(self, key: str) -> MeterError:
        return MeterError(f"no open window {key!r} on meter {self.name!r}; call begin_window "
                          "first")

    def _window(
        self,
        key: str,
        start_s: float,
        end_s: float,
        energy_mj: Mapping[str, float],
        readings: tuple[CounterReading | PowerReading, ...],
        notes: tuple[str, ...] = (),
    ) -> EnergyWindow:
        duration_s = end_s - start_s
        if not duration_s > 0:
            raise MeterError(f"window {key!r} on meter {self.name!r} lasted {duration_s} s; "
                             "a window must be longer than the meter's update interval")
        rails = self._rails if self._rails is not None else tuple(sorted(energy_mj))
        try:
            total_mj = sum_rails_mj(energy_mj, rails)
        except ValueError as e:
            raise MeterError(f"meter {self.name!r}: {e}; fix the meter's rails") from e
        return EnergyWindow(key, self.name, self._window_source, start_s, duration_s,
                            dict(energy_mj), rails, total_mj, total_mj / duration_s, readings,
                            notes)


class CounterMeter(_ReadingMeter):
    """A meter over cumulative energy counters (ODPM, PowerStats, RAPL, a joules command).

    ``read(timeout_s)`` returns a :class:`CounterReading`; the window's energy per rail is
    end minus begin, adding the rail's ``range_mj`` when the counter wrapped. A counter only
    moves when its sensor refreshes (ODPM: at most every 50 ms), so keep windows long
    compared with that interval (seconds, as MLPerf does).

    Args:
        name: The meter's name, used in every error.
        read: Returns the counters now; must return or raise within ``timeout_s``.
        rails: Rails summed into ``total_energy_mj`` (all when ``None``).
        read_timeout_s: Deadline for each read. Units: s.
        source: ``"measured"`` for a real sensor, ``"simulated"`` otherwise.
        clock: The time source (``time.monotonic``; injectable for tests). Units: s.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[float], CounterReading],
        *,
        rails: Sequence[str] | None = None,
        read_timeout_s: float = 5.0,
        source: WindowSource = "measured",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, rails=rails, read_timeout_s=read_timeout_s, source=source,
                         clock=clock)
        self._read = read
        self._begins: dict[str, CounterReading] = {}

    def begin_window(self, key: str) -> None:
        with self._state_lock:
            self._check_can_open(key, self._begins)
        reading = self._timed_read(self._read, CounterReading)
        with self._state_lock:
            self._check_can_open(key, self._begins)
            self._begins[key] = reading

    def end_window(self, key: str) -> EnergyWindow:
        with self._state_lock:
            begin = self._begins.pop(key, None)
        if begin is None:
            raise self._not_open(key)
        end = self._timed_read(self._read, CounterReading)
        assert begin.time_s is not None and end.time_s is not None
        try:
            energy_mj = energy_deltas_mj(begin.energy_mj, end.energy_mj,
                                         {**begin.range_mj, **end.range_mj})
        except ValueError as e:
            raise MeterError(f"meter {self.name!r}, window {key!r}: {e}; measure it again") from e
        return self._window(key, begin.time_s, end.time_s, energy_mj, (begin, end))

    def cancel_window(self, key: str) -> None:
        with self._state_lock:
            self._begins.pop(key, None)

    def close(self) -> None:
        with self._state_lock:
            self._closed = True
            self._begins.clear()


class SamplingMeter(_ReadingMeter):
    """A meter that samples power (Pi 5 PMIC, hwmon, Jetson, fuel gauge, a watts command).

    While at least one window is open, a background thread calls ``read(timeout_s)`` every
    ``1 / rate_hz`` seconds and hands the sample to every open window. ``begin_window`` and
    ``end_window`` take a sample themselves, so a window is covered from its first to its
    last instant; its energy is the trapezoid integral of its samples
    (:mod:`devices.meters.integrate`). If a background read fails, sampling stops and every
    open window raises at its end.

    Args:
        name, read, rails, read_timeout_s, source, clock: as :class:`CounterMeter`, with
            ``read`` returning a :class:`PowerReading`.
        rate_hz: Background sampling rate (at most 10 Hz for the Pi 5 PMIC). Units: Hz.
        max_gap_periods: A gap between samples longer than this many periods is noted on
            the window.
    """

    def __init__(
        self,
        name: str,
        read: Callable[[float], PowerReading],
        *,
        rate_hz: float = 10.0,
        rails: Sequence[str] | None = None,
        read_timeout_s: float = 2.0,
        source: WindowSource = "measured",
        clock: Callable[[], float] = time.monotonic,
        max_gap_periods: float = 3.0,
    ) -> None:
        super().__init__(name, rails=rails, read_timeout_s=read_timeout_s, source=source,
                         clock=clock)
        if not 0 < rate_hz <= 1000:
            raise ValueError(f"meter {name!r}: rate_hz must be in (0, 1000], got {rate_hz}")
        if not max_gap_periods >= 1:
            raise ValueError(f"meter {name!r}: max_gap_periods must be >= 1, "
                             f"got {max_gap_periods}")
        self._read = read
        self._period_s = 1.0 / rate_hz
        self._max_gap_s = max_gap_periods * self._period_s
        self._windows: dict[str, list[PowerReading]] = {}
        self._thread: threading.Thread | None = None
        self._stop: threading.Event | None = None
        self._error: Exception | None = None

    @property
    def period_s(self) -> float:
        """Background sampling period. Units: s."""
        return self._period_s

    def _run(self, stop: threading.Event) -> None:
        next_s = time.monotonic()
        while not stop.is_set():
            next_s += self._period_s
            delay_s = next_s - time.monotonic()
            if delay_s > 0:
                if stop.wait(delay_s):
                    return
            else:
                next_s = time.monotonic()  # fell behind: carry on from now, no burst
            try:
                reading = self._timed_read(self._read, PowerReading)
            except Exception as e:  # noqa: BLE001 - reported by end_window of every open window
                with self._state_lock:
                    if self._stop is stop:  # not a thread already told to stop
                        self._error = e
                return
            with self._state_lock:
                for samples in self._windows.values():
                    samples.append(reading)

    def begin_window(self, key: str) -> None:
        with self._state_lock:
            self._check_can_open(key, self._windows)
            self._raise_background_error()
        first = self._timed_read(self._read, PowerReading)
        with self._state_lock:
            self._check_can_open(key, self._windows)
            self._windows[key] = [first]
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                                name=f"meter-{self.name}", daemon=True)
                self._thread.start()

    def end_window(self, key: str) -> EnergyWindow:
        with self._state_lock:
            if key not in self._windows:
                raise self._not_open(key)
        try:
            last = self._timed_read(self._read, PowerReading)
        finally:
            with self._state_lock:
                samples = self._windows.pop(key, None)
                error = self._error
            self._stop_if_idle()
        if samples is None:
            raise self._not_open(key)  # ended or cancelled by another thread meanwhile
        if error is not None:
            raise MeterReadError(
                f"background sampling on meter {self.name!r} stopped, so window {key!r} has a "
                f"hole; measure it again. Cause: {error}"
            ) from error
        start_s, end_s = samples[0].time_s, last.time_s
        assert start_s is not None and end_s is not None
        inside = [s for s in samples if s.time_s is not None and start_s <= s.time_s < end_s]
        window = sorted(inside, key=lambda s: s.time_s or 0.0) + [last]
        points = [(s.time_s or 0.0, s.power_mw) for s in window]
        try:
            energy_mj = integrate_rails_mj(points, start_s, end_s)
        except ValueError as e:
            raise MeterError(f"meter {self.name!r}, window {key!r}: {e}") from e
        gap_s = max(b[0] - a[0] for a, b in pairwise(points))
        notes: tuple[str, ...] = ()
        if gap_s > self._max_gap_s:
            notes = (f"largest gap between power samples {gap_s:.3f} s "
                     f"(sampling period {self._period_s:.3f} s)",)
        return self._window(key, start_s, end_s, energy_mj, tuple(window), notes)

    def cancel_window(self, key: str) -> None:
        with self._state_lock:
            self._windows.pop(key, None)
        self._stop_if_idle()

    def close(self) -> None:
        with self._state_lock:
            self._closed = True
            self._windows.clear()
        self._stop_if_idle()

    def _raise_background_error(self) -> None:
        """Caller holds the state lock."""
        if self._error is not None:
            raise MeterReadError(
                f"background sampling on meter {self.name!r} stopped; end the open windows and "
                f"measure again. Cause: {self._error}"
            ) from self._error

    def _stop_if_idle(self) -> None:
        """Stop the sampling thread once no window is open."""
        with self._state_lock:
            if self._windows or self._thread is None:
                return
            thread, stop = self._thread, self._stop
            self._thread = self._stop = None
            self._error = None  # every window that saw it has ended
        assert stop is not None
        stop.set()
        thread.join(timeout=self._read_timeout_s + self._period_s + 1.0)


class EmptyMeter(PowerMeter):
    """The stand-in for a device without a power meter: every window raises, helpfully."""

    def __init__(self, device: str) -> None:
        super().__init__(device, "none")
        self._device = device

    def _error(self) -> MeterNotConfiguredError:
        return MeterNotConfiguredError(
            f"device {self._device!r} has no power meter configured; add "
            "meter = { kind = ... } to its inventory entry"
        )

    def begin_window(self, key: str) -> None:
        raise self._error()

    def end_window(self, key: str) -> EnergyWindow:
        raise self._error()

    def cancel_window(self, key: str) -> None:
        return None
