"""Remote devices: Linux boards over SSH and Android phones over adb.

:class:`LinuxBoardDevice` (SSH + ``litert_runner.py``) and :class:`AndroidDevice` (adb + the
user's ``benchmark_model``) share :class:`~devices.remote.common.RemoteDevice`: a lazily opened
transport, one run directory per measurement, the host's expected output and health checks.
:func:`devices.factory.make_device` builds the right one from an inventory entry.
"""

from devices.remote.android import AndroidDevice
from devices.remote.common import (
    HostReference,
    HostReferenceError,
    PreparedRun,
    RemoteDevice,
    RemoteTimeouts,
    TimedRun,
)
from devices.remote.linux import LinuxBoardDevice

__all__ = [
    "AndroidDevice",
    "HostReference",
    "HostReferenceError",
    "LinuxBoardDevice",
    "PreparedRun",
    "RemoteDevice",
    "RemoteTimeouts",
    "TimedRun",
]
