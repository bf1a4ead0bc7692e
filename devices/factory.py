"""One inventory entry in, one :class:`~devices.base.Device` out.

:func:`make_device` opens nothing: remote devices connect on first use (see
:mod:`devices.remote.common`), so building every device of an inventory is cheap and cannot
fail on an unreachable one.
"""

from __future__ import annotations

from devices.base import Device
from devices.energy_protocol import EnergyProtocol
from devices.inventory import DeviceSpec
from devices.local import LocalDevice
from devices.remote import AndroidDevice, LinuxBoardDevice, RemoteTimeouts

__all__ = ["make_device"]


def make_device(spec: DeviceSpec, *, timeouts: RemoteTimeouts | None = None,
                energy: EnergyProtocol | None = None) -> Device:
    """The device ``spec`` describes: ``local`` → :class:`LocalDevice`, ``ssh`` →
    :class:`LinuxBoardDevice`, ``adb`` → :class:`AndroidDevice`.

    Args:
        spec: A validated inventory entry.
        timeouts: Deadlines for a remote device's steps (ignored for ``local``).
        energy: How a device with a meter measures energy (default: the protocol's defaults).

    Raises:
        ValueError: a transport this factory does not know.
    """
    if spec.transport == "local":
        return LocalDevice(tags=spec.tags)
    if spec.transport == "ssh":
        return LinuxBoardDevice(spec, timeouts=timeouts, energy=energy)
    if spec.transport == "adb":
        return AndroidDevice(spec, timeouts=timeouts, energy=energy)
    raise ValueError(f"device {spec.name!r}: unknown transport {spec.transport!r} "
                     "(expected local, ssh or adb)")
