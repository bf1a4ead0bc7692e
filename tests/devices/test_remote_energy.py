"""Energy through a remote device: an AndroidDevice whose inventory names an ODPM meter, over
the real adb server to the test adbd, with ODPM counters that follow a known power while the
phone's ``benchmark_model`` (the stand-in, sleeping a fixed time per inference) runs."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from devices.base import MeasureSettings
from devices.energy_protocol import EnergyProtocol
from devices.inventory import AdbConnection, DeviceSpec, MeterSpec
from devices.remote import AndroidDevice, RemoteTimeouts
from devices.remote.common import NO_ENERGY_NOTE
from tests.peers.adbd import AdbdPeer, AdbServer
from tests.peers.emulated_meters import OdpmEmulator, write_thermal_zone

pytestmark = pytest.mark.timeout(120)

FAKE = Path(__file__).resolve().parents[1] / "peers" / "fake_benchmark_model.py"
ODPM_DIR = "/data/local/tmp/sys/bus/iio/devices"
SETTINGS = MeasureSettings(threads=1, warmup_runs=1, min_seconds=0.2, min_runs=3)
PROTOCOL = EnergyProtocol(min_window_s=1.0, short_window_s=0.2, baseline_s=0.6, settle_s=0.15,
                          repeats=3, max_temp_c=80.0)
TIMEOUTS = RemoteTimeouts(command_s=10, push_base_s=10, run_base_s=30, cleanup_s=10)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from search.lowering import lower

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16,), name="input")
    outputs = keras.layers.Dense(4, activation="softmax", name="dense")(inputs)
    x = np.random.default_rng(0).random((8, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("energy") / "tiny.tflite"
    path.write_bytes(lower(keras.Model(inputs, outputs), {"dense": "float32"}, x).tflite_bytes)
    return path


def sleeping_binary(folder: Path, sleep_us: int) -> tuple[Path, str]:
    """The stand-in tool, each inference a fixed sleep (so its active time is known), run from a
    uniquely named copy: the returned marker counts only this test's tool as the workload."""
    marker = f"fake_benchmark_{uuid.uuid4().hex[:12]}.py"
    shutil.copy(FAKE, folder / marker)
    path = folder / "benchmark_model"
    path.write_text(f'#!/bin/sh\nFAKE_BENCHMARK_SLEEP_US={sleep_us} exec "{sys.executable}" "{folder / marker}" "$@"\n')
    path.chmod(0o755)
    return path, marker


def metered_phone(peer: AdbdPeer, server: AdbServer, binary: Path, zone: str) -> DeviceSpec:
    connection = AdbConnection(serial=peer.serial, benchmark_binary=binary, adb_server=server.address)
    return DeviceSpec(name="metered-phone", transport="adb", runner="benchmark_model",
                      connection=connection, workdir="/data/local/tmp/energy-harness",
                      tags=("pixel7",), thermal_zones=(zone,),
                      meter=MeterSpec("odpm", path=ODPM_DIR))


def test_a_metered_phone_reports_the_known_energy_per_inference(
    adbd_peer: AdbdPeer, adb_server: AdbServer, tiny_model: Path, tmp_path: Path
) -> None:
    zone = write_thermal_zone(adbd_peer.root / "data/local/tmp/sys/class/thermal", 0, 40.0)
    binary, marker = sleeping_binary(tmp_path, 15000)
    spec = metered_phone(adbd_peer, adb_server, binary, "/" + str(zone.relative_to(adbd_peer.root)))
    active_mw = 1200.0
    with (
        OdpmEmulator(adbd_peer.root / ODPM_DIR.lstrip("/"), idle_mw=400.0, active_mw=active_mw, marker=marker),
        AndroidDevice(spec, timeouts=TIMEOUTS, energy=PROTOCOL) as device,
    ):
        assert device.has_energy_meter
        m = device.measure(tiny_model, SETTINGS)

    expected_mj = active_mw * m.latency_ms_median / 1000.0  # the active power over one inference
    assert m.energy_source == "measured"
    assert m.energy_mj_median == pytest.approx(expected_mj, rel=0.08)
    assert m.energy_mj_spread is not None and m.energy_mj_spread < 0.1 * expected_mj
    assert m.power_mw_mean == pytest.approx(active_mw, rel=0.1)
    assert m.energy_window_s == PROTOCOL.min_window_s
    assert NO_ENERGY_NOTE not in m.notes
    detail = m.energy_detail
    assert detail is not None and detail["repeats"] == 3 and len(detail["records"]) == 3
    assert detail["baseline_power_mw"] == pytest.approx(400.0, rel=0.05)
    assert "S2M_VDD_CPUCL2" in str(detail["records"][0]["long"])  # raw counter readings kept
    assert m.output_matches is True  # the sleeping tool still computes the real output
    record = m.to_dict()
    import json

    json.dumps(record)  # the whole measurement, raw readings included, is storable as JSON


def test_a_hot_phone_is_refused_under_the_reject_policy(
    adbd_peer: AdbdPeer, adb_server: AdbServer, tiny_model: Path, tmp_path: Path
) -> None:
    from devices.energy_protocol import ThrottledError

    zone = write_thermal_zone(adbd_peer.root / "data/local/tmp/sys/class/thermal", 1, 96.0)
    binary, marker = sleeping_binary(tmp_path, 2000)
    spec = metered_phone(adbd_peer, adb_server, binary, "/" + str(zone.relative_to(adbd_peer.root)))
    hot = dataclasses.replace(PROTOCOL, throttle_policy="reject", cool_down_to_c=60.0,
                              cool_down_timeout_s=0.3, cool_down_poll_s=0.1, max_rejected=1)
    with (
        OdpmEmulator(adbd_peer.root / ODPM_DIR.lstrip("/"), idle_mw=400.0, active_mw=900.0, marker=marker),
        AndroidDevice(spec, timeouts=TIMEOUTS, energy=hot) as device,
        pytest.raises(ThrottledError, match="device 'metered-phone'"),
    ):
        device.measure(tiny_model, SETTINGS)
