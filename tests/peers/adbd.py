"""A test adbd in Python that speaks the real adb transport protocol over TCP, and a real adb
server to reach it.

The real adb server (Debian's ``adb``, 1.0.41) connects to :class:`AdbdPeer` with
``host:connect:127.0.0.x:<port>`` exactly as it connects to a phone in TCP/IP mode, so adbutils
and our :class:`~devices.transports.adb.AdbTransport` are exercised end to end.

Protocol (AOSP ``adb/protocol.txt``): every message is a 24-byte little-endian header
``command, arg0, arg1, data_length, data_crc32 (byte sum), magic = command ^ 0xffffffff``
followed by the payload. We answer the server's ``CNXN`` with our own ``CNXN`` (version
0x01000001, max payload 1 MiB, banner ``device::ro.product.model=…;…;features=shell_v2,…``) and
no ``AUTH``. Streams: ``OPEN(local, 0, "service\\0")`` → ``OKAY(ours, theirs)``; every ``WRTE`` is
acknowledged with ``OKAY`` and a sender waits for that ``OKAY`` before its next ``WRTE``;
``CLSE`` ends a stream (``CLSE(0, theirs)`` refuses an ``OPEN``).

Services: ``shell:<cmd>`` (v1: raw bytes, stderr merged, no exit code), ``shell,v2[,raw]:<cmd>``
(shell protocol v2 packets ``id:u8 len:u32 data``: 0 stdin, 1 stdout, 2 stderr, 3 exit,
4 close-stdin), ``exec:<cmd>`` and ``sync:`` (``SYNC.TXT``: STAT, LIST, SEND, RECV, DATA, DONE,
OKAY, FAIL, QUIT).

The device's filesystem: the peer owns a root directory ``root``. Commands run with
``/bin/sh -c`` on this machine with ``cwd=root``; in a command, every path starting with
``/data`` or ``/sdcard`` is rewritten to ``<root>/data…`` / ``<root>/sdcard…`` (a textual
rewrite, like a chroot for just those trees) and ``<root>`` is removed again from the output.
``sync:`` maps paths the same way; outside ``/data`` and ``/sdcard`` it only reads (and
writes to ``/dev/null``, ``/dev/zero``, ``/dev/full``), like a read-only system partition.
``getprop`` is provided from ``<root>/system/bin`` with the peer's properties.

Fault knobs (:class:`Faults`, changeable while running): drop the TCP connection shortly after a
command containing a marker starts, never answer an ``OPEN`` containing a marker (hung device),
corrupt pushed bytes, or fail every push with ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import queue
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

A_SYNC, A_CNXN, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_AUTH = (
    0x434E5953,
    0x4E584E43,
    0x4E45504F,
    0x59414B4F,
    0x45534C43,
    0x45545257,
    0x48545541,
)
A_VERSION = 0x01000001
MAX_PAYLOAD = 1024 * 1024
SYNC_DATA_MAX = 64 * 1024
_HEADER = struct.Struct("<6I")
_PATH_RE = re.compile(r"(?<![A-Za-z0-9_./-])/(?:data|sdcard)(?![A-Za-z0-9_.-])")
_DEV_PASSTHROUGH = frozenset({"/dev/null", "/dev/zero", "/dev/full"})
_DROP_DELAY_S = 0.3
ADB = shutil.which("adb") or "/usr/bin/adb"


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return _HEADER.pack(command, arg0, arg1, len(data), sum(data) & 0xFFFFFFFF, command ^ 0xFFFFFFFF) + data


@dataclass
class Faults:
    """Fault injection knobs; change them at any time.

    Attributes:
        drop_on: Drop the whole TCP connection (device vanishes) 0.3 s after a shell/exec
            command containing this text starts.
        hang_on: Never answer an OPEN whose service string contains this text.
        corrupt_push: Flip the first byte of every pushed file as it is written.
        disk_full: Fail every push with ENOSPC ("write failed: No space left on device").
    """

    drop_on: str | None = None
    hang_on: str | None = None
    corrupt_push: bool = False
    disk_full: bool = False


class _Stream:
    """One adb stream (a service instance) inside a connection."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.inbox: queue.Queue[bytes | None] = queue.Queue()
        self.closed = threading.Event()
        self._can_send = threading.Event()
        self._can_send.set()
        self._write_lock = threading.Lock()
        self._buffer = b""

    def on_okay(self) -> None:
        self._can_send.set()

    def on_close(self) -> None:
        self.closed.set()
        self._can_send.set()
        self.inbox.put(None)

    def write(self, data: bytes) -> bool:
        """Send ``data`` in WRTE messages, one unacknowledged message at a time."""
        with self._write_lock:
            for at in range(0, len(data), self.conn.max_payload):
                while not self._can_send.wait(0.5):
                    if self.closed.is_set():
                        return False
                if self.closed.is_set():
                    return False
                self._can_send.clear()
                self.conn.send(A_WRTE, self.local_id, self.remote_id, data[at : at + self.conn.max_payload])
        return True

    def read_some(self) -> bytes | None:
        """Whatever the peer sent next, or None once the stream is closed."""
        if self._buffer:
            data, self._buffer = self._buffer, b""
            return data
        chunk = self.inbox.get()
        if chunk is None:
            self.inbox.put(None)
        return chunk

    def read_exact(self, n: int) -> bytes | None:
        """``n`` bytes from the peer, or None once the stream is closed."""
        while len(self._buffer) < n:
            chunk = self.inbox.get()
            if chunk is None:
                self.inbox.put(None)
                return None
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.conn.forget(self.local_id)


