"""The seam between device code and the wire: run a command, move a file, make a run directory.

Lifecycle: a :class:`Transport` is created closed, opened with :meth:`Transport.open` (or by
entering it as a context manager) and closed with :meth:`Transport.close` (idempotent; also on
``__exit__``). Every other method raises :class:`TransportError` unless the transport is open.
A transport is not thread-safe: the fleet gives each device (and its transport) to one worker
at a time.

Deadlines: every operation takes ``timeout_s`` and ends by ``time.monotonic() + timeout_s``
(plus a small, bounded clean-up) whatever the device does: output is drained while waiting, and
a command still running at its deadline is killed on the device (best effort) and reported as
:class:`CommandTimeout`. To know what to kill, :meth:`Transport.run` starts every command as
``echo <marker><pid>; exec sh -c <command>`` and strips that first line from stdout; the kill
(``kill -9 -<pid> <pid>``: its process group and itself) gets one extra second at most.

Remote paths are absolute POSIX paths; every path this module puts into a device command is
quoted with :func:`shlex.quote`. A string command given to :meth:`Transport.run` is passed to
the device's ``sh`` as written (quote it yourself, or pass an argv list to have it quoted).

Errors: everything raised is a :class:`TransportError` (a :class:`devices.base.DeviceError`),
whose one-line message names the device, the command or path, the exit code and the tail of
stderr where there is one.
"""

from __future__ import annotations

import abc
import contextlib
import os
import posixpath
import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from devices.base import DeviceError
from devices.files import sha256_file

__all__ = [
    "CommandResult",
    "CommandTimeout",
    "ConnectionLost",
    "HostKeyError",
    "IntegrityError",
    "Transport",
    "TransportError",
]

_PID_MARK = "__energy_harness_pid__="
_KILL_BUDGET_S = 1.0
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_SHA256_RE = re.compile(r"\b([0-9a-f]{64})\b")


def _tail(text: str, limit: int = 200) -> str:
    """The last ``limit`` characters of ``text`` on one line."""
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else "…" + flat[-limit:]


class TransportError(DeviceError):
    """A transport could not do what was asked; the message is one line of evidence.

    Attributes:
        device: The device's name.
        subject: What was being done (``command '…'``, ``push 'a' -> 'b'``).
        exit_code: The remote exit code, where a command ran to completion.
        stderr: The remote stderr (full), where there is one.
    """

    def __init__(
        self,
        device: str,
        subject: str,
        problem: str,
        *,
        exit_code: int | None = None,
        stderr: str = "",
        hint: str = "",
    ) -> None:
        self.device = device
        self.subject = subject
        self.exit_code = exit_code
        self.stderr = stderr
        parts = [f"device {device!r}: {subject}: {problem}"]
        if exit_code is not None:
            parts.append(f"exit code {exit_code}")
        if _tail(stderr):
            parts.append(f"stderr tail {_tail(stderr)!r}")
        if hint:
            parts.append(hint)
        super().__init__("; ".join(parts))


class CommandTimeout(TransportError):
    """An operation was still running at its deadline (the command was killed, best effort)."""


class ConnectionLost(TransportError):
    """The device went away during an operation (link dropped, daemon died, cable pulled)."""


class HostKeyError(TransportError):
    """The device's host key is unknown or differs from the pinned one; nothing was sent."""


class IntegrityError(TransportError):
    """A copied file's sha256 on the device differs from the local one (the copy was removed)."""


