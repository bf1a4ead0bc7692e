"""Power sampled on the device itself: one remote command starts a window, one ends it.

A :class:`~devices.meters.base.SamplingMeter` reading over SSH or adb pays a round trip per
sample (an SSH session costs 20-50 ms on a Pi, far more on a busy host), so it samples at a
few hertz and misplaces every power step by up to half a gap. :class:`DeviceSamplingMeter`
instead runs the sampling loop on the device, timed by the device's own clock, and reads the
whole log back when the window ends:

``begin_window``
    One round trip: take the first sample now (``sample_command`` once, its exit status and
    output checked), then start the loop detached from the transport (``setsid`` where the
    device has it, ``SIGHUP`` ignored, all three standard streams away from the channel, so
    the command returns at once with the loop's pid). The loop sleeps ``interval_s``, takes
    a sample, and so on, appending each to a log file in ``log_dir`` (by default
    ``<transport.workdir>/meter-samples``). The period is ``interval_s`` plus one sample's
    own cost (a few process starts on the device).
``end_window``
    One round trip: check the loop's pid is still the loop (its ``/proc/<pid>/cmdline``
    names this log, read with ``grep -z``; where that is missing, that the pid exists) and kill
    its process group, take the last sample now, print the log and remove it.

The host parses every sample with the same parser a host-polling meter uses and integrates
(:func:`~devices.meters.integrate.integrate_rails_mj`) over exactly the device-time span from
the first sample to the last. Each sample is stamped with the midpoint of two device clock
reads around ``sample_command``: ``date +%s.%N`` where the device's ``date`` has ``%N``
(coreutils, toybox), else ``/proc/uptime`` (10 ms steps), chosen once by :meth:`prepare`.
Window durations are device time; times are mapped onto ``time.monotonic()`` by one offset
fixed in :meth:`prepare` (good to half that round trip), so only ``start_time_s`` depends on
the link.

One log block per sample (written at once after the sample, so a loop killed mid-sample
leaves at most a truncated block, which is dropped)::

    @@sample <device time before> <device time after> <exit status>
    <stdout of sample_command>
    @@stderr                      (only when the exit status is not 0)
    <its stderr>
    @@end

Windows may overlap or nest: each has its own loop and log. Failures are one-line
:class:`DeviceSamplerError`\\ s naming the device and the meter (a loop that died or stalled,
a sample that failed on the device, a log that could not be read); every remote command has a
deadline, and a loop whose log is removed, or that has run ``max_window_s`` (2 h by default),
stops by itself, so an abandoned loop (the host crashed mid-window) does not run for ever.

``sample_command`` runs in a subshell (``exit`` and ``cd`` stay inside it) with stdin from
``/dev/null``; its stdout must not contain lines starting with ``@@``.
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

from devices.meters.base import EnergyWindow, PowerMeter, PowerReading
from devices.meters.errors import MeterError, MeterReadError
from devices.meters.integrate import integrate_rails_mj, sum_rails_mj
from devices.transports.base import TransportError

if TYPE_CHECKING:
    from devices.transports.base import Transport

__all__ = ["DeviceSamplingMeter", "DeviceSamplerError", "DeviceClock"]

DeviceClock = Literal["date", "uptime"]
"""How the device stamps samples: ``date +%s.%N`` (ns) or ``/proc/uptime`` (10 ms)."""

_LOG_SUBDIR = "meter-samples"
_PROCESS_NAME = "energy-sampler"  # the loop's $0: its error messages start with it
_LOG_BYTES_PER_S = 1_000_000.0  # end_window's deadline allows reading the log at this rate
_STALL_SLACK_S = 1.0
_DATE_NS = re.compile(r"\d+\.\d{3,}")
_UPTIME = re.compile(r"\d+\.\d+")

# The loop, run as ``sh -c SCRIPT energy-sampler LOG once|loop``; the @...@ placeholders are
# filled in by prepare() (the sample command last, so its text is never rewritten). ``once``
# appends one sample and exits with its status; ``loop`` exits at once if the log is gone.
_SCRIPT = """trap '' HUP
l=$1
[ -e "$l" ] || [ "$2" = once ] || exit 0
exec >>"$l" 2>&1 </dev/null
now() { @NOW@; }
sample() {
now; a=$t
o=$( {
@SAMPLE@
} 2>"$l.err" ); r=$?
now
printf '@@sample %s %s %s\\n%s\\n' "$a" "$t" "$r" "$o"
if [ "$r" -ne 0 ]; then echo @@stderr; cat "$l.err"; fi
echo @@end
}
if [ "$2" = once ]; then sample; exit "$r"; fi
now; e=$(( ${t%.*} + @MAX@ + 1 ))
while sleep @INTERVAL@ && [ -e "$l" ]; do
sample
if [ "${t%.*}" -ge "$e" ]; then echo "@@expired $t"; exit 0; fi
done
"""
_NOW: dict[DeviceClock, str] = {
    "date": "t=$(date +%s.%N)",
    "uptime": "read t _ </proc/uptime",
}


class DeviceSamplerError(MeterReadError):
    """The sampling loop on the device could not start, stopped or stalled mid-window, or its
    log could not be read. One line naming the device and the meter."""


@dataclass(frozen=True)
class _Sample:
    """One log block. Times on the device's clock. Units: s."""

    before_s: float
    after_s: float
    exit_code: int
    stdout: str
    stderr: str

    @property
    def time_s(self) -> float:
        return (self.before_s + self.after_s) / 2.0


