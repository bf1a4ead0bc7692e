"""Meters without a sensor: a simulated power profile, and a replay of recorded readings.

Both label their windows ``source="simulated"``: a figure from them is never a measurement.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Generic, TypeVar

from devices.meters.base import CounterMeter, CounterReading, PowerReading
from devices.meters.errors import MeterReadError

__all__ = ["SimulatedMeter", "ReplayReader", "ReplayMeter"]


class SimulatedMeter(CounterMeter):
    """A counter meter whose counter follows a known power profile.

    Power is ``idle_power_mw``, plus ``active_power_mw`` while the workload runs. The
    workload state comes from :meth:`set_active` / :meth:`active` (exact transition times)
    or, when given, from ``is_active``, a callback polled at every read (a change is seen at
    the next read, so poll-based energy is exact only if the state changes at reads).

    Args:
        name: The meter's name.
        idle_power_mw: Power while idle. Units: mW.
        active_power_mw: Power added on top of idle while the workload runs. Units: mW.
        is_active: Optional callback saying whether the workload runs now.
        rail: The one rail the counter reports.
        clock: Time source (``time.monotonic``; injectable for tests). Units: s.
    """

    def __init__(
        self,
        name: str = "simulated",
        *,
        idle_power_mw: float,
        active_power_mw: float,
        is_active: Callable[[], bool] | None = None,
        rail: str = "simulated",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not idle_power_mw >= 0:
            raise ValueError(f"meter {name!r}: idle_power_mw must be >= 0, got {idle_power_mw}")
        if not active_power_mw >= 0:
            raise ValueError(
                f"meter {name!r}: active_power_mw must be >= 0, got {active_power_mw}"
            )
        self._idle_power_mw = float(idle_power_mw)
        self._active_power_mw = float(active_power_mw)
        self._is_active = is_active
        self._rail = rail
        self._sim_clock = clock
        self._sim_lock = threading.Lock()
        self._active = False
        self._counter_mj = 0.0
        self._last_s = clock()
        super().__init__(name, self._read_counter, source="simulated", clock=clock)

    def _advance(self, now_s: float) -> None:
        """Accrue energy up to ``now_s`` at the current state's power (lock held)."""
        power_mw = self._idle_power_mw + (self._active_power_mw if self._active else 0.0)
        self._counter_mj += power_mw * max(now_s - self._last_s, 0.0)
        self._last_s = max(now_s, self._last_s)

    def set_active(self, active: bool) -> None:
        """Mark the workload as running (``True``) or stopped, from now on."""
        with self._sim_lock:
            self._advance(self._sim_clock())
            self._active = bool(active)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run the ``with`` body as the active workload."""
        self.set_active(True)
        try:
            yield
        finally:
            self.set_active(False)

    def _read_counter(self, timeout_s: float) -> CounterReading:
        with self._sim_lock:
            now_s = self._sim_clock()
            self._advance(now_s)
            if self._is_active is not None:
                self._active = bool(self._is_active())
            energy_mj = self._counter_mj
        return CounterReading({self._rail: energy_mj}, time_s=now_s,
                              raw=f"simulated {self._rail}={energy_mj:.6f} mJ")


Recorded = TypeVar("Recorded", CounterReading, PowerReading)


class ReplayReader(Generic[Recorded]):
    """A ``read(timeout_s)`` callable that returns recorded readings in order (for tests).

    Attributes:
        timeouts_s: The ``timeout_s`` of every call, to check deadlines are passed on.

    Raises:
        MeterReadError: when called after the last recorded reading.
    """

    def __init__(self, readings: Iterable[Recorded]) -> None:
        self._readings: list[Recorded] = list(readings)
        self._next = 0
        self._lock = threading.Lock()
        self.timeouts_s: list[float] = []

    @property
    def remaining(self) -> int:
        """How many recorded readings are left."""
        return len(self._readings) - self._next

    def __call__(self, timeout_s: float) -> Recorded:
        with self._lock:
            self.timeouts_s.append(timeout_s)
            if self._next >= len(self._readings):
                raise MeterReadError(
                    f"replay exhausted after {len(self._readings)} readings; record more"
                )
            reading = self._readings[self._next]
            self._next += 1
            return reading


class ReplayMeter(CounterMeter):
    """A counter meter fed recorded :class:`CounterReading`\\ s, each carrying its ``time_s``.

    Raises:
        ValueError: from the constructor, when a reading has no ``time_s``.
    """

    def __init__(
        self,
        name: str,
        readings: Sequence[CounterReading],
        *,
        rails: Sequence[str] | None = None,
    ) -> None:
        for i, reading in enumerate(readings):
            if reading.time_s is None:
                raise ValueError(f"meter {name!r}: recorded reading {i} has no time_s")
        self.reader: ReplayReader[CounterReading] = ReplayReader(readings)
        super().__init__(name, self.reader, rails=rails, source="simulated")
