"""Energy accounting and measurement windows: integration, counter deltas, the PowerMeter
contract (shared by every implementation), replayed counters, sampling on a thread."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devices.meters import (
    CounterMeter,
    CounterReading,
    EmptyMeter,
    EnergyWindow,
    MeterError,
    MeterNotConfiguredError,
    MeterReadError,
    PowerMeter,
    PowerReading,
    ReplayMeter,
    ReplayReader,
    SamplingMeter,
    SimulatedMeter,
)
from devices.meters.integrate import (
    energy_delta_mj,
    energy_deltas_mj,
    integrate_rails_mj,
    sum_rails_mj,
    trapezoid_energy_mj,
)
from devices.meters.sources import odpm_counter_reading, rapl_counter_reading

SAMPLES = Path(__file__).parent / "meter_samples"


class FakeClock:
    """A manual clock: ``advance(dt_s)`` moves it."""

    def __init__(self, now_s: float = 100.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        self.now_s += dt_s


# --- integrate --------------------------------------------------------------------------------


def test_trapezoid_is_exact_for_piecewise_linear_power() -> None:
    # 0-2 s: ramp 1000 -> 3000 mW (4000 mJ); 2-3 s: flat 3000 (3000 mJ);
    # 3-3.5 s: ramp down to 1000 (1000 mJ); a step to 500 mW at 3.5 s; 3.5-4.5 s flat (500 mJ).
    samples = [(0.0, 1000.0), (2.0, 3000.0), (3.0, 3000.0), (3.5, 1000.0), (3.5, 500.0),
               (4.5, 500.0)]
    assert trapezoid_energy_mj(samples) == pytest.approx(8500.0, rel=1e-12)


def test_trapezoid_clips_the_window_with_interpolated_edges() -> None:
    samples = [(0.0, 1000.0), (2.0, 3000.0), (3.0, 3000.0)]
    # [1, 2.5] s: ramp from 2000 to 3000 over 1 s (2500 mJ) + 0.5 s at 3000 (1500 mJ).
    assert trapezoid_energy_mj(samples, 1.0, 2.5) == pytest.approx(4000.0, rel=1e-12)
    assert trapezoid_energy_mj(samples, 0.5, 0.5) == 0.0


@pytest.mark.parametrize(
    ("samples", "start_s", "end_s", "match"),
    [
        ([], None, None, "no power samples"),
        ([(1.0, 5.0), (0.5, 5.0)], None, None, "must not decrease"),
        ([(0.0, math.nan), (1.0, 5.0)], None, None, "not finite"),
        ([(0.0, 5.0), (1.0, 5.0)], -0.1, 1.0, "not covered"),
        ([(0.0, 5.0), (1.0, 5.0)], 0.0, 1.1, "not covered"),
        ([(0.0, 5.0), (1.0, 5.0)], 0.8, 0.2, "before it starts"),
    ],
)
def test_trapezoid_rejects_bad_input(
    samples: list[tuple[float, float]], start_s: float | None, end_s: float | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        trapezoid_energy_mj(samples, start_s, end_s)


def test_integrate_rails() -> None:
    samples = [(0.0, {"a": 100.0, "b": 0.0}), (1.0, {"a": 100.0, "b": 200.0})]
    assert integrate_rails_mj(samples) == {"a": 100.0, "b": 100.0}
    with pytest.raises(ValueError, match="rails"):
        integrate_rails_mj([(0.0, {"a": 1.0}), (1.0, {"b": 1.0})])


def test_counter_deltas_with_wraparound() -> None:
    assert energy_delta_mj(10.0, 25.0) == 15.0
    assert energy_delta_mj(990.0, 5.0, range_mj=1000.0) == 15.0
    with pytest.raises(ValueError, match="went backwards"):
        energy_delta_mj(990.0, 5.0)
    with pytest.raises(ValueError, match="positive"):
        energy_delta_mj(1.0, 2.0, range_mj=0.0)
    deltas = energy_deltas_mj({"pkg": 990.0, "dram": 1.0}, {"pkg": 5.0, "dram": 3.0},
                              {"pkg": 1000.0})
    assert deltas == {"pkg": 15.0, "dram": 2.0}
    with pytest.raises(ValueError, match="rail 'dram'"):
        energy_deltas_mj({"dram": 3.0}, {"dram": 1.0})
    with pytest.raises(ValueError, match="rails changed"):
        energy_deltas_mj({"a": 1.0}, {"b": 1.0})


def test_sum_rails() -> None:
    energy = {"cpu": 1.5, "gpu": 2.5, "amb": 10.0}
    assert sum_rails_mj(energy) == 14.0
    assert sum_rails_mj(energy, ["cpu", "gpu"]) == 4.0
    with pytest.raises(ValueError, match=r"\['npu'\] not measured; available"):
        sum_rails_mj(energy, ["cpu", "npu"])


# --- the PowerMeter contract, run by every implementation -------------------------------------


class PowerMeterContract:
    """What every PowerMeter that measures must do. Subclasses provide ``make_meter`` (and
    ``between`` to let time pass, e.g. on a fake clock)."""

    def make_meter(self) -> PowerMeter:
        raise NotImplementedError

    def between(self) -> None:
        """Let some time pass inside a window."""
        time.sleep(0.05)

    @pytest.fixture
    def meter(self) -> Iterator[PowerMeter]:
        meter = self.make_meter()
        try:
            yield meter
        finally:
            meter.close()

    def test_window_is_consistent(self, meter: PowerMeter) -> None:
        meter.begin_window("run")
        self.between()
        window = meter.end_window("run")
        assert isinstance(window, EnergyWindow)
        assert (window.key, window.meter) == ("run", meter.name)
        assert window.source == meter.source and window.source in ("measured", "simulated")
        assert window.duration_s > 0
        assert all(v >= 0 for v in window.energy_mj.values())
        assert set(window.rails) <= set(window.energy_mj)
        assert window.total_energy_mj == pytest.approx(
            sum(window.energy_mj[r] for r in window.rails))
        assert window.avg_power_mw == pytest.approx(window.total_energy_mj / window.duration_s)
        assert len(window.readings) >= 2

    def test_same_key_cannot_open_twice(self, meter: PowerMeter) -> None:
        meter.begin_window("a")
        with pytest.raises(MeterError, match="already open"):
            meter.begin_window("a")
        meter.cancel_window("a")

    def test_end_and_cancel_of_unknown_keys(self, meter: PowerMeter) -> None:
        with pytest.raises(MeterError, match="no open window 'nope'"):
            meter.end_window("nope")
        meter.cancel_window("nope")  # no-op
        meter.begin_window("a")
        meter.cancel_window("a")
        with pytest.raises(MeterError, match="no open window 'a'"):
            meter.end_window("a")

    def test_windows_nest(self, meter: PowerMeter) -> None:
        meter.begin_window("outer")
        self.between()
        meter.begin_window("inner")
        self.between()
        inner = meter.end_window("inner")
        self.between()
        outer = meter.end_window("outer")
        assert outer.duration_s > inner.duration_s
        assert outer.total_energy_mj >= inner.total_energy_mj

    def test_closed_meter_refuses_windows(self, meter: PowerMeter) -> None:
        with meter:
            meter.begin_window("a")
        with pytest.raises(MeterError, match="closed"):
            meter.begin_window("b")


def _counter_readings(
    clock: FakeClock, power_mw: dict[str, float]
) -> Callable[[float], CounterReading]:
    """A counter source whose rails draw constant power on a fake clock."""
    start_s = clock()

    def read(timeout_s: float) -> CounterReading:
        elapsed_s = clock() - start_s
        return CounterReading({rail: p * elapsed_s for rail, p in power_mw.items()})

    return read


class TestCounterMeterContract(PowerMeterContract):
    def setup_method(self) -> None:
        self.clock = FakeClock()

    def make_meter(self) -> PowerMeter:
        read = _counter_readings(self.clock, {"cpu": 1000.0, "gpu": 500.0})
        return CounterMeter("board:counter", read, clock=self.clock)

    def between(self) -> None:
        self.clock.advance(2.0)


class TestSimulatedMeterContract(PowerMeterContract):
    def setup_method(self) -> None:
        self.clock = FakeClock()

    def make_meter(self) -> PowerMeter:
        return SimulatedMeter(idle_power_mw=800.0, active_power_mw=1200.0, clock=self.clock)

    def between(self) -> None:
        self.clock.advance(1.0)


class TestSamplingMeterContract(PowerMeterContract):
    def make_meter(self) -> PowerMeter:
        return SamplingMeter("pi5:pmic", lambda timeout_s: PowerReading({"VDD_CORE": 2000.0}),
                             rate_hz=100.0)


def test_empty_meter_explains_what_to_configure() -> None:
    meter = EmptyMeter("pixel7")
    assert meter.source == "none" and meter.name == "pixel7"
    expected = ("device 'pixel7' has no power meter configured; add meter = { kind = ... } to "
                "its inventory entry")
    with pytest.raises(MeterNotConfiguredError) as excinfo:
        meter.begin_window("run")
    assert str(excinfo.value) == expected
    with pytest.raises(MeterNotConfiguredError):
        meter.end_window("run")
    meter.cancel_window("run")
    meter.close()


# --- counter meters ---------------------------------------------------------------------------


def test_replayed_odpm_counters_recover_known_energy() -> None:
    # Two energy_value snapshots 10 s apart: TPU +5 J, CPU +12 J, i.e. 500 mW and 1200 mW.
    begin_text = (SAMPLES / "odpm_energy_value.txt").read_text()
    end_text = ("t=359894\nCH0(T=359894)[S10M_VDD_TPU], 10578756\n"
                "CH3(T=359894)[S2M_VDD_CPUCL2], 42203502\n")
    readings = [
        dataclasses.replace(odpm_counter_reading([begin_text]), time_s=50.0),
        dataclasses.replace(odpm_counter_reading([end_text]), time_s=60.0),
    ]
    meter = ReplayMeter("pixel7:odpm", readings, rails=["S10M_VDD_TPU"])
    meter.begin_window("loop")
    window = meter.end_window("loop")
    assert window.source == "simulated"  # a replay is never a fresh measurement
    assert window.duration_s == pytest.approx(10.0)
    assert window.energy_mj == pytest.approx({"S10M_VDD_TPU": 5000.0, "S2M_VDD_CPUCL2": 12000.0})
    assert window.rails == ("S10M_VDD_TPU",)
    assert window.total_energy_mj == pytest.approx(5000.0)
    assert window.avg_power_mw == pytest.approx(500.0)
    assert window.readings == tuple(readings)
    assert "t=359894" in window.readings[1].raw
    assert meter.reader.timeouts_s == [5.0, 5.0]  # every read got its deadline
    assert meter.reader.remaining == 0


def test_rapl_wraparound_inside_a_window() -> None:
    limit = "262143328850\n"
    begin = rapl_counter_reading("262143000000\n", limit)  # 328850 µJ before the wrap
    end = rapl_counter_reading("671150\n", limit)  # then 671150 µJ after it: 1 J in all
    meter = ReplayMeter("x86:rapl", [CounterReading(begin.energy_mj, begin.range_mj, 0.0),
                                     CounterReading(end.energy_mj, end.range_mj, 0.5)])
    meter.begin_window("w")
    window = meter.end_window("w")
    assert window.energy_mj == {"package": pytest.approx(1000.0, abs=1e-6)}
    assert window.avg_power_mw == pytest.approx(2000.0, abs=1e-5)


@pytest.mark.parametrize(
    ("begin", "end", "match"),
    [
        (CounterReading({"a": 10.0}, time_s=0.0), CounterReading({"a": 5.0}, time_s=1.0),
         "went backwards"),
        (CounterReading({"a": 1.0}, time_s=0.0), CounterReading({"b": 5.0}, time_s=1.0),
         "rails changed"),
        (CounterReading({"a": 1.0}, time_s=1.0), CounterReading({"a": 5.0}, time_s=1.0),
         "lasted 0"),
    ],
)
def test_counter_windows_that_cannot_be_trusted(
    begin: CounterReading, end: CounterReading, match: str
) -> None:
    meter = ReplayMeter("m", [begin, end])
    meter.begin_window("w")
    with pytest.raises(MeterError, match=match):
        meter.end_window("w")


def test_chosen_rail_missing_names_the_available_ones() -> None:
    meter = ReplayMeter("m", [CounterReading({"a": 0.0}, time_s=0.0),
                              CounterReading({"a": 1.0}, time_s=1.0)], rails=["npu"])
    meter.begin_window("w")
    with pytest.raises(MeterError, match=r"'npu'.*available: \['a'\]"):
        meter.end_window("w")


def test_read_failures_are_translated_and_end_failure_discards_the_window() -> None:
    calls: list[float] = []

    def read(timeout_s: float) -> CounterReading:
        calls.append(timeout_s)
        if len(calls) == 2:
            raise OSError("adb: device offline")
        return CounterReading({"a": float(len(calls))})

    meter = CounterMeter("phone:odpm", read, read_timeout_s=1.5)
    meter.begin_window("w")
    with pytest.raises(MeterReadError, match="phone:odpm.*device offline") as excinfo:
        meter.end_window("w")
    assert isinstance(excinfo.value.__cause__, OSError)
    assert calls == [1.5, 1.5]
    with pytest.raises(MeterError, match="no open window"):
        meter.end_window("w")


def test_read_past_its_deadline_is_rejected() -> None:
    clock = FakeClock()

    def slow_read(timeout_s: float) -> CounterReading:
        clock.advance(timeout_s + 0.1)  # a transport that ignored its deadline
        return CounterReading({"a": 0.0})

    meter = CounterMeter("m", slow_read, read_timeout_s=2.0, clock=clock)
    with pytest.raises(MeterReadError, match="past its 2 s deadline"):
        meter.begin_window("w")


def test_read_returning_the_wrong_type_is_rejected() -> None:
    def wrong(timeout_s: float) -> CounterReading:
        return PowerReading({"a": 1.0})  # type: ignore[return-value]

    meter = CounterMeter("m", wrong)
    with pytest.raises(MeterReadError, match="expected CounterReading"):
        meter.begin_window("w")


def test_replay_exhausted() -> None:
    reader: ReplayReader[CounterReading] = ReplayReader([CounterReading({"a": 0.0}, time_s=0.0)])
    meter = CounterMeter("m", reader)
    meter.begin_window("w")
    with pytest.raises(MeterReadError, match="replay exhausted after 1"):
        meter.end_window("w")
    with pytest.raises(ValueError, match="reading 0 has no time_s"):
        ReplayMeter("m", [CounterReading({"a": 0.0})])


def test_counter_meter_stamps_readings_with_the_read_midpoint() -> None:
    clock = FakeClock(10.0)

    def read(timeout_s: float) -> CounterReading:
        clock.advance(0.2)
        return CounterReading({"a": clock() * 100.0})

    meter = CounterMeter("m", read, clock=clock)
    meter.begin_window("w")
    clock.advance(1.0)
    window = meter.end_window("w")
    assert window.start_time_s == pytest.approx(10.1)
    assert window.duration_s == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"read_timeout_s": 0}, "read_timeout_s"), ({"rails": []}, "rails"),
     ({"rails": ["a", "a"]}, "rails"), ({"source": "none"}, "source")],
)
def test_counter_meter_validates_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CounterMeter("m", lambda timeout_s: CounterReading({}), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        CounterMeter("", lambda timeout_s: CounterReading({}))


# --- simulated meter --------------------------------------------------------------------------


def test_simulated_meter_follows_its_profile_exactly() -> None:
    clock = FakeClock()
    meter = SimulatedMeter("sim", idle_power_mw=1000.0, active_power_mw=2000.0, clock=clock)
    assert meter.source == "simulated"
    meter.begin_window("run")
    clock.advance(2.0)  # idle: 2000 mJ
    with meter.active():
        clock.advance(3.0)  # active: 3 s × 3000 mW = 9000 mJ
    clock.advance(1.0)  # idle: 1000 mJ
    window = meter.end_window("run")
    assert window.source == "simulated"
    assert window.duration_s == pytest.approx(6.0)
    assert window.total_energy_mj == pytest.approx(12000.0)
    assert window.energy_mj == {"simulated": pytest.approx(12000.0)}


def test_simulated_meter_with_a_callback_sees_changes_at_reads() -> None:
    clock = FakeClock()
    running = {"now": False}
    meter = SimulatedMeter(idle_power_mw=500.0, active_power_mw=1500.0, clock=clock,
                           is_active=lambda: running["now"])
    meter.begin_window("idle")
    clock.advance(4.0)
    assert meter.end_window("idle").avg_power_mw == pytest.approx(500.0)
    running["now"] = True
    meter.begin_window("busy")  # the state change is seen here
    clock.advance(4.0)
    assert meter.end_window("busy").avg_power_mw == pytest.approx(2000.0)
    with pytest.raises(ValueError, match="idle_power_mw"):
        SimulatedMeter(idle_power_mw=-1.0, active_power_mw=0.0)


# --- sampling meter ---------------------------------------------------------------------------


def test_sampling_meter_recovers_constant_power() -> None:
    meter = SamplingMeter("pi5:pmic",
                          lambda timeout_s: PowerReading({"VDD_CORE": 1500.0, "DDR": 250.0}),
                          rate_hz=50.0, rails=["VDD_CORE"])
    meter.begin_window("w")
    time.sleep(0.4)
    window = meter.end_window("w")
    assert window.avg_power_mw == pytest.approx(1500.0, rel=1e-9)
    assert window.energy_mj["DDR"] == pytest.approx(250.0 * window.duration_s, rel=1e-9)
    assert len(window.readings) >= 5  # the background thread sampled
    times_s = [r.time_s for r in window.readings if r.time_s is not None]
    assert len(times_s) == len(window.readings) and times_s == sorted(times_s)
    assert times_s[0] == window.start_time_s


def test_sampling_meter_is_exact_for_a_ramp_sampled_with_its_own_times() -> None:
    origin_s = time.monotonic()

    def read(timeout_s: float) -> PowerReading:
        now_s = time.monotonic()
        return PowerReading({"in": 1000.0 + 2000.0 * (now_s - origin_s)}, time_s=now_s)

    meter = SamplingMeter("ramp", read, rate_hz=40.0)
    meter.begin_window("w")
    time.sleep(0.3)
    window = meter.end_window("w")
    a_s = window.start_time_s - origin_s
    b_s = a_s + window.duration_s
    expected_mj = 1000.0 * (b_s - a_s) + 1000.0 * (b_s**2 - a_s**2)
    assert window.total_energy_mj == pytest.approx(expected_mj, rel=1e-9)


def test_sampling_meter_recovers_a_step_within_a_few_percent() -> None:
    origin_s = time.monotonic()

    def read(timeout_s: float) -> PowerReading:  # stamped by the meter itself
        return PowerReading({"in": 1000.0 if time.monotonic() - origin_s < 0.5 else 3000.0})

    meter = SamplingMeter("step", read, rate_hz=100.0)
    meter.begin_window("w")
    time.sleep(1.0)
    window = meter.end_window("w")
    step_s = origin_s + 0.5
    expected_mj = (1000.0 * (step_s - window.start_time_s)
                   + 3000.0 * (window.start_time_s + window.duration_s - step_s))
    assert window.total_energy_mj == pytest.approx(expected_mj, rel=0.05)


def test_sampling_meter_stops_reading_when_no_window_is_open() -> None:
    calls: list[float] = []

    def read(timeout_s: float) -> PowerReading:
        calls.append(time.monotonic())
        return PowerReading({"a": 1.0})

    meter = SamplingMeter("quiet", read, rate_hz=100.0)
    time.sleep(0.05)
    assert calls == []
    meter.begin_window("w")
    time.sleep(0.1)
    meter.end_window("w")
    count = len(calls)
    time.sleep(0.1)
    assert len(calls) == count
    assert not any(t.name == "meter-quiet" for t in threading.enumerate())


def test_sampling_meter_background_failure_fails_the_window_then_recovers() -> None:
    calls = {"n": 0}

    def read(timeout_s: float) -> PowerReading:
        calls["n"] += 1
        if calls["n"] == 3:
            raise TimeoutError("ssh: no answer")
        return PowerReading({"a": 100.0})

    meter = SamplingMeter("jetson:ina", read, rate_hz=100.0)
    meter.begin_window("w")
    time.sleep(0.1)
    with pytest.raises(MeterReadError, match="sampling on meter 'jetson:ina' stopped.*no answer"):
        meter.end_window("w")
    meter.begin_window("again")  # a fresh window samples afresh
    time.sleep(0.05)
    assert meter.end_window("again").avg_power_mw == pytest.approx(100.0)


def test_sampling_meter_notes_gaps() -> None:
    calls = {"n": 0}

    def read(timeout_s: float) -> PowerReading:
        calls["n"] += 1
        if calls["n"] == 3:
            time.sleep(0.15)
        return PowerReading({"a": 10.0})

    meter = SamplingMeter("gappy", read, rate_hz=50.0, max_gap_periods=3.0)
    meter.begin_window("w")
    time.sleep(0.3)
    window = meter.end_window("w")
    assert window.notes and "largest gap" in window.notes[0]
    assert window.avg_power_mw == pytest.approx(10.0)


def test_sampling_meter_rejects_rails_that_change() -> None:
    calls = {"n": 0}

    def read(timeout_s: float) -> PowerReading:
        calls["n"] += 1
        return PowerReading({"a": 1.0} if calls["n"] == 1 else {"b": 1.0})

    meter = SamplingMeter("m", read, rate_hz=10.0)
    meter.begin_window("w")
    with pytest.raises(MeterError, match="rails"):
        meter.end_window("w")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"rate_hz": 0}, "rate_hz"), ({"rate_hz": 5000}, "rate_hz"),
     ({"max_gap_periods": 0.5}, "max_gap_periods")],
)
def test_sampling_meter_validates_arguments(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SamplingMeter("m", lambda timeout_s: PowerReading({}), **kwargs)  # type: ignore[arg-type]