@dataclass
class _Log:
    """A parsed log: complete samples in order, ``@@name value`` markers outside blocks,
    the number of truncated blocks and the last stray line (the loop's own shell errors)."""

    samples: list[_Sample]
    markers: dict[str, str]
    truncated: int
    stray: str


def _parse_log(text: str) -> _Log:
    samples: list[_Sample] = []
    markers: dict[str, str] = {}
    truncated = 0
    stray = ""
    header: tuple[float, float, int] | None = None
    out: list[str] = []
    err: list[str] = []
    in_err = False
    for line in text.splitlines():
        if line.startswith("@@sample "):
            truncated += header is not None
            fields = line.split()
            try:
                header = (float(fields[1]), float(fields[2]), int(fields[3]))
            except (IndexError, ValueError):
                header = None
                truncated += 1
                continue
            out, err, in_err = [], [], False
        elif header is not None and line == "@@stderr":
            in_err = True
        elif header is not None and line == "@@end":
            stdout = "\n".join(out) + "\n"
            samples.append(_Sample(header[0], header[1], header[2], stdout, "\n".join(err)))
            header = None
        elif header is not None:
            (err if in_err else out).append(line)
        elif line.startswith("@@"):
            name, _, value = line[2:].partition(" ")
            markers[name] = value.strip()
        elif line.strip():
            stray = line.strip()
    truncated += header is not None
    return _Log(samples, markers, truncated, stray)


def _seconds(value: float) -> str:
    """``value`` as a decimal every ``sleep`` takes (no exponent)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _evidence(sample: _Sample) -> str:
    lines = [line.strip() for line in (sample.stderr or sample.stdout).splitlines()
             if line.strip()]
    return lines[-1] if lines else "no output"


@dataclass(frozen=True)
class _Open:
    """A window whose loop runs: its log, the loop's pid, and when it began (host clock)."""

    log: str
    pid: int
    began_s: float
    sample_bytes: int


