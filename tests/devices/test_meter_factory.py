"""The meter factory: option validation (no I/O), then every kind built over a real transport
against the peers -- ODPM, PowerStats, RAPL, hwmon, Jetson, fuel gauge and command meters
through the real adb server to the test adbd (sysfs trees under its /data), the Pi 5 PMIC over
a real sshd with the emulated vcgencmd -- plus the charging, temperature and cpufreq reads.
Sampling kinds sample on the device by default (tests/devices/test_device_sampler.py has the
sampler's own tests); ``sampling = "host"`` keeps host polling."""

from __future__ import annotations

import time
import uuid
from itertools import pairwise
from pathlib import Path

import pytest

from devices.inventory import MeterSpec
from devices.meters import (
    CounterMeter,
    MeterError,
    MeterParseError,
    MeterReadError,
    SamplingMeter,
    SimulatedMeter,
)
from devices.meters.device_sampler import DeviceSamplingMeter
from devices.meters.factory import (
    MeterConfigError,
    build_meter,
    device_is_charging,
    read_cpu_max_freqs_khz,
    read_temperatures,
)
from devices.transports import AdbTransport, SshTransport
from tests.peers.adbd import AdbdPeer
from tests.peers.emulated_meters import PMIC_RAILS, Pi5PmicEmulator, write_thermal_zone

pytestmark = pytest.mark.timeout(60)

SAMPLES = Path(__file__).parent / "meter_samples"
TMP = "/data/local/tmp"


# --- option validation: before any I/O, one line naming the device and the option ---------------


@pytest.mark.parametrize("kind, path, options, match", [
    ("odpm", None, {"rail": ["A"]}, "option 'rail': unknown for this kind of meter (allowed: "
                                    "rails, read_timeout_s)"),
    ("odpm", None, {"rails": []}, "option 'rails': expected a non-empty list"),
    ("odpm", None, {"rails": ["A", "A"]}, "option 'rails': expected a non-empty list of distinct"),
    ("odpm", None, {"rails": "A"}, "option 'rails'"),
    ("odpm", None, {"interval_s": 0.5}, "option 'interval_s': unknown for this kind"),
    ("rapl", None, {"read_timeout_s": 0}, "option 'read_timeout_s': expected a number > 0"),
    ("pi5-pmic", None, {"interval_s": 0.05}, "option 'interval_s': expected a number >= 0.1"),
    ("hwmon", None, {"interval_s": True, "name": "ina226"}, "option 'interval_s': expected a "
                                                            "number"),
    ("hwmon", None, {}, "option 'name': missing; the hwmon chip to find, one of ina219"),
    ("hwmon", None, {"name": "lm75"}, "option 'name': 'lm75' is not one of ina219"),
    ("command", None, {}, "option 'command': expected a command line"),
    ("command", None, {"command": "x", "unit": "amps"}, "option 'unit': 'amps' is not one of "
                                                        "joules, watts"),
    ("command", None, {"command": "x", "run_on": "cloud"}, "option 'run_on'"),
    ("command", None, {"command": "x", "interval_s": 1.0}, "option 'interval_s': applies only"),
    ("command", None, {"command": "x", "sampling": "host"}, "option 'sampling': applies only to "
                                                            "sampling meters"),
    ("command", None, {"command": "x", "unit": "watts", "run_on": "host", "sampling": "device"},
     "option 'sampling': a command run on the host (run_on = \"host\") is sampled by the host"),
    ("pi5-pmic", None, {"sampling": "remote"}, "option 'sampling': 'remote' is not one of device, "
                                               "host"),
    ("odpm", None, {"sampling": "host"}, "option 'sampling': unknown for this kind of meter"),
    ("fuelgauge", None, {"current_unit": "mA"}, "option 'discharge_sign': give it with "
                                                "'current_unit', or neither"),
    ("simulated", None, {"idle_mw": 100}, "option 'active_mw': missing"),
    ("simulated", None, {"idle_mw": -1, "active_mw": 5}, "option 'idle_mw': expected a number "
                                                         ">= 0, got -1"),
    ("simulated", None, {"idle_mw": 1, "active_mw": 5, "rails": ["x"]}, "option 'rails': unknown"),
    ("simulated", "/x", {"idle_mw": 1, "active_mw": 5}, "'path' means nothing"),
    ("tpu-meter", None, {}, "meter kind 'tpu-meter' is unknown"),
])
def test_bad_options_are_one_line_errors_naming_device_and_option(
    kind: str, path: str | None, options: dict[str, object], match: str
) -> None:
    with pytest.raises(MeterConfigError) as info:
        build_meter(MeterSpec(kind, path, options), "pixel7", None)
    message = str(info.value)
    assert message.startswith("device 'pixel7': meter ") and match in message, message
    assert "\n" not in message and isinstance(info.value, MeterError)


