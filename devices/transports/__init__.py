"""Transports: how device code reaches a device (commands, files, run directories).

:class:`Transport` is the seam; :class:`SshTransport` (paramiko) and :class:`AdbTransport`
(adbutils) implement it, so runners work the same over SSH and adb.
"""

from devices.transports.adb import AdbTransport
from devices.transports.base import (
    CommandResult,
    CommandTimeout,
    ConnectionLost,
    HostKeyError,
    IntegrityError,
    Transport,
    TransportError,
)
from devices.transports.ssh import SshTransport

__all__ = [
    "AdbTransport",
    "CommandResult",
    "CommandTimeout",
    "ConnectionLost",
    "HostKeyError",
    "IntegrityError",
    "SshTransport",
    "Transport",
    "TransportError",
]