class DeviceSamplingMeter(PowerMeter):
    """A sampling meter whose loop runs on the device (see the module docstring).

    Args:
        name: The meter's name (``<device>:<kind>``), used in every error.
        transport: An open transport to the device; not owned (closing the meter leaves it
            open). Calls are serialised per meter.
        sample_command: Shell text printing one raw sample on stdout, the same text the
            host-polling read runs (``vcgencmd pmic_read_adc``, a ``cat`` of hwmon files).
        parse: That text -> a :class:`PowerReading` (its ``time_s`` is replaced); raises a
            :class:`MeterError` on bad text.
        interval_s: Pause between samples on the device. Units: s.
        rails: Rails summed into ``total_energy_mj`` (all when ``None``).
        sample_timeout_s: A sample taking longer than this on the device fails the window,
            as a host read past its deadline would. Units: s.
        timeout_s: Deadline of each remote command (begin, cancel, close; end adds time to
            read a long log at 1 MB/s). Units: s.
        device: The device's name for errors (default: the transport's).
        log_dir: Directory on the device for the logs (created on :meth:`prepare`).
        max_window_s: A loop stops by itself after at least this long and at most a second
            more (it counts whole seconds of the device clock), and its window then fails; this
            bounds a loop the host abandoned (it crashed or lost the link mid-window). Units: s.
        max_gap_periods: A gap between samples longer than this many ``interval_s`` is
            noted on the window.
        clock: The host clock (``time.monotonic``). Units: s.
    """

    def __init__(
        self,
        name: str,
        transport: Transport,
        sample_command: str,
        parse: Callable[[str], PowerReading],
        *,
        interval_s: float = 0.1,
        rails: Sequence[str] | None = None,
        sample_timeout_s: float = 2.0,
        timeout_s: float = 10.0,
        device: str | None = None,
        log_dir: str | None = None,
        max_window_s: float = 7200.0,
        max_gap_periods: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, "measured")
        for label, value, low in (("interval_s", interval_s, 0.001),
                                  ("sample_timeout_s", sample_timeout_s, 0.0),
                                  ("timeout_s", timeout_s, 0.0),
                                  ("max_window_s", max_window_s, 1.0),
                                  ("max_gap_periods", max_gap_periods, 1.0)):
            if not (math.isfinite(value) and value >= low and value > 0):
                raise ValueError(f"meter {name!r}: {label} must be a number >= {low:g} "
                                 f"(and > 0), got {value}")
        if not sample_command.strip():
            raise ValueError(f"meter {name!r}: sample_command must be non-empty")
        if rails is not None:
            rails = tuple(rails)
            if not rails or len(set(rails)) != len(rails) or not all(rails):
                raise ValueError(f"meter {name!r}: rails must be distinct non-empty names, "
                                 f"got {list(rails)}")
        directory = log_dir or posixpath.join(transport.workdir, _LOG_SUBDIR)
        if not directory.startswith("/") or "\n" in directory or "\0" in directory:
            raise ValueError(f"meter {name!r}: log_dir must be an absolute path without "
                             f"newlines, got {directory!r}")
        self._transport = transport
        self._device = device or transport.name
        self._sample_command = sample_command
        self._parse = parse
        self._interval_s = float(interval_s)
        self._rails: tuple[str, ...] | None = rails
        self._sample_timeout_s = float(sample_timeout_s)
        self._timeout_s = float(timeout_s)
        self._log_dir = posixpath.normpath(directory)
        self._max_window_s = float(max_window_s)
        self._max_gap_s = max_gap_periods * self._interval_s
        self._clock = clock
        self._io_lock = threading.Lock()  # one remote command of this meter at a time
        self._state_lock = threading.Lock()
        self._windows: dict[str, _Open] = {}
        self._unstopped: list[_Open] = []  # loops a broken link kept us from stopping
        self._closed = False
        # fixed by prepare()
        self._device_clock: DeviceClock | None = None
        self._offset_s = 0.0  # host clock - device clock
        self._detach = ""
        self._identify = ""
        self._script = ""

    # -- properties -----------------------------------------------------------------------------

    @property
    def interval_s(self) -> float:
        """Pause between samples on the device. Units: s."""
        return self._interval_s

    @property
    def log_dir(self) -> str:
        """Where the logs live on the device (one ``sampler-*.log`` per open window)."""
        return self._log_dir

    @property
    def device_clock(self) -> DeviceClock | None:
        """The device clock chosen by :meth:`prepare` (``None`` before it ran)."""
        return self._device_clock

    # -- setup ------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Probe the device once (idempotent; :meth:`begin_window` calls it when needed).

        One round trip: create :attr:`log_dir`, check ``sleep`` takes ``interval_s``, choose
        the clock (``date +%s.%N``, else ``/proc/uptime``), see whether ``setsid`` and
        ``grep -z`` are there, and fix the host-device clock offset.

        Raises:
            DeviceSamplerError: the device cannot run the loop (no usable clock, a ``sleep``
                without fractions, an unwritable log directory, an unreachable device).
        """
        with self._io_lock:
            if self._device_clock is not None:
                return
            interval = _seconds(self._interval_s)
            command = (
                f"mkdir -p {shlex.quote(self._log_dir)} || exit 1; "
                f"sleep {interval} && echo '@@sleep ok'; "
                "command -v setsid >/dev/null 2>&1 && echo '@@setsid ok'; "
                "grep -qzF -- energy-sampler-probe /proc/$$/cmdline 2>/dev/null && "
                "echo '@@cmdline ok'; "
                "d=$(date +%s.%N 2>/dev/null); read u _ 2>/dev/null </proc/uptime; "
                "printf '@@date %s\\n@@uptime %s\\n' \"$d\" \"$u\""
            )
            before_s = self._clock()
            text = self._run(command, self._timeout_s + self._interval_s, "probe the device")
            host_s = (before_s + self._clock()) / 2.0
            markers = _parse_log(text).markers
            if "sleep" not in markers:
                raise self._fail(f"the device's sleep does not take {interval} s (no fractions "
                                 "of a second?); raise interval_s to whole seconds or install "
                                 "coreutils")
            date, uptime = markers.get("date", ""), markers.get("uptime", "")
            if _DATE_NS.fullmatch(date):
                clock: DeviceClock = "date"
                device_s = float(date)
            elif _UPTIME.fullmatch(uptime):
                clock, device_s = "uptime", float(uptime)
            else:
                raise self._fail(f"no usable clock on the device: 'date +%s.%N' printed "
                                 f"{date!r} and /proc/uptime held {uptime!r}")
            self._offset_s = host_s - device_s
            self._detach = "setsid " if "setsid" in markers else ""
            self._identify = ('grep -qzF -- "$l" /proc/"$p"/cmdline 2>/dev/null'
                              if "cmdline" in markers else 'kill -0 "$p" 2>/dev/null')
            self._script = (_SCRIPT.replace("@NOW@", _NOW[clock])
                            .replace("@INTERVAL@", _seconds(self._interval_s))
                            .replace("@MAX@", str(math.ceil(self._max_window_s)))
                            .replace("@SAMPLE@", self._sample_command))
            self._device_clock = clock

    # -- windows ----------------------------------------------------------------------------------

    def begin_window(self, key: str) -> None:
        with self._state_lock:
            self._check_can_open(key)
        self.prepare()
        if self._unstopped:
            self._stop_quietly([])  # loops of windows cut off earlier: another try
        log = posixpath.join(self._log_dir, f"sampler-{uuid.uuid4().hex[:16]}.log")
        q = shlex.quote(log)
        command = (
            f"s={shlex.quote(self._script)}; l={q}; mkdir -p {shlex.quote(self._log_dir)} || "
            f'exit 1; sh -c "$s" {_PROCESS_NAME} "$l" once; r=$?; cat "$l"; '
            f'if [ "$r" -eq 0 ]; then {self._detach}sh -c "$s" {_PROCESS_NAME} "$l" loop '
            f'</dev/null >/dev/null 2>&1 & echo "@@pid $!"; else rm -f "$l" "$l.err"; fi'
        )
        with self._io_lock:
            began_s = self._clock()
            text = self._run(command, self._timeout_s + self._sample_timeout_s,
                             f"start sampling for window {key!r}")
        parsed = _parse_log(text)
        pid_text = parsed.markers.get("pid", "")
        window = _Open(log, int(pid_text) if pid_text.isdigit() else 0, began_s,
                       len(text.encode()))
        try:
            if not parsed.samples:
                raise self._fail(f"window {key!r}: the first sample left no output in "
                                 f"{log!r}" + (f": {parsed.stray}" if parsed.stray else ""))
            self._reading(parsed.samples[0], key)  # fails the window now, not at its end
            if not window.pid:
                raise self._fail(f"window {key!r}: the sampling loop did not start (no pid "
                                 "echoed back)")
            with self._state_lock:
                self._check_can_open(key)  # closed, or the same key opened, meanwhile
                self._windows[key] = window
        except BaseException:
            if window.pid:
                self._stop_quietly([window])
            raise

    def end_window(self, key: str) -> EnergyWindow:
        with self._state_lock:
            window = self._windows.pop(key, None)
        if window is None:
            raise self._not_open(key)
        q = shlex.quote(window.log)
        command = (
            f"s={shlex.quote(self._script)}; l={q}; p={window.pid}; a=0; "
            f'if {self._identify}; then a=1; kill -9 -"$p" "$p" 2>/dev/null; fi; '
            f'sh -c "$s" {_PROCESS_NAME} "$l" once; echo "@@alive $a"; cat "$l"; '
            f'rm -f "$l" "$l.err"'
        )
        age_s = max(0.0, self._clock() - window.began_s)
        expected_bytes = window.sample_bytes * (age_s / self._interval_s + 1.0)
        timeout_s = self._timeout_s + self._sample_timeout_s + expected_bytes / _LOG_BYTES_PER_S
        try:
            with self._io_lock:
                text = self._run(command, timeout_s, f"end window {key!r}")
        except DeviceSamplerError:
            self._stop_quietly([window])  # the end command may have died before its kill
            raise
        return self._window_from_log(key, window, _parse_log(text))

    def cancel_window(self, key: str) -> None:
        with self._state_lock:
            window = self._windows.pop(key, None)
        if window is not None:
            self._stop_quietly([window])

    def close(self) -> None:
        with self._state_lock:
            self._closed = True
            windows = list(self._windows.values())
            self._windows.clear()
        if windows or self._unstopped:
            self._stop_quietly(windows)

    # -- internals --------------------------------------------------------------------------------

    def _window_from_log(self, key: str, window: _Open, log: _Log) -> EnergyWindow:
        where = f"window {key!r}"
        samples = log.samples
        if len(samples) < 2:
            raise self._fail(f"{where}: the log {window.log!r} held {len(samples)} complete "
                             "samples; the begin and end samples are missing, so the log was "
                             "removed or overwritten")
        if "expired" in log.markers:
            raise self._fail(f"{where}: the loop stopped itself after max_window_s "
                             f"({self._max_window_s:g} s); end windows sooner or raise it")
        last_loop_s = samples[-2].time_s - samples[0].time_s
        if log.markers.get("alive") != "1":
            evidence = f" ({log.stray})" if log.stray else ""
            raise self._fail(f"{where}: the sampling loop (pid {window.pid}) had died on the "
                             f"device{evidence}; its last sample was {last_loop_s:.3f} s into "
                             f"the window of {samples[-1].time_s - samples[0].time_s:.3f} s; "
                             "measure again")
        readings: list[PowerReading] = []
        for sample in samples:
            took_s = sample.after_s - sample.before_s
            if took_s > self._sample_timeout_s:
                raise self._fail(f"{where}: a sample took {took_s:.3f} s on the device, past "
                                 f"its {self._sample_timeout_s:g} s deadline "
                                 "(raise read_timeout_s for this meter)")
            readings.append(self._reading(sample, key))
        times = [s.time_s for s in samples]
        if any(b < a for a, b in pairwise(times)):
            raise self._fail(f"{where}: the device clock ({self._device_clock}) went "
                             "backwards during the window (stepped by NTP?); measure again")
        gap_s = max(b - a for a, b in pairwise(times))
        stall_s = self._interval_s + self._sample_timeout_s + _STALL_SLACK_S
        if gap_s > stall_s:
            raise self._fail(f"{where}: sampling stalled on the device for {gap_s:.3f} s "
                             f"(interval {self._interval_s:g} s), so the window has a hole; "
                             "measure again")
        start_s, end_s = times[0], times[-1]
        points = [(t, r.power_mw) for t, r in zip(times, readings, strict=True)]
        try:
            energy_mj = integrate_rails_mj(points, start_s, end_s)
        except ValueError as e:
            raise MeterError(f"device {self._device!r}: meter {self.name!r}, {where}: {e}") \
                from e
        notes: list[str] = []
        if gap_s > self._max_gap_s:
            notes.append(f"largest gap between power samples {gap_s:.3f} s "
                         f"(sampling interval {self._interval_s:.3f} s)")
        if log.truncated > 1:
            notes.append(f"{log.truncated} truncated samples dropped from the device log")
        duration_s = end_s - start_s
        if not duration_s > 0:
            raise MeterError(f"meter {self.name!r}: window {key!r} lasted {duration_s} s on the "
                             f"device clock ({self._device_clock}); make it longer")
        rails = self._rails if self._rails is not None else tuple(sorted(energy_mj))
        try:
            total_mj = sum_rails_mj(energy_mj, rails)
        except ValueError as e:
            raise MeterError(f"meter {self.name!r}: {e}; fix the meter's rails") from e
        return EnergyWindow(key, self.name, "measured", start_s + self._offset_s, duration_s,
                            energy_mj, rails, total_mj, total_mj / duration_s, tuple(readings),
                            tuple(notes))

    def _reading(self, sample: _Sample, key: str) -> PowerReading:
        if sample.exit_code != 0:
            raise self._fail(f"window {key!r}: {self._sample_command!r} exited with "
                             f"{sample.exit_code} on the device: {_evidence(sample)}")
        reading = self._parse(sample.stdout)
        return dataclasses.replace(reading, time_s=sample.time_s + self._offset_s)

    def _run(self, command: str, timeout_s: float, doing: str) -> str:
        """stdout of ``command``; a failure is a :class:`DeviceSamplerError` saying what was
        being done."""
        try:
            result = self._transport.run(command, timeout_s=timeout_s)
        except TransportError as e:
            raise self._fail(f"could not {doing}: {e}") from e
        if not result.ok:
            lines = (result.stderr or result.stdout).strip().splitlines()
            evidence = lines[-1].strip() if lines else "no output"
            raise self._fail(f"could not {doing}: exit code {result.exit_code}: {evidence}")
        return result.stdout

    def _stop_quietly(self, windows: Sequence[_Open]) -> None:
        """Kill the windows' loops (and those an earlier try could not reach) and remove their
        logs: one round trip; never raises. A loop not reached (the link broke) is tried again
        at the next window and at close, and stops by itself after ``max_window_s``."""
        pending = [*self._unstopped, *windows]
        parts = [f"l={shlex.quote(w.log)}; p={w.pid}; if {self._identify}; then "
                 f'kill -9 -"$p" "$p" 2>/dev/null; fi; rm -f "$l" "$l.err"' for w in pending]
        try:
            with self._io_lock:
                self._transport.run("; ".join(parts) + "; true", timeout_s=self._timeout_s)
        except Exception:  # noqa: BLE001 - best effort: cancel and close never raise
            self._unstopped = pending
        else:
            self._unstopped = []

    def _check_can_open(self, key: str) -> None:
        """Raise unless ``key`` may be opened now (caller holds the state lock)."""
        if self._closed:
            raise MeterError(f"meter {self.name!r} is closed; build a new one")
        if key in self._windows:
            raise MeterError(f"window {key!r} is already open on meter {self.name!r}; "
                             "end or cancel it first")

    def _not_open(self, key: str) -> MeterError:
        return MeterError(f"no open window {key!r} on meter {self.name!r}; call begin_window "
                          "first")

    def _fail(self, problem: str) -> DeviceSamplerError:
        return DeviceSamplerError(f"device {self._device!r}: meter {self.name!r}: {problem}")