class _Connection:
    """One TCP connection from the adb server: the transport of one 'device'."""

    def __init__(self, peer: AdbdPeer, sock: socket.socket) -> None:
        self.peer = peer
        self.sock = sock
        self.max_payload = MAX_PAYLOAD
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self.procs: set[subprocess.Popen[bytes]] = set()

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        try:
            with self._send_lock:
                self.sock.sendall(pack_message(command, arg0, arg1, data))
        except OSError:
            self.drop()

    def forget(self, local_id: int) -> None:
        self._streams.pop(local_id, None)

    def drop(self) -> None:
        """The device vanishes: close the socket, end every stream, kill every command."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        for stream in list(self._streams.values()):
            stream.on_close()
        for proc in list(self.procs):
            _kill_group(proc)

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def serve(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _check, magic = _HEADER.unpack(self._recv_exact(_HEADER.size))
                if magic != command ^ 0xFFFFFFFF:
                    raise EOFError("bad magic")
                self._dispatch(command, arg0, arg1, self._recv_exact(length) if length else b"")
        except (EOFError, OSError):
            pass
        finally:
            self.drop()
            self.sock.close()
            self.peer.forget(self)

    def _dispatch(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.max_payload = min(MAX_PAYLOAD, arg1) if arg1 else MAX_PAYLOAD
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.peer.banner())
        elif command == A_OPEN:
            service = data.rstrip(b"\0").decode("utf-8", "replace")
            hang = self.peer.faults.hang_on
            if hang is not None and hang in service:
                return
            stream = _Stream(self, next(self._ids), arg0)
            handler = self.peer.service_for(service)
            if handler is None:
                self.send(A_CLSE, 0, arg0)
                return
            self._streams[stream.local_id] = stream
            self.send(A_OKAY, stream.local_id, arg0)
            threading.Thread(target=self._run_service, args=(handler, stream), daemon=True).start()
        elif command == A_OKAY:
            if (target := self._streams.get(arg1)) is not None:
                target.on_okay()
        elif command == A_WRTE:
            if (target := self._streams.get(arg1)) is not None:
                target.inbox.put(data)
                self.send(A_OKAY, arg1, arg0)
        elif command == A_CLSE:  # noqa: SIM102 - the same shape as the branches above
            if (target := self._streams.pop(arg1, None)) is not None:
                target.on_close()
        # A_SYNC and A_AUTH are not used by a device that needs no authentication.

    def _run_service(self, handler: Callable[[_Stream], None], stream: _Stream) -> None:
        try:
            handler(stream)
        finally:
            stream.close()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


class AdbdPeer:
    """A fake phone on ``host:port`` whose storage lives in ``root``.

    Attributes (after :meth:`start`): ``serial`` (``host:port``, the name the adb server gives
    it), ``faults`` (see :class:`Faults`), ``root``.
    """

    def __init__(
        self,
        root: Path,
        host: str = "127.0.0.3",
        model: str = "HarnessPhone",
        props: dict[str, str] | None = None,
    ) -> None:
        if not host.startswith("127."):
            raise ValueError(f"test peers listen on loopback only, got {host!r}")
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", str(root)):
            raise ValueError(f"root must be a shell-safe path (it is spliced into commands), got {root!r}")
        self.root = root
        self.host = host
        self.port = 0
        self.model = model
        self.props = {
            "ro.product.model": model,
            "ro.product.manufacturer": "EnergyHarness",
            "ro.product.name": "harness_phone",
            "ro.product.device": "harness",
            "ro.build.version.sdk": "34",
            "ro.build.version.release": "14",
            "ro.product.cpu.abi": "arm64-v8a",
            "ro.build.fingerprint": "harness/harness_phone/harness:14/TEST/1:user/test-keys",
        } | (props or {})
        self.faults = Faults()
        self._listener: socket.socket | None = None
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()

    @property
    def serial(self) -> str:
        return f"{self.host}:{self.port}"

    def banner(self) -> bytes:
        keys = ("ro.product.name", "ro.product.model", "ro.product.device")
        props = "".join(f"{k}={self.props[k]};" for k in keys)
        return f"device::{props}features=shell_v2,cmd,fixed_push_mkdir".encode()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        for sub in ("data/local/tmp", "sdcard", "system/bin"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        getprop = self.root / "system/bin/getprop"
        lines = "".join(f"[{k}]: [{v}]\n" for k, v in sorted(self.props.items()))
        cases = "".join(f"  {k}) echo '{v}' ;;\n" for k, v in self.props.items())
        getprop.write_text(
            "#!/bin/sh\n"
            f"if [ $# -eq 0 ]; then cat <<'EOF'\n{lines}EOF\nexit 0; fi\n"
            f'case "$1" in\n{cases}  *) echo ;;\nesac\n'
        )
        getprop.chmod(0o755)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        listener = self._listener
        while listener is not None:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=conn.serve, daemon=True).start()

    def forget(self, conn: _Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def drop_connections(self) -> None:
        """Every connection drops at once, as if the phone's Wi-Fi went away."""
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            conn.drop()

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        self.drop_connections()

    # -- services -----------------------------------------------------------------------------

    def service_for(self, service: str) -> Callable[[_Stream], None] | None:
        name, _, arg = service.partition(":")
        options = name.split(",")
        if options[0] == "shell" and arg:
            v2 = "v2" in options[1:]
            return lambda s: self._shell(s, arg, v2=v2, merge_stderr=not v2)
        if name == "exec" and arg:
            return lambda s: self._shell(s, arg, v2=False, merge_stderr=False)
        if name == "sync":
            return self._sync
        return None  # interactive shells, reboot, root, tcpip...: refused

    def to_host_command(self, command: str) -> str:
        return _PATH_RE.sub(lambda m: f"{self.root}{m.group(0)}", command)

    def _device_path(self, path: str, *, write: bool = False) -> Path | None:
        """The host file behind a device path, as the shell sees it: /data and /sdcard live in
        ``root``; other paths are the host's own, readable but (except /dev/null, /dev/zero,
        /dev/full) not writable — None, like Android's read-only /system."""
        if not path.startswith("/"):
            return None
        norm = os.path.normpath(path)
        if _PATH_RE.match(norm):
            return self.root / norm.lstrip("/")
        if not write or norm in _DEV_PASSTHROUGH:
            return Path(norm)
        return None

    def _shell(self, stream: _Stream, command: str, *, v2: bool, merge_stderr: bool) -> None:
        env = dict(
            os.environ,
            PATH=f"{self.root}/system/bin:{os.environ.get('PATH', '/usr/bin:/bin')}",
            HOME=f"{self.root}/data/local/tmp",
            ANDROID_DATA=f"{self.root}/data",
        )
        proc = subprocess.Popen(
            ["/bin/sh", "-c", self.to_host_command(command)],
            cwd=self.root,
            env=env,
            start_new_session=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        )
        stream.conn.procs.add(proc)
        drop = self.faults.drop_on
        if drop is not None and drop in command:
            threading.Timer(_DROP_DELAY_S, stream.conn.drop).start()
        root = str(self.root).encode()

        def from_host(data: bytes) -> bytes:
            return data.replace(root + b"/", b"/").replace(root, b"/")

        def frame(kind: int, data: bytes) -> bytes:
            return struct.pack("<BI", kind, len(data)) + data if v2 else data

        def pump(pipe: object, kind: int) -> None:
            assert hasattr(pipe, "read1")
            while chunk := pipe.read1(SYNC_DATA_MAX):  # type: ignore[attr-defined]
                if not stream.write(frame(kind, from_host(chunk))):
                    break

        pumps = [threading.Thread(target=pump, args=(proc.stdout, 1), daemon=True)]
        if proc.stderr is not None:
            pumps.append(threading.Thread(target=pump, args=(proc.stderr, 2), daemon=True))
        for t in pumps:
            t.start()
        threading.Thread(target=self._feed_stdin, args=(stream, proc, v2), daemon=True).start()
        code = proc.wait()
        for t in pumps:
            t.join()
        stream.conn.procs.discard(proc)
        if v2 and not stream.closed.is_set():
            stream.write(frame(3, bytes([(128 - code if code < 0 else code) & 0xFF])))

    @staticmethod
    def _feed_stdin(stream: _Stream, proc: subprocess.Popen[bytes], v2: bool) -> None:
        assert proc.stdin is not None
        try:
            while True:
                if v2:
                    header = stream.read_exact(5)
                    if header is None:
                        break
                    kind, length = struct.unpack("<BI", header)
                    data = stream.read_exact(length) if length else b""
                    if data is None:
                        break
                    if kind == 4:  # close stdin
                        proc.stdin.close()
                    elif kind == 0 and not proc.stdin.closed:
                        proc.stdin.write(data)
                        proc.stdin.flush()
                else:
                    chunk = stream.read_some()
                    if chunk is None:
                        break
                    proc.stdin.write(chunk)
                    proc.stdin.flush()
        except (OSError, ValueError):
            pass
        if stream.closed.is_set() and proc.poll() is None:
            _kill_group(proc)  # the client hung up: like adbd, end the command
        with contextlib.suppress(OSError):
            proc.stdin.close()

    # -- sync ---------------------------------------------------------------------------------

    def _sync(self, stream: _Stream) -> None:
        while (header := stream.read_exact(8)) is not None:
            request, length = header[:4], struct.unpack("<I", header[4:])[0]
            if request == b"QUIT":
                return
            body = stream.read_exact(length) if length else b""
            if body is None:
                return
            path = body.decode("utf-8", "replace")
            if request == b"STAT":
                stream.write(b"STAT" + self._stat(path))
            elif request == b"LIST":
                self._list(stream, path)
            elif request == b"SEND":
                if not self._send(stream, path):
                    return
            elif request == b"RECV":
                if not self._recv(stream, path):
                    return
            else:
                _sync_fail(stream, f"unknown sync request {request!r}")
                return

    def _stat(self, path: str) -> bytes:
        local = self._device_path(path)
        try:
            st = os.stat(local) if local is not None else None
        except OSError:
            st = None
        if st is None:
            return struct.pack("<III", 0, 0, 0)
        return struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))

    def _list(self, stream: _Stream, path: str) -> None:
        local = self._device_path(path)
        names = [".", ".."] + (sorted(os.listdir(local)) if local is not None and local.is_dir() else [])
        out = b""
        for name in names:
            try:
                st = os.lstat(local / name) if local is not None else None
            except OSError:
                continue
            if st is None:
                continue
            raw = name.encode()
            out += (
                b"DENT"
                + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw))
                + raw
            )
        stream.write(out + b"DONE" + bytes(16))

    def _send(self, stream: _Stream, spec: str) -> bool:
        path, _, mode_text = spec.rpartition(",")
        local = self._device_path(path, write=True)
        error: str | None = None
        f = None
        try:
            if local is None:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            if local.parent != local and str(local) not in _DEV_PASSTHROUGH:
                local.parent.mkdir(parents=True, exist_ok=True)
            f = open(local, "wb")  # noqa: SIM115 - closed below
        except OSError as e:
            error = f"couldn't create file: {e.strerror or e}"
        first = True
        mtime = 0
        while True:
            header = stream.read_exact(8)
            if header is None:
                break
            kind, length = header[:4], struct.unpack("<I", header[4:])[0]
            if kind == b"DONE":
                mtime = length
                break
            data = stream.read_exact(length) if kind == b"DATA" else None
            if data is None:
                error = error or f"invalid data message {kind!r}"
                break
            if error is not None or f is None:
                continue  # like adbd: keep reading and dropping DATA until DONE after a failure
            try:
                if self.faults.disk_full:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                if first and data and self.faults.corrupt_push:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                f.write(data)
                first = False
            except OSError as e:
                error = f"write failed: {e.strerror or e}"
        try:
            if f is not None and local is not None:
                f.close()
                if error is None and str(local) not in _DEV_PASSTHROUGH:
                    mode = int(mode_text) if mode_text.isdigit() else 0o644
                    os.chmod(local, stat.S_IMODE(mode) or 0o644)
                    if mtime:
                        os.utime(local, (mtime, mtime))
        except OSError as e:
            error = error or f"write failed: {e.strerror or e}"
        if error is not None:
            if local is not None and str(local) not in _DEV_PASSTHROUGH and f is not None:
                local.unlink(missing_ok=True)
            _sync_fail(stream, error)
            return False
        stream.write(b"OKAY" + bytes(4))
        return True

    def _recv(self, stream: _Stream, path: str) -> bool:
        local = self._device_path(path)
        try:
            if local is None:
                raise OSError(errno.ENOENT, "not an absolute path")
            with open(local, "rb") as f:
                while chunk := f.read(SYNC_DATA_MAX):
                    if not stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk):
                        return False
        except OSError as e:
            _sync_fail(stream, f"open failed: {e.strerror or e}")
            return False
        stream.write(b"DONE" + bytes(4))
        return True


