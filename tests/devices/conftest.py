"""Fixtures for transport tests: a real OpenSSH sshd and a real adb server with our test adbd,
all on loopback addresses (see tests/peers)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devices.transports import AdbTransport, SshTransport
from tests.peers.adbd import AdbdPeer, AdbServer, adb_server_fixture, adbd_peer_fixture
from tests.peers.sshd import SshdPeer, sshd_peer_fixture


@pytest.fixture
def sshd_peer(tmp_path: Path) -> Iterator[SshdPeer]:
    """A started sshd on 127.0.0.2 (skips when OpenSSH is not installed)."""
    yield from sshd_peer_fixture(tmp_path)


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdbServer]:
    """The real adb server on 127.0.0.1:<free port> (skips when adb is not installed)."""
    yield from adb_server_fixture(tmp_path_factory.mktemp("adb-home"))


@pytest.fixture
def adbd_peer(tmp_path: Path, adb_server: AdbServer) -> Iterator[AdbdPeer]:
    """A test adbd on 127.0.0.3 that the server has *not* connected yet (transports connect)."""
    yield from adbd_peer_fixture(tmp_path / "phone", adb_server, connect=False)


@pytest.fixture
def phone(adbd_peer: AdbdPeer, adb_server: AdbServer) -> Iterator[AdbTransport]:
    """An open adb transport to :func:`adbd_peer`."""
    with AdbTransport("phone", adbd_peer.serial, adb_server=adb_server.address,
                      connect_timeout_s=10.0) as transport:
        yield transport


@pytest.fixture
def board(sshd_peer: SshdPeer, tmp_path: Path) -> Iterator[SshTransport]:
    """An open SSH transport to :func:`sshd_peer`, as a Raspberry Pi 5 named ``pi5``."""
    with SshTransport("pi5", sshd_peer.host, sshd_peer.port, sshd_peer.user, sshd_peer.client_key,
                      sshd_peer.known_hosts, str(tmp_path / "workdir"),
                      connect_timeout_s=5.0) as transport:
        yield transport
