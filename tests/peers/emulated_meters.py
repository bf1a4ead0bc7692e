"""Emulated power meters whose readings follow a known power, for meter and protocol tests.

A :class:`PowerEmulator` runs a background thread that polls ``/proc`` every few ms for a
process whose command line contains ``marker`` (the runner: the peers run their commands on
this machine) and integrates a known power: ``idle_mw``, plus ``active_mw`` while such a
process exists. Its flavours publish that power in the real formats of devices.md:

* :class:`OdpmEmulator` -- ``iio:device0/energy_value`` and ``iio:device1/energy_value``
  (``t=<ms>`` then ``CH<n>(T=<ms>)[RAIL], <uJ>`` lines) in a directory, refreshed every
  50 ms like the PMIC, each file replaced atomically. Serve the directory through the test
  adbd (it maps ``/data/...`` to its root) and point the meter's ``path`` at it, e.g.
  ``/data/local/tmp/sys/bus/iio/devices``.
* :class:`Pi5PmicEmulator` -- a ``vcgencmd`` stand-in script printing ``pmic_read_adc``
  output whose currents × volts sum to the emulated power (point the meter's ``path`` at it;
  the sshd peer runs it on this machine).
* :class:`HwmonEmulator` -- an INA226 hwmon directory (``name``, ``power1_input`` µW,
  ``in1_input`` mV, ``curr1_input`` mA) holding the emulated power; serve it through the test
  adbd like the ODPM files and point an ``hwmon`` meter's ``path`` at its parent.

Both split the power over several rails by fixed fractions, so the sum over every rail is the
emulated power. :func:`write_thermal_zone` and :func:`write_battery_status` write the files a
throttling or charging test needs.

Choose a marker no other process on the machine can contain (a run directory with a random
name): other engineers run tests here at the same time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

__all__ = [
    "PowerEmulator",
    "OdpmEmulator",
    "Pi5PmicEmulator",
    "HwmonEmulator",
    "ODPM_RAILS",
    "PMIC_RAILS",
    "write_thermal_zone",
    "write_battery_status",
]

_NEGATIVE_RECHECK_S = 0.5  # a pid whose cmdline did not match is read again while this young

# (iio device, channel, rail) -> (share of idle power, share of active power)
ODPM_RAILS: Mapping[tuple[int, int, str], tuple[float, float]] = {
    (0, 0, "S10M_VDD_TPU"): (0.10, 0.00),
    (0, 3, "S2M_VDD_CPUCL2"): (0.20, 0.60),
    (0, 4, "S3M_VDD_CPUCL1"): (0.20, 0.15),
    (1, 1, "S1S_VDD_CAM"): (0.15, 0.00),
    (1, 6, "S4S_VDD2H_MEM"): (0.35, 0.25),
}
"""The emulated ODPM rails (on two PMICs) and how they share the power."""

# rail -> (ADC current channel, ADC volt channel, volts, idle share, active share)
PMIC_RAILS: Mapping[str, tuple[int, int, float, float, float]] = {
    "VDD_CORE": (7, 15, 0.861733, 0.40, 0.80),
    "DDR_VDD2": (3, 11, 1.107000, 0.25, 0.15),
    "3V3_SYS": (2, 10, 3.312000, 0.20, 0.05),
    "1V8_SYS": (1, 9, 1.801000, 0.15, 0.00),
}
"""The emulated Pi 5 PMIC rails (those with both a current and a voltage)."""


class PowerEmulator:
    """Integrates ``idle_mw`` (+ ``active_mw`` while a marked process runs) on a thread.

    Args:
        idle_mw: Power with no marked process. Units: mW.
        active_mw: Power added while at least one marked process exists. Units: mW.
        marker: Text a process's command line must contain to count as the workload.
        poll_s: How often ``/proc`` is scanned (the state's resolution). Units: s.
        publish_s: How often the published readings are refreshed. Units: s.
    """

    def __init__(
        self, *, idle_mw: float, active_mw: float, marker: str, poll_s: float = 0.005,
        publish_s: float = 0.05,
    ) -> None:
        if not marker:
            raise ValueError("marker must be non-empty")
        self.idle_mw = float(idle_mw)
        self.active_mw = float(active_mw)
        self.marker = marker.encode()
        self.poll_s = poll_s
        self.publish_s = publish_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active = False
        self._energy_mj = 0.0
        self._active_s = 0.0
        self._last_s = 0.0
        self._seen: dict[int, tuple[bool, float]] = {}  # pid -> (matches, first seen)
        self._me = os.getpid()

    # -- what tests read --------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether a marked process ran at the last poll."""
        with self._lock:
            return self._active

    @property
    def energy_mj(self) -> float:
        """Energy integrated since :meth:`start`. Units: mJ."""
        with self._lock:
            return self._energy_mj

    @property
    def active_s(self) -> float:
        """Time a marked process ran since :meth:`start`. Units: s."""
        with self._lock:
            return self._active_s

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._last_s = time.monotonic()
        self._publish(self._last_s)
        self._thread = threading.Thread(target=self._run, name="power-emulator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> PowerEmulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        next_publish_s = self._last_s + self.publish_s
        while not self._stop.wait(self.poll_s):
            now_s = time.monotonic()
            active = self._scan(now_s)
            with self._lock:
                self._advance(now_s)
                self._active = active
            if now_s >= next_publish_s:
                self._publish(now_s)
                next_publish_s = max(next_publish_s + self.publish_s, now_s)

    def _advance(self, now_s: float) -> None:
        """Accrue energy at the state held since the last poll (lock held)."""
        dt_s = max(now_s - self._last_s, 0.0)
        self._energy_mj += (self.idle_mw + (self.active_mw if self._active else 0.0)) * dt_s
        if self._active:
            self._active_s += dt_s
        self._last_s = now_s

    def _scan(self, now_s: float) -> bool:
        """Whether any process's command line contains the marker now."""
        found = False
        alive: set[int] = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            alive.add(pid)
            if pid == self._me:
                continue
            known = self._seen.get(pid)
            if known is not None and not known[0] and now_s - known[1] > _NEGATIVE_RECHECK_S:
                continue  # settled as not ours
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            matches = self.marker in cmdline  # a zombie's cmdline is empty: not running
            self._seen[pid] = (matches, known[1] if known is not None else now_s)
            found = found or matches
        for pid in [p for p in self._seen if p not in alive]:
            del self._seen[pid]
        return found

    def _publish(self, now_s: float) -> None:
        """Write the readings as of ``now_s`` (subclasses)."""


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class OdpmEmulator(PowerEmulator):
    """ODPM ``energy_value`` files under ``directory`` (``iio:device0``, ``iio:device1``),
    refreshed every ``publish_s`` (50 ms, the PMIC's rate) with ``t=`` = CLOCK_BOOTTIME ms.

    The per-rail counters are integrated separately from :data:`ODPM_RAILS`'s shares, starting
    from non-zero values as on a phone that has been up a while.
    """

    def __init__(self, directory: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.directory = directory
        self._rail_uj = {rail: 1_000_000.0 * (i + 1) for i, rail in enumerate(ODPM_RAILS)}
        self._rail_energy_at = 0.0  # emulator energy already spread over the rails
        self._rail_active_at = 0.0
        for device in {d for d, _, _ in ODPM_RAILS}:
            (directory / f"iio:device{device}").mkdir(parents=True, exist_ok=True)

    def _publish(self, now_s: float) -> None:
        with self._lock:
            self._advance(now_s)
            idle_mj = (self._energy_mj - self._rail_energy_at) - self.active_mw * (
                self._active_s - self._rail_active_at)
            active_mj = self.active_mw * (self._active_s - self._rail_active_at)
            self._rail_energy_at, self._rail_active_at = self._energy_mj, self._active_s
        for key, (idle_share, active_share) in ODPM_RAILS.items():
            self._rail_uj[key] += 1000.0 * (idle_mj * idle_share + active_mj * active_share)
        t_ms = int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000)
        for device in sorted({d for d, _, _ in ODPM_RAILS}):
            lines = [f"t={t_ms}"] + [
                f"CH{channel}(T={t_ms})[{rail}], {int(self._rail_uj[(d, channel, rail)])}"
                for (d, channel, rail) in ODPM_RAILS if d == device
            ]
            _write_atomically(self.directory / f"iio:device{device}" / "energy_value",
                              "\n".join(lines) + "\n")


class Pi5PmicEmulator(PowerEmulator):
    """A ``vcgencmd`` stand-in at ``directory / "vcgencmd"`` whose ``pmic_read_adc`` prints
    the emulated power (rails from :data:`PMIC_RAILS`, plus voltage-only ``EXT5V_V`` and
    ``BATT_V``). The output is rewritten at the first poll that sees the state change; the
    script only cats it."""

    def __init__(self, directory: Path, **kwargs: object) -> None:
        kwargs.setdefault("publish_s", 0.0)
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._published: bool | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.output = directory / "pmic_read_adc.txt"
        self.script = directory / "vcgencmd"
        self.script.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = pmic_read_adc ]; then exec cat \'{self.output}\'; fi\n'
            'echo "error=2 error_msg=\\"Command not registered\\""\nexit 2\n'
        )
        self.script.chmod(0o755)

    def _publish(self, now_s: float) -> None:
        active = self.active
        if active == self._published:
            return
        self._published = active
        lines = []
        for rail, (a_channel, _v_channel, volts, idle_share, active_share) in PMIC_RAILS.items():
            power_mw = self.idle_mw * idle_share + (self.active_mw * active_share if active else 0)
            lines.append(f"{rail}_A current({a_channel})={power_mw / 1000.0 / volts:.8f}A")
        for rail, (_a_channel, v_channel, volts, _i, _a) in PMIC_RAILS.items():
            lines.append(f"{rail}_V volt({v_channel})={volts:.8f}V")
        lines += ["EXT5V_V volt(24)=5.09066000V", "BATT_V volt(25)=0.00000000V"]
        width = max(len(line.split(" ")[0]) for line in lines)
        text = "".join(f"  {line.split(' ')[0]:>{width}} {line.split(' ')[1]}\n" for line in lines)
        _write_atomically(self.output, text)