@dataclass(frozen=True)
class CommandResult:
    """What one remote command did. ``exit_code`` is -1 when the device reported none
    (killed by a signal). Text is decoded as UTF-8 with replacement."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class RawResult:
    """What :meth:`Transport._exec` returns: ``exit_code`` is ``None`` when the deadline came
    first (the implementation has already abandoned the command)."""

    exit_code: int | None
    stdout: bytes
    stderr: bytes


class Watchdog:
    """Runs ``action`` from a timer thread at a monotonic ``deadline`` unless disarmed first.

    Used to abandon library calls that have no timeout of their own: the action closes the
    channel or socket they block on, so they return with an error the caller translates.
    """

    def __init__(self, deadline: float, action: Callable[[], object]) -> None:
        self.fired = False  # whether the action ran
        self._action = action
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        with contextlib.suppress(Exception):  # best effort from a timer thread; the caller reports
            self._action()

    def __enter__(self) -> Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()


class Transport(abc.ABC):
    """Runs commands on one device and copies files to and from it (see the module docstring
    for lifecycle, thread safety and deadlines).

    Implementations provide five primitives: :meth:`_open`, :meth:`_close`, :meth:`_exec`,
    :meth:`_put` and :meth:`_get`; this base builds the public methods on them.

    Raises (every public method, besides those listed per method):
        TransportError: not open, or the device refused or failed the operation.
        ConnectionLost: the link to the device dropped.
        CommandTimeout: the deadline passed.
    """

    def __init__(self, name: str, workdir: str) -> None:
        if not name:
            raise ValueError("transport name must be non-empty")
        if not workdir.startswith("/") or posixpath.normpath(workdir) in ("/", "//"):
            raise ValueError(
                f"workdir must be an absolute directory below '/', got {workdir!r} "
                "(e.g. '/data/local/tmp/energy-harness')"
            )
        self.name = name
        self.workdir = posixpath.normpath(workdir)
        self._is_open = False

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        """Connect (idempotent). Raises HostKeyError, TransportError, CommandTimeout."""
        if self._is_open:
            return
        try:
            self._open()
        except BaseException:
            self._close()
            raise
        self._is_open = True

    def close(self) -> None:
        """Disconnect (idempotent; never raises for a link that is already gone)."""
        self._is_open = False
        self._close()

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------------------

    def run(self, argv_or_command: Sequence[str] | str, *, timeout_s: float) -> CommandResult:
        """Run a command on the device with ``sh`` and wait for it, at most ``timeout_s``.

        A list is quoted argument by argument; a string goes to ``sh -c`` unchanged. A non-zero
        exit code is returned, not raised (see :meth:`run_checked`).

        Raises:
            CommandTimeout: still running at the deadline; it was killed on the device (best
                effort) and the message holds the tail of its stderr so far.
        """
        command = argv_or_command if isinstance(argv_or_command, str) else shlex.join(argv_or_command)
        if not command.strip():
            raise ValueError("command must be non-empty")
        deadline = self._deadline(timeout_s, f"command {command!r}")
        wrapped = f"echo {_PID_MARK}$$; exec sh -c {shlex.quote(command)}"
        start = time.monotonic()
        raw = self._exec(wrapped, deadline, f"command {command!r}")
        duration_s = time.monotonic() - start
        pid, stdout = self._split_pid(raw.stdout)
        stderr = raw.stderr.decode("utf-8", "replace")
        if raw.exit_code is None:
            if pid is None:
                fate = "it had not reported a pid, so nothing was killed"
            else:
                fate = (
                    f"killed pid {pid} on the device"
                    if self._kill(pid)
                    else f"could not kill pid {pid} on the device"
                )
            raise CommandTimeout(
                self.name,
                f"command {command!r}",
                f"still running after {timeout_s:g} s; {fate}",
                stderr=stderr,
            )
        return CommandResult(command, raw.exit_code, stdout.decode("utf-8", "replace"), stderr, duration_s)

    def run_checked(self, argv_or_command: Sequence[str] | str, *, timeout_s: float) -> CommandResult:
        """Like :meth:`run`, and raise :class:`TransportError` on a non-zero exit code."""
        result = self.run(argv_or_command, timeout_s=timeout_s)
        if not result.ok:
            raise TransportError(
                self.name,
                f"command {result.command!r}",
                "failed",
                exit_code=result.exit_code,
                stderr=result.stderr or result.stdout,
            )
        return result

    # -- files --------------------------------------------------------------------------------

    def push(self, local_path: Path | str, remote_path: str, *, timeout_s: float) -> str:
        """Copy a local file to ``remote_path`` and check its sha256 there; returns the digest.

        Permission bits are not promised (adb keeps the local ones, SFTP uses the device's
        umask): ``chmod`` what must execute. An existing ``remote_path`` is overwritten.

        Raises:
            IntegrityError: the device's ``sha256sum`` disagrees (the remote copy is removed).
            TransportError: the copy failed (missing local file, disk full, permission...).
        """
        local = Path(local_path)
        remote = self._check_remote_path(remote_path)
        if not local.is_file():
            raise TransportError(self.name, f"push {str(local)!r}", "local file does not exist")
        deadline = self._deadline(timeout_s, f"push {str(local)!r} -> {remote!r}")
        digest = sha256_file(local)
        self._put(local, remote, deadline)
        check = self._run_until(["sh", "-c", 'sha256sum < "$1"', "sh", remote], deadline)
        match = _SHA256_RE.search(check.stdout)
        if check.exit_code != 0 or match is None:
            raise TransportError(
                self.name,
                f"sha256sum of {remote!r}",
                "could not check the pushed file",
                exit_code=check.exit_code,
                stderr=check.stderr or check.stdout,
                hint="the device needs a sha256sum command (coreutils, toybox or busybox)",
            )
        if match.group(1) != digest:
            self._remove_quietly(remote)
            raise IntegrityError(
                self.name,
                f"push {str(local)!r} -> {remote!r}",
                f"sha256 on the device {match.group(1)} != local {digest}; removed the bad copy",
                hint="the link or the device storage corrupts data; retry or check the device",
            )
        return digest

    def pull(self, remote_path: str, local_path: Path | str, *, timeout_s: float) -> None:
        """Copy ``remote_path`` to ``local_path``; the local file appears whole or not at all."""
        remote = self._check_remote_path(remote_path)
        local = Path(local_path)
        if not local.parent.is_dir():
            raise TransportError(
                self.name, f"pull {remote!r}", f"local directory {str(local.parent)!r} does not exist"
            )
        deadline = self._deadline(timeout_s, f"pull {remote!r}")
        partial = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            self._get(remote, partial, deadline)
            os.replace(partial, local)
        finally:
            partial.unlink(missing_ok=True)

    # -- run directories ----------------------------------------------------------------------

    def make_run_dir(self, prefix: str = "run", *, timeout_s: float = 30.0) -> str:
        """Create a fresh, unique directory under :attr:`workdir` and return its path."""
        if not _NAME_RE.fullmatch(prefix):
            raise ValueError(f"run dir prefix must match [A-Za-z0-9._-]+, got {prefix!r}")
        path = posixpath.join(
            self.workdir, f"{prefix}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:12]}"
        )
        # mkdir without -p for the leaf: it fails rather than reuse an existing directory.
        self.run_checked(
            f"mkdir -p {shlex.quote(self.workdir)} && mkdir {shlex.quote(path)}", timeout_s=timeout_s
        )
        return path

    def remove_dir(self, path: str, *, timeout_s: float = 60.0) -> None:
        """Remove a directory made by :meth:`make_run_dir` (only paths below :attr:`workdir`)."""
        norm = self._check_remote_path(path)
        if not norm.startswith(self.workdir + "/"):
            raise ValueError(f"refusing to remove {path!r}: not below the workdir {self.workdir!r}")
        self.run_checked(["rm", "-rf", norm], timeout_s=timeout_s)

    # -- primitives for implementations ------------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """Connect and check the device is usable."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release everything; must work on a half-open or broken connection, never raise."""

    @abc.abstractmethod
    def _exec(self, command: str, deadline: float, subject: str) -> RawResult:
        """Run ``command`` with the device's shell, draining output until it exits or
        ``deadline`` (monotonic) passes; on the deadline, abandon it and return
        ``exit_code=None`` with the output so far. ``subject`` names it in errors."""

    @abc.abstractmethod
    def _put(self, local: Path, remote: str, deadline: float) -> None:
        """Copy a local file to ``remote`` (overwriting); raise CommandTimeout at ``deadline``."""

    @abc.abstractmethod
    def _get(self, remote: str, local: Path, deadline: float) -> None:
        """Copy ``remote`` into the local file ``local``; raise CommandTimeout at ``deadline``."""

    # -- helpers ------------------------------------------------------------------------------

    def _require_open(self, subject: str) -> None:
        if not self._is_open:
            raise TransportError(
                self.name, subject, "transport is not open", hint="call open() or use it as a context manager"
            )

    def _deadline(self, timeout_s: float, subject: str) -> float:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._require_open(subject)
        return time.monotonic() + timeout_s

    def _check_remote_path(self, path: str) -> str:
        if not path.startswith("/") or "\0" in path or "\n" in path:
            raise ValueError(f"remote path must be absolute, without NUL or newline, got {path!r}")
        if ".." in path.split("/"):
            raise ValueError(f"remote path must not contain '..', got {path!r}")
        return posixpath.normpath(path)

    def _run_until(self, argv: Sequence[str], deadline: float) -> CommandResult:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise CommandTimeout(
                self.name, f"command {shlex.join(argv)!r}", "no time left before the deadline"
            )
        return self.run(argv, timeout_s=remaining)

    def _remove_quietly(self, remote: str) -> None:
        try:
            command = f"rm -f {shlex.quote(remote)}"
            self._exec(command, time.monotonic() + _KILL_BUDGET_S, f"command {command!r}")
        except TransportError:
            pass

    def _kill(self, pid: int) -> bool:
        """Kill a timed-out command's process group and process; True if the device answered."""
        try:
            command = f"kill -9 -{pid} 2>/dev/null; kill -9 {pid} 2>/dev/null; true"
            raw = self._exec(command, time.monotonic() + _KILL_BUDGET_S, f"command {command!r}")
        except TransportError:
            return False
        return raw.exit_code == 0

    @staticmethod
    def _split_pid(stdout: bytes) -> tuple[int | None, bytes]:
        mark = _PID_MARK.encode()
        if not stdout.startswith(mark):
            return None, stdout
        line, _, rest = stdout.partition(b"\n")
        try:
            return int(line[len(mark) :]), rest
        except ValueError:
            return None, stdout
