"""The energy measurement protocol: net energy per inference, measured honestly.

:func:`measure_energy` turns a meter and a way to run the model into a net energy per
inference, following devices.md's "Measuring energy honestly". It never touches a transport:
the device hands it callables (``run_timed``, ``idle``, ``temperatures``, ``charging``,
``cpu_freqs``), so it runs the same over adb, SSH, or in-process fakes.

Method, per repeat:

1. **Refuse while charging** (``charging()`` is ``True``): a phone on USB charge heats and
   its fuel gauge reads nonsense. ``refuse_charging = False`` turns that into a flag.
2. **Cool down** until every thermal zone is at most ``cool_down_to_c``, waiting idle at most
   ``cool_down_timeout_s``; a device still above ``max_temp_c`` after that is throttling
   already (under ``throttle_policy = "reject"`` the repeat is rejected without running).
3. **Idle baseline**: a meter window of ``baseline_s`` (default ``min_window_s``, the length
   of the measured window) with the device idle, just before the runs, gives ``P_idle``.
4. **Two run lengths**: a short run (timed loop ``short_window_s``, at least one inference)
   and a long run whose timed loop is ``min_window_s`` longer than the short run's turned
   out to be, each inside its own meter window that spans the whole run: process start,
   model load, warm-up, timed loop, exit, then ``settle_s`` of idle so a counter that
   refreshes slowly (ODPM: 50 ms) has caught up.
5. **Difference**: ``e = (E_long - E_short - P_idle * (T_long - T_short)) / (n_long - n_short)``
   with ``E`` the windows' energies, ``T`` their durations and ``n`` the timed inferences the
   runner reported. Fixed per-run costs (start-up, model load, warm-up, tear-down) are in
   both windows and cancel; idle power cancels through ``P_idle``. The differenced timed
   loop is at least ``min_window_s`` (flagged below 95% of it, as a runner that reports
   the sum of its inference times falls slightly short); the differenced meter window
   ``T_long - T_short`` equals it up to the fixed costs' jitter and the counter's
   granularity.
6. **Temperatures and CPU frequency caps** are recorded before and after; a zone above
   ``max_temp_c`` after the runs, or a CPU whose frequency cap dropped (by more than
   ``max_freq_drop``) during the repeat, marks it throttled: flagged, or rejected and
   re-run (at most ``max_rejected`` times in all).

Why differencing rather than a window bounded by the timed loop: the runners
(``benchmark_model``, the LiteRT board runner) report only when they exit, so the host cannot
open and close a meter window exactly at the loop's edges; two run lengths remove the fixed
costs without any cooperation from the runner.

The result reports the **median** over ``repeats`` (at least 3) accepted repeats and the
spread as the **MAD** (median absolute deviation from the median, unscaled), never the best
run; every window's raw readings, temperatures and flags are kept per repeat.

Units: energy mJ, power mW, time s, temperature °C, frequency kHz.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import time
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from devices.base import DeviceError, EnergySource, MeasureSettings
from devices.meters.base import EnergyWindow, PowerMeter
from devices.meters.errors import MeterError
from devices.meters.simulated import SimulatedMeter

__all__ = [
    "EnergyProtocol",
    "EnergyResult",
    "RepeatRecord",
    "TimedRunLike",
    "EnergyProtocolError",
    "DeviceChargingError",
    "ThrottledError",
    "SPREAD_KIND",
    "measure_energy",
]

SPREAD_KIND = "MAD"
"""How :attr:`EnergyResult.energy_mj_spread` is computed: the median absolute deviation from
the median over the accepted repeats (unscaled; multiply by 1.4826 for a normal σ)."""

ThrottlePolicy = Literal["flag", "reject"]
_LOOP_TOLERANCE = 0.95


class EnergyProtocolError(DeviceError):
    """The protocol could not produce an energy figure; one line naming the device."""


class DeviceChargingError(EnergyProtocolError):
    """The device's battery reports charging, and the protocol refuses to measure then."""


