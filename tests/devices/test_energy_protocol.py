"""The energy protocol: recovers a known energy per inference from fast in-process fakes
(a SimulatedMeter on a manual clock), keeps fixed start-up costs out, reports the median,
refuses a charging device, flags or rejects a hot one; and end to end over the real adb server
with an emulated ODPM whose counters follow the fake benchmark_model's process."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shlex
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from devices.base import DeviceError, MeasureSettings
from devices.energy_protocol import (
    SPREAD_KIND,
    DeviceChargingError,
    EnergyProtocol,
    EnergyProtocolError,
    EnergyResult,
    ThrottledError,
    measure_energy,
)
from devices.inventory import MeterSpec
from devices.meters import CounterMeter, EmptyMeter, SimulatedMeter
from devices.meters.factory import build_meter, device_is_charging, read_temperatures
from devices.meters.sources import odpm_counter_reading
from devices.runners import benchmark_argv, parse_benchmark_output
from devices.transports import AdbTransport
from tests.peers.adbd import AdbdPeer
from tests.peers.emulated_meters import OdpmEmulator, write_battery_status, write_thermal_zone

pytestmark = pytest.mark.timeout(120)

FAKE = Path(__file__).resolve().parents[1] / "peers" / "fake_benchmark_model.py"
SETTINGS = MeasureSettings(threads=1, warmup_runs=3, min_seconds=1.0, min_runs=5)


class FakeClock:
    """A manual clock: ``advance(dt_s)`` moves it."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, dt_s: float) -> None:
        self.now_s += dt_s


@dataclass(frozen=True)
class Run:
    n_inferences: int
    window_s: float