def test_a_device_meter_needs_a_transport() -> None:
    with pytest.raises(MeterConfigError, match="device 'pixel7': meter odpm: needs a transport"):
        build_meter(MeterSpec("odpm"), "pixel7", None)


def test_simulated_meter_is_labelled_simulated() -> None:
    meter = build_meter(MeterSpec("simulated", options={"idle_mw": 200, "active_mw": 1800.5}),
                        "dry-run", None)
    assert isinstance(meter, SimulatedMeter)
    assert meter.name == "dry-run:simulated" and meter.source == "simulated"
    meter.begin_window("w")
    with meter.active():
        time.sleep(0.05)
    window = meter.end_window("w")
    assert window.source == "simulated"
    assert 2000.5 * 0.05 * 0.9 < window.total_energy_mj < 200 * window.duration_s + 1800.5 * 0.2


def test_host_command_meter_needs_no_transport(tmp_path: Path) -> None:
    counter = tmp_path / "joules"
    counter.write_text("12.5 J\n")
    meter = build_meter(MeterSpec("command", options={"command": f"cat {counter}",
                                                      "run_on": "host"}), "usb-meter", None)
    assert isinstance(meter, CounterMeter) and meter.name == "usb-meter:command"
    meter.begin_window("w")
    counter.write_text("13.75\n")
    assert meter.end_window("w").total_energy_mj == pytest.approx(1250.0)
    watts = build_meter(MeterSpec("command", options={"command": ["echo", "2.5 W"], "unit": "watts",
                                                      "run_on": "host", "interval_s": 0.05}),
                        "usb-meter", None)
    assert isinstance(watts, SamplingMeter) and watts.period_s == pytest.approx(0.05)
    watts.begin_window("w")
    time.sleep(0.2)
    assert watts.end_window("w").avg_power_mw == pytest.approx(2500.0)
    watts.close()
    counter.write_text("not a number\n")
    with pytest.raises(MeterParseError, match="device 'usb-meter': meter command: meter command "
                                              "output: cannot parse 'not a number'"):
        meter.begin_window("again")


# --- kinds over adb ----------------------------------------------------------------------------


def on_phone(peer: AdbdPeer, device_path: str, text: str) -> Path:
    """Write ``text`` to the host file behind ``device_path`` (under /data)."""
    path = peer.root / device_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def odpm_text(t_ms: int, values: dict[tuple[int, str], int]) -> str:
    lines = [f"t={t_ms}"] + [f"CH{ch}(T={t_ms})[{rail}], {uj}" for (ch, rail), uj in values.items()]
    return "\n".join(lines) + "\n"