class ThrottledError(EnergyProtocolError):
    """Too many repeats were throttled (hot, or a CPU frequency cap dropped) and rejected."""


class TimedRunLike(Protocol):
    """What ``run_timed`` must return: its timed loop (structural; e.g.
    :class:`devices.remote.common.TimedRun` fits).

    Attributes:
        n_inferences: Inferences in the timed loop (warm-up excluded).
        window_s: Length of the timed loop as the runner measured it. Units: s.
    """

    @property
    def n_inferences(self) -> int: ...

    @property
    def window_s(self) -> float: ...


@dataclass(frozen=True)
class EnergyProtocol:
    """How to measure energy. Units are in the names.

    Attributes:
        min_window_s: The measured (differenced) window lasts at least this long; stated in
            every result. MLPerf Mobile uses 60 s for published numbers; a search uses less.
        short_window_s: Timed loop of the short run (``None``: ``min_window_s / 4``); the
            long run's is ``min_window_s`` plus the short run's actual loop.
        repeats: Accepted repeats to take the median over (at least 3).
        baseline_s: Length of each idle baseline window (``None``: ``min_window_s``).
        settle_s: Idle time after a run before its window closes, so a slowly refreshing
            counter has caught up (at least the meter's update interval; ODPM: 50 ms).
        cool_down_to_c: Before each repeat, wait idle until every zone is at most this
            (``None``: no wait).
        cool_down_timeout_s: Longest wait for that.
        cool_down_poll_s: How often temperatures are read while waiting.
        max_temp_c: A zone above this after a repeat (or still above it before one) means
            throttling (``None``: temperatures are recorded, not judged).
        max_freq_drop: A CPU frequency cap falling by more than this fraction during a
            repeat means throttling.
        throttle_policy: ``"flag"`` keeps a throttled repeat and flags it; ``"reject"``
            discards it and runs another.
        max_rejected: Under ``"reject"``, give up (:class:`ThrottledError`) after this many
            rejected repeats (``None``: ``repeats``).
        refuse_charging: Raise :class:`DeviceChargingError` while the battery charges
            (otherwise flag it).
    """

    min_window_s: float = 10.0
    short_window_s: float | None = None
    repeats: int = 3
    baseline_s: float | None = None
    settle_s: float = 0.25
    cool_down_to_c: float | None = None
    cool_down_timeout_s: float = 120.0
    cool_down_poll_s: float = 2.0
    max_temp_c: float | None = None
    max_freq_drop: float = 0.02
    throttle_policy: ThrottlePolicy = "flag"
    max_rejected: int | None = None
    refuse_charging: bool = True

    def __post_init__(self) -> None:
        def check(ok: bool, name: str, want: str) -> None:
            if not ok:
                raise ValueError(f"EnergyProtocol: {name} must be {want}, got "
                                 f"{getattr(self, name)!r}")

        def finite(value: object) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value)

        check(finite(self.min_window_s) and self.min_window_s > 0, "min_window_s", "> 0")
        check(self.short_window_s is None or (finite(self.short_window_s)
                                              and self.short_window_s >= 0),
              "short_window_s", ">= 0 or None")
        check(isinstance(self.repeats, int) and self.repeats >= 3, "repeats", "an integer >= 3")
        check(self.baseline_s is None or (finite(self.baseline_s) and self.baseline_s > 0),
              "baseline_s", "> 0 or None")
        check(finite(self.settle_s) and self.settle_s >= 0, "settle_s", ">= 0")
        check(self.cool_down_to_c is None or finite(self.cool_down_to_c), "cool_down_to_c",
              "a number or None")
        check(finite(self.cool_down_timeout_s) and self.cool_down_timeout_s >= 0,
              "cool_down_timeout_s", ">= 0")
        check(finite(self.cool_down_poll_s) and self.cool_down_poll_s > 0, "cool_down_poll_s",
              "> 0")
        check(self.max_temp_c is None or finite(self.max_temp_c), "max_temp_c",
              "a number or None")
        check(finite(self.max_freq_drop) and 0 <= self.max_freq_drop < 1, "max_freq_drop",
              "in [0, 1)")
        check(self.throttle_policy in ("flag", "reject"), "throttle_policy", "'flag' or 'reject'")
        check(self.max_rejected is None or (isinstance(self.max_rejected, int)
                                            and self.max_rejected >= 0),
              "max_rejected", "an integer >= 0 or None")

    @property
    def short_s(self) -> float:
        """The short run's timed loop. Units: s."""
        return self.min_window_s / 4 if self.short_window_s is None else self.short_window_s


    @property
    def idle_s(self) -> float:
        """The idle baseline window. Units: s."""
        return self.min_window_s if self.baseline_s is None else self.baseline_s


