"""adb transport (adbutils) for Android phones, through the real adb server.

Exit codes come from the **shell protocol v2** (``shell,v2,raw:<cmd>``, as adbutils' ``shell2(…,
v2=True)`` uses): the device frames stdout, stderr and the exit code separately, so stderr stays
apart and nothing in the output can fake an exit code, which the ``; echo $?`` idiom (adbutils'
default ``shell2``) cannot promise. Devices without ``shell_v2`` (Android < 7) are refused at
:meth:`open`.

Deadlines: every adbutils call runs in a daemon worker thread that registers the server
connections it opens; at the deadline the caller shuts those sockets down (which ends the
worker) and reports :class:`~devices.transports.base.CommandTimeout`. Shell streams and sync
copies are driven by our own loops over adbutils' ``open_transport()`` connection (adbutils'
``sync.push``/``pull`` and stream shells have no timeout and ``sync.push`` drops the device's
FAIL message), so copies report the device's own error, e.g. ``write failed: No space left on
device``.

adbutils starts an adb server on its default port when it cannot reach one; this transport
never lets it (a server that is down is reported instead).
"""

from __future__ import annotations

import contextlib
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import adbutils
from adbutils import AdbConnection, AdbError

from devices.transports.base import (
    CommandTimeout,
    ConnectionLost,
    RawResult,
    Transport,
    TransportError,
)

__all__ = ["AdbTransport"]

T = TypeVar("T")
_TCP_SERIAL = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")
_SYNC_DATA_MAX = 64 * 1024
_ABORT_JOIN_S = 1.0
_STDOUT, _STDERR, _EXIT, _CLOSE_STDIN = 1, 2, 3, 4


class _NoAutoStartConnection(AdbConnection):
    """adbutils' connection, minus its fallback of running ``adb start-server`` (on the default
    port) when the server is unreachable: we report that instead. Pinned to adbutils 2.x.

    Two latency fixes (measured in bench/fleet_bench.py: tens of ms per command, push and
    pull): ``TCP_NODELAY``, because the sync protocol sends small SEND/DATA/DONE messages that
    Nagle's algorithm holds back until the server's delayed ACK; and a close without adbutils'
    10 ms sleep after ``SHUT_WR`` (closing the socket ends the stream for the server anyway).
    """

    def _safe_connect(self) -> socket.socket:
        sock = self._create_socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def close(self) -> None:
        sock = self._AdbConnection__conn  # type: ignore[attr-defined]  # adbutils 2.x's private socket
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        sock.close()
        self._AdbConnection__conn = None  # type: ignore[attr-defined]


def _ack_at_once(sock: socket.socket) -> None:
    """Ask Linux to ACK the next segments at once: the server sends a pull's DATA header and
    payload as separate writes, and with our delayed ACK its Nagle waits ~40 ms between them.
    Linux clears the flag after use, so it is set before every read; elsewhere a no-op."""
    if hasattr(socket, "TCP_QUICKACK"):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class _Client(adbutils.AdbClient):
    """adbutils' client making :class:`_NoAutoStartConnection` connections.

    The server's version is asked once per client: adbutils asks it before *every* transport
    it opens (an extra connection and round trip per command), and it does not change while
    the server runs.
    """

    def __init__(self, host: str, port: int, socket_timeout_s: float) -> None:
        super().__init__(host=host, port=port, socket_timeout=socket_timeout_s)
        self._socket_timeout_s = socket_timeout_s
        self._server_version: int | None = None

    def server_version(self) -> int:
        if self._server_version is None:
            self._server_version = super().server_version()
        return self._server_version

    def make_connection(self, timeout: float | None = None) -> AdbConnection:
        conn = _NoAutoStartConnection(self.host, self.port)
        conn.conn.settimeout(timeout or self._socket_timeout_s)
        return conn


class _Cancel:
    """The connections a worker opened, so the caller can shut them at the deadline."""

    def __init__(self) -> None:
        self._conns: list[AdbConnection] = []
        self._lock = threading.Lock()
        self.cancelled = False

    def add(self, conn: AdbConnection) -> AdbConnection:
        with self._lock:
            self._conns.append(conn)
            if self.cancelled:
                self._shut(conn)
        return conn

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            for conn in self._conns:
                self._shut(conn)

    @staticmethod
    def _shut(conn: AdbConnection) -> None:
        with contextlib.suppress(OSError, AdbError):
            conn.conn.shutdown(socket.SHUT_RDWR)