def test_odpm_reads_every_pmic_in_one_cat_and_times_by_t(
    phone: AdbTransport, adbd_peer: AdbdPeer
) -> None:
    base = f"{TMP}/sys/bus/iio/devices"
    on_phone(adbd_peer, f"{base}/iio:device10/energy_value", odpm_text(
        1000, {(0, "L2S_VDD_AOC_RET"): 1000}))
    on_phone(adbd_peer, f"{base}/iio:device1/energy_value",
             (SAMPLES / "odpm_energy_value.txt").read_text())
    on_phone(adbd_peer, f"{base}/iio:device2/name", "not a PMIC\n")  # no energy_value: skipped
    meter = build_meter(MeterSpec("odpm", path=base), "phone", phone)
    assert isinstance(meter, CounterMeter) and meter.name == "phone:odpm"
    meter.begin_window("w")
    on_phone(adbd_peer, f"{base}/iio:device1/energy_value", odpm_text(
        351894, {(0, "S10M_VDD_TPU"): 5578756 + 500_000, (3, "S2M_VDD_CPUCL2"): 30203502 + 2_000_000}))
    on_phone(adbd_peer, f"{base}/iio:device10/energy_value", odpm_text(
        2000, {(0, "L2S_VDD_AOC_RET"): 301_000}))
    window = meter.end_window("w")
    assert window.energy_mj == pytest.approx({"S10M_VDD_TPU": 500.0, "S2M_VDD_CPUCL2": 2000.0,
                                              "L2S_VDD_AOC_RET": 300.0})
    # t= moved by 2000 ms on one PMIC and 1000 ms on the other: the window lasts their mean
    assert window.duration_s == pytest.approx(1.5)
    assert "CH3(T=349894)[S2M_VDD_CPUCL2], 30203502" in window.readings[0].raw

    rails = build_meter(MeterSpec("odpm", path=base, options={"rails": ["S2M_VDD_CPUCL2"]}),
                        "phone", phone)
    rails.begin_window("w")
    on_phone(adbd_peer, f"{base}/iio:device1/energy_value", odpm_text(
        352394, {(0, "S10M_VDD_TPU"): 6578756, (3, "S2M_VDD_CPUCL2"): 33203502}))
    window = rails.end_window("w")
    assert window.rails == ("S2M_VDD_CPUCL2",) and window.total_energy_mj == pytest.approx(1000.0)
    # a window inside one PMIC refresh has no length: refused rather than divided by zero
    rails.begin_window("same")
    with pytest.raises(MeterError, match="lasted 0.0 s"):
        rails.end_window("same")


def test_odpm_errors_name_the_device(phone: AdbTransport, adbd_peer: AdbdPeer) -> None:
    base = f"{TMP}/sys/bus/iio/devices"
    with pytest.raises(MeterConfigError, match=r"device 'phone': meter odpm: no readable "
                                               r"iio:device\*/energy_value under"):
        build_meter(MeterSpec("odpm", path=base), "phone", phone)
    on_phone(adbd_peer, f"{base}/iio:device0/energy_value",
             (SAMPLES / "odpm_energy_value.txt").read_text())
    with pytest.raises(MeterConfigError, match="option 'rails': rail 'S9_NOPE' not found on the "
                                               "device \\(available: S10M_VDD_TPU, S2M_VDD_CPUCL2\\)"):
        build_meter(MeterSpec("odpm", path=base, options={"rails": ["S9_NOPE"]}), "phone", phone)
    on_phone(adbd_peer, f"{base}/iio:device0/energy_value",
             (SAMPLES / "odpm_energy_value_garbage.txt").read_text())
    with pytest.raises(MeterParseError) as info:
        build_meter(MeterSpec("odpm", path=base), "phone", phone)
    assert str(info.value).startswith("device 'phone': meter odpm: ODPM energy_value: cannot parse")
    assert "\n" not in str(info.value)


