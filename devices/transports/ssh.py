"""SSH transport (paramiko) for Linux boards: pinned host keys, exec channels, SFTP copies.

Host keys come only from the ``known_hosts`` file given (never from ``~/.ssh``), and a key that
is missing or different is refused before authentication. Commands run on exec channels read
by our own loop (stdout and stderr drained, wall-clock deadline); paramiko's
``recv_exit_status()`` is never called, because it ignores timeouts and deadlocks on undrained
output. SFTP copies run under a :class:`~devices.transports.base.Watchdog` that closes the SFTP
channel at the deadline and, one second later, the whole connection if that did not free it.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import paramiko

from devices.transports.base import (
    CommandTimeout,
    ConnectionLost,
    HostKeyError,
    RawResult,
    Transport,
    TransportError,
    Watchdog,
)

__all__ = ["SshTransport"]

_log = logging.getLogger(__name__)
_CHUNK = 1 << 16
_SFTP_CHUNK = 32768  # paramiko's own write size
_POLL_MAX_S = 0.05
# After the exit status, how long output may stay silent before EOF is given up on (a child
# left running in the background can hold the channel open); output still arriving resets it.
_EOF_GRACE_S = 1.0
_ABORT_GRACE_S = 1.0  # after closing a stuck channel, when to drop the whole connection
_SftpWork = Callable[[paramiko.SFTPClient], None]


class _PinnedKeysOnly(paramiko.RejectPolicy):
    """RejectPolicy that raises our HostKeyError (and closes the half-open client)."""

    def __init__(self, device: str, known_hosts: Path) -> None:
        self._device = device
        self._known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> NoReturn:
        client.close()
        raise HostKeyError(
            self._device,
            f"connect {hostname}",
            f"unknown host: no {key.get_name()} key for {hostname} in {str(self._known_hosts)!r} "
            f"(server offers {key.fingerprint})",
            hint="verify the fingerprint on the device and add its key to known_hosts",
        )


class _AcceptUnknownInMemory(paramiko.MissingHostKeyPolicy):
    """Like AutoAddPolicy, but the key is kept for this connection only, never written to the
    known_hosts file (only ``allow_unknown_hosts=True`` selects it)."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)


