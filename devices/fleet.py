"""The fleet: measure one model once per device class, on leased, healthy devices, with retry.

A :class:`Fleet` owns a set of :class:`~devices.base.Device` objects (built elsewhere, e.g. by
``devices.factory``) and shares a :class:`~devices.leases.LeaseStore` with every other harness
process. :meth:`Fleet.measure` measures a model on one device of each device class, the
classes in parallel:

1. pick a device of the class that is free (not in use by this process, not leased by anyone)
   and not known to be sick (quarantined, or failing its last health check, until
   ``recheck_s`` has passed);
2. lease it (``lease_ttl_s``; a background heartbeat renews held leases every
   ``heartbeat_s`` so a long measurement keeps it) and, unless a passing health check is
   younger than ``health_max_age_s``, check its health; a failing check is recorded (the
   device turns *unhealthy* or *offline*) and the next device is tried;
3. measure; a :class:`~devices.base.DeviceError` is recorded against the device (the
   ``quarantine_after``-th in a row quarantines it) and the measurement is retried on another
   device of the *same* class, at most ``retries`` times; the lease is released in a
   ``finally`` whatever happens.

Waiting for a free device ends at ``acquire_timeout_s``; when every remaining device of a
class is sick the class fails at once. Either way the class's :class:`ClassResult` holds every
failure, one line each naming the device, and the reason no measurement was made: a fleet
never raises for a device's fault.

Lifecycle: create, call :meth:`Fleet.measure` / :meth:`Fleet.check` any number of times, then
:meth:`Fleet.close` (also a context manager), which stops the heartbeat and closes the devices;
the lease store belongs to the caller and stays open.

Thread safety: every public method may be called from several threads at once (the search
measures several candidates concurrently). A device is used by one thread at a time: within the
process a device is claimed before it is leased, across processes the lease decides.

Errors: :class:`FleetError` for using a closed fleet; :class:`~devices.leases.LeaseStoreError`
when the lease database fails; ``ValueError`` for bad constructor arguments. Exceptions other
than ``DeviceError`` raised by a device are bugs and propagate (after its lease is released).

Units: seconds everywhere (``*_s``); deadlines use ``time.monotonic()``, ages of records in the
shared database use its wall clock (:meth:`~devices.leases.LeaseStore.now`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devices.base import Device, DeviceError, HealthReport, Measurement, MeasureSettings
from devices.leases import DeviceState, Lease, LeaseStore, LeaseStoreError, make_owner

if TYPE_CHECKING:
    from types import TracebackType

    import numpy as np

__all__ = ["ClassResult", "Failure", "Fleet", "FleetError", "FleetResult"]

logger = logging.getLogger(__name__)


class FleetError(DeviceError):
    """The fleet cannot be used as asked (it is closed, or a name is not one of its devices)."""


@dataclass(frozen=True)
class Failure:
    """One failed attempt, or the reason a class got no attempt at all.

    Attributes:
        device_class: The class being measured.
        device: The device that failed; ``None`` for a class-level reason (no device free
            before the deadline, every device sick, retries spent).
        error: What went wrong, one line.
        attempt: The attempt number within the class (1-based); for a class-level reason, the
            number of attempts made.
    """

    device_class: str
    device: str | None
    error: str
    attempt: int

    def line(self) -> str:
        """``device: error`` (or ``class <name>: error`` for a class-level reason)."""
        who = self.device if self.device else f"class {self.device_class}"
        return f"{who}: {self.error}"


@dataclass(frozen=True)
class ClassResult:
    """What :meth:`Fleet.measure` got for one device class.

    Attributes:
        device_class: The class.
        measurement: The measurement (``measurement.device`` names the device), or ``None``.
        failures: Failed attempts on devices, in attempt order.
        attempts: How many devices were given the model to measure.
        error: Why there is no measurement (``None`` when there is one), one line.
    """

    device_class: str
    measurement: Measurement | None
    failures: tuple[Failure, ...] = ()
    attempts: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.measurement is not None

    def error_lines(self) -> tuple[str, ...]:
        """Each failure, then the reason, one line each; empty when measured without a failure."""
        lines = tuple(f.line() for f in self.failures)
        return lines + ((f"class {self.device_class}: {self.error}",) if self.error else ())


@dataclass(frozen=True)
class FleetResult:
    """What :meth:`Fleet.measure` got, by device class.

    Attributes:
        classes: One :class:`ClassResult` per device class of the fleet.
        failures: Every failed attempt of every class, in the order the attempts failed.
    """

    classes: Mapping[str, ClassResult]
    failures: tuple[Failure, ...] = ()

    @property
    def measurements(self) -> dict[str, Measurement]:
        """The measurement of each class that got one."""
        return {c: r.measurement for c, r in self.classes.items() if r.measurement is not None}

    @property
    def errors(self) -> dict[str, tuple[str, ...]]:
        """For each class without a measurement, its failures and reason, one line each."""
        return {c: r.error_lines() for c, r in self.classes.items() if not r.ok}

    @property
    def attempts(self) -> int:
        """Devices given the model in all, over every class."""
        return sum(r.attempts for r in self.classes.values())

    @property
    def ok(self) -> bool:
        """Whether every class got a measurement."""
        return all(r.ok for r in self.classes.values())


class _Unavailable(Exception):
    """No device of a class can be had; the message says why (internal to the fleet)."""


class Fleet:
    """Devices grouped by class, measured through leases, health checks and quarantine.

    Args:
        devices: The devices (distinct names); their ``device_class`` groups them.
        lease_store: The shared lease database (not closed by the fleet).
        owner: This fleet's name in leases (default: :func:`~devices.leases.make_owner`).
        lease_ttl_s: How long a lease lasts unless renewed. Units: s.
        heartbeat_s: How often held leases are renewed (default: a third of ``lease_ttl_s``).
            Units: s.
        quarantine_after: Consecutive measurement failures that quarantine a device.
        retries: Further devices of the same class tried after a failed measurement.
        health_max_age_s: A passing health check younger than this spares the check before a
            lease. Units: s.
        recheck_s: A quarantined device, or one whose last check failed, is checked again at
            most this often (and rejoins when it passes). Units: s.
        acquire_timeout_s: How long a class waits for a free device. Units: s.
        poll_s: How often a waiting class looks again for devices leased by other processes
            (a device freed by this process wakes it at once). Units: s.

    Raises:
        ValueError: No devices, two devices with one name, or a number out of range; the
            message names the argument.
    """

    def __init__(
        self,
        devices: Sequence[Device],
        lease_store: LeaseStore,
        *,
        owner: str | None = None,
        lease_ttl_s: float = 120.0,
        heartbeat_s: float | None = None,
        quarantine_after: int = 3,
        retries: int = 2,
        health_max_age_s: float = 300.0,
        recheck_s: float = 300.0,
        acquire_timeout_s: float = 600.0,
        poll_s: float = 1.0,
    ) -> None:
        if not devices:
            raise ValueError("devices: a fleet needs at least one device")
        by_name: dict[str, Device] = {}
        for device in devices:
            if device.name in by_name:
                raise ValueError(f"devices: two devices are named {device.name!r}")
            by_name[device.name] = device
        heartbeat_s = lease_ttl_s / 3 if heartbeat_s is None else heartbeat_s
        _positive("lease_ttl_s", lease_ttl_s)
        _positive("poll_s", poll_s)
        if not 0 < heartbeat_s < lease_ttl_s:
            raise ValueError(f"heartbeat_s must be positive and below lease_ttl_s ({lease_ttl_s}), "
                             f"got {heartbeat_s!r}")
        if quarantine_after < 1:
            raise ValueError(f"quarantine_after must be >= 1, got {quarantine_after!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        for name, value in (("health_max_age_s", health_max_age_s), ("recheck_s", recheck_s),
                            ("acquire_timeout_s", acquire_timeout_s)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
        self.owner = owner or make_owner()
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_s = heartbeat_s
        self.quarantine_after = quarantine_after
        self.retries = retries
        self.health_max_age_s = health_max_age_s
        self.recheck_s = recheck_s
        self.acquire_timeout_s = acquire_timeout_s
        self.poll_s = poll_s
        self._store = lease_store
        self._devices = by_name
        self._classes: dict[str, tuple[Device, ...]] = {}
        for device in devices:
            self._classes[device.device_class] = (*self._classes.get(device.device_class, ()), device)
        # _cond guards the in-process claims; _freed counts releases so a waiter that looked
        # before a release does not sleep through its notification
        self._cond = threading.Condition()
        self._in_use: set[str] = set()
        self._freed = 0
        self._closed = False
        # _held_lock guards the leases the heartbeat renews and the tokens it lost
        self._held_lock = threading.Lock()
        self._held: dict[str, Lease] = {}
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._order_lock = threading.Lock()
        self._failures_seen = 0

    # --- public -------------------------------------------------------------------------------

    @property
    def devices(self) -> tuple[Device, ...]:
        return tuple(self._devices.values())

    @property
    def classes(self) -> dict[str, tuple[str, ...]]:
        """The device names of each class, in the order the devices were given."""
        return {c: tuple(d.name for d in ds) for c, ds in self._classes.items()}

    def measure(
        self, model_path: Path | str, settings: MeasureSettings, probe_input: np.ndarray | None = None
    ) -> FleetResult:
        """Measure ``model_path`` once per device class, the classes in parallel.

        Never raises for a device's fault: failures and the reason a class got no measurement
        are in the result.

        Raises:
            FleetError: The fleet is closed.
            LeaseStoreError: The lease database cannot be read or written.
        """
        self._check_open()
        path = Path(model_path)
        order: list[tuple[int, Failure]] = []
        with ThreadPoolExecutor(max_workers=len(self._classes), thread_name_prefix="fleet") as pool:
            futures = {c: pool.submit(self._measure_class, c, path, settings, probe_input, order)
                       for c in self._classes}
        # the pool has waited for every class: no device is left in use when an error propagates
        classes = {c: future.result() for c, future in futures.items()}
        return FleetResult(classes, tuple(f for _, f in sorted(order, key=lambda item: item[0])))

    def check(
        self, devices: Sequence[str] | None = None, *, timeout_s: float | None = None
    ) -> list[HealthReport]:
        """Run health checks now (on ``devices`` by name, default all) and record them.

        Each device is claimed and leased for its check like for a measurement; one still busy
        after ``timeout_s`` (default ``acquire_timeout_s``) gets a report saying so, which is
        not recorded. A passing check lifts a quarantine.

        Raises:
            FleetError: The fleet is closed, or a name is not one of its devices.
            LeaseStoreError: The lease database cannot be read or written.
        """
        self._check_open()
        names = list(self._devices) if devices is None else list(dict.fromkeys(devices))
        unknown = [n for n in names if n not in self._devices]
        if unknown:
            raise FleetError(f"no device named {', '.join(map(repr, unknown))} in this fleet "
                             f"(devices: {', '.join(self._devices)})")
        if not names:
            return []
        deadline = time.monotonic() + (self.acquire_timeout_s if timeout_s is None else timeout_s)
        with ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="fleet-check") as pool:
            futures = [pool.submit(self._check_one, self._devices[n], deadline) for n in names]
        return [future.result() for future in futures]

    def states(self) -> list[DeviceState]:
        """The state of each of this fleet's devices, as every process sees it.

        Raises:
            LeaseStoreError: The lease database cannot be read.
        """
        return self._store.states(self._devices)

    def close(self) -> None:
        """Stop the heartbeat, give back leases still held, close the devices; idempotent.

        Waits for measurements and checks still running (a Ctrl-C leaves their threads
        running): releasing a lease under a running measurement would let another process use
        the device meanwhile. The devices' own deadlines bound the wait.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            while self._in_use:
                self._cond.wait()
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._held_lock:
            leftover, self._held = list(self._held.values()), {}
        for lease in leftover:
            try:
                self._store.release(lease)
            except LeaseStoreError as e:  # it expires on its own; closing must go on
                logger.warning("device %r: cannot release its lease on close: %s", lease.device, e)
        for device in self._devices.values():
            try:
                device.close()
            except (DeviceError, OSError) as e:
                logger.warning("device %r: close failed: %s", device.name, _one_line(e))

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- one class ----------------------------------------------------------------------------

    def _measure_class(
        self, device_class: str, path: Path, settings: MeasureSettings, probe_input: np.ndarray | None,
        order: list[tuple[int, Failure]],
    ) -> ClassResult:
        """Attempts on devices of one class until one measures, retries run out, or none is left."""
        tried: list[str] = []
        failures: list[Failure] = []
        while True:
            deadline = time.monotonic() + self.acquire_timeout_s  # each attempt may wait as long
            try:
                device, lease = self._take(device_class, tried, deadline)
            except _Unavailable as e:
                return ClassResult(device_class, None, tuple(failures), len(tried), str(e))
            tried.append(device.name)
            try:
                measurement, error = self._attempt(device, lease, path, settings, probe_input)
            finally:
                self._give_back(device, lease)
            if measurement is not None:
                return ClassResult(device_class, measurement, tuple(failures), len(tried))
            failure = Failure(device_class, device.name, error, len(tried))
            failures.append(failure)
            with self._order_lock:
                self._failures_seen += 1
                order.append((self._failures_seen, failure))
            if len(tried) > self.retries:
                return ClassResult(device_class, None, tuple(failures), len(tried),
                                   f"gave up after {len(tried)} attempts (retries = {self.retries})")

    def _attempt(
        self, device: Device, lease: Lease, path: Path, settings: MeasureSettings,
        probe_input: np.ndarray | None,
    ) -> tuple[Measurement | None, str]:
        """One measurement on a claimed, leased device: the measurement, or the error line."""
        logger.info("device %r: measuring %s", device.name, path)
        try:
            measurement = device.measure(path, settings, probe_input)
        except DeviceError as e:
            error = _one_line(e)
            if self._store.record_failure(device.name, error, self.quarantine_after):
                logger.warning("device %r: quarantined; measuring %s failed: %s",
                               device.name, path, error)
            return None, error
        with self._held_lock:
            lost = lease.token in self._lost
        if not lost:
            # the heartbeat notices a lost lease only at its next beat, and not at all while the
            # database refuses renewals: ask once more now that the measurement is done
            try:
                lost = self._store.renew(lease, self.lease_ttl_s) is None
            except LeaseStoreError as e:
                logger.warning("device %r: cannot confirm its lease after measuring: %s", device.name, e)
                lost = True
        if lost:
            # not the device's fault, but another process may have used it meanwhile: the
            # timing cannot be trusted
            return None, ("lease lost during the measurement (the heartbeat could not renew it "
                          "in time); result discarded")
        self._store.record_success(device.name)
        return measurement, ""

    # --- claiming devices ---------------------------------------------------------------------

    def _take(self, device_class: str, tried: Sequence[str], deadline: float) -> tuple[Device, Lease]:
        """A claimed, leased, healthy device of ``device_class`` not in ``tried``.

        Raises:
            _Unavailable: None left to try, every one left is sick, or none was free by
                ``deadline``; the message says which and lists each device's reason.
        """
        candidates = [d for d in self._classes[device_class] if d.name not in tried]
        if not candidates:
            if tried:
                raise _Unavailable(f"no other device of this class to try (tried {', '.join(tried)})")
            raise _Unavailable("no device of this class")
        while True:
            with self._cond:
                self._check_open()
                freed = self._freed
            busy: dict[str, str] = {}
            sick: dict[str, str] = {}
            states = {s.device: s for s in self._store.states(d.name for d in candidates)}
            for device in candidates:
                why = self._sick(states[device.name])
                if why:
                    sick[device.name] = why
                    continue
                got = self._claim(device)
                if isinstance(got, str):
                    busy[device.name] = got
                    continue
                try:
                    why = self._unfit(device)
                except BaseException:
                    self._give_back(device, got)
                    raise
                if why:
                    # no wake-up: a sick device is no news for this process's waiting classes
                    self._give_back(device, got, wake=False)
                    sick[device.name] = why
                    continue
                return device, got
            reasons = "; ".join(f"{n}: {why}" for n, why in {**sick, **busy}.items())
            others = " other" if tried else ""
            if not busy:
                raise _Unavailable(f"no{others} healthy device of this class ({reasons})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Unavailable(f"no{others} device of this class free within "
                                   f"{self.acquire_timeout_s:g} s ({reasons})")
            with self._cond:
                if self._freed == freed:
                    self._cond.wait(min(self.poll_s, remaining))

    def _claim(self, device: Device) -> Lease | str:
        """Claim ``device`` in this process and lease it; the lease, or why it is busy."""
        with self._cond:
            if device.name in self._in_use:
                return "in use by this process"
            self._in_use.add(device.name)
        try:
            lease = self._store.acquire(device.name, self.owner, self.lease_ttl_s)
            if lease is None:
                holder = self._store.holder(device.name)
                if holder is None:  # released between the two reads
                    why = "leased by another process"
                else:
                    left_s = max(0.0, holder.expires_at - self._store.now())
                    why = f"leased by {holder.owner} for {left_s:.0f} s more"
                self._unclaim(device.name, wake=False)
                return why
        except BaseException:
            self._unclaim(device.name, wake=False)
            raise
        self._hold(lease)
        return lease

    def _give_back(self, device: Device, lease: Lease, *, wake: bool = True) -> None:
        """Release ``lease`` and the in-process claim, waking waiting classes unless told not to."""
        with self._held_lock:
            held = self._held.get(device.name)
            if held is not None and held.token == lease.token:  # renewals replace the object
                del self._held[device.name]
            self._lost.discard(lease.token)
        try:
            self._store.release(lease)
        finally:
            self._unclaim(device.name, wake=wake)

    def _unclaim(self, name: str, *, wake: bool = True) -> None:
        """Drop the in-process claim on ``name``. ``wake`` counts it as freed and wakes waiters;
        a claim held only for a moment (lease refused, device sick) must not, or the waiter
        that dropped it would find "something was freed" and poll the database in a spin."""
        with self._cond:
            self._in_use.discard(name)
            if wake:
                self._freed += 1
                self._cond.notify_all()

    # --- health -------------------------------------------------------------------------------

    def _sick(self, state: DeviceState) -> str | None:
        """Why ``state``'s device is skipped without a check now, or ``None`` (worth a try).

        A quarantined device, or one whose last check failed, waits ``recheck_s`` from its
        last check or quarantine (whichever is later), so a device that passes checks but
        fails measurements is not let back in at once.
        """
        if not state.quarantined and state.check_ok is not False:
            return None
        since = max(t for t in (state.checked_at, state.quarantined_since, 0.0) if t is not None)
        if self._store.now() - since >= self.recheck_s:
            return None
        if state.quarantined:
            return f"quarantined ({state.quarantine_reason})"
        kind = "offline" if state.reachable is False else "unhealthy"
        return f"{kind} ({'; '.join(state.problems) or 'failed its health check'})"

    def _unfit(self, device: Device) -> str | None:
        """Why a just-leased device must not measure, or ``None``: checked unless a passing
        check is younger than ``health_max_age_s``."""
        state = self._store.state(device.name)  # re-read: another process may have judged it
        why = self._sick(state)
        if why:
            return why
        fresh = (state.check_ok and not state.quarantined and state.checked_at is not None
                 and self._store.now() - state.checked_at < self.health_max_age_s)
        if fresh:
            return None
        report = self._run_check(device)
        return None if report.ok else f"health check failed: {report.summary()}"

    def _run_check(self, device: Device) -> HealthReport:
        """Run ``device``'s health check (it is claimed and leased) and record the report."""
        try:
            report = device.health_check()
        except DeviceError as e:  # the contract says it reports instead; tolerate it anyway
            report = HealthReport(device.name, (f"health check raised: {_one_line(e)}",))
        if report.device != device.name:
            report = HealthReport(device.name, report.problems, report.facts)
        self._store.record_health(report)
        if not report.ok:
            logger.warning("device %r: health check failed: %s", device.name, report.summary())
        return report

    def _check_one(self, device: Device, deadline: float) -> HealthReport:
        """:meth:`check` for one device: wait for it until ``deadline``, check, release."""
        while True:
            with self._cond:
                self._check_open()
                freed = self._freed
            got = self._claim(device)
            if not isinstance(got, str):
                try:
                    return self._run_check(device)
                finally:
                    self._give_back(device, got)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return HealthReport(device.name, (f"not checked: {got}",))
            with self._cond:
                if self._freed == freed:
                    self._cond.wait(min(self.poll_s, remaining))

    # --- heartbeat ----------------------------------------------------------------------------

    def _hold(self, lease: Lease) -> None:
        """Hand ``lease`` to the heartbeat (started on first use)."""
        with self._held_lock:
            self._held[lease.device] = lease
            if self._heartbeat is None and not self._stop.is_set():
                self._heartbeat = threading.Thread(
                    target=self._beat, name=f"fleet-heartbeat-{self.owner}", daemon=True)
                self._heartbeat.start()

    def _beat(self) -> None:
        """Renew every held lease each ``heartbeat_s`` until :meth:`close`."""
        while not self._stop.wait(self.heartbeat_s):
            with self._held_lock:
                leases = list(self._held.values())
            for lease in leases:
                try:
                    renewed = self._store.renew(lease, self.lease_ttl_s)
                except LeaseStoreError as e:  # a busy database: the next beat tries again
                    logger.warning("device %r: cannot renew its lease: %s", lease.device, e)
                    continue
                with self._held_lock:
                    current = self._held.get(lease.device)
                    if current is None or current.token != lease.token:
                        continue  # released meanwhile
                    if renewed is None:
                        del self._held[lease.device]
                        self._lost.add(lease.token)
                        logger.error("device %r: lease lost (expired and reclaimed by another "
                                     "process)", lease.device)
                    else:
                        self._held[lease.device] = renewed

    def _check_open(self) -> None:
        if self._closed:
            raise FleetError("the fleet is closed; create a new Fleet to measure")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def _one_line(error: BaseException | str) -> str:
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return (text[:300] + "...") if len(text) > 300 else text
