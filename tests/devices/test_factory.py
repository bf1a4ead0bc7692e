"""make_device: inventory entries become the right devices, lazily (nothing connects until used),
and a device built from a TOML entry reaches a real sshd."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from devices.base import DeviceError, MeasureSettings
from devices.factory import make_device
from devices.inventory import LOCAL_SPEC, parse_inventory
from devices.local import LocalDevice
from devices.remote import AndroidDevice, LinuxBoardDevice, RemoteTimeouts
from tests.peers.sshd import SshdPeer

pytestmark = pytest.mark.timeout(60)

INVENTORY = """
[defaults]
known_hosts = "known_hosts"
key_file = "lab_key"

[devices.pi5-a]
transport = "ssh"
host = "127.0.0.1"
port = 1
user = "pi"
python = "/home/pi/.venv/bin/python"
tags = ["pi5", "arm64"]
threads = 4
connect_timeout_s = 2.0

[devices.pixel7]
transport = "adb"
serial = "29041FDH2000C1"
benchmark_binary = "build/benchmark_model"
taskset = "f0"
adb_server = "127.0.0.1:1"
tags = ["pixel7", "android"]
class = "flagship"
connect_timeout_s = 2.0
"""


def test_each_transport_gets_its_device_and_nothing_connects(tmp_path: Path) -> None:
    inventory = parse_inventory(INVENTORY, tmp_path / "lab.toml")  # no key, no server, no phone
    local = make_device(LOCAL_SPEC)
    assert isinstance(local, LocalDevice) and local.name == "local" and local.tags == ("local",)
    pi = make_device(inventory["pi5-a"])
    assert isinstance(pi, LinuxBoardDevice) and not isinstance(pi, AndroidDevice)
    assert (pi.name, pi.tags, pi.device_class) == ("pi5-a", ("pi5", "arm64"), "pi5")
    assert pi.settings_for(MeasureSettings(threads=1)).threads == 4 and not pi.has_energy_meter
    phone = make_device(inventory["pixel7"], timeouts=RemoteTimeouts(command_s=3))
    assert isinstance(phone, AndroidDevice) and phone.device_class == "flagship"
    assert phone.timeouts.command_s == 3 and phone.settings_for(MeasureSettings(threads=2)).threads == 2
    for device in (local, pi, phone):
        device.close()  # never opened: closing is still fine


def test_unreachable_devices_fail_cleanly_and_quickly(tmp_path: Path) -> None:
    inventory = parse_inventory(INVENTORY, tmp_path / "lab.toml")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3")
    for name, problem in (("pi5-a", "key_file"), ("pixel7", "adb server not reachable")):
        with make_device(inventory[name]) as device:
            start = time.monotonic()
            report = device.health_check()
            assert not report.ok and report.problems[0].startswith("unreachable: ")
            assert f"'{name}'" in report.problems[0] and problem in report.problems[0]
            with pytest.raises(DeviceError, match=f"device '{name}'"):
                device.measure(model, MeasureSettings(min_seconds=0.0, min_runs=1))
            assert time.monotonic() - start < 5


def test_constructors_refuse_the_wrong_transport(tmp_path: Path) -> None:
    inventory = parse_inventory(INVENTORY, tmp_path / "lab.toml")
    with pytest.raises(ValueError, match="needs an ssh device"):
        LinuxBoardDevice(inventory["pixel7"])
    with pytest.raises(ValueError, match="needs an adb device"):
        AndroidDevice(inventory["pi5-a"])
    with pytest.raises(ValueError, match="needs an ssh device, got transport 'local'"):
        LinuxBoardDevice(LOCAL_SPEC)


def test_a_toml_entry_reaches_a_real_board(sshd_peer: SshdPeer, tmp_path: Path) -> None:
    text = f"""
[devices.board]
transport = "ssh"
host = "{sshd_peer.host}"
port = {sshd_peer.port}
user = "{sshd_peer.user}"
key_file = "{sshd_peer.client_key}"
known_hosts = "{sshd_peer.known_hosts}"
python = "{sys.executable}"
workdir = "{tmp_path / 'workdir'}"
tags = ["x86"]
"""
    with make_device(parse_inventory(text, tmp_path / "lab.toml")["board"]) as device:
        assert device.health_check().ok
        sshd_peer.drop_connections()  # the idle link dies: the next check reconnects
        time.sleep(0.2)
        report = device.health_check()
    assert report.ok, report.summary()
    assert report.device == "board" and report.facts["transport"] == "ssh"
    assert report.facts["python"] and float(report.facts["free_mb"]) > 0
