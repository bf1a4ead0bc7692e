"""The device-side sampler (devices/meters/device_sampler.py) against the real peers: the Pi 5
PMIC over a real sshd with the emulated vcgencmd, an INA226 hwmon tree through the real adb
server to the test adbd. Known power steps recovered within 2 %, the energy protocol end to
end over SSH, no sampling loop left behind, a device whose ``date`` lacks ``%N``, and the
errors: a missing vcgencmd, a loop that died, a sample that failed on the device."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from devices.base import MeasureSettings
from devices.energy_protocol import EnergyProtocol, measure_energy
from devices.inventory import MeterSpec
from devices.meters import (
    EnergyWindow,
    MeterError,
    MeterReadError,
    PowerMeter,
    PowerReading,
    SamplingMeter,
)
from devices.meters.device_sampler import DeviceSamplerError, DeviceSamplingMeter, _parse_log
from devices.meters.factory import build_meter
from devices.runners import benchmark_argv, parse_benchmark_output
from devices.transports import AdbTransport, SshTransport
from devices.transports.base import Transport
from tests.devices.test_fleet import tiny_tflite
from tests.devices.test_meter_windows import PowerMeterContract
from tests.peers.adbd import AdbdPeer
from tests.peers.emulated_meters import PMIC_RAILS, HwmonEmulator, Pi5PmicEmulator

pytestmark = pytest.mark.timeout(90)

FAKE = Path(__file__).resolve().parents[1] / "peers" / "fake_benchmark_model.py"
TMP = "/data/local/tmp"


def sampler_pids(pattern: str, settle_s: float = 2.0) -> list[int]:
    """The sampling loops on this machine (the peers run the device's commands here): the
    processes whose command line holds ``pattern`` (a log directory), less the subshells they
    fork, waiting up to ``settle_s`` for them to go."""
    deadline = time.monotonic() + settle_s
    while True:
        done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True,
                              check=False)
        pids = {int(p) for p in done.stdout.split()}
        parents = {}
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
        loops = sorted(pid for pid, ppid in parents.items() if ppid not in pids)
        if not loops or time.monotonic() > deadline:
            return loops
        time.sleep(0.05)


def host_path(peer: AdbdPeer, device_path: str) -> str:
    """Where the test adbd keeps ``device_path`` (under /data) on this machine."""
    return str(peer.root / device_path.lstrip("/"))


def step_window(meter: DeviceSamplingMeter, transport: Transport, emulator: Pi5PmicEmulator |
                HwmonEmulator, *, active_s: float, quiet_s: float) -> tuple[EnergyWindow, float]:
    """A window: ``quiet_s`` idle, a marked process for ``active_s``, ``quiet_s`` idle.
    Returns it and the time the emulator saw the marked process."""
    marker = emulator.marker.decode()
    meter.begin_window("step")
    before_s = emulator.active_s
    time.sleep(quiet_s)
    transport.run_checked(f"sh -c 'sleep {active_s}; :' {marker}", timeout_s=20)
    time.sleep(quiet_s)
    seen_s = emulator.active_s - before_s
    return meter.end_window("step"), seen_s


def check_step(window: EnergyWindow, idle_mw: float, active_mw: float, active_s: float,
               label: str, interval_s: float) -> None:
    expected_mj = idle_mw * window.duration_s + active_mw * active_s
    times = [r.time_s or 0.0 for r in window.readings]
    max_gap_s = max(b - a for a, b in pairwise(times))
    error = window.total_energy_mj / expected_mj - 1
    print(f"\n{label}: {window.total_energy_mj:.1f} mJ over {window.duration_s:.3f} s, emulated "
          f"{expected_mj:.1f} mJ ({100 * error:+.2f}%), {len(times)} samples, largest gap "
          f"{max_gap_s:.3f} s")
    # linear interpolation misplaces each of the two power steps by at most half a gap
    assert abs(window.total_energy_mj - expected_mj) <= active_mw * max_gap_s
    assert abs(error) < 0.02
    assert len(times) >= window.duration_s / (interval_s + 0.1)  # sampled on the device
    # a gap over the default 3 periods is noted (a busy two-core host delays the device's
    # sampling loop now and then); the figure in the note is the window's own
    gap_note = f"largest gap between power samples {max_gap_s:.3f} s (sampling interval {interval_s:.3f} s)"
    assert window.notes == (() if max_gap_s <= 3 * interval_s else (gap_note,))


# --- accuracy ------------------------------------------------------------------------------------


def test_pmic_power_step_over_ssh_within_2_percent(board: SshTransport, tmp_path: Path) -> None:
    idle_mw, active_mw = 3200.0, 1600.0
    marker = f"pmic-step-{uuid.uuid4().hex}"
    with Pi5PmicEmulator(tmp_path / "pmic", idle_mw=idle_mw, active_mw=active_mw,
                         marker=marker) as emulator:
        meter = build_meter(MeterSpec("pi5-pmic", path=str(emulator.script)), "pi5", board)
        assert isinstance(meter, DeviceSamplingMeter) and meter.interval_s == pytest.approx(0.1)
        assert meter.device_clock == "date"
        with meter:
            window, active_s = step_window(meter, board, emulator, active_s=1.0, quiet_s=0.8)
    assert 0.9 < active_s < 1.6
    assert set(window.energy_mj) == set(PMIC_RAILS) and window.meter == "pi5:pi5-pmic"
    check_step(window, idle_mw, active_mw, active_s, "Pi 5 PMIC sampled on the device over ssh",
               0.1)
    assert "VDD_CORE_A current(7)=" in window.readings[0].raw
    assert abs(window.start_time_s - time.monotonic()) < 10.0  # on the host's clock
    assert sampler_pids(meter.log_dir) == [] and list(Path(meter.log_dir).iterdir()) == []


def test_hwmon_power_step_over_adb_within_2_percent(phone: AdbTransport,
                                                    adbd_peer: AdbdPeer) -> None:
    idle_mw, active_mw = 2000.0, 1000.0
    marker = f"hwmon-step-{uuid.uuid4().hex}"
    base = f"{TMP}/sys/class/hwmon"
    with HwmonEmulator(adbd_peer.root / base.lstrip("/") / "hwmon2", idle_mw=idle_mw,
                       active_mw=active_mw, marker=marker) as emulator:
        meter = build_meter(MeterSpec("hwmon", path=base, options={"name": "ina226",
                                                                   "interval_s": 0.02}),
                            "phone", phone)
        assert isinstance(meter, DeviceSamplingMeter) and meter.device_clock == "date"
        with meter:
            window, active_s = step_window(meter, phone, emulator, active_s=1.0, quiet_s=0.5)
    assert window.energy_mj.keys() == {"ina226"}
    check_step(window, idle_mw, active_mw, active_s, "INA226 hwmon sampled on the device over adb",
               0.02)
    assert "power1_input=" in window.readings[0].raw
    assert sampler_pids(host_path(adbd_peer, meter.log_dir)) == []


@dataclass(frozen=True)
class BenchmarkRun:
    n_inferences: int
    window_s: float
    latency_ms: float


def test_energy_protocol_end_to_end_over_ssh(board: SshTransport, tmp_path: Path) -> None:
    run_dir = board.make_run_dir(f"energy-{uuid.uuid4().hex[:8]}")
    wrapper = tmp_path / "benchmark_model"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    model = tmp_path / "model.tflite"
    model.write_bytes(tiny_tflite())  # the fake loads it when LiteRT is installed
    board.push(wrapper, f"{run_dir}/benchmark_model", timeout_s=30)
    board.push(model, f"{run_dir}/model.tflite", timeout_s=30)
    board.run_checked(["chmod", "755", f"{run_dir}/benchmark_model"], timeout_s=10)
    binary, graph, marker = (f"{run_dir}/benchmark_model", f"{run_dir}/model.tflite",
                             run_dir.rsplit("/", 1)[-1])
    runs: list[BenchmarkRun] = []

    def run_timed(settings: MeasureSettings) -> BenchmarkRun:
        argv = benchmark_argv(binary, graph, settings)
        done = board.run_checked(f"FAKE_BENCHMARK_SLEEP_US=20000 {shlex.join(argv)}",
                                 timeout_s=60)
        parsed = parse_benchmark_output(done.stdout)
        runs.append(BenchmarkRun(parsed.count, parsed.count * parsed.avg_us / 1e6,
                                 parsed.avg_us / 1e3))
        return runs[-1]

    idle_mw, active_mw = 3000.0, 2400.0
    with Pi5PmicEmulator(tmp_path / "pmic", idle_mw=idle_mw, active_mw=active_mw,
                         marker=marker) as emulator:
        meter = build_meter(MeterSpec("pi5-pmic", path=str(emulator.script)), "pi5", board)
        protocol = EnergyProtocol(min_window_s=4.0, short_window_s=0.3, baseline_s=0.8,
                                  settle_s=0.15)
        with meter:
            result = measure_energy(run_timed, meter,
                                    MeasureSettings(threads=1, warmup_runs=1, min_runs=1),
                                    protocol, device="pi5")
        assert emulator.active_s > 0

    # the long runs (whatever order the protocol runs them in): their loop is min_window_s longer
    long_latency_ms = [r.latency_ms for r in runs if r.window_s >= protocol.min_window_s]
    assert len(long_latency_ms) == 3
    expected_mj = active_mw * sum(long_latency_ms) / len(long_latency_ms) / 1000.0
    error = result.energy_mj_per_inference / expected_mj - 1
    print(f"\nPi 5 PMIC (device-sampled) over ssh: {result.energy_mj_per_inference:.3f} "
          f"mJ/inference (MAD {result.energy_mj_spread:.3f}), expected {expected_mj:.3f}: "
          f"{100 * error:+.2f}%; per repeat {[round(v, 3) for v in result.energy_mj_per_repeat]}")
    assert abs(error) < 0.05
    assert result.source == "measured" and result.meter == "pi5:pi5-pmic"
    assert result.baseline_power_mw == pytest.approx(idle_mw, rel=0.01)
    assert not any("gap" in f for f in result.flags), result.flags
    long = result.records[0].long
    assert long is not None and len(long.readings) > 20
    assert sampler_pids(meter.log_dir) == []


# --- lifecycle: overlapping windows, cancel, close, no loop left behind --------------------------


def test_windows_overlap_and_no_loop_outlives_end_cancel_or_close(board: SshTransport,
                                                                  tmp_path: Path) -> None:
    idle_mw = 2500.0
    with Pi5PmicEmulator(tmp_path / "pmic", idle_mw=idle_mw, active_mw=1000.0,
                         marker=f"never-{uuid.uuid4().hex}") as emulator:
        meter = build_meter(MeterSpec("pi5-pmic", path=str(emulator.script),
                                      options={"rails": ["VDD_CORE", "DDR_VDD2"]}), "pi5", board)
        assert isinstance(meter, DeviceSamplingMeter)
        logs = meter.log_dir
        meter.begin_window("outer")
        meter.begin_window("inner")
        assert len(sampler_pids(logs, settle_s=0)) == 2  # one loop per open window
        with pytest.raises(MeterError, match="window 'inner' is already open"):
            meter.begin_window("inner")
        time.sleep(0.4)
        inner = meter.end_window("inner")
        time.sleep(0.2)
        outer = meter.end_window("outer")
        assert outer.duration_s > inner.duration_s + 0.15
        assert outer.start_time_s < inner.start_time_s
        share = PMIC_RAILS["VDD_CORE"][3] + PMIC_RAILS["DDR_VDD2"][3]
        for window in (inner, outer):
            assert window.rails == ("VDD_CORE", "DDR_VDD2")
            assert window.avg_power_mw == pytest.approx(idle_mw * share, rel=1e-3)
            assert sum(window.energy_mj.values()) == pytest.approx(idle_mw * window.duration_s,
                                                                   rel=1e-3)
        assert sampler_pids(logs) == [] and list(Path(logs).iterdir()) == []

        meter.begin_window("cancelled")
        assert len(sampler_pids(logs, settle_s=0)) == 1
        meter.cancel_window("cancelled")
        meter.cancel_window("cancelled")  # a no-op
        assert sampler_pids(logs) == []
        with pytest.raises(MeterError, match="no open window 'cancelled'"):
            meter.end_window("cancelled")

        meter.begin_window("a")
        meter.begin_window("b")
        meter.close()
        assert sampler_pids(logs) == [] and list(Path(logs).iterdir()) == []
        with pytest.raises(MeterError, match="closed"):
            meter.begin_window("c")


# --- devices without date +%N; errors ------------------------------------------------------------


def test_a_date_without_nanoseconds_falls_back_to_proc_uptime(phone: AdbTransport,
                                                              adbd_peer: AdbdPeer) -> None:
    shadow = adbd_peer.root / "system/bin/date"  # first on the peer's PATH, like busybox's
    shadow.write_text('#!/bin/sh\ncase "$1" in *%N*) exec /bin/date "$(echo "$1" | sed s/%N/N/g)";;'
                      '\nesac\nexec /bin/date "$@"\n')
    shadow.chmod(0o755)
    assert phone.run_checked("date +%s.%N", timeout_s=10).stdout.strip().endswith(".N")
    base = adbd_peer.root / TMP.lstrip("/") / "sys/class/hwmon/hwmon0"
    base.mkdir(parents=True)
    for name, text in {"name": "ina219", "in1_input": "5000", "curr1_input": "400"}.items():
        (base / name).write_text(text + "\n")
    meter = build_meter(MeterSpec("hwmon", path=f"{TMP}/sys/class/hwmon",
                                  options={"name": "ina219", "interval_s": 0.05}), "pi4", phone)
    assert isinstance(meter, DeviceSamplingMeter) and meter.device_clock == "uptime"
    with meter:
        meter.begin_window("w")
        started_s = time.monotonic()
        time.sleep(0.6)
        window = meter.end_window("w")
        host_s = time.monotonic() - started_s
    assert window.avg_power_mw == pytest.approx(2000.0)
    assert len(window.readings) >= 6
    assert abs(window.duration_s - host_s) < 0.25  # /proc/uptime: 10 ms steps
    assert sampler_pids(host_path(adbd_peer, meter.log_dir)) == []


def test_a_missing_vcgencmd_fails_at_build_time(board: SshTransport, tmp_path: Path) -> None:
    for path in (None, str(tmp_path / "no-vcgencmd")):
        shown = shlex.quote(path or "vcgencmd")
        with pytest.raises(MeterReadError) as info:
            build_meter(MeterSpec("pi5-pmic", path=path), "pi5", board)
        message = str(info.value)
        assert message.startswith(f"device 'pi5': meter pi5-pmic: '{shown} pmic_read_adc' exited "
                                  "with 127: ")
        assert "command not found on the device" in message and "\n" not in message


def test_a_dead_loop_and_a_failing_sample_fail_the_window(board: SshTransport,
                                                          tmp_path: Path) -> None:
    with Pi5PmicEmulator(tmp_path / "pmic", idle_mw=1000.0, active_mw=1000.0,
                         marker=f"never-{uuid.uuid4().hex}") as emulator:
        meter = build_meter(MeterSpec("pi5-pmic", path=str(emulator.script)), "pi5", board)
        assert isinstance(meter, DeviceSamplingMeter)
        logs = meter.log_dir
        meter.begin_window("killed")
        time.sleep(0.3)
        for pid in sampler_pids(logs, settle_s=0):
            os.kill(pid, signal.SIGKILL)  # the device's OOM killer, say
        time.sleep(0.3)
        with pytest.raises(DeviceSamplerError) as info:
            meter.end_window("killed")
        message = str(info.value)
        assert message.startswith("device 'pi5': meter 'pi5:pi5-pmic': window 'killed': the "
                                  "sampling loop (pid ")
        assert "had died on the device" in message and "\n" not in message
        assert sampler_pids(logs) == [] and list(Path(logs).iterdir()) == []

        meter.begin_window("failing")
        time.sleep(0.3)
        emulator.output.unlink()  # vcgencmd now fails
        time.sleep(0.3)
        with pytest.raises(DeviceSamplerError, match=r"window 'failing': .*pmic_read_adc' exited "
                                                     r"with 1 on the device: .*No such file"):
            meter.end_window("failing")
        with pytest.raises(DeviceSamplerError, match=r"window 'again': .*exited with 1"):
            meter.begin_window("again")  # the first sample is checked at once
        assert sampler_pids(logs) == [] and list(Path(logs).iterdir()) == []
        meter.close()


def test_a_loop_stops_itself_after_max_window_s(board: SshTransport, tmp_path: Path) -> None:
    watts = tmp_path / "watts"
    watts.write_text("1.5\n")
    meter = DeviceSamplingMeter("pi5:direct", board, f"cat {shlex.quote(str(watts))}",
                                lambda text: PowerReading({"board": 1000.0 * float(text)}),
                                interval_s=0.05, max_window_s=2.0)
    with meter:
        meter.begin_window("forgotten")
        time.sleep(3.3)  # the loop stops between max_window_s and a second later
        assert sampler_pids(meter.log_dir, settle_s=0) == []
        with pytest.raises(DeviceSamplerError, match=r"window 'forgotten': the loop stopped "
                                                     r"itself after max_window_s \(2 s\)"):
            meter.end_window("forgotten")
        meter.begin_window("w")  # the same meter still measures afterwards
        assert meter.end_window("w").avg_power_mw == pytest.approx(1500.0)
    assert list(Path(meter.log_dir).iterdir()) == []


class TestDeviceSamplingMeterContract(PowerMeterContract):
    """The contract every PowerMeter keeps (tests/devices/test_meter_windows.py), over sshd."""

    @pytest.fixture
    def meter(self, board: SshTransport, tmp_path: Path) -> Iterator[PowerMeter]:
        watts = tmp_path / "watts"
        watts.write_text("2.0 W\n")
        meter = DeviceSamplingMeter("pi5:contract", board, f"cat {shlex.quote(str(watts))}",
                                    lambda text: PowerReading({"board": 1000.0 * float(
                                        text.split()[0])}), interval_s=0.02)
        try:
            yield meter
        finally:
            meter.close()
        assert sampler_pids(meter.log_dir) == []


# --- the log format ------------------------------------------------------------------------------


def test_log_parsing_drops_truncated_blocks_and_keeps_markers() -> None:
    log = _parse_log("@@alive 1\n"
                     "@@sample 10.0 10.2 0\nA=1\nB=2\n@@end\n"
                     "@@sample 10.3 10.4 0\nA=1\n"  # killed mid-sample: no @@end
                     "@@sample 10.5 10.6 3\nout\n@@stderr\nboom\n@@end\n"
                     "energy-sampler: 9: sleep: invalid time interval\n"
                     "@@sample 11.0\n"
                     "@@expired 11.9\n")
    assert [(s.time_s, s.exit_code, s.stdout, s.stderr) for s in log.samples] == [
        (pytest.approx(10.1), 0, "A=1\nB=2\n", ""), (pytest.approx(10.55), 3, "out\n", "boom")]
    assert log.markers == {"alive": "1", "expired": "11.9"}
    assert log.truncated == 2 and log.stray.endswith("sleep: invalid time interval")


def test_host_sampling_stays_available(board: SshTransport, tmp_path: Path) -> None:
    with Pi5PmicEmulator(tmp_path / "pmic", idle_mw=1000.0, active_mw=1000.0,
                         marker=f"never-{uuid.uuid4().hex}") as emulator:
        meter = build_meter(MeterSpec("pi5-pmic", path=str(emulator.script),
                                      options={"sampling": "host"}), "pi5", board)
        assert isinstance(meter, SamplingMeter) and meter.period_s == pytest.approx(0.1)
        with meter:
            meter.begin_window("w")
            time.sleep(0.3)
            assert meter.end_window("w").avg_power_mw == pytest.approx(1000.0, rel=1e-3)


def test_a_loop_cut_off_by_a_broken_link_is_stopped_once_the_link_is_back(board: SshTransport,
                                                                          tmp_path: Path) -> None:
    watts = tmp_path / "watts"
    watts.write_text("1.5\n")
    meter = DeviceSamplingMeter("pi5:direct", board, f"cat {shlex.quote(str(watts))}",
                                lambda text: PowerReading({"board": 1000.0 * float(text)}),
                                interval_s=0.05)
    meter.begin_window("cut")
    board.close()  # as a device closes a link that timed out or was lost
    meter.cancel_window("cut")  # cannot reach the device: the loop is remembered, not forgotten
    assert sampler_pids(meter.log_dir, settle_s=0)
    board.open()
    meter.close()
    assert sampler_pids(meter.log_dir) == []
    assert list(Path(meter.log_dir).iterdir()) == []
