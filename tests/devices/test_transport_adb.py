"""AdbTransport through the real adb server to our test adbd on 127.0.0.3 (tests/peers/adbd.py)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devices.transports import AdbTransport, CommandTimeout, IntegrityError, TransportError
from tests.peers.adbd import AdbdPeer, AdbServer
from tests.peers.contract import TransportContract

pytestmark = pytest.mark.timeout(60)


def make_transport(peer: AdbdPeer, server: AdbServer, **overrides: object) -> AdbTransport:
    args: dict[str, object] = dict(
        name="phone", serial=peer.serial, adb_server=server.address, connect_timeout_s=10.0
    )
    args.update(overrides)
    return AdbTransport(**args)  # type: ignore[arg-type]


@pytest.fixture
def transport_factory(adbd_peer: AdbdPeer, adb_server: AdbServer) -> Callable[[], AdbTransport]:
    return lambda: make_transport(adbd_peer, adb_server)


@pytest.fixture
def transport(transport_factory: Callable[[], AdbTransport]) -> Iterator[AdbTransport]:
    with transport_factory() as t:
        yield t


@pytest.fixture
def host_path(adbd_peer: AdbdPeer) -> Callable[[str], Path]:
    return lambda remote: adbd_peer.root / remote.lstrip("/")


@pytest.fixture
def drop_device(adbd_peer: AdbdPeer) -> Callable[[], None]:
    return adbd_peer.drop_connections


class TestAdbTransportContract(TransportContract):
    pass


def test_host_port_serial_is_connected_by_the_transport(adbd_peer: AdbdPeer, adb_server: AdbServer) -> None:
    assert adbd_peer.serial not in adb_server.adb("devices").stdout  # the fixture did not connect it
    with make_transport(adbd_peer, adb_server) as t:
        assert t.run(["getprop", "ro.product.model"], timeout_s=10).stdout == "HarnessPhone\n"
    assert f"{adbd_peer.serial}\tdevice" in adb_server.adb("devices").stdout


def test_workdir_is_under_data_local_tmp(transport: AdbTransport, adbd_peer: AdbdPeer) -> None:
    run_dir = transport.make_run_dir("trial")
    assert run_dir.startswith("/data/local/tmp/energy-harness/trial-")
    assert (adbd_peer.root / run_dir.lstrip("/")).is_dir()


def test_corrupted_push_is_detected_and_removed(
    transport: AdbTransport, adbd_peer: AdbdPeer, tmp_path: Path
) -> None:
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(200_000))
    run_dir = transport.make_run_dir("corrupt")
    adbd_peer.faults.corrupt_push = True
    with pytest.raises(IntegrityError, match="sha256 on the device") as info:
        transport.push(local, f"{run_dir}/model.tflite", timeout_s=30)
    assert "removed the bad copy" in str(info.value)
    assert not (adbd_peer.root / run_dir.lstrip("/") / "model.tflite").exists()


def test_disk_full_on_push_is_a_clear_error(
    transport: AdbTransport, adbd_peer: AdbdPeer, tmp_path: Path
) -> None:
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(500_000))
    run_dir = transport.make_run_dir("full")
    adbd_peer.faults.disk_full = True
    with pytest.raises(TransportError) as info:
        transport.push(local, f"{run_dir}/model.tflite", timeout_s=30)
    message = str(info.value)
    assert "device refused: write failed: No space left on device" in message and "free space" in message
    assert info.type is TransportError
    adbd_peer.faults.disk_full = False
    transport.push(local, f"{run_dir}/model.tflite", timeout_s=30)  # the stream state is sane afterwards


@pytest.mark.timeout(30)
def test_hung_device_times_out_without_hanging(transport: AdbTransport, adbd_peer: AdbdPeer) -> None:
    adbd_peer.faults.hang_on = "HANG-HERE"
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match="had not reported a pid"):
        transport.run("echo HANG-HERE", timeout_s=1.0)
    assert time.monotonic() - start < 1.0 + 1.5
    adbd_peer.faults.hang_on = None
    assert transport.run("echo fine", timeout_s=10).stdout == "fine\n"


@pytest.mark.timeout(30)
def test_drop_knob_mid_command_is_connection_lost(transport: AdbTransport, adbd_peer: AdbdPeer) -> None:
    from devices.transports import ConnectionLost

    adbd_peer.faults.drop_on = "DROP-ME"
    with pytest.raises(ConnectionLost, match="DROP-ME"):
        transport.run("echo DROP-ME; sleep 20", timeout_s=15)


def _closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_server_not_running_is_reported_and_never_started(adbd_peer: AdbdPeer) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = AdbTransport("phone", adbd_peer.serial, adb_server=("127.0.0.1", port), connect_timeout_s=2.0)
    with pytest.raises(TransportError, match=f"adb server not reachable.*adb -P {port} start-server"):
        t.open()
    time.sleep(0.5)
    assert _closed(port), "something started an adb server on the port"


def test_unknown_serial_fails_within_connect_timeout(adb_server: AdbServer) -> None:
    t = AdbTransport("phone", "NO-SUCH-PHONE", adb_server=adb_server.address, connect_timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(TransportError, match="device not ready within 1.5 s") as info:
        t.open()
    assert time.monotonic() - start < 1.5 + 1.5
    assert "not found" in str(info.value)


def test_constructor_validates_arguments() -> None:
    AdbTransport("p", "SERIAL")
    for bad in (
        {"serial": ""},
        {"serial": "a b"},
        {"workdir": "data/local/tmp"},
        {"adb_server": ("127.0.0.1", 0)},
        {"connect_timeout_s": -1},
    ):
        with pytest.raises(ValueError):
            AdbTransport(**({"name": "p", "serial": "SERIAL"} | bad))  # type: ignore[arg-type]
