"""Inventory files: every key read and validated, mistakes named by file, device and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.inventory import (
    LOCAL,
    AdbConnection,
    InventoryError,
    SshConnection,
    load_inventory,
    parse_inventory,
)

LAB = """
[defaults]
known_hosts = "known_hosts"
key_file = "keys/id_ed25519"
user = "pi"

[devices.pi5-a]
transport = "ssh"
host = "10.0.0.21"
python = "/home/pi/venv/bin/python"
workdir = "/home/pi/energy-harness"
tags = ["pi5", "arm64"]
threads = 4
thermal_zones = ["/sys/class/thermal/thermal_zone0/temp"]
meter = { kind = "pi5-pmic", path = "/usr/bin/vcgencmd" }

[devices.pi5-b]
transport = "ssh"
host = "10.0.0.22"
port = 2222
keepalive_s = 0
tags = ["pi5"]

[devices.pixel7]
transport = "adb"
serial = "29041FDH2000C1"
benchmark_binary = "/opt/android/benchmark_model"
taskset = "f0"
tags = ["pixel7", "android"]
class = "tensor-g2"
meter = { kind = "odpm", rails = ["S4M_VDD_CPUCL0"] }
"""


def test_a_full_inventory_reads_every_key(tmp_path: Path) -> None:
    source = tmp_path / "lab.toml"
    inventory = parse_inventory(LAB, source)

    assert set(inventory.devices) == {LOCAL, "pi5-a", "pi5-b", "pixel7"}
    pi = inventory["pi5-a"]
    assert pi.transport == "ssh" and pi.runner == "litert"
    assert pi.ssh == SshConnection(host="10.0.0.21", port=22, user="pi",
                                   key_file=tmp_path / "keys/id_ed25519",
                                   known_hosts=tmp_path / "known_hosts",
                                   python="/home/pi/venv/bin/python")
    assert pi.workdir == "/home/pi/energy-harness"
    assert pi.threads == 4 and pi.device_class == "pi5"
    assert pi.thermal_zones == ("/sys/class/thermal/thermal_zone0/temp",)
    assert pi.meter is not None and (pi.meter.kind, pi.meter.path) == ("pi5-pmic", "/usr/bin/vcgencmd")
    assert inventory["pi5-b"].ssh.port == 2222 and inventory["pi5-b"].workdir == "/tmp/energy-harness"
    assert pi.ssh.keepalive_s == 15 and inventory["pi5-b"].ssh.keepalive_s == 0  # default, and off

    phone = inventory["pixel7"]
    assert phone.runner == "benchmark_model" and phone.device_class == "tensor-g2"
    assert isinstance(phone.connection, AdbConnection)
    assert phone.adb.benchmark_binary == Path("/opt/android/benchmark_model")
    assert phone.adb.taskset == "f0" and phone.workdir == "/data/local/tmp/energy-harness"
    assert phone.meter is not None and phone.meter.options == {"rails": ["S4M_VDD_CPUCL0"]}


def test_select_by_name_and_by_tag_in_order_without_repeats(tmp_path: Path) -> None:
    inventory = parse_inventory(LAB, tmp_path / "lab.toml")

    names = [spec.name for spec in inventory.select(["pixel7", "tag:pi5", "pi5-a", "local"])]

    assert names == ["pixel7", "pi5-a", "pi5-b", "local"]


@pytest.mark.parametrize("selector, message", [
    ("tag:jetson", "no device has tag 'jetson'"),
    ("pi6", "device 'pi6': not in the inventory"),
])
def test_select_names_what_is_unknown(tmp_path: Path, selector: str, message: str) -> None:
    inventory = parse_inventory(LAB, tmp_path / "lab.toml")

    with pytest.raises(InventoryError, match=message):
        inventory.select([selector])


def _entry(body: str) -> str:
    return f'[devices.board]\n{body}\n'


SSH_OK = 'transport = "ssh"\nhost = "h"\nuser = "u"\nkey_file = "k"\nknown_hosts = "kh"\n'
ADB_OK = 'transport = "adb"\nserial = "s"\nbenchmark_binary = "b"\n'


@pytest.mark.parametrize("body, key, problem", [
    ('host = "h"', "transport", "missing"),
    ('transport = "telnet"', "transport", "not one of ssh, adb"),
    (SSH_OK.replace('host = "h"\n', ""), "host", "missing"),
    (SSH_OK + "port = 70000", "port", "1..65535"),
    (SSH_OK + 'port = "22"', "port", "whole number"),
    (SSH_OK + "threads = 0", "threads", "1..1024"),
    (SSH_OK + 'workdir = "relative/dir"', "workdir", "absolute path"),
    (SSH_OK + 'workdir = "/"', "workdir", "cannot be a working directory"),
    (SSH_OK + 'tags = "pi5"', "tags", "list of names"),
    (SSH_OK + 'tags = ["a b"]', "tags", "list of names"),
    (SSH_OK + 'serial = "x"', "serial", "unknown key for transport 'ssh'"),
    (SSH_OK + 'runner = "benchmark_model"', "runner", "not one of litert"),
    (SSH_OK + "allow_unknown_hosts = 1", "allow_unknown_hosts", "true or false"),
    (SSH_OK + "keepalive_s = 2.5", "keepalive_s", "whole number in 0..3600"),
    (SSH_OK + 'thermal_zones = ["temp"]', "thermal_zones", "absolute paths"),
    (SSH_OK + 'meter = { kind = "multimeter" }', "meter", "kind 'multimeter' is not one of"),
    (SSH_OK + 'meter = { kind = "rapl", path = "" }', "meter", "path must be a non-empty string"),
    (SSH_OK + "min_free_mb = -1", "min_free_mb", "number >= 0"),
    (SSH_OK + "connect_timeout_s = inf", "connect_timeout_s", "finite number"),
    (SSH_OK + 'workdir = "//"', "workdir", "cannot be a working directory"),
    (SSH_OK + 'thermal_zones = ["/sys/a\\tb"]', "thermal_zones", "absolute paths"),
    (ADB_OK.replace('serial = "s"\n', ""), "serial", "missing"),
    (ADB_OK.replace('serial = "s"', 'serial = "a b"'), "serial", "whitespace"),
    (ADB_OK + 'taskset = "cpu0"', "taskset", "hexadecimal CPU mask"),
    (ADB_OK + 'delegate = "hexagon"', "delegate", "'gpu' or 'nnapi'"),
    (ADB_OK + 'adb_server = "localhost"', "adb_server", "'host:port'"),
    (ADB_OK + 'python = "python3"', "python", "unknown key for transport 'adb'"),
])
def test_a_bad_entry_names_the_file_the_device_and_the_key(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    source = tmp_path / "lab.toml"

    with pytest.raises(InventoryError) as caught:
        parse_inventory(_entry(body), source)

    message = str(caught.value)
    assert "\n" not in message
    assert f"inventory {source}: device 'board': key '{key}': " in message
    assert problem in message


def test_defaults_may_hold_keys_of_either_transport(tmp_path: Path) -> None:
    text = ('[defaults]\nuser = "pi"\nkey_file = "k"\nknown_hosts = "kh"\nbenchmark_binary = "b"\n'
            '[devices.phone]\ntransport = "adb"\nserial = "s"\n'
            '[devices.board]\ntransport = "ssh"\nhost = "h"\n')

    inventory = parse_inventory(text, tmp_path / "lab.toml")

    assert inventory["phone"].adb.benchmark_binary == tmp_path / "b"
    assert inventory["board"].ssh.user == "pi"


@pytest.mark.parametrize("text, problem", [
    ("[devices.board\n", "not valid TOML"),
    ("[device.board]\n", "unknown top-level key(s) ['device']"),
    ("devices = 3\n", "must be tables"),
    ('[devices.local]\ntransport = "ssh"\n', "reserved for the host"),
    ('[devices."bad name"]\ntransport = "ssh"\n', "device 'bad name': names may hold only"),
    ('[defaults]\ncolour = "red"\n[devices.b]\n' + SSH_OK, "key 'colour': unknown key"),
])
def test_bad_files_are_refused_with_one_line(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(text, tmp_path / "lab.toml")

    assert problem in str(caught.value) and "\n" not in str(caught.value)


def test_load_reads_devices_toml_files_and_refuses_a_name_defined_twice(tmp_path: Path) -> None:
    folder = tmp_path / "devices"
    folder.mkdir()
    (folder / "a.toml").write_text('[devices.board]\n' + SSH_OK)
    (folder / "b.toml").write_text('[devices.phone]\n' + ADB_OK)

    assert set(load_inventory(cwd=tmp_path).devices) == {LOCAL, "board", "phone"}

    (folder / "c.toml").write_text('[devices.board]\n' + SSH_OK)
    with pytest.raises(InventoryError, match=r"c\.toml: device 'board' is also defined in .*a\.toml"):
        load_inventory(cwd=tmp_path)


def test_without_files_only_the_host_is_known(tmp_path: Path) -> None:
    inventory = load_inventory(cwd=tmp_path)

    assert list(inventory.devices) == [LOCAL]
    assert inventory[LOCAL].transport == "local"


def test_a_missing_inventory_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"inventory .*nope\.toml: no such file"):
        load_inventory([tmp_path / "nope.toml"])