def test_powerstats_and_command_meters_on_the_device(phone: AdbTransport, adbd_peer: AdbdPeer) -> None:
    sample = SAMPLES / "powerstats_dumpsys_full.txt"
    dumpsys = on_phone(adbd_peer, f"{TMP}/bin/dumpsys",
                       f'#!/bin/sh\n[ "$1" = android.hardware.power.stats.IPowerStats/default ] '
                       f'&& exec cat {sample}\nexit 1\n')
    dumpsys.chmod(0o755)
    meter = build_meter(MeterSpec("powerstats", path=f"{TMP}/bin/dumpsys"), "phone", phone)
    meter.begin_window("w")
    window = meter.end_window("w")
    assert isinstance(meter, CounterMeter) and window.total_energy_mj == 0.0
    assert len(window.energy_mj) >= 1

    on_phone(adbd_peer, f"{TMP}/joules", "100.0\n")
    joules = build_meter(MeterSpec("command", options={"command": f"cat {TMP}/joules"}),
                         "phone", phone)
    joules.begin_window("w")
    on_phone(adbd_peer, f"{TMP}/joules", "100.25 J\n")
    assert joules.end_window("w").total_energy_mj == pytest.approx(250.0)
    with pytest.raises(MeterReadError, match=r"device 'phone': meter command: 'cat /data/local/"
                                             r"tmp/nothing' exited with 1: .*No such file"):
        build_meter(MeterSpec("command", options={"command": f"cat {TMP}/nothing"}), "phone", phone)


def test_rapl_wraps_at_its_range(phone: AdbTransport, adbd_peer: AdbdPeer) -> None:
    zone = f"{TMP}/sys/class/powercap/intel-rapl:0"
    on_phone(adbd_peer, f"{zone}/name", "package-0\n")
    on_phone(adbd_peer, f"{zone}/max_energy_range_uj", "262143328850\n")
    on_phone(adbd_peer, f"{zone}/energy_uj", "262143000000\n")
    meter = build_meter(MeterSpec("rapl", path=zone), "nuc", phone)
    meter.begin_window("w")
    on_phone(adbd_peer, f"{zone}/energy_uj", "671150\n")
    window = meter.end_window("w")
    assert window.energy_mj == pytest.approx({"package-0": (328850 + 671150) / 1000.0})


def test_hwmon_finds_its_chip_by_name(phone: AdbTransport, adbd_peer: AdbdPeer) -> None:
    base = f"{TMP}/sys/class/hwmon"
    on_phone(adbd_peer, f"{base}/hwmon0/name", "nct6775\n")
    on_phone(adbd_peer, f"{base}/hwmon0/temp1_input", "40000\n")
    for name, text in {"name": "ina226\n", "power1_input": "3250000\n", "in1_input": "5000\n",
                       "curr1_input": "650\n", "update_interval": "1\n", "shunt_resistor": "10\n"
                       }.items():
        on_phone(adbd_peer, f"{base}/hwmon3/{name}", text)
    for sampling, kind in (("device", DeviceSamplingMeter), ("host", SamplingMeter)):
        meter = build_meter(MeterSpec("hwmon", path=base, options={
            "name": "ina226", "interval_s": 0.05, "sampling": sampling}), "pi4", phone)
        assert isinstance(meter, kind), sampling
        meter.begin_window("w")
        time.sleep(0.3)
        window = meter.end_window("w")
        meter.close()
        assert window.energy_mj.keys() == {"ina226"}
        assert window.avg_power_mw == pytest.approx(3250.0)
        assert "power1_input=3250000" in window.readings[0].raw
    with pytest.raises(MeterConfigError, match=r"device 'pi4': meter hwmon: no hwmon device named "
                                               r"'ina219' under .* \(found: hwmon0=nct6775, "
                                               r"hwmon3=ina226\)"):
        build_meter(MeterSpec("hwmon", path=base, options={"name": "ina219"}), "pi4", phone)