def _sync_fail(stream: _Stream, message: str) -> None:
    raw = message.encode()
    stream.write(b"FAIL" + struct.pack("<I", len(raw)) + raw)


# -- the real adb server --------------------------------------------------------------------------


class AdbServer:
    """The real adb server (``adb nodaemon server``) on 127.0.0.1:<free port>, never 5037.

    It keeps its keys under ``home`` (not the user's ``~/.android``) and is owned by us: stop()
    ends exactly the process start() made.
    """

    def __init__(self, home: Path) -> None:
        self.home = home
        self.host = "127.0.0.1"
        self.port = 0
        self.log_path = home / "adb-server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def adb(self, *args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run the adb *client* against this server (for test setup and checks only)."""
        return subprocess.run(
            [ADB, "-P", str(self.port), *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def _env(self) -> dict[str, str]:
        return dict(
            os.environ,
            HOME=str(self.home),
            ANDROID_USER_HOME=str(self.home / ".android"),
            ANDROID_ADB_SERVER_PORT=str(self.port),
            ADB_MDNS="0",
            ADB_MDNS_AUTO_CONNECT="",
        )

    def start(self, timeout_s: float = 20.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind((self.host, 0))
            self.port = s.getsockname()[1]
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [ADB, "-L", f"tcp:localhost:{self.port}", "nodaemon", "server"],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with socket.create_connection(self.address, timeout=1.0) as s:
                    s.sendall(b"000chost:version")
                    if s.recv(4) == b"OKAY":
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"adb server did not start on port {self.port}: {self.log_path.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._proc = None


def missing_adb() -> str | None:
    """Why the adb peers cannot run here, or None."""
    if not os.path.exists(ADB):
        return "adb not found (apt-get install adb)"
    return None


def adb_server_fixture(home: Path) -> Iterator[AdbServer]:
    """Body of an ``adb_server`` fixture: skip if adb is missing, else a started server."""
    import pytest

    reason = missing_adb()
    if reason:
        pytest.skip(f"real adb server unavailable: {reason}")
    server = AdbServer(home)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def adbd_peer_fixture(
    root: Path, server: AdbServer, host: str = "127.0.0.3", connect: bool = True
) -> Iterator[AdbdPeer]:
    """Body of an ``adbd_peer`` fixture: a started peer, connected to ``server`` if ``connect``."""
    peer = AdbdPeer(root, host=host)
    peer.start()
    try:
        if connect:
            out = server.adb("connect", peer.serial)
            if "connected to" not in out.stdout:
                raise RuntimeError(f"adb connect {peer.serial} failed: {out.stdout} {out.stderr}")
            server.adb("-s", peer.serial, "wait-for-device", timeout_s=20.0)
        yield peer
    finally:
        server.adb("disconnect", peer.serial)
        peer.stop()
