"""The test adbd against the real adb server: the stock adb client and adbutils must both work
through it, and its fault knobs must do what they say."""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import adbutils
import pytest

from tests.peers.adbd import (
    A_CNXN,
    A_VERSION,
    MAX_PAYLOAD,
    AdbdPeer,
    AdbServer,
    adb_server_fixture,
    adbd_peer_fixture,
    pack_message,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    yield from adb_server_fixture(tmp_path_factory.mktemp("adb-home"))


@pytest.fixture
def peer(tmp_path: Path, adb_server: AdbServer) -> Iterator[AdbdPeer]:
    yield from adbd_peer_fixture(tmp_path / "phone", adb_server, connect=True)


@pytest.fixture
def device(peer: AdbdPeer, adb_server: AdbServer) -> adbutils.AdbDevice:
    host, port = adb_server.address
    return adbutils.AdbClient(host=host, port=port).device(peer.serial)


def test_message_header_layout() -> None:
    message = pack_message(A_CNXN, A_VERSION, MAX_PAYLOAD, b"host::\0")
    command, arg0, arg1, length, check, magic = struct.unpack("<6I", message[:24])
    assert message[:4] == b"CNXN" and (arg0, arg1, length) == (0x01000001, 1024 * 1024, 7)
    assert check == sum(b"host::\0") and magic == command ^ 0xFFFFFFFF


def test_adb_server_lists_the_device_with_its_banner(peer: AdbdPeer, adb_server: AdbServer) -> None:
    listing = adb_server.adb("devices", "-l").stdout
    assert f"{peer.serial}" in listing and "device product:harness_phone model:HarnessPhone" in listing
    assert "shell_v2" in adb_server.adb("-s", peer.serial, "features").stdout


def test_adb_client_shell_gets_exit_code_and_stderr(peer: AdbdPeer, adb_server: AdbServer) -> None:
    done = adb_server.adb("-s", peer.serial, "shell", "echo hi; echo oops >&2; exit 3")
    assert (done.returncode, done.stdout, done.stderr) == (3, "hi\n", "oops\n")


def test_adb_client_push_and_pull(peer: AdbdPeer, adb_server: AdbServer, tmp_path: Path) -> None:
    data = os.urandom(2_500_000)  # several WRTE messages and sync DATA chunks
    (tmp_path / "in.bin").write_bytes(data)
    assert (
        adb_server.adb(
            "-s", peer.serial, "push", str(tmp_path / "in.bin"), "/data/local/tmp/f.bin"
        ).returncode
        == 0
    )
    assert (peer.root / "data/local/tmp/f.bin").read_bytes() == data
    assert (
        adb_server.adb(
            "-s", peer.serial, "pull", "/data/local/tmp/f.bin", str(tmp_path / "out.bin")
        ).returncode
        == 0
    )
    assert (tmp_path / "out.bin").read_bytes() == data


def test_adbutils_shell_v1_v2_and_exec(device: adbutils.AdbDevice) -> None:
    assert device.shell("echo via shell; echo err >&2") == "via shell\nerr"
    v1 = device.shell2("echo one; false")  # v1: the "; echo X4EXIT:$?" idiom
    assert (v1.returncode, v1.output) == (1, "one\n")
    v2 = device.shell2("echo two; echo e >&2; exit 4", v2=True)
    assert (v2.returncode, v2.stdout, v2.stderr) == (4, "two\n", "e\n")
    with device.open_transport() as conn:
        conn.send_command("exec:printf raw")
        conn.check_okay()
        assert conn.read_until_close() == "raw"
    assert device.prop.model == "HarnessPhone"


def test_adbutils_sync_stat_list_push_pull(
    device: adbutils.AdbDevice, peer: AdbdPeer, tmp_path: Path
) -> None:
    device.sync.push(b"hello", "/data/local/tmp/dir/h.txt")
    assert (peer.root / "data/local/tmp/dir/h.txt").read_bytes() == b"hello"
    info = device.sync.stat("/data/local/tmp/dir/h.txt")
    assert info.size == 5 and info.mode & 0o170000 == 0o100000
    assert device.sync.stat("/data/local/tmp/missing").mtime is None
    assert [f.path for f in device.sync.list("/data/local/tmp/dir")] == [".", "..", "h.txt"]
    device.sync.pull("/data/local/tmp/dir/h.txt", tmp_path / "h.txt")
    assert (tmp_path / "h.txt").read_bytes() == b"hello"


def test_paths_map_into_the_peer_root(device: adbutils.AdbDevice, peer: AdbdPeer) -> None:
    assert device.shell("cd /data/local/tmp && pwd") == "/data/local/tmp"
    assert device.shell("touch /sdcard/marker && ls /sdcard") == "marker"
    assert (peer.root / "sdcard/marker").exists()
    with pytest.raises(adbutils.AdbError):
        device.sync.push(b"x", "/system/evil")  # read-only outside /data and /sdcard
    assert not Path("/system/evil").exists()


def test_knob_corrupt_push(device: adbutils.AdbDevice, peer: AdbdPeer) -> None:
    peer.faults.corrupt_push = True
    device.sync.push(b"abc", "/data/local/tmp/c.bin")
    assert (peer.root / "data/local/tmp/c.bin").read_bytes() == bytes([ord("a") ^ 0xFF]) + b"bc"


def test_knob_disk_full(peer: AdbdPeer, adb_server: AdbServer, tmp_path: Path) -> None:
    peer.faults.disk_full = True
    (tmp_path / "f").write_bytes(b"x" * 1000)
    done = adb_server.adb("-s", peer.serial, "push", str(tmp_path / "f"), "/data/local/tmp/f")
    assert done.returncode != 0 and "No space left on device" in done.stdout + done.stderr
    assert not (peer.root / "data/local/tmp/f").exists()


@pytest.mark.timeout(20)
def test_knob_hang_and_adbutils_own_timeout_does_not_cover_it(
    device: adbutils.AdbDevice, peer: AdbdPeer
) -> None:
    """adbutils applies shell(timeout=…) only after the stream opened: a device that never
    answers the OPEN hangs it. This is why AdbTransport enforces its own deadline."""
    peer.faults.hang_on = "STUCK"
    outcome: list[object] = []
    worker = threading.Thread(
        target=lambda: outcome.append(_try(lambda: device.shell("echo STUCK", timeout=1))), daemon=True
    )
    worker.start()
    worker.join(2.5)
    assert worker.is_alive() and not outcome, "expected adbutils to hang past its 1 s timeout"
    peer.drop_connections()  # releases it
    worker.join(10)
    assert not worker.is_alive() and isinstance(outcome[0], Exception)


def _try(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e


@pytest.mark.timeout(20)
def test_knob_drop_mid_command(peer: AdbdPeer, adb_server: AdbServer) -> None:
    peer.faults.drop_on = "VANISH"
    start = time.monotonic()
    done = adb_server.adb("-s", peer.serial, "shell", "echo VANISH; sleep 10", timeout_s=15)
    assert time.monotonic() - start < 5, "the connection should have dropped after 0.3 s"
    assert done.stdout == "VANISH\n"