def test_jetson_defaults_to_the_input_rail(phone: AdbTransport, adbd_peer: AdbdPeer) -> None:
    base = f"{TMP}/sys/bus/i2c/drivers/ina3221/1-0040/hwmon"
    rails = {1: ("VDD_IN", 5000, 1153), 2: ("VDD_CPU_GPU_CV", 5000, 309), 3: ("VDD_SOC", 5000, 299)}
    on_phone(adbd_peer, f"{base}/hwmon5/name", "ina3221\n")
    for n, (label, mv, ma) in rails.items():
        on_phone(adbd_peer, f"{base}/hwmon5/in{n}_label", label + "\n")
        on_phone(adbd_peer, f"{base}/hwmon5/in{n}_input", f"{mv}\n")
        on_phone(adbd_peer, f"{base}/hwmon5/curr{n}_input", f"{ma}\n")
    on_phone(adbd_peer, f"{base}/hwmon5/in7_input", "15000\n")  # sum channel: voltage only
    meter = build_meter(MeterSpec("jetson", path=base), "orin", phone)
    meter.begin_window("w")
    time.sleep(0.25)
    window = meter.end_window("w")
    meter.close()
    assert window.rails == ("VDD_IN",) and window.avg_power_mw == pytest.approx(5765.0)
    assert window.energy_mj.keys() == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    soc = build_meter(MeterSpec("jetson", path=base, options={"rails": ["VDD_SOC"]}), "orin", phone)
    soc.begin_window("w")
    time.sleep(0.15)
    assert soc.end_window("w").avg_power_mw == pytest.approx(1495.0)
    soc.close()


def test_fuel_gauge_detects_its_convention_and_refuses_charging(
    phone: AdbTransport, adbd_peer: AdbdPeer
) -> None:
    battery = f"{TMP}/sys/class/power_supply/battery"
    on_phone(adbd_peer, f"{battery}/current_now", "512\n")  # a vendor reporting +mA on discharge
    on_phone(adbd_peer, f"{battery}/voltage_now", "3906250\n")
    on_phone(adbd_peer, f"{battery}/status", "Discharging\n")
    meter = build_meter(MeterSpec("fuelgauge", path=battery, options={"interval_s": 0.05}),
                        "pixel", phone)
    meter.begin_window("w")
    time.sleep(0.2)
    assert meter.end_window("w").avg_power_mw == pytest.approx(2000.0)
    meter.close()
    given = build_meter(MeterSpec("fuelgauge", path=battery, options={
        "current_unit": "uA", "discharge_sign": 1}), "pixel", phone)
    given.begin_window("w")
    time.sleep(0.3)
    assert given.end_window("w").avg_power_mw == pytest.approx(2.0)
    given.close()
    on_phone(adbd_peer, f"{battery}/status", "Charging\n")
    with pytest.raises(MeterReadError, match="device 'pixel': meter fuelgauge: the battery reports "
                                             "Charging"):
        build_meter(MeterSpec("fuelgauge", path=battery, options={
            "current_unit": "mA", "discharge_sign": 1}), "pixel", phone)


def test_charging_temperatures_and_cpu_caps(phone: AdbTransport, adbd_peer: AdbdPeer) -> None:
    status = f"{TMP}/sys/class/power_supply/battery/status"
    for text, expected in [("Charging", True), ("Discharging", False), ("Full", False),
                           ("Not charging", False), ("Unknown", None)]:
        on_phone(adbd_peer, status, text + "\n")
        assert device_is_charging(phone, 10.0, status_path=status) is expected, text
    missing = f"{TMP}/sys/none/status"
    assert device_is_charging(phone, 10.0, status_path=missing) is None  # no dumpsys here
    dumpsys = adbd_peer.root / "system/bin/dumpsys"  # the peer's PATH: Android's dumpsys battery
    dumpsys.write_text('#!/bin/sh\n[ "$1" = battery ] || exit 1\nprintf "Current Battery Service '
                       'state:\\n  AC powered: false\\n  USB powered: true\\n  status: 2\\n'
                       '  level: 80\\n"\n')
    dumpsys.chmod(0o755)
    try:
        assert device_is_charging(phone, 10.0, status_path=missing) is True
    finally:
        dumpsys.unlink()

    thermal = adbd_peer.root / "data/local/tmp/sys/class/thermal"
    zones = [write_thermal_zone(thermal, 0, 41.5), write_thermal_zone(thermal, 7, -3.0)]
    device_zones = ["/" + str(z.relative_to(adbd_peer.root)) for z in zones]
    assert read_temperatures(phone, device_zones, 10.0) == {device_zones[0]: 41.5,
                                                            device_zones[1]: -3.0}
    with pytest.raises(MeterReadError, match=r"device 'phone': thermal zone '/data/local/tmp/none' "
                                             r"is not readable"):
        read_temperatures(phone, [device_zones[0], f"{TMP}/none"], 10.0)
    on_phone(adbd_peer, device_zones[1], "hot\n")
    with pytest.raises(MeterParseError, match="device 'phone': thermal zone .*cannot parse 'hot'"):
        read_temperatures(phone, device_zones, 10.0)

    cpus = f"{TMP}/sys/devices/system/cpu"
    on_phone(adbd_peer, f"{cpus}/cpu0/cpufreq/scaling_max_freq", "1800000\n")
    on_phone(adbd_peer, f"{cpus}/cpu7/cpufreq/scaling_max_freq", "2850000\n")
    on_phone(adbd_peer, f"{cpus}/cpufreq/policy0/scaling_max_freq", "1\n")  # not a cpuN
    assert read_cpu_max_freqs_khz(phone, 10.0, cpu_dir=cpus) == {"cpu0": 1800000.0,
                                                                 "cpu7": 2850000.0}


