"""SshTransport against a real OpenSSH sshd on 127.0.0.2 (tests/peers/sshd.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devices.transports import CommandTimeout, HostKeyError, IntegrityError, SshTransport, TransportError
from tests.peers.contract import TransportContract
from tests.peers.sshd import SshdPeer

pytestmark = pytest.mark.timeout(60)


def make_transport(peer: SshdPeer, workdir: Path, **overrides: object) -> SshTransport:
    args: dict[str, object] = dict(
        name="board",
        host=peer.host,
        port=peer.port,
        user=peer.user,
        key_file=peer.client_key,
        known_hosts=peer.known_hosts,
        workdir=str(workdir),
        connect_timeout_s=5.0,
    )
    args.update(overrides)
    return SshTransport(**args)  # type: ignore[arg-type]


@pytest.fixture
def transport_factory(sshd_peer: SshdPeer, tmp_path: Path) -> Callable[[], SshTransport]:
    return lambda: make_transport(sshd_peer, tmp_path / "device-workdir")


@pytest.fixture
def transport(transport_factory: Callable[[], SshTransport]) -> Iterator[SshTransport]:
    with transport_factory() as t:
        yield t


@pytest.fixture
def host_path() -> Callable[[str], Path]:
    return Path  # the "board" is this machine


@pytest.fixture
def drop_device(sshd_peer: SshdPeer) -> Callable[[], None]:
    return sshd_peer.drop_connections


class TestSshTransportContract(TransportContract):
    pass


def test_unknown_host_is_refused(sshd_peer: SshdPeer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    t = make_transport(sshd_peer, tmp_path, known_hosts=empty)
    with pytest.raises(HostKeyError, match="unknown host") as info:
        t.open()
    assert f"[{sshd_peer.host}]:{sshd_peer.port}" in str(info.value) and "SHA256:" in str(info.value)
    assert not t.is_open
    assert empty.read_text() == "", "the refused key must not be remembered"


def test_changed_host_key_is_refused_even_when_unknown_hosts_are_allowed(
    sshd_peer: SshdPeer, tmp_path: Path
) -> None:
    impostor = tmp_path / "impostor_known_hosts"
    impostor.write_text(sshd_peer.other_host_key_line)
    for allow in (False, True):
        t = make_transport(sshd_peer, tmp_path, known_hosts=impostor, allow_unknown_hosts=allow)
        with pytest.raises(HostKeyError, match="CHANGED"):
            t.open()
        assert not t.is_open


def test_unknown_host_accepted_only_when_allowed_explicitly(sshd_peer: SshdPeer, tmp_path: Path) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with make_transport(sshd_peer, tmp_path, known_hosts=empty, allow_unknown_hosts=True) as t:
        assert t.run("echo hi", timeout_s=10).stdout == "hi\n"
    assert empty.read_text() == ""


def test_wrong_client_key_is_a_clear_error(sshd_peer: SshdPeer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(TransportError, match="authentication failed"):
        make_transport(sshd_peer, tmp_path, key_file=stranger).open()


def test_nothing_listening_is_a_clear_error(sshd_peer: SshdPeer, tmp_path: Path) -> None:
    t = make_transport(sshd_peer, tmp_path)
    sshd_peer.stop()
    start = time.monotonic()
    with pytest.raises(TransportError, match="is sshd running"):
        t.open()
    assert time.monotonic() - start < 6


def test_corrupted_upload_is_detected_and_removed(
    transport: SshTransport, sshd_peer: SshdPeer, tmp_path: Path
) -> None:
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(200_000))
    run_dir = transport.make_run_dir("corrupt")
    sshd_peer.corrupt_uploads = True  # the SFTP proxy flips a byte of every WRITE on the server side
    with pytest.raises(IntegrityError, match="sha256 on the device") as info:
        transport.push(local, f"{run_dir}/model.tflite", timeout_s=30)
    assert "removed the bad copy" in str(info.value)
    assert not Path(run_dir, "model.tflite").exists()
    sshd_peer.corrupt_uploads = False
    transport.push(local, f"{run_dir}/model.tflite", timeout_s=30)
    assert Path(run_dir, "model.tflite").read_bytes() == local.read_bytes()


def test_push_to_full_device_names_free_space(transport: SshTransport, tmp_path: Path) -> None:
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(100_000))
    with pytest.raises(TransportError) as info:
        transport.push(local, "/dev/full", timeout_s=20)
    assert "only 0 of 100000 bytes landed" in str(info.value) and "df -k on the device" in str(info.value)


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (a really full disk); skips where mounting is not permitted."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


def test_push_to_a_really_full_filesystem(sshd_peer: SshdPeer, tiny_tmpfs: Path, tmp_path: Path) -> None:
    local = tmp_path / "model.tflite"
    local.write_bytes(os.urandom(1_000_000))
    with make_transport(sshd_peer, tiny_tmpfs) as t:
        run_dir = t.make_run_dir("full")
        with pytest.raises(TransportError) as info:
            t.push(local, f"{run_dir}/model.tflite", timeout_s=30)
    message = str(info.value)
    assert "of 1000000 bytes landed" in message and "100%" in message, message


@pytest.mark.timeout(30)
def test_copy_that_cannot_finish_times_out(transport: SshTransport, tmp_path: Path) -> None:
    local = tmp_path / "big.bin"
    with local.open("wb") as f:
        f.truncate(300 * 1024 * 1024)  # sparse: costs no disk here, 300 MB on the wire
    run_dir = transport.make_run_dir("slow")
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match="deadline"):
        transport.push(local, f"{run_dir}/big.bin", timeout_s=0.5)
    assert time.monotonic() - start < 0.5 + 2.0
    assert transport.run("echo alive", timeout_s=10).stdout == "alive\n"


@pytest.mark.timeout(30)
def test_frozen_device_cannot_hang_a_command(transport: SshTransport, sshd_peer: SshdPeer) -> None:
    assert transport.run("true", timeout_s=10).ok
    sshd_peer.freeze_connections()
    try:
        start = time.monotonic()
        with pytest.raises(CommandTimeout, match="still running after 1 s"):
            transport.run("echo hi", timeout_s=1.0)
        assert time.monotonic() - start < 1.0 + 1.5
    finally:
        sshd_peer.freeze_connections(False)


def test_constructor_validates_arguments(tmp_path: Path) -> None:
    ok = dict(
        name="b",
        host="127.0.0.2",
        port=22,
        user="u",
        key_file=tmp_path / "k",
        known_hosts=tmp_path / "kh",
        workdir="/tmp/w",
    )
    SshTransport(**ok)  # type: ignore[arg-type]
    for bad in (
        {"port": 0},
        {"workdir": "relative"},
        {"workdir": "/"},
        {"host": ""},
        {"connect_timeout_s": 0},
    ):
        with pytest.raises(ValueError):
            SshTransport(**(ok | bad))  # type: ignore[arg-type]


def test_output_still_arriving_after_the_exit_status_is_kept(transport: SshTransport) -> None:
    """The shell exits at once; a child it left keeps writing for longer than the EOF grace.
    Regression: on a loaded host the tail of a large output came after the grace and was lost."""
    script = "(for i in 1 2 3 4; do sleep 0.5; echo line$i; done) & echo started"
    result = transport.run(script, timeout_s=20)
    assert result.ok
    assert result.stdout.split() == ["started", "line1", "line2", "line3", "line4"]


def test_a_silent_child_holding_the_channel_ends_the_wait_after_the_grace(transport: SshTransport) -> None:
    started = time.monotonic()
    result = transport.run("(sleep 30) & echo started", timeout_s=20)
    assert result.ok and result.stdout == "started\n"
    assert time.monotonic() - started < 10  # the grace (1 s) and not the child's 30 s or the deadline


def test_an_idle_link_sends_keepalives(sshd_peer: SshdPeer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Between measurements the link idles for minutes while the host trains; a keepalive keeps
    NATs and firewalls from dropping it (paramiko logs each one it sends)."""
    caplog.set_level(logging.DEBUG, logger="paramiko.transport")
    with make_transport(sshd_peer, tmp_path / "w", keepalive_s=1) as transport:
        assert transport.run("true", timeout_s=10).ok
        time.sleep(3.0)
        assert transport.run("echo still here", timeout_s=10).stdout == "still here\n"
    assert any("keepalive@" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with make_transport(sshd_peer, tmp_path / "w", keepalive_s=0) as transport:
        assert transport.run("true", timeout_s=10).ok
        time.sleep(2.0)
    assert not any("keepalive@" in r.getMessage() for r in caplog.records)