class FakeDevice:
    """A device on a manual clock: each run costs a fixed start-up (active, plus an extra
    power-hungry load), warm-up inferences, then a timed loop where each inference keeps the
    meter active for ``active_s`` followed by ``gap_s`` idle.

    ``scale`` (per run pair) multiplies ``active_s``, to give repeats different true values;
    ``startup_jitter_s`` varies the start-up between runs (a real device's noise).
    """

    def __init__(self, *, idle_mw: float, active_mw: float, active_s: float, gap_s: float,
                 startup_s: float = 0.8, scales: tuple[float, ...] = (1.0,),
                 startup_jitter_s: tuple[float, ...] = (0.0,)) -> None:
        self.clock = FakeClock()
        self.meter = SimulatedMeter("fake:sim", idle_power_mw=idle_mw, active_power_mw=active_mw,
                                    clock=self.clock)
        self.active_mw = active_mw
        self.active_s = active_s
        self.gap_s = gap_s
        self.startup_s = startup_s
        self.scales = scales
        self.jitter = startup_jitter_s
        self.runs = 0
        self.temps: Callable[[float], Mapping[str, float]] = lambda now: {"zone0": 40.0}

    @property
    def expected_mj(self) -> float:
        return self.active_mw * self.active_s

    def idle(self, seconds: float) -> None:
        self.clock.advance(seconds)

    def temperatures(self) -> Mapping[str, float]:
        return self.temps(self.clock())

    def run_timed(self, settings: MeasureSettings) -> Run:
        scale = self.scales[(self.runs // 2) % len(self.scales)]
        jitter = self.jitter[self.runs % len(self.jitter)]
        self.runs += 1
        self.meter.set_active(True)
        self.clock.advance(self.startup_s + jitter)  # process start + model load
        per_inference_s = self.active_s * scale
        for _ in range(settings.warmup_runs):
            self.clock.advance(per_inference_s)
        self.meter.set_active(False)
        n, loop_s = 0, 0.0
        while n < settings.min_runs or loop_s < settings.min_seconds:
            self.meter.set_active(True)
            self.clock.advance(per_inference_s)
            self.meter.set_active(False)
            self.clock.advance(self.gap_s)
            n += 1
            loop_s += per_inference_s + self.gap_s
        self.meter.set_active(True)
        self.clock.advance(0.1)  # tear-down
        self.meter.set_active(False)
        return Run(n, loop_s)

    def measure(self, protocol: EnergyProtocol, **kwargs: object) -> EnergyResult:
        kwargs.setdefault("idle", self.idle)
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("workload", contextlib.nullcontext)  # run_timed toggles the meter
        return measure_energy(self.run_timed, self.meter, SETTINGS, protocol, device="fake",
                              **kwargs)  # type: ignore[arg-type]


FAST = EnergyProtocol(min_window_s=2.0, short_window_s=0.5, settle_s=0.1)


# --- accuracy with in-process fakes ------------------------------------------------------------


@pytest.mark.parametrize("idle_mw, active_mw, active_s, gap_s", [
    (400.0, 600.0, 0.0002, 0.0001),   # 0.12 mJ per inference, sub-ms inferences
    (800.0, 2500.0, 0.004, 0.001),    # 10 mJ
    (300.0, 3000.0, 0.25, 0.05),      # 750 mJ, a big model
])
def test_recovers_the_known_energy_per_inference(idle_mw: float, active_mw: float,
                                                 active_s: float, gap_s: float) -> None:
    fake = FakeDevice(idle_mw=idle_mw, active_mw=active_mw, active_s=active_s, gap_s=gap_s,
                      startup_jitter_s=(0.0, 0.004, 0.002, 0.006, 0.0, 0.003))
    result = fake.measure(FAST)
    assert result.energy_mj_per_inference == pytest.approx(fake.expected_mj, rel=0.03)
    assert result.source == "simulated" and result.meter == "fake:sim" and result.device == "fake"
    assert result.repeats == 3 and len(result.records) == 3 and result.spread_kind == SPREAD_KIND
    assert result.baseline_power_mw == pytest.approx(idle_mw)
    assert result.min_window_s == 2.0 and result.window_s == pytest.approx(2.0, abs=0.31)
    assert 0 < result.power_mw_net_mean < active_mw
    assert result.power_mw_gross_mean == pytest.approx(result.power_mw_net_mean + idle_mw)


def test_fixed_start_up_cost_does_not_leak_in() -> None:
    # 2 s of active start-up per run against 2 s of timed loop: a naive per-run figure is ~2x off
    fake = FakeDevice(idle_mw=500.0, active_mw=2000.0, active_s=0.01, gap_s=0.0, startup_s=2.0)
    result = fake.measure(FAST)
    assert result.energy_mj_per_inference == pytest.approx(fake.expected_mj, rel=1e-6)
    assert result.energy_mj_spread == pytest.approx(0.0, abs=1e-9)
    record = result.records[0]
    assert record.long is not None
    naive = (record.long.total_energy_mj - record.baseline_power_mw * record.long.duration_s) \
        / record.long_n
    assert naive > 1.5 * fake.expected_mj
    # every run is bracketed by its window, with the raw counter readings kept
    for r in result.records:
        assert r.short is not None and r.baseline is not None and r.long is not None
        assert len(r.long.readings) == 2 and r.long.readings[0].raw.startswith("simulated")
        assert r.long_n > r.short_n >= 1
        assert r.long_window_s - r.short_window_s >= FAST.min_window_s
    assert json.loads(json.dumps(result.to_dict()))["energy_mj_per_inference"] == \
        pytest.approx(fake.expected_mj)


def test_reports_the_median_and_mad_never_the_best_run() -> None:
    fake = FakeDevice(idle_mw=500.0, active_mw=1000.0, active_s=0.01, gap_s=0.0,
                      scales=(1.3, 1.0, 0.7))
    result = fake.measure(FAST)
    values = result.energy_mj_per_repeat
    assert values == pytest.approx((13.0, 10.0, 7.0), rel=1e-6)
    assert result.energy_mj_per_inference == pytest.approx(10.0, rel=1e-6)  # not min()
    assert result.energy_mj_spread == pytest.approx(3.0, rel=1e-6)  # MAD
    assert any("spread" in f for f in result.flags)


def test_protocol_settings_are_validated() -> None:
    for kwargs, match in [({"repeats": 2}, "repeats"), ({"min_window_s": 0}, "min_window_s"),
                          ({"throttle_policy": "ignore"}, "throttle_policy"),
                          ({"baseline_s": -1.0}, "baseline_s"), ({"max_freq_drop": 1.5}, "drop")]:
        with pytest.raises(ValueError, match=match):
            EnergyProtocol(**kwargs)  # type: ignore[arg-type]
    p = EnergyProtocol(min_window_s=8.0)
    assert (p.short_s, p.idle_s) == (2.0, 8.0)


# --- charging, heat, bad meters -----------------------------------------------------------------


def test_refuses_a_charging_device_before_running_anything() -> None:
    fake = FakeDevice(idle_mw=500.0, active_mw=1000.0, active_s=0.01, gap_s=0.0)
    with pytest.raises(DeviceChargingError, match="device 'fake': the battery reports charging"):
        fake.measure(FAST, charging=lambda: True)
    assert fake.runs == 0
    allowed = fake.measure(dataclasses.replace(FAST, refuse_charging=False), charging=lambda: True)
    assert any("charging" in f for f in allowed.flags)
    assert fake.measure(FAST, charging=lambda: None).flags == ()  # unknown: measured, no flag


def test_cools_down_before_each_repeat_with_a_bounded_wait() -> None:
    fake = FakeDevice(idle_mw=500.0, active_mw=1000.0, active_s=0.01, gap_s=0.0)
    start = fake.clock()
    fake.temps = lambda now: {"zone0": max(35.0, 70.0 - (now - start)),  # cools 1 °C/s
                              "zone1": 30.0}
    protocol = dataclasses.replace(FAST, cool_down_to_c=50.0, cool_down_timeout_s=60.0,
                                   cool_down_poll_s=1.0)
    result = fake.measure(protocol, temperatures=fake.temperatures)
    first = result.records[0]
    assert first.cool_down_s == pytest.approx(20.0)
    assert first.temperatures_before_c["zone0"] <= 50.0 and first.temperatures_after_c
    assert result.flags == ()
    fake.temps = lambda now: {"zone0": 75.0}
    stuck = fake.measure(dataclasses.replace(protocol, cool_down_timeout_s=3.0),
                         temperatures=fake.temperatures)
    assert all(r.cool_down_s == pytest.approx(3.0) for r in stuck.records)
    assert any("did not cool to 50 °C within 3 s (zone0 at 75.0 °C)" in f for f in stuck.flags)


def test_hot_device_is_flagged_or_rejected() -> None:
    fake = FakeDevice(idle_mw=500.0, active_mw=1000.0, active_s=0.01, gap_s=0.0)
    fake.temps = lambda now: {"cpu": 92.0}
    flagged = fake.measure(dataclasses.replace(FAST, max_temp_c=85.0),
                           temperatures=fake.temperatures)
    assert all(r.throttled and not r.rejected for r in flagged.records)
    assert flagged.energy_mj_per_inference == pytest.approx(fake.expected_mj)
    assert any("throttled: cpu at 92.0 °C after the runs" in f for f in flagged.flags)

    runs_before = fake.runs
    with pytest.raises(ThrottledError, match=r"device 'fake': 2 repeats throttled") as info:
        fake.measure(dataclasses.replace(FAST, max_temp_c=85.0, throttle_policy="reject",
                                         max_rejected=1), temperatures=fake.temperatures)
    assert "\n" not in str(info.value)
    assert fake.runs == runs_before  # hot before starting: rejected without running


def test_rejected_repeats_are_replaced_and_kept_in_the_records() -> None:
    fake = FakeDevice(idle_mw=500.0, active_mw=1000.0, active_s=0.01, gap_s=0.0)
    reads = iter([{"cpu0": 2_000_000.0}, {"cpu0": 1_200_000.0}]  # repeat 1: the cap drops
                 + [{"cpu0": 2_000_000.0}] * 20)
    result = fake.measure(dataclasses.replace(FAST, throttle_policy="reject"),
                          cpu_freqs=lambda: next(reads))
    assert len(result.records) == 4 and result.repeats == 3
    assert result.records[0].rejected and result.records[0].throttled
    assert not any(r.rejected for r in result.records[1:])
    assert any("cpu0 frequency cap fell from 2000000 to 1200000 kHz" in f for f in result.flags)
    assert result.energy_mj_per_inference == pytest.approx(fake.expected_mj)


def test_malformed_meter_output_is_a_one_line_error_naming_the_device() -> None:
    texts = iter([Path(__file__).with_name("meter_samples").joinpath(
        "odpm_energy_value.txt").read_text(), "t=349950\nCH0(T=349950)[S10M_VDD_TPU] 5578756\n"])
    meter = CounterMeter("pixel:odpm", lambda t: odpm_counter_reading([next(texts)]))
    with pytest.raises(EnergyProtocolError) as info:
        measure_energy(lambda s: Run(1, 1.0), meter, SETTINGS, FAST, idle=lambda s: None)
    message = str(info.value)
    assert message.startswith("device 'pixel': repeat 1, idle window:")
    assert "cannot parse" in message and "CH<n>(T=<ms>)" in message and "\n" not in message


def test_a_meterless_device_and_a_runner_that_lies_are_refused() -> None:
    with pytest.raises(EnergyProtocolError, match="device 'board' has no power meter"):
        measure_energy(lambda s: Run(1, 1.0), EmptyMeter("board"), SETTINGS, FAST)
    fake = FakeDevice(idle_mw=500.0, active_mw=1000.0, active_s=0.01, gap_s=0.0)
    with pytest.raises(EnergyProtocolError, match="short run: run_timed returned n_inferences=0"):
        measure_energy(lambda s: Run(0, 1.0), fake.meter, SETTINGS, FAST, idle=fake.idle,
                       device="fake")
    with pytest.raises(EnergyProtocolError, match="the long run did 5 timed inferences, the short "
                                                  "one 5"):
        measure_energy(lambda s: Run(5, 1.0), fake.meter, SETTINGS, FAST, idle=fake.idle,
                       device="fake")

    def crash(settings: MeasureSettings) -> Run:
        raise DeviceError("device 'fake': benchmark_model crashed")

    with pytest.raises(DeviceError, match="crashed"):
        measure_energy(crash, fake.meter, SETTINGS, FAST, idle=fake.idle)
    fake.meter.begin_window("energy-after-crash")  # the meter is still usable


def test_simulated_meter_defaults_to_active_for_the_whole_run() -> None:
    clock = FakeClock()
    meter = SimulatedMeter("sim:simulated", idle_power_mw=100.0, active_power_mw=900.0, clock=clock)

    def run_timed(settings: MeasureSettings) -> Run:
        n = max(settings.min_runs, math.ceil(settings.min_seconds / 0.05))
        clock.advance(0.5 + n * 0.05)  # start-up + n inferences of 50 ms, all "active"
        return Run(n, n * 0.05)

    result = measure_energy(run_timed, meter, SETTINGS, FAST, idle=clock.advance, clock=clock)
    assert result.energy_mj_per_inference == pytest.approx(900.0 * 0.05, rel=1e-6)
    assert result.source == "simulated" and result.device == "sim"


# --- end to end: emulated ODPM over the real adb server -----------------------------------------


@dataclass(frozen=True)
class BenchmarkRun:
    n_inferences: int
    window_s: float
    latency_ms: float


def _fake_benchmark(transport: AdbTransport, tmp_path: Path) -> tuple[str, str, str]:
    """Push the fake benchmark_model and a model; returns (binary, graph, marker)."""
    run_dir = transport.make_run_dir(f"energy-{uuid.uuid4().hex[:8]}")
    wrapper = tmp_path / "benchmark_model"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    model = tmp_path / "model.tflite"
    model.write_bytes(b"TFL3" + bytes(1000))
    transport.push(wrapper, f"{run_dir}/benchmark_model", timeout_s=30)
    transport.push(model, f"{run_dir}/model.tflite", timeout_s=30)
    transport.run_checked(["chmod", "755", f"{run_dir}/benchmark_model"], timeout_s=10)
    return f"{run_dir}/benchmark_model", f"{run_dir}/model.tflite", run_dir.rsplit("/", 1)[-1]


def test_end_to_end_odpm_over_adb_recovers_the_emulated_energy(
    phone: AdbTransport, adbd_peer: AdbdPeer, tmp_path: Path
) -> None:
    binary, graph, marker = _fake_benchmark(phone, tmp_path)
    sys_root = adbd_peer.root / "data/local/tmp/sys"
    zone = write_thermal_zone(sys_root / "class/thermal", 0, 41.5)
    status = write_battery_status(sys_root / "class/power_supply", "Discharging")
    device_zone = "/" + str(zone.relative_to(adbd_peer.root))
    device_status = "/" + str(status.relative_to(adbd_peer.root))
    sleep_us = 20000
    active_mw = 1600.0

    def run_timed(settings: MeasureSettings) -> BenchmarkRun:
        argv = benchmark_argv(binary, graph, settings)
        done = phone.run_checked(f"FAKE_BENCHMARK_SLEEP_US={sleep_us} {shlex.join(argv)}",
                                 timeout_s=60)
        parsed = parse_benchmark_output(done.stdout)
        return BenchmarkRun(parsed.count, parsed.count * parsed.avg_us / 1e6, parsed.avg_us / 1e3)

    with OdpmEmulator(sys_root / "bus/iio/devices", idle_mw=450.0, active_mw=active_mw,
                      marker=marker) as emulator:
        meter = build_meter(MeterSpec("odpm", path="/data/local/tmp/sys/bus/iio/devices"),
                            "phone", phone)
        protocol = EnergyProtocol(min_window_s=1.5, short_window_s=0.3, baseline_s=1.0,
                                  settle_s=0.15, max_temp_c=80.0)
        runs: list[BenchmarkRun] = []

        def recording(settings: MeasureSettings) -> BenchmarkRun:
            runs.append(run_timed(settings))
            return runs[-1]

        result = measure_energy(
            recording, meter, MeasureSettings(threads=1, warmup_runs=1, min_runs=1), protocol,
            temperatures=lambda: read_temperatures(phone, [device_zone], 10.0),
            charging=lambda: device_is_charging(phone, 10.0, status_path=device_status))
        assert emulator.active_s > 0

    # each repeat has a short and a long run, in either order: the long ones are the longer half
    long_latency_ms = [r.latency_ms for r in sorted(runs, key=lambda r: r.window_s)[len(runs) // 2:]]
    expected_mj = active_mw * sum(long_latency_ms) / len(long_latency_ms) / 1000.0
    error = result.energy_mj_per_inference / expected_mj - 1
    print(f"\nODPM over adb: {result.energy_mj_per_inference:.3f} mJ/inference (MAD "
          f"{result.energy_mj_spread:.3f}), expected {expected_mj:.3f}: {100 * error:+.2f}%; "
          f"per repeat {[round(v, 3) for v in result.energy_mj_per_repeat]}")
    assert abs(error) < 0.05
    assert result.source == "measured" and result.meter == "phone:odpm"
    assert result.baseline_power_mw == pytest.approx(450.0, rel=0.02)
    assert result.window_s == pytest.approx(1.5, abs=0.1) and result.min_window_s == 1.5
    assert all(r.long_window_s - r.short_window_s >= 0.95 * 1.5 for r in result.records)
    assert not any("min_window_s" in f for f in result.flags)
    assert result.records[0].temperatures_before_c == {device_zone: 41.5}
    assert not any(r.throttled for r in result.records)
    long = result.records[0].long
    assert long is not None and "S2M_VDD_CPUCL2" in long.readings[0].raw


def test_end_to_end_refuses_a_charging_phone_and_rejects_a_hot_one(
    phone: AdbTransport, adbd_peer: AdbdPeer
) -> None:
    sys_root = adbd_peer.root / "data/local/tmp/sys"
    status = write_battery_status(sys_root / "class/power_supply", "Charging")
    zone = write_thermal_zone(sys_root / "class/thermal", 3, 95.0)
    device_status = "/" + str(status.relative_to(adbd_peer.root))
    device_zone = "/" + str(zone.relative_to(adbd_peer.root))
    runs: list[MeasureSettings] = []
    with OdpmEmulator(sys_root / "bus/iio/devices", idle_mw=450.0, active_mw=1000.0,
                      marker=f"never-{uuid.uuid4().hex}"):
        meter = build_meter(MeterSpec("odpm", path="/data/local/tmp/sys/bus/iio/devices"),
                            "phone", phone)
        with pytest.raises(DeviceChargingError, match="device 'phone': the battery reports "
                                                      "charging"):
            measure_energy(lambda s: runs.append(s) or Run(1, 1.0), meter, SETTINGS, FAST,
                           charging=lambda: device_is_charging(phone, 10.0,
                                                               status_path=device_status))
        write_battery_status(sys_root / "class/power_supply", "Discharging")
        hot = EnergyProtocol(min_window_s=0.5, max_temp_c=85.0, cool_down_to_c=60.0,
                             cool_down_timeout_s=0.3, cool_down_poll_s=0.1,
                             throttle_policy="reject", max_rejected=1)
        with pytest.raises(ThrottledError, match=r"device 'phone': 2 repeats throttled .*95\.0 °C"):
            measure_energy(lambda s: runs.append(s) or Run(1, 1.0), meter, SETTINGS, hot,
                           temperatures=lambda: read_temperatures(phone, [device_zone], 10.0),
                           charging=lambda: device_is_charging(phone, 10.0,
                                                               status_path=device_status))
    assert runs == []