class _Expired(Exception):
    """The deadline passed while a worker was still busy (it has been cancelled)."""


class AdbTransport(Transport):
    """Commands and files over adb.

    Args:
        name: Device name (for messages).
        serial: adb serial; a ``host:port`` serial is connected with ``adb connect`` first.
        workdir: Absolute directory on the device for run directories.
        adb_server: Where the adb server listens. It must already run (``adb start-server``).
        connect_timeout_s: Budget for reaching the server and the device in :meth:`open`. Units: s.
    """

    def __init__(
        self,
        name: str,
        serial: str,
        workdir: str = "/data/local/tmp/energy-harness",
        adb_server: tuple[str, int] = ("127.0.0.1", 5037),
        connect_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(name, workdir)
        if not serial or any(c.isspace() for c in serial):
            raise ValueError(f"serial must be non-empty without spaces, got {serial!r}")
        host, port = adb_server
        if not host or not 0 < port < 65536:
            raise ValueError(f"adb_server must be (host, port in 1..65535), got {adb_server!r}")
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        self.serial = serial
        self.adb_server = (host, port)
        self.connect_timeout_s = connect_timeout_s
        self._device: adbutils.AdbDevice | None = None

    def __repr__(self) -> str:
        return f"AdbTransport(name={self.name!r}, serial={self.serial!r})"

    # -- lifecycle ----------------------------------------------------------------------------

    def _open(self) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        host, port = self.adb_server
        subject = f"connect {self.serial} via adb server {host}:{port}"
        try:
            socket.create_connection(self.adb_server, timeout=self._left(deadline)).close()
        except OSError as e:
            raise TransportError(
                self.name,
                subject,
                f"adb server not reachable ({e})",
                hint=f"start it with `adb -P {port} start-server`",
            ) from e
        client = _Client(host, port, self.connect_timeout_s)
        if _TCP_SERIAL.match(self.serial):
            reply = self._call(
                subject, deadline, lambda _: client.connect(self.serial, timeout=self._left(deadline))
            )
            if "connected to" not in reply:
                raise TransportError(self.name, subject, f"adb connect said {reply.strip()!r}")
        self._device = client.device(self.serial)
        state = "absent"
        while True:
            try:
                state = self._host_query("get-state", deadline)
            except TransportError as e:
                state = str(e.__cause__ or e)
            if state == "device":
                break
            if time.monotonic() + 0.2 >= deadline:
                raise TransportError(
                    self.name,
                    subject,
                    f"device not ready within {self.connect_timeout_s:g} s (state: {state})",
                    hint="check `adb devices`; 'unauthorized' means accept the prompt on the phone",
                )
            time.sleep(0.2)
        features = self._host_query("features", deadline).split(",")
        if "shell_v2" not in features:
            raise TransportError(
                self.name, subject, "device lacks the shell_v2 feature (needs Android 7 or later)"
            )

    def _close(self) -> None:
        self._device = None

    # -- worker-thread plumbing ---------------------------------------------------------------

    @staticmethod
    def _left(deadline: float) -> float:
        return max(0.01, deadline - time.monotonic())

    def _call(self, subject: str, deadline: float, work: Callable[[_Cancel], T]) -> T:
        """Run ``work`` in a worker thread; at ``deadline`` cancel it and raise CommandTimeout."""
        try:
            return self._bounded(deadline, work)
        except _Expired as e:
            raise CommandTimeout(self.name, subject, "no answer before the deadline") from e
        except TransportError:
            raise
        except (AdbError, EOFError, OSError) as e:
            raise self._translate(subject, e) from e

    def _bounded(self, deadline: float, work: Callable[[_Cancel], T]) -> T:
        cancel = _Cancel()
        outcome: list[T] = []
        failure: list[BaseException] = []

        def body() -> None:
            try:
                outcome.append(work(cancel))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                failure.append(e)

        worker = threading.Thread(target=body, name=f"adb-{self.name}", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            cancel.cancel()
            worker.join(_ABORT_JOIN_S)
            raise _Expired()
        if failure:
            raise failure[0]
        return outcome[0]

    def _translate(self, subject: str, error: BaseException) -> TransportError:
        text = f"{type(error).__name__}: {error}"
        gone = isinstance(error, (EOFError, ConnectionError)) or any(
            word in str(error) for word in ("not found", "offline", "closed", "no devices")
        )
        if gone:
            return ConnectionLost(
                self.name, subject, f"device went away ({text})", hint="check `adb devices`"
            )
        return TransportError(self.name, subject, text)

    def _stream(self, cancel: _Cancel, deadline: float, service: str) -> AdbConnection:
        """A server connection switched to this device with ``service`` opened on it."""
        if self._device is None:
            raise TransportError(self.name, service, "transport is not open")
        conn = cancel.add(self._device.open_transport(timeout=self._left(deadline)))
        conn.send_command(service)
        conn.check_okay()
        return conn

    def _host_query(self, request: str, deadline: float) -> str:
        def work(cancel: _Cancel) -> str:
            assert self._device is not None
            with cancel.add(self._device.open_transport(request, timeout=self._left(deadline))) as conn:
                return conn.read_string_block()

        return self._call(f"adb {request} {self.serial}", deadline, work)

    # -- commands -----------------------------------------------------------------------------

    def _exec(self, command: str, deadline: float, subject: str) -> RawResult:
        out, err = bytearray(), bytearray()

        def work(cancel: _Cancel) -> int:
            with self._stream(cancel, deadline, f"shell,v2,raw:{command}") as conn:
                conn.conn.sendall(struct.pack("<BI", _CLOSE_STDIN, 0))
                while True:
                    kind, length = struct.unpack("<BI", conn.read_exact(5))
                    data = conn.read_exact(length) if length else b""
                    if kind == _STDOUT:
                        out.extend(data)
                    elif kind == _STDERR:
                        err.extend(data)
                    elif kind == _EXIT:
                        return data[0] if data else -1

        try:
            code = self._bounded(deadline, work)
        except _Expired:
            return RawResult(None, bytes(out), bytes(err))
        except (AdbError, EOFError, OSError) as e:
            if isinstance(e, EOFError):
                raise ConnectionLost(
                    self.name,
                    subject,
                    "the stream ended without an exit status (device went away?)",
                    stderr=err.decode("utf-8", "replace"),
                ) from e
            raise self._translate(subject, e) from e
        return RawResult(code, bytes(out), bytes(err))

    # -- files --------------------------------------------------------------------------------

    def _sync_request(self, conn: AdbConnection, request: bytes, path: str) -> None:
        raw = path.encode()
        conn.conn.sendall(request + struct.pack("<I", len(raw)) + raw)

    def _sync_reply(self, conn: AdbConnection) -> tuple[bytes, int]:
        header = conn.read_exact(8)
        return header[:4], struct.unpack("<I", header[4:])[0]

    def _refused(self, subject: str, message: str) -> TransportError:
        hint = "free space on the device (df -h /data)" if "No space left" in message else ""
        return TransportError(self.name, subject, f"device refused: {message}", hint=hint)

    def _put(self, local: Path, remote: str, deadline: float) -> None:
        subject = f"push {str(local)!r} -> {remote!r}"
        st = local.stat()

        def work(cancel: _Cancel) -> None:
            with self._stream(cancel, deadline, "sync:") as conn:
                self._sync_request(conn, b"SEND", f"{remote},{stat.S_IFREG | stat.S_IMODE(st.st_mode)}")
                with local.open("rb") as f:
                    while chunk := f.read(_SYNC_DATA_MAX):
                        conn.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                conn.conn.sendall(b"DONE" + struct.pack("<I", int(st.st_mtime)))
                kind, length = self._sync_reply(conn)
                if kind == b"FAIL":
                    raise self._refused(subject, conn.read_exact(length).decode("utf-8", "replace"))
                if kind != b"OKAY":
                    raise TransportError(self.name, subject, f"unexpected sync reply {kind!r}")
                conn.conn.sendall(b"QUIT" + bytes(4))

        self._call(subject, deadline, work)

    def _get(self, remote: str, local: Path, deadline: float) -> None:
        subject = f"pull {remote!r}"

        def work(cancel: _Cancel) -> None:
            with self._stream(cancel, deadline, "sync:") as conn, local.open("wb") as f:
                self._sync_request(conn, b"RECV", remote)
                while True:
                    _ack_at_once(conn.conn)
                    kind, length = self._sync_reply(conn)
                    if kind == b"DATA":
                        f.write(conn.read_exact(length))
                    elif kind == b"DONE":
                        break
                    elif kind == b"FAIL":
                        raise self._refused(subject, conn.read_exact(length).decode("utf-8", "replace"))
                    else:
                        raise TransportError(self.name, subject, f"unexpected sync reply {kind!r}")
                conn.conn.sendall(b"QUIT" + bytes(4))

        self._call(subject, deadline, work)
