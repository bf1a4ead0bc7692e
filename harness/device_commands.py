"""``harness devices``: the inventory's devices, their state, health checks, quarantine, provisioning.

* ``list`` reads the inventory and the results database only: it connects to no device and
  imports no ML framework, so it answers at once (a results directory without a database
  shows every device as ``unknown`` and is not created).
* ``check`` health-checks the selected devices in parallel, each leased for its check like for
  a measurement and bounded by its inventory's ``health_timeout_s``; every report lands in the
  results database, where ``list``, ``measure`` and a running search see it (a passing check
  lifts a quarantine). Exit 1 when a device fails.
* ``release`` lifts a quarantine by hand.
* ``provision`` builds the LiteRT runner's venv on an SSH board from wheels the host collects
  (:func:`devices.provision.provision`).

Exit codes as for every ``harness`` command: 2 for bad input (inventory, device name or tag,
argument) with one line naming it, 1 for a runtime failure (an unhealthy device, provisioning).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from devices.inventory import DeviceSpec, Inventory, InventoryError
from harness.errors import InputError
from harness.fleet_setup import RESULTS_DB, inventory_from

if TYPE_CHECKING:
    from devices.base import HealthReport
    from devices.leases import DeviceState

__all__ = ["devices", "device_row"]


_inventory_option = click.option(
    "--inventory", "inventory", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
    help="Device inventory TOML (repeatable; default: devices/*.toml here).")
_results_dir_option = click.option(
    "--results-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
    show_default=True, help="Where the fleet's leases and device health are kept.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")


@click.group()
def devices() -> None:
    """The devices of the inventory: state, health checks, quarantine, provisioning."""


@devices.command("list")
@_inventory_option
@_results_dir_option
@_json_option
def list_devices(inventory: tuple[Path, ...], results_dir: Path, as_json: bool) -> None:
    """List every device and its state.

    Reads the inventory and the results database only: connects to no device.
    """
    specs = list(inventory_from(inventory))
    states = _read_states(results_dir, [spec.name for spec in specs])
    if as_json:
        click.echo(json.dumps([device_row(spec, states[spec.name]) for spec in specs], sort_keys=True))
        return
    click.echo(_table(specs, states))


@devices.command("check")
@click.argument("selectors", nargs=-1)
@_inventory_option
@_results_dir_option
@_json_option
def check(selectors: tuple[str, ...], inventory: tuple[Path, ...], results_dir: Path, as_json: bool) -> None:
    """Health-check devices and record the results.

    SELECTORS are device names or tag:TAG (default: every device). The devices are checked
    in parallel, each within its inventory's health_timeout_s (a device another process has
    leased is waited for as long). Exit 1 when any device fails.
    """
    from devices.factory import make_device
    from devices.fleet import Fleet
    from devices.leases import REACHABLE_FACT, LeaseStore

    specs = _select(inventory_from(inventory), selectors)
    wait_s = max(spec.health.timeout_s for spec in specs)
    store = LeaseStore(results_dir / RESULTS_DB)
    try:
        fleet = Fleet([make_device(spec) for spec in specs], store, acquire_timeout_s=wait_s)
        try:
            reports = fleet.check(timeout_s=wait_s)
            states = {state.device: state for state in fleet.states()}
        finally:
            fleet.close()
    finally:
        store.close()

    def status(report: HealthReport) -> str:
        if report.ok:
            return "healthy"
        return "offline" if report.facts.get(REACHABLE_FACT, "").lower() == "false" else "unhealthy"

    if as_json:
        click.echo(json.dumps([
            {"name": r.device, "ok": r.ok, "status": status(r), "state": states[r.device].state,
             "problems": [_one_line(p) for p in r.problems], "facts": dict(r.facts)}
            for r in reports], sort_keys=True))
    else:
        for report in reports:
            facts = ", ".join(f"{k}={v}" for k, v in sorted(report.facts.items()))
            problems = "" if report.ok else ": " + "; ".join(_one_line(p) for p in report.problems)
            click.echo(f"{report.device}: {status(report)}{problems}" + (f" [{facts}]" if facts else ""))
    failed = [r.device for r in reports if not r.ok]
    if failed:
        click.echo(f"error: {len(failed)} of {len(reports)} device(s) failed the health check: "
                   f"{', '.join(failed)}", err=True)
        sys.exit(1)


@devices.command("release")
@click.argument("selectors", nargs=-1, required=True)
@_inventory_option
@_results_dir_option
def release(selectors: tuple[str, ...], inventory: tuple[Path, ...], results_dir: Path) -> None:
    """Lift the quarantine of devices.

    SELECTORS are device names or tag:TAG. A passing check lifts a quarantine too.
    """
    from devices.leases import LeaseStore

    names = [spec.name for spec in _select(inventory_from(inventory), selectors)]
    path = results_dir / RESULTS_DB
    if not path.is_file():
        for name in names:
            click.echo(f"{name}: not quarantined (no results database at {path})")
        return
    with LeaseStore(path) as store:
        for state in store.states(names):
            if not state.quarantined:
                click.echo(f"{state.device}: not quarantined ({state.state})")
                continue
            store.clear_quarantine(state.device)
            click.echo(f"{state.device}: quarantine lifted (was: {state.quarantine_reason})")


@devices.command("provision")
@click.argument("name")
@_inventory_option
@click.option("--wheelhouse", type=click.Path(path_type=Path),
              help="Take the wheels from this directory only (offline), not the package index.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the downloaded wheels here, a folder per board platform (reuse it as --wheelhouse).")
@click.option("--requirement", "requirements", multiple=True,
              help="A package to install (repeatable; default: numpy and ai-edge-litert).")
@click.option("--timeout-seconds", type=click.FloatRange(min=0, min_open=True), default=900.0,
              show_default=True, help="Budget of the whole run.")
def provision_device(name: str, inventory: tuple[Path, ...], wheelhouse: Path | None, cache_dir: Path | None,
                     requirements: tuple[str, ...], timeout_seconds: float) -> None:
    """Install the LiteRT runner's venv on an ssh board.

    NAME is an ssh device of the inventory. The host collects the wheels (from the index or
    --wheelhouse) and the board installs them from local files, offline.
    """
    from devices.provision import DEFAULT_REQUIREMENTS, provision

    try:
        spec = inventory_from(inventory)[name]
    except InventoryError as e:
        raise InputError(str(e)) from e
    if spec.transport != "ssh":
        raise InputError(f"device {name!r}: only ssh devices are provisioned; this is a {spec.transport} "
                         "device (nothing runs Python there)")
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise InputError(f"--wheelhouse {wheelhouse}: no such directory")
    try:
        result = provision(spec, requirements=requirements or DEFAULT_REQUIREMENTS, wheelhouse=wheelhouse,
                           cache_dir=cache_dir, timeout_s=timeout_seconds)
    except ValueError as e:  # ProvisionError is a DeviceError (exit 1), not a ValueError
        raise InputError(f"--requirement: {e}") from e
    click.echo(result.summary())  # its last line is result.hint


# -- rows ----------------------------------------------------------------------------------------


def device_row(spec: DeviceSpec, state: DeviceState) -> dict[str, object]:
    """One device as ``list --json`` prints it: the inventory entry and its state.

    Timestamps are ISO 8601 in UTC (``None``: never happened).
    """
    return {
        "name": spec.name,
        "transport": spec.transport,
        "address": _address(spec),
        "class": spec.device_class,
        "tags": list(spec.tags),
        "meter": spec.meter.kind if spec.meter is not None else None,
        "inventory": str(spec.source) if spec.source is not None else None,
        "state": state.state,
        "detail": _one_line(state.summary()),
        "holder": state.holder,
        "lease_expires_at": _iso(state.lease_expires_at),
        "quarantined": state.quarantined,
        "quarantine_reason": state.quarantine_reason,
        "quarantined_since": _iso(state.quarantined_since),
        "checked_at": _iso(state.checked_at),
        "check_ok": state.check_ok,
        "problems": list(state.problems),
        "consecutive_failures": state.consecutive_failures,
        "measurements_ok": state.measurements_ok,
        "measurements_failed": state.measurements_failed,
        "last_error": state.last_error,
        "last_error_at": _iso(state.last_error_at),
    }


_HEADER = ("NAME", "TRANSPORT", "ADDRESS", "CLASS", "TAGS", "METER", "FAILS", "CHECKED", "OK/FAILED", "STATE")


def _table(specs: Sequence[DeviceSpec], states: dict[str, DeviceState]) -> str:
    """Aligned columns, the state (which may be long) last; times in local time."""
    lines = [list(_HEADER)]
    for spec in specs:
        state = states[spec.name]
        lines.append([
            spec.name, spec.transport, _address(spec) or "-", spec.device_class, ",".join(spec.tags) or "-",
            spec.meter.kind if spec.meter is not None else "-", str(state.consecutive_failures),
            _local(state.checked_at), f"{state.measurements_ok}/{state.measurements_failed}",
            _one_line(state.summary()),
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER) - 1)]
    # widths has no entry for the last column, which is not padded
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths, strict=False)), line[-1]]).rstrip()
                     for line in lines)


# -- helpers -------------------------------------------------------------------------------------


def _select(inventory: Inventory, selectors: Sequence[str]) -> list[DeviceSpec]:
    """The devices ``selectors`` name (names or ``tag:…``); every device when there are none."""
    if not selectors:
        return list(inventory)
    try:
        return inventory.select(selectors)
    except InventoryError as e:
        raise InputError(str(e)) from e


def _read_states(results_dir: Path, names: Sequence[str]) -> dict[str, DeviceState]:
    """Each device's state in the results database; all ``unknown`` when there is none yet."""
    from devices.leases import DeviceState, LeaseStore

    path = results_dir / RESULTS_DB
    if not path.is_file():
        return {name: DeviceState(name, "unknown") for name in names}
    with LeaseStore(path) as store:
        return {state.device: state for state in store.states(names)}


def _address(spec: DeviceSpec) -> str | None:
    """``user@host:port`` of an ssh device, the serial of an adb device, ``None`` for the host."""
    if spec.transport == "ssh":
        ssh = spec.ssh
        return f"{ssh.user}@{ssh.host}:{ssh.port}"
    if spec.transport == "adb":
        return spec.adb.serial
    return None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="seconds")


def _local(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