@dataclass(frozen=True)
class RepeatRecord:
    """Everything one repeat measured, accepted or not.

    Attributes:
        index: 1-based attempt number.
        baseline, short, long: The meter windows (with their raw readings); ``None`` when
            the repeat was rejected before running.
        short_n, long_n: Timed inferences of the two runs.
        short_window_s, long_window_s: Their timed loops as the runner reported. Units: s.
        baseline_power_mw: Idle power from ``baseline``. Units: mW.
        net_energy_mj: ``E_long - E_short - P_idle * (T_long - T_short)``. Units: mJ.
        energy_mj_per_inference: ``net_energy_mj / (long_n - short_n)``. Units: mJ.
        power_mw_gross: The long window's average power. Units: mW.
        power_mw_net: ``power_mw_gross - baseline_power_mw``. Units: mW.
        temperatures_before_c, temperatures_after_c: Zone -> °C before the baseline and after
            the long run.
        cpu_freqs_before_khz, cpu_freqs_after_khz: CPU -> frequency cap. Units: kHz.
        cool_down_s: Time spent waiting to cool before the repeat. Units: s.
        throttled: Hot after the runs, or a CPU frequency cap dropped.
        rejected: Left out of the result (``throttle_policy = "reject"``).
        flags: Every caveat found, one line each.
    """

    index: int
    baseline: EnergyWindow | None = None
    short: EnergyWindow | None = None
    long: EnergyWindow | None = None
    short_n: int = 0
    long_n: int = 0
    short_window_s: float = 0.0
    long_window_s: float = 0.0
    baseline_power_mw: float = math.nan
    net_energy_mj: float = math.nan
    energy_mj_per_inference: float = math.nan
    power_mw_gross: float = math.nan
    power_mw_net: float = math.nan
    temperatures_before_c: Mapping[str, float] = field(default_factory=dict)
    temperatures_after_c: Mapping[str, float] = field(default_factory=dict)
    cpu_freqs_before_khz: Mapping[str, float] = field(default_factory=dict)
    cpu_freqs_after_khz: Mapping[str, float] = field(default_factory=dict)
    cool_down_s: float = 0.0
    throttled: bool = False
    rejected: bool = False
    flags: tuple[str, ...] = ()

    @property
    def window_s(self) -> float:
        """The differenced window, ``T_long - T_short`` on the meter's clock. Units: s."""
        if self.long is None or self.short is None:
            return math.nan
        return self.long.duration_s - self.short.duration_s


