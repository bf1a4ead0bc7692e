"""A real OpenSSH ``sshd`` on a loopback address, for transport tests.

:class:`SshdPeer` generates a host key and a client key (``ssh-keygen``), writes an sshd_config
(loopback ``ListenAddress``, our ``authorized_keys``, ``StrictModes no``, root login by key, pid
file in the tmp dir) and a ``known_hosts`` that pins the host key, starts
``/usr/sbin/sshd -D -f <config> -e`` and stops it (and every connection process it forked) on
:meth:`SshdPeer.stop`.

SFTP goes through this file run as a script (``--sftp-proxy``): a small proxy in front of
OpenSSH's ``sftp-server`` that passes bytes through unchanged unless the ``corrupt_uploads``
knob is on, in which case it flips the first data byte of every SFTP WRITE, as a bad link or
bad flash would. Only the standard library is used on that path.

Use the ``sshd_peer`` fixture (it skips with a reason when OpenSSH is not installed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SFTP_SERVERS = (
    Path("/usr/lib/openssh/sftp-server"),
    Path("/usr/libexec/sftp-server"),
    Path("/usr/lib/ssh/sftp-server"),
)
_CORRUPT_FLAG = "corrupt_uploads"
_SSH_FXP_WRITE = 6


def missing_tools() -> str | None:
    """Why an sshd peer cannot run here, or None."""
    if not SSHD.exists():
        return f"{SSHD} not found (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not found (apt-get install openssh-client)"
    if not any(p.exists() for p in SFTP_SERVERS):
        return "OpenSSH sftp-server not found"
    return None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True
    )
    return path.with_suffix(".pub").read_text().strip()


class SshdPeer:
    """One sshd on ``host`` (a 127.x.y.z address), owned by the test that starts it.

    Attributes (valid after :meth:`start`):
        host, port, user: Where to log in (as the current user).
        client_key: Private key authorized for login.
        known_hosts: known_hosts pinning this server's host key.
        other_host_key_line: A known_hosts line for the same address with a *different* key,
            for changed-key tests.
    """

    def __init__(self, base_dir: Path, host: str = "127.0.0.2") -> None:
        if not host.startswith("127."):
            raise ValueError(f"test peers listen on loopback only, got {host!r}")
        self.dir = base_dir
        self.host = host
        self.port = 0
        self.user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        self.client_key = base_dir / "client_key"
        self.known_hosts = base_dir / "known_hosts"
        self.log_path = base_dir / "sshd.log"
        self.other_host_key_line = ""
        self._proc: subprocess.Popen[bytes] | None = None

    # -- knobs --------------------------------------------------------------------------------

    @property
    def corrupt_uploads(self) -> bool:
        return (self.dir / _CORRUPT_FLAG).exists()

    @corrupt_uploads.setter
    def corrupt_uploads(self, on: bool) -> None:
        flag = self.dir / _CORRUPT_FLAG
        if on:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, timeout_s: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        host_key = self.dir / "ssh_host_ed25519_key"
        host_pub = _keygen(host_key)
        client_pub = _keygen(self.client_key)
        other_pub = _keygen(self.dir / "impostor_host_key")
        (self.dir / "authorized_keys").write_text(client_pub + "\n")
        sftp_server = next(p for p in SFTP_SERVERS if p.exists())
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)  # sshd's privsep dir
        for attempt in range(3):
            self.port = _free_port(self.host)
            config = self.dir / "sshd_config"
            config.write_text(
                "\n".join(
                    [
                        f"ListenAddress {self.host}:{self.port}",
                        f"HostKey {host_key}",
                        f"PidFile {self.dir / 'sshd.pid'}",
                        f"AuthorizedKeysFile {self.dir / 'authorized_keys'}",
                        "PubkeyAuthentication yes",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PermitRootLogin prohibit-password",
                        "StrictModes no",
                        "UsePAM no",
                        "UseDNS no",
                        "AllowTcpForwarding no",
                        "X11Forwarding no",
                        "PrintMotd no",
                        "LogLevel VERBOSE",
                        f"Subsystem sftp {sys.executable} -I {Path(__file__).resolve()} --sftp-proxy "
                        f"{sftp_server} {self.dir / _CORRUPT_FLAG}",
                        "",
                    ]
                )
            )
            log = self.log_path.open("ab")
            self._proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
            log.close()
            if self._wait_ready(timeout_s):
                break
            self.stop()
            if attempt == 2:
                raise RuntimeError(f"sshd did not start on {self.host}: {self.log_path.read_text()[-2000:]}")
        entry = f"[{self.host}]:{self.port}"
        self.known_hosts.write_text(f"{entry} {host_pub.rsplit(' ', 1)[0]}\n")
        self.other_host_key_line = f"{entry} {other_pub.rsplit(' ', 1)[0]}\n"

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def connection_pids(self) -> list[int]:
        """Every process below the listener: per-connection sshd monitors and session children
        and the commands they run (read from /proc)."""
        if self._proc is None:
            return []
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], list(children.get(self._proc.pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def drop_connections(self) -> None:
        """SIGKILL every connection's processes (not the listener): the device 'disappears'."""
        for pid in self.connection_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def freeze_connections(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) every connection's processes: a device that stops answering."""
        for pid in self.connection_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def stop(self) -> None:
        if self._proc is None:
            return
        self.drop_connections()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None


def sshd_peer_fixture(tmp_path: Path) -> Iterator[SshdPeer]:
    """Body of the ``sshd_peer`` pytest fixture: skip if OpenSSH is missing, else a started peer."""
    import pytest

    reason = missing_tools()
    if reason:
        pytest.skip(f"real sshd peer unavailable: {reason}")
    peer = SshdPeer(tmp_path / "sshd")
    try:
        peer.start()
    except PermissionError as e:
        pytest.skip(f"real sshd peer unavailable: {e}")
    try:
        yield peer
    finally:
        peer.stop()


# -- SFTP proxy (runs inside sshd's session, as a script) ---------------------------------------


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _corrupt_write(packet: bytearray) -> None:
    """Flip the first data byte of an SFTP WRITE packet (type, id, handle, offset, data)."""
    (handle_len,) = struct.unpack_from(">I", packet, 5)
    data_len_at = 5 + 4 + handle_len + 8
    (data_len,) = struct.unpack_from(">I", packet, data_len_at)
    if data_len:
        packet[data_len_at + 4] ^= 0xFF


def sftp_proxy(server: str, corrupt_flag: Path) -> int:
    corrupt = corrupt_flag.exists()
    proc = subprocess.Popen([server], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    to_server, from_server = proc.stdin.fileno(), proc.stdout.fileno()

    def server_to_client() -> None:
        while chunk := os.read(from_server, 1 << 16):
            _write_all(1, chunk)

    pump = threading.Thread(target=server_to_client, daemon=True)
    pump.start()
    try:
        while True:
            header = _read_exact(0, 4)
            packet = bytearray(_read_exact(0, struct.unpack(">I", header)[0]))
            if corrupt and packet and packet[0] == _SSH_FXP_WRITE:
                _corrupt_write(packet)
            _write_all(to_server, header + bytes(packet))
    except (EOFError, BrokenPipeError):
        pass
    proc.stdin.close()
    proc.wait()
    pump.join(timeout=5)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--sftp-proxy":
        sys.exit(sftp_proxy(sys.argv[2], Path(sys.argv[3])))
    sys.exit(f"usage: {sys.argv[0]} --sftp-proxy SFTP_SERVER CORRUPT_FLAG_FILE")