class HwmonEmulator(PowerEmulator):
    """An INA226 hwmon directory at ``directory`` whose ``power1_input`` is the emulated power
    (one rail, labelled by the chip name), with a fixed 5 V bus; each file is replaced
    atomically at the first poll that sees the state change."""

    BUS_MV = 5000

    def __init__(self, directory: Path, **kwargs: object) -> None:
        kwargs.setdefault("publish_s", 0.0)
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._published: bool | None = None
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        _write_atomically(directory / "name", "ina226\n")
        _write_atomically(directory / "update_interval", "1\n")
        _write_atomically(directory / "in1_input", f"{self.BUS_MV}\n")

    def _publish(self, now_s: float) -> None:
        active = self.active
        if active == self._published:
            return
        self._published = active
        power_mw = self.idle_mw + (self.active_mw if active else 0.0)
        current_ma = round(power_mw * 1000 / self.BUS_MV)
        _write_atomically(self.directory / "curr1_input", f"{current_ma}\n")
        _write_atomically(self.directory / "power1_input", f"{round(power_mw * 1000)}\n")


def write_thermal_zone(root: Path, zone: int, temp_c: float) -> Path:
    """Write ``root/thermal_zone<zone>/temp`` in millidegrees C; returns the file."""
    path = root / f"thermal_zone{zone}" / "temp"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, f"{round(temp_c * 1000)}\n")
    return path


def write_battery_status(root: Path, status: str) -> Path:
    """Write ``root/battery/status`` (``Charging``, ``Discharging``, ``Full``...); returns it."""
    path = root / "battery" / "status"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, status + "\n")
    return path