@dataclass(frozen=True)
class EnergyResult:
    """Net energy per inference on one device, with the evidence behind it.

    Attributes:
        device: The device's name.
        meter: The meter's name.
        source: ``"measured"``, or ``"simulated"`` for a simulated/replayed meter (never report
            one as the other).
        energy_mj_per_inference: Median over accepted repeats. Units: mJ.
        energy_mj_spread: Their MAD (:data:`SPREAD_KIND`). Units: mJ.
        spread_kind: ``"MAD"``.
        energy_mj_per_repeat: Each accepted repeat's value, in order. Units: mJ.
        power_mw_net_mean: Mean over accepted repeats of the long run's power above idle.
            Units: mW.
        power_mw_gross_mean: Mean of the long run's average power, idle included. Units: mW.
        baseline_power_mw: Median idle power. Units: mW.
        window_s: Median differenced window (``T_long - T_short``). Units: s.
        min_window_s: The protocol's minimum measured window. Units: s.
        repeats: Accepted repeats (the median's sample size).
        records: Every repeat, rejected ones included, with windows and raw readings.
        flags: Caveats, one line each (``repeat 2: ...`` for a repeat's own).
    """

    device: str
    meter: str
    source: EnergySource
    energy_mj_per_inference: float
    energy_mj_spread: float
    energy_mj_per_repeat: tuple[float, ...]
    power_mw_net_mean: float
    power_mw_gross_mean: float
    baseline_power_mw: float
    window_s: float
    min_window_s: float
    repeats: int
    records: tuple[RepeatRecord, ...]
    flags: tuple[str, ...] = ()
    spread_kind: str = SPREAD_KIND

    def to_dict(self) -> dict[str, object]:
        """Plain data (dicts, lists, numbers, strings) for JSON or a results store."""
        return _plain(dataclasses.asdict(self))  # type: ignore[return-value]


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def measure_energy(
    run_timed: Callable[[MeasureSettings], TimedRunLike],
    meter: PowerMeter,
    settings: MeasureSettings,
    protocol: EnergyProtocol,
    *,
    device: str | None = None,
    idle: Callable[[float], None] = time.sleep,
    temperatures: Callable[[], Mapping[str, float]] | None = None,
    charging: Callable[[], bool | None] | None = None,
    cpu_freqs: Callable[[], Mapping[str, float]] | None = None,
    workload: Callable[[], AbstractContextManager[object]] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> EnergyResult:
    """Measure the net energy per inference of what ``run_timed`` runs (see the module
    docstring for the method).

    Args:
        run_timed: Runs the prepared model once with these settings (process start to exit)
            and returns its timed loop's inference count and length. The protocol changes
            only ``min_seconds`` and ``min_runs`` of ``settings``.
        meter: The device's meter; its windows span each run.
        settings: Threads and warm-up for every run (``min_seconds`` is the protocol's).
        protocol: Windows, repeats, cool-down and throttling rules.
        device: The device's name for messages (default: the meter name before ``:``).
        idle: Holds the device idle for the given seconds (default ``time.sleep``).
        temperatures: Zone -> °C now (e.g. :func:`devices.meters.factory.read_temperatures`).
        charging: Whether the battery charges now (``None``: cannot tell).
        cpu_freqs: CPU -> frequency cap in kHz now.
        workload: Context manager entered around each run; default for a
            :class:`~devices.meters.simulated.SimulatedMeter` is its ``active()`` (the whole
            run counts as active), otherwise nothing.
        clock: Time source for the cool-down deadline. Units: s.

    Raises:
        DeviceChargingError: the battery reports charging and ``refuse_charging`` is set.
        ThrottledError: more than ``max_rejected`` repeats were throttled and rejected.
        EnergyProtocolError: the meter failed or gave unusable windows, ``run_timed``
            reported nonsense, or the long run did no more inferences than the short one.
            The message names the device, the repeat and the phase; the cause is chained.
        DeviceError: whatever ``run_timed``, ``temperatures``, ``charging`` or ``cpu_freqs``
            raise, unchanged (an open window is discarded first).
    """
    name = device or meter.name.partition(":")[0]
    if meter.source == "none":
        raise EnergyProtocolError(f"device {name!r} has no power meter (meter {meter.name!r}); "
                                  "add meter = { kind = ... } to its inventory entry")
    if workload is None and isinstance(meter, SimulatedMeter):
        workload = meter.active
    session = _Session(run_timed, meter, settings, protocol, name, idle, temperatures, charging,
                       cpu_freqs, workload or contextlib.nullcontext, clock)
    return session.run()


class _Session:
    """One :func:`measure_energy` call: its repeats, in order."""

    def __init__(
        self,
        run_timed: Callable[[MeasureSettings], TimedRunLike],
        meter: PowerMeter,
        settings: MeasureSettings,
        protocol: EnergyProtocol,
        device: str,
        idle: Callable[[float], None],
        temperatures: Callable[[], Mapping[str, float]] | None,
        charging: Callable[[], bool | None] | None,
        cpu_freqs: Callable[[], Mapping[str, float]] | None,
        workload: Callable[[], AbstractContextManager[object]],
        clock: Callable[[], float],
    ) -> None:
        self.run_timed = run_timed
        self.meter = meter
        self.protocol = protocol
        self.device = device
        self.idle = idle
        self.temperatures = temperatures
        self.charging = charging
        self.cpu_freqs = cpu_freqs
        self.workload = workload
        self.clock = clock
        self.short_settings = dataclasses.replace(settings, min_seconds=protocol.short_s,
                                                  min_runs=1)
        self.settings = settings
        self.short_window_estimate_s: float | None = None
        self.token = uuid.uuid4().hex[:8]

    def fail(self, problem: str, error: type[EnergyProtocolError] = EnergyProtocolError
             ) -> EnergyProtocolError:
        return error(f"device {self.device!r}: {problem}")

    # -- the whole session --------------------------------------------------------------------

    def run(self) -> EnergyResult:
        p = self.protocol
        max_rejected = p.repeats if p.max_rejected is None else p.max_rejected
        records: list[RepeatRecord] = []
        rejected = 0
        while sum(not r.rejected for r in records) < p.repeats:
            record = self.repeat(len(records) + 1)
            records.append(record)
            if record.rejected:
                rejected += 1
                if rejected > max_rejected:
                    why = "; ".join(f for f in record.flags if not f.startswith("rejected"))
                    raise self.fail(
                        f"{rejected} repeats throttled and rejected (last: {why}); let the "
                        "device cool, lengthen cool_down_timeout_s, or raise max_temp_c",
                        ThrottledError)
        return self.result(records)

    def result(self, records: list[RepeatRecord]) -> EnergyResult:
        accepted = [r for r in records if not r.rejected]
        values = [r.energy_mj_per_inference for r in accepted]
        median = statistics.median(values)
        mad = statistics.median(abs(v - median) for v in values)
        flags: list[str] = [f"repeat {r.index}: {f}" for r in records for f in r.flags]
        if median <= 0:
            flags.append(f"median net energy per inference {median:.4g} mJ is not positive: the "
                         "workload's energy is below the meter's resolution; lengthen "
                         "min_window_s")
        elif mad > 0.1 * abs(median):
            flags.append(f"spread (MAD {mad:.4g} mJ) is {100 * mad / median:.0f}% of the median; "
                         "the device or the meter is noisy")
        return EnergyResult(
            device=self.device,
            meter=self.meter.name,
            source="simulated" if self.meter.source == "simulated" else "measured",
            energy_mj_per_inference=median,
            energy_mj_spread=mad,
            energy_mj_per_repeat=tuple(values),
            power_mw_net_mean=statistics.fmean(r.power_mw_net for r in accepted),
            power_mw_gross_mean=statistics.fmean(r.power_mw_gross for r in accepted),
            baseline_power_mw=statistics.median(r.baseline_power_mw for r in accepted),
            window_s=statistics.median(r.window_s for r in accepted),
            min_window_s=self.protocol.min_window_s,
            repeats=len(accepted),
            records=tuple(records),
            flags=tuple(flags),
        )

    # -- one repeat -----------------------------------------------------------------------------

    def repeat(self, index: int) -> RepeatRecord:
        p = self.protocol
        flags: list[str] = []
        self.check_charging(flags)
        cool_down_s, temps_before = self.cool_down(flags)
        freqs_before = self.read_freqs()
        hottest = _hottest(temps_before)
        if p.max_temp_c is not None and hottest is not None and hottest[1] > p.max_temp_c:
            flags.append(f"{hottest[0]} at {hottest[1]:.1f} °C before the runs, above max_temp_c "
                         f"{p.max_temp_c:g} °C")
            if p.throttle_policy == "reject":
                flags.append("rejected without running: the device is throttling already")
                return RepeatRecord(index, temperatures_before_c=temps_before,
                                    cpu_freqs_before_khz=freqs_before, cool_down_s=cool_down_s,
                                    throttled=True, rejected=True, flags=tuple(flags))

        baseline = self.window(index, "idle", lambda: self.idle(p.idle_s))
        # Odd repeats run the long run first, so whatever the run order does (the first run
        # after the idle window starting slower, a warming device) falls on both sides and the
        # median does not inherit it. The long run needs the short run's length: a long-first
        # repeat takes it from the previous repeat's short run.
        if index % 2 == 0 or self.short_window_estimate_s is None:
            short_window, short_run = self.measured_run(index, "short", self.short_settings)
            self.short_window_estimate_s = short_run.window_s
            long_window, long_run = self.measured_run(index, "long", self.long_settings())
        else:
            long_window, long_run = self.measured_run(index, "long", self.long_settings())
            short_window, short_run = self.measured_run(index, "short", self.short_settings)
        temps_after = self.read_temperatures()
        freqs_after = self.read_freqs()

        for window in (baseline, short_window, long_window):
            flags += [f"{window.key.rsplit('-', 1)[-1]} window: {note}" for note in window.notes]
        dn = long_run.n_inferences - short_run.n_inferences
        if dn <= 0:
            raise self.fail(
                f"repeat {index}: the long run did {long_run.n_inferences} timed inferences, the "
                f"short one {short_run.n_inferences}; the difference must be positive (is the "
                "runner honouring min_seconds?)")
        loop_dt_s = long_run.window_s - short_run.window_s
        if loop_dt_s < _LOOP_TOLERANCE * p.min_window_s:  # a runner's window may be the sum of
            # its inference times (benchmark_model), a little short of the loop's wall time
            flags.append(f"the long run's timed loop was only {loop_dt_s:.3g} s longer than the "
                         f"short run's, less than min_window_s {p.min_window_s:g} s (max_secs?)")
        p_idle_mw = baseline.avg_power_mw
        dt_s = long_window.duration_s - short_window.duration_s
        net_mj = long_window.total_energy_mj - short_window.total_energy_mj - p_idle_mw * dt_s

        throttled = False
        hottest = _hottest(temps_after)
        if p.max_temp_c is not None and hottest is not None and hottest[1] > p.max_temp_c:
            throttled = True
            flags.append(f"throttled: {hottest[0]} at {hottest[1]:.1f} °C after the runs, above "
                         f"max_temp_c {p.max_temp_c:g} °C")
        for cpu, before in sorted(freqs_before.items()):
            after = freqs_after.get(cpu)
            if after is not None and before > 0 and after < before * (1 - p.max_freq_drop):
                throttled = True
                flags.append(f"throttled: {cpu} frequency cap fell from {before:.0f} to "
                             f"{after:.0f} kHz during the repeat")
        rejected = throttled and p.throttle_policy == "reject"
        if rejected:
            flags.append("rejected: throttled")
        return RepeatRecord(
            index=index, baseline=baseline, short=short_window, long=long_window,
            short_n=short_run.n_inferences, long_n=long_run.n_inferences,
            short_window_s=short_run.window_s, long_window_s=long_run.window_s,
            baseline_power_mw=p_idle_mw, net_energy_mj=net_mj,
            energy_mj_per_inference=net_mj / dn,
            power_mw_gross=long_window.avg_power_mw,
            power_mw_net=long_window.avg_power_mw - p_idle_mw,
            temperatures_before_c=temps_before, temperatures_after_c=temps_after,
            cpu_freqs_before_khz=freqs_before, cpu_freqs_after_khz=freqs_after,
            cool_down_s=cool_down_s, throttled=throttled, rejected=rejected, flags=tuple(flags),
        )

    def long_settings(self) -> MeasureSettings:
        """The long run: its timed loop ``min_window_s`` longer than the short run's."""
        assert self.short_window_estimate_s is not None
        long_s = math.ceil((self.protocol.min_window_s + self.short_window_estimate_s) * 1000) / 1000
        return dataclasses.replace(self.settings, min_seconds=long_s)

    def check_charging(self, flags: list[str]) -> None:
        if self.charging is None or not self.charging():
            return
        if self.protocol.refuse_charging:
            raise self.fail("the battery reports charging; refusing to measure energy (unplug "
                            "USB power: adb over Wi-Fi or a switchable hub)", DeviceChargingError)
        flags.append("the battery was charging (refuse_charging is off)")

    def cool_down(self, flags: list[str]) -> tuple[float, dict[str, float]]:
        """Wait idle until cool enough (bounded); returns the wait and the last temperatures."""
        p = self.protocol
        temps = self.read_temperatures()
        if p.cool_down_to_c is None or not temps:
            return 0.0, temps
        start_s = self.clock()
        deadline_s = start_s + p.cool_down_timeout_s
        while True:
            hottest = _hottest(temps)
            assert hottest is not None
            if hottest[1] <= p.cool_down_to_c:
                return self.clock() - start_s, temps
            left_s = deadline_s - self.clock()
            if left_s <= 0:
                flags.append(f"did not cool to {p.cool_down_to_c:g} °C within "
                             f"{p.cool_down_timeout_s:g} s ({hottest[0]} at {hottest[1]:.1f} °C)")
                return self.clock() - start_s, temps
            self.idle(min(p.cool_down_poll_s, left_s))
            temps = self.read_temperatures()

    def read_temperatures(self) -> dict[str, float]:
        return dict(self.temperatures()) if self.temperatures is not None else {}

    def read_freqs(self) -> dict[str, float]:
        return dict(self.cpu_freqs()) if self.cpu_freqs is not None else {}

    # -- windows ------------------------------------------------------------------------------

    def window(self, index: int, phase: str, body: Callable[[], None]) -> EnergyWindow:
        """Run ``body`` inside a meter window; meter failures become one-line errors."""
        key = f"energy-{self.token}-r{index}-{phase}"
        try:
            self.meter.begin_window(key)
        except MeterError as e:
            raise self.fail(f"repeat {index}, {phase} window: {e}") from e
        try:
            body()
        except BaseException:
            self.meter.cancel_window(key)
            raise
        try:
            return self.meter.end_window(key)
        except MeterError as e:
            raise self.fail(f"repeat {index}, {phase} window: {e}") from e

    def measured_run(self, index: int, phase: str, settings: MeasureSettings
                     ) -> tuple[EnergyWindow, TimedRunLike]:
        runs: list[TimedRunLike] = []

        def body() -> None:
            with self.workload():
                runs.append(self.run_timed(settings))
            if self.protocol.settle_s > 0:
                self.idle(self.protocol.settle_s)

        window = self.window(index, phase, body)
        run = runs[0]
        n, window_s = getattr(run, "n_inferences", None), getattr(run, "window_s", None)
        if (not isinstance(n, int) or isinstance(n, bool) or n < 1
                or not isinstance(window_s, (int, float)) or not math.isfinite(window_s)
                or window_s <= 0):
            raise self.fail(f"repeat {index}, {phase} run: run_timed returned n_inferences={n!r}, "
                            f"window_s={window_s!r}; expected >= 1 inference over > 0 s")
        return window, run


def _hottest(temps: Mapping[str, float]) -> tuple[str, float] | None:
    if not temps:
        return None
    zone = max(temps, key=lambda z: temps[z])
    return zone, temps[zone]