class SshTransport(Transport):
    """Commands and files over SSH, authenticated with one private key.

    Args:
        name: Device name (for messages).
        host, port, user: Where and as whom to log in.
        key_file: Private key for public-key authentication (no agent, no ``~/.ssh`` keys).
        known_hosts: OpenSSH known_hosts file pinning the device's host key
            (``[host]:port`` entries for ports other than 22).
        workdir: Absolute directory on the device for run directories.
        connect_timeout_s: TCP connect, banner and authentication timeout. Units: s.
        allow_unknown_hosts: Accept (and remember in memory only) a host missing from
            known_hosts. Off by default; a *changed* key is refused either way.
    """

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        user: str,
        key_file: Path | str,
        known_hosts: Path | str,
        workdir: str,
        connect_timeout_s: float = 10.0,
        allow_unknown_hosts: bool = False,
        keepalive_s: int = 15,
    ) -> None:
        super().__init__(name, workdir)
        if not host:
            raise ValueError("host must be non-empty")
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if not user:
            raise ValueError("user must be non-empty")
        if not connect_timeout_s > 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s}")
        if keepalive_s < 0:
            raise ValueError(f"keepalive_s must be >= 0 (0: none), got {keepalive_s}")
        self.host = host
        self.port = port
        self.user = user
        self.key_file = Path(key_file)
        self.known_hosts = Path(known_hosts)
        self.connect_timeout_s = connect_timeout_s
        self.allow_unknown_hosts = allow_unknown_hosts
        self.keepalive_s = keepalive_s
        self._client: paramiko.SSHClient | None = None

    def __repr__(self) -> str:
        return f"SshTransport(name={self.name!r}, {self.user}@{self.host}:{self.port})"

    # -- lifecycle ----------------------------------------------------------------------------

    def _open(self) -> None:
        subject = f"connect {self.user}@{self.host}:{self.port}"
        for path, what in ((self.key_file, "key_file"), (self.known_hosts, "known_hosts")):
            if not path.is_file():
                raise TransportError(self.name, subject, f"{what} {str(path)!r} does not exist")
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(self.known_hosts))
        except (OSError, paramiko.SSHException) as e:
            raise TransportError(
                self.name, subject, f"cannot read known_hosts {str(self.known_hosts)!r}: {e}"
            ) from e
        if self.allow_unknown_hosts:
            _log.warning(
                "%s: accepting an unknown host key for %s (allow_unknown_hosts=True)", self.name, self.host
            )
            client.set_missing_host_key_policy(_AcceptUnknownInMemory())
        else:
            client.set_missing_host_key_policy(_PinnedKeysOnly(self.name, self.known_hosts))
        self._client = client
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=str(self.key_file),
                timeout=self.connect_timeout_s,
                banner_timeout=self.connect_timeout_s,
                auth_timeout=self.connect_timeout_s,
                channel_timeout=self.connect_timeout_s,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as e:
            raise HostKeyError(
                self.name,
                subject,
                f"host key CHANGED: got {e.key.get_name()} {e.key.fingerprint}, "
                f"known_hosts {str(self.known_hosts)!r} pins {e.expected_key.fingerprint}",
                hint="if the device was re-imaged, verify and update known_hosts; otherwise suspect an impostor",
            ) from e
        except paramiko.AuthenticationException as e:
            raise TransportError(
                self.name, subject, f"authentication failed with key {str(self.key_file)!r}: {e}"
            ) from e
        except TimeoutError as e:
            raise CommandTimeout(self.name, subject, f"no answer within {self.connect_timeout_s:g} s") from e
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise TransportError(
                self.name, subject, f"{type(e).__name__}: {e}", hint="is sshd running and reachable?"
            ) from e
        # The link stays open between measurements while the host trains for minutes; a NAT
        # or firewall on the way drops a silent TCP connection, so keep it talking.
        transport = client.get_transport()
        if transport is not None and self.keepalive_s:
            transport.set_keepalive(self.keepalive_s)

    def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken link must not raise
                client.close()

    def _transport(self, subject: str) -> paramiko.Transport:
        self._require_open(subject)
        t = self._client.get_transport() if self._client is not None else None
        if t is None or not t.is_active():
            raise ConnectionLost(
                self.name, subject, "the SSH connection is gone", hint="close() and open() again"
            )
        return t

    def _lost_or(self, subject: str, error: BaseException) -> TransportError:
        t = self._client.get_transport() if self._client is not None else None
        if t is None or not t.is_active():
            return ConnectionLost(self.name, subject, f"connection dropped ({type(error).__name__}: {error})")
        return TransportError(self.name, subject, f"{type(error).__name__}: {error}")

    def _abort_connection(self) -> None:
        t = self._client.get_transport() if self._client is not None else None
        if t is not None:
            t.close()

    # -- commands -----------------------------------------------------------------------------

    def _exec(self, command: str, deadline: float, subject: str) -> RawResult:
        t = self._transport(subject)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return RawResult(None, b"", b"")
        try:
            chan = t.open_session(timeout=remaining)
        except (paramiko.SSHException, EOFError, OSError) as e:
            if time.monotonic() >= deadline:
                return RawResult(None, b"", b"")
            raise self._lost_or(subject, e) from e
        out, err = bytearray(), bytearray()
        try:
            with Watchdog(deadline, chan.close):  # exec_command() itself waits without a timeout
                chan.exec_command(command)
            chan.shutdown_write()
            quiet_since: float | None = None  # after the exit status: the last time output arrived
            pause = 0.001
            while True:
                got = False
                while chan.recv_ready():
                    out += chan.recv(_CHUNK)
                    got = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(_CHUNK)
                    got = True
                now = time.monotonic()
                if chan.exit_status_ready():  # also true once the channel is closed
                    # A loaded host can take longer than the grace to deliver the tail of a
                    # large output; only silence ends the wait, so nothing still arriving is lost.
                    quiet_since = now if got or quiet_since is None else quiet_since
                    # Output that arrived with the close after the reads above is still buffered
                    # (a closed channel keeps it readable): never stop while any is left.
                    pending = chan.recv_ready() or chan.recv_stderr_ready()
                    if not pending and (chan.eof_received or chan.closed or now - quiet_since > _EOF_GRACE_S):
                        break
                elif not t.is_active():
                    raise ConnectionLost(
                        self.name,
                        subject,
                        "connection dropped while the command ran",
                        stderr=err.decode("utf-8", "replace"),
                    )
                if now >= deadline:
                    return RawResult(None, bytes(out), bytes(err))
                pause = 0.001 if got else min(pause * 2, _POLL_MAX_S)
                time.sleep(min(pause, max(0.0, deadline - now)))
            code = chan.recv_exit_status()  # returns at once: the status arrived or the channel closed
            if code == -1 and not t.is_active():
                raise ConnectionLost(
                    self.name,
                    subject,
                    "connection dropped while the command ran",
                    stderr=err.decode("utf-8", "replace"),
                )
            return RawResult(code, bytes(out), bytes(err))
        except (paramiko.SSHException, EOFError, OSError) as e:
            if time.monotonic() >= deadline:
                return RawResult(None, bytes(out), bytes(err))
            raise self._lost_or(subject, e) from e
        finally:
            chan.close()

    # -- files --------------------------------------------------------------------------------

    def _sftp(self, subject: str, deadline: float) -> tuple[paramiko.SFTPClient, paramiko.Channel]:
        t = self._transport(subject)
        chan = t.open_session(timeout=max(0.01, deadline - time.monotonic()))
        chan.settimeout(max(0.01, deadline - time.monotonic()))
        with Watchdog(deadline, chan.close):
            chan.invoke_subsystem("sftp")
        return paramiko.SFTPClient(chan), chan

    def _transfer(self, subject: str, remote: str, deadline: float, work: _SftpWork) -> None:
        chan: paramiko.Channel | None = None
        try:
            sftp, chan = self._sftp(subject, deadline)
            with Watchdog(deadline, chan.close), Watchdog(deadline + _ABORT_GRACE_S, self._abort_connection):
                try:
                    work(sftp)
                finally:
                    sftp.close()
        except TransportError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as e:
            t = self._client.get_transport() if self._client is not None else None
            if time.monotonic() >= deadline:
                raise CommandTimeout(self.name, subject, "copy did not finish before the deadline") from e
            if t is None or not t.is_active():
                raise ConnectionLost(
                    self.name, subject, f"connection dropped ({type(e).__name__}: {e})"
                ) from e
            raise self._explain_sftp_failure(subject, remote, f"SFTP error: {type(e).__name__}: {e}") from e
        finally:
            if chan is not None:
                chan.close()

    def _explain_sftp_failure(self, subject: str, remote: str, problem: str) -> TransportError:
        """SFTP v3 reports ENOSPC, EDQUOT... as a bare 'Failure': add the free space as evidence."""
        hint = ""
        try:
            df = self.run(["df", "-k", posixpath.dirname(remote)], timeout_s=5.0)
            lines = df.stdout.strip().splitlines()
            if df.ok and len(lines) >= 2:
                hint = f"df -k on the device: {' '.join(lines[-1].split())!r} (is the disk full?)"
        except TransportError:
            pass
        return TransportError(self.name, subject, problem, hint=hint)

    def _put(self, local: Path, remote: str, deadline: float) -> None:
        subject = f"push {str(local)!r} -> {remote!r}"
        size = local.stat().st_size

        def work(sftp: paramiko.SFTPClient) -> None:
            # Our own loop instead of putfo(): paramiko drops errors of pipelined writes when
            # the file is closed, so the size check after close is what catches a full disk.
            sent = 0
            with local.open("rb") as f, sftp.open(remote, "wb") as rf:
                rf.set_pipelined(True)
                while chunk := f.read(_SFTP_CHUNK):
                    rf.write(chunk)
                    sent += len(chunk)
                    if time.monotonic() >= deadline:
                        raise CommandTimeout(
                            self.name,
                            subject,
                            f"copy did not finish before the deadline ({sent}/{size} bytes)",
                        )
            landed = sftp.stat(remote).st_size
            if landed != size:
                raise self._explain_sftp_failure(
                    subject, remote, f"only {landed} of {size} bytes landed (the device refused writes)"
                )

        self._transfer(subject, remote, deadline, work)

    def _get(self, remote: str, local: Path, deadline: float) -> None:
        subject = f"pull {remote!r}"
        progress = self._progress_check(subject, deadline)

        def work(sftp: paramiko.SFTPClient) -> None:
            try:
                info = sftp.stat(remote)
            except FileNotFoundError as e:
                raise TransportError(self.name, subject, "no such file on the device") from e
            if info.st_mode is not None and not stat.S_ISREG(info.st_mode):
                raise TransportError(self.name, subject, "not a regular file on the device")
            with local.open("wb") as f:
                sftp.getfo(remote, f, callback=progress)

        self._transfer(subject, remote, deadline, work)

    def _progress_check(self, subject: str, deadline: float) -> Callable[[int, int], None]:
        """An SFTP progress callback that aborts the copy once the deadline has passed."""

        def check(done: int, total: int) -> None:
            if time.monotonic() >= deadline:
                raise CommandTimeout(
                    self.name, subject, f"copy did not finish before the deadline ({done}/{total} bytes)"
                )

        return check
