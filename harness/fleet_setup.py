"""From the config's device selectors to a running :class:`~devices.fleet.Fleet`.

The inventory comes from ``[measure] inventory`` / ``--inventory`` (or ``devices/*.toml`` in the
working directory); selectors are device names or ``tag:<tag>``. The host (``local``) is
wrapped so that timing it takes the host CPU exclusively (training yields, see
:mod:`harness.host_gate`). Leases and device health live in the results database, so every
harness process pointed at the same results directory shares one fleet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devices.base import Device, HealthReport, Measurement, MeasureSettings
from devices.energy_protocol import EnergyProtocol
from devices.factory import make_device
from devices.fleet import Fleet
from devices.inventory import Inventory, InventoryError, load_inventory
from devices.leases import LeaseStore
from devices.local import LocalDevice
from harness.errors import InputError

if TYPE_CHECKING:  # both import Keras/TensorFlow; `harness devices list` must stay fast
    from harness.config import MeasureConfig
    from harness.host_gate import HostCpuGate

__all__ = ["GatedLocalDevice", "inventory_from", "open_devices", "open_fleet", "RESULTS_DB"]

RESULTS_DB = "harness.sqlite"
"""The results database's file name in a results directory (trials, leases, device health)."""


def inventory_from(paths: Sequence[str | Path]) -> Inventory:
    """The inventory files given, or ``devices/*.toml`` under the CWD when none are given."""
    try:
        return load_inventory(list(paths) if paths else None)
    except InventoryError as e:
        raise InputError(str(e)) from e


def open_devices(selectors: Sequence[str], inventory: Inventory, gate: HostCpuGate | None = None,
                 energy: EnergyProtocol | None = None) -> list[Device]:
    """Devices for ``selectors`` (names or ``tag:…``); nothing connects until first use.
    ``energy`` is the protocol devices with a meter follow."""
    if not selectors:
        raise InputError("[measure] devices: name at least one device (or 'local')")
    try:
        specs = inventory.select(selectors)
    except InventoryError as e:
        raise InputError(str(e)) from e
    devices = [make_device(spec, energy=energy) for spec in specs]
    if gate is not None:
        devices = [GatedLocalDevice(d, gate) if isinstance(d, LocalDevice) else d for d in devices]
    return devices


def open_fleet(devices: Sequence[Device], results_dir: Path, measure: MeasureConfig) -> tuple[Fleet, LeaseStore]:
    """A fleet over ``devices`` whose leases live in ``results_dir``'s database.

    The caller closes both (the fleet first): ``fleet.close(); store.close()``.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    store = LeaseStore(results_dir / RESULTS_DB)
    try:
        fleet = Fleet(devices, store, lease_ttl_s=measure.lease_ttl_s, retries=measure.retries,
                      quarantine_after=measure.quarantine_after)
    except BaseException:
        store.close()
        raise
    return fleet, store


class GatedLocalDevice(Device):
    """The host device, timed only while host-side work (training) has yielded the CPU."""

    def __init__(self, device: LocalDevice, gate: HostCpuGate) -> None:
        super().__init__(device.name, device.tags, device.device_class)
        self._device = device
        self._gate = gate

    @property
    def has_energy_meter(self) -> bool:
        return self._device.has_energy_meter

    def measure(self, model_path: Path, settings: MeasureSettings,
                probe_input: np.ndarray | None = None) -> Measurement:
        with self._gate.exclusive():
            return self._device.measure(model_path, settings, probe_input)

    def health_check(self) -> HealthReport:
        return self._device.health_check()

    def close(self) -> None:
        self._device.close()