# --- the Pi 5 PMIC over ssh, with the emulated vcgencmd -------------------------------------------


def test_pi5_pmic_over_ssh_follows_the_emulated_power(board: SshTransport, tmp_path: Path) -> None:
    marker = f"pmic-load-{uuid.uuid4().hex}"
    idle_mw, active_mw = 3200.0, 4100.0
    with Pi5PmicEmulator(tmp_path / "pmic", idle_mw=idle_mw, active_mw=active_mw,
                         marker=marker) as emulator:
        meter = build_meter(MeterSpec("pi5-pmic", path=str(emulator.script)), "pi5", board)
        assert isinstance(meter, DeviceSamplingMeter) and meter.interval_s == pytest.approx(0.1)
        meter.begin_window("idle")
        time.sleep(0.6)
        idle = meter.end_window("idle")
        assert set(idle.energy_mj) == set(PMIC_RAILS)  # EXT5V and BATT (voltage only) stay out
        assert idle.avg_power_mw == pytest.approx(idle_mw, rel=1e-3)

        meter.begin_window("load")
        active_before = emulator.active_s
        board.run_checked(f"sh -c 'sleep 1.5; :' {marker}", timeout_s=20)  # while sampling
        time.sleep(0.2)
        active_s = emulator.active_s - active_before
        load = meter.end_window("load")
        meter.close()
    expected_mj = idle_mw * load.duration_s + active_mw * active_s
    assert 1.4 < active_s < 2.5
    # Sampled on the device every 0.1 s (plus a sample's cost), whatever an SSH round trip
    # costs; the trapezoid misplaces each power step by at most half a gap.
    times = [r.time_s or 0.0 for r in load.readings]
    max_gap_s = max(b - a for a, b in pairwise(times))
    print(f"\nPi 5 PMIC over ssh: {load.total_energy_mj:.0f} mJ, emulated {expected_mj:.0f} mJ "
          f"({100 * (load.total_energy_mj / expected_mj - 1):+.1f}%), largest gap {max_gap_s:.3f} s")
    assert abs(load.total_energy_mj - expected_mj) <= active_mw * max_gap_s
    assert max_gap_s < 0.3 and load.notes == ()
    assert load.total_energy_mj == pytest.approx(expected_mj, rel=0.05)
    assert "VDD_CORE_A current(7)=" in load.readings[0].raw

    with pytest.raises(MeterReadError, match=r"device 'pi5': meter pi5-pmic: .*exited with"):
        build_meter(MeterSpec("pi5-pmic", path=str(tmp_path / "no-vcgencmd")), "pi5", board)
