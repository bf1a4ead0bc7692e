"""What Linux boards and Android phones share: the link, run directories, the host's expected
output, health checks and fingerprints.

Lifecycle: a :class:`RemoteDevice` is built from its :class:`~devices.inventory.DeviceSpec`
without touching the network. Its transport opens on first use; after a
:class:`~devices.transports.ConnectionLost` or :class:`~devices.transports.CommandTimeout` it
is closed, because neither the link nor the device's end of it can be trusted any more, and the
next use opens a fresh one. A link found closed by the other end at the first step of a
measurement or health check (it died while idle) is reopened once there; a link lost later fails
that measurement. :meth:`RemoteDevice.close` closes it for good: a closed device refuses to
measure. Not thread-safe (as every :class:`~devices.base.Device`).

Measuring is three steps, so an energy protocol can put meter windows around the timed part
alone and repeat it::

    with device.prepare(model_path, probe) as prepared:  # fresh run dir: model, runner, probe
        run = device.run_timed(prepared, settings)        # one timed runner invocation
    measurement = device.to_measurement(prepared, run)    # output check, fingerprint, notes

:meth:`RemoteDevice.measure` does exactly that once. Leaving the ``with`` block removes the run
directory, also after a failure (best effort: a failed removal is logged, never raised over the
original error); the runner itself is cached once per sha256 under ``<workdir>/cache``.

The device proves it ran the model right: the host runs the same model on the same probe once
with its own LiteRT (:class:`HostReference`, cached per model and probe) and the device's
:func:`~devices.probe.output_digest` must equal the host's. A difference is not an error: the
measurement has ``output_matches = False`` and a one-line note naming the device.

Deadlines (:class:`RemoteTimeouts`, units: s): short commands, pushes (base + per MB), the runner
(base + a multiple of ``min_seconds`` + a budget per inference) and the clean-up each have
their own; the transport enforces them (see :mod:`devices.transports.base`).

Errors: every failure is a :class:`~devices.base.DeviceError` whose one-line message names the
device: transport errors as the transport raised them, runner errors re-raised with the
device's name in front (same class). :meth:`RemoteDevice.health_check` never raises for a sick
device; it reports.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import logging
import math
import re
import shlex
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, TypeVar

import numpy as np

from devices import files
from devices.base import REACHABLE_FACT, Device, DeviceError, HealthReport, Measurement, MeasureSettings
from devices.energy_protocol import EnergyProtocol, EnergyResult, measure_energy
from devices.inventory import DeviceSpec
from devices.meters.base import PowerMeter
from devices.meters.factory import (
    build_meter,
    device_is_charging,
    read_cpu_max_freqs_khz,
    read_temperatures,
)
from devices.probe import dequantize, fit_probe, output_digest
from devices.runners.errors import RunnerError, RunnerOutputError
from devices.transports import CommandResult, CommandTimeout, ConnectionLost, Transport

__all__ = [
    "HostReference",
    "HostReferenceCache",
    "HostReferenceError",
    "NO_ENERGY_NOTE",
    "PreparedRun",
    "RemoteDevice",
    "RemoteTimeouts",
    "Staged",
    "TensorInfo",
    "TimedRun",
    "fit_probe",
    "key_value_script",
    "parse_df_free_mb",
    "parse_key_values",
    "parse_millidegrees",
    "cached_sha256_file",
    "tail",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

NO_ENERGY_NOTE = ("energy is not measured on this device yet (energy_source none); the energy "
                  "objective falls back to the estimate")
_TFLITE_IDENTIFIER = b"TFL3"
_SHA256_RE = re.compile(r"\b([0-9a-f]{64})\b")
_CACHE_DIR = "cache"
_MB = 1024 * 1024


# --- deadlines --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemoteTimeouts:
    """Deadlines of a remote device's steps. Units: s (``*_per_mb``: s per MiB).

    Attributes:
        command_s: Short commands: mkdir, sha256 checks, chmod, getprop, df.
        push_base_s: A push or pull takes at most this...
        push_s_per_mb: ...plus this per MiB of the file (a slow USB 2 link moves ~20 MiB/s).
        run_base_s: The runner takes at most this (process start, model load, slow boards)...
        run_window_factor: ...plus this many times ``min_seconds``...
        run_per_inference_s: ...plus this per warm-up and minimum inference (big models).
        cleanup_s: Removing a run directory.
    """

    command_s: float = 30.0
    push_base_s: float = 30.0
    push_s_per_mb: float = 2.0
    run_base_s: float = 60.0
    run_window_factor: float = 3.0
    run_per_inference_s: float = 1.0
    cleanup_s: float = 10.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            positive = f.name in ("command_s", "push_base_s", "run_base_s", "cleanup_s")
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
                    or (positive and value == 0):
                raise ValueError(f"RemoteTimeouts.{f.name} must be a finite number "
                                 f"{'> 0' if positive else '>= 0'}, got {value!r}")

    def push_s(self, size_bytes: int) -> float:
        """The deadline for copying ``size_bytes`` either way."""
        return self.push_base_s + self.push_s_per_mb * size_bytes / _MB

    def run_s(self, settings: MeasureSettings) -> float:
        """The hard deadline of one runner invocation with ``settings``."""
        return (self.run_base_s + self.run_window_factor * settings.min_seconds
                + self.run_per_inference_s * (settings.warmup_runs + settings.min_runs))


# --- the host's expected output ---------------------------------------------------------------

class HostReferenceError(DeviceError):
    """The host's LiteRT could not load or run the model, so no expected output exists.

    Not fatal for a measurement: the device may run what the host cannot (custom ops, a newer
    runtime); its output is then not compared and a note says why.
    """


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a model as LiteRT describes it. ``scale == 0``: not quantized."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0

    @classmethod
    def from_detail(cls, detail: Mapping[str, object]) -> TensorInfo:
        scale, zero_point = detail.get("quantization", (0.0, 0))  # type: ignore[misc]
        shape = tuple(int(d) for d in detail["shape"])  # type: ignore[attr-defined]
        return cls(name=str(detail["name"]), shape=shape,
                   dtype=np.dtype(detail["dtype"]).name,  # type: ignore[call-overload]
                   scale=float(scale), zero_point=int(zero_point))

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def decode(self, raw: bytes) -> np.ndarray:
        """This tensor's raw bytes (as a runner writes them, little-endian) as a float32 array."""
        values = np.frombuffer(raw[: self.nbytes], dtype=np.dtype(self.dtype).newbyteorder("<"))
        return dequantize(values.reshape(self.shape), {"quantization": (self.scale, self.zero_point)})


@dataclass(frozen=True, eq=False)
class HostReference:
    """The host's run of one model on one probe: the device must answer the same.

    Attributes:
        model_sha256: The model file's digest.
        input, output: The model's (single) input and first output tensor.
        probe: The input the device gets, already in the input's shape and dtype.
        expected_checksum: :func:`~devices.probe.output_digest` of the host's dequantized output.
    """

    model_sha256: str
    input: TensorInfo
    output: TensorInfo
    probe: np.ndarray
    expected_checksum: str


class HostReferenceCache:
    """:class:`HostReference` per (model sha256, probe), computed with one host inference.

    Keeps the ``capacity`` most recently used entries: a search measures each model a few
    times at most (warm-up, repeats, an energy protocol), so a small cache is enough.
    """

    def __init__(self, capacity: int = 16) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[str, str], HostReference] = OrderedDict()

    def get(self, device: str, model_path: Path, model_bytes: bytes,
            probe: np.ndarray | None) -> HostReference:
        """The reference for this model and probe (``None``: the shared default probe).

        Raises:
            HostReferenceError: the host's LiteRT cannot load or run the model.
            DeviceError: the probe does not fit the model's input (the caller's mistake).
        """
        key = (hashlib.sha256(model_bytes).hexdigest(), _probe_key(probe))
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        reference = _compute_reference(device, model_path, model_bytes, key[0], probe)
        self._entries[key] = reference
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return reference


def _probe_key(probe: np.ndarray | None) -> str:
    if probe is None:
        return "default"
    array = np.ascontiguousarray(probe)
    digest = hashlib.sha256(f"{array.dtype.str};{array.shape};".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _compute_reference(device: str, path: Path, data: bytes, sha256: str,
                       probe: np.ndarray | None) -> HostReference:
    from ai_edge_litert.interpreter import Interpreter

    where = f"device {device!r}: host reference for {path}"
    if data[4:8] != _TFLITE_IDENTIFIER:
        raise HostReferenceError(f"{where}: not a .tflite file (no TFL3 identifier in its "
                                 f"{len(data)} bytes)")
    try:
        interpreter = Interpreter(model_content=data, num_threads=1)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise HostReferenceError(f"{where}: the host's LiteRT cannot load it: {_one_line(e)}") from e
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or not outputs:
        raise HostReferenceError(f"{where}: {len(inputs)} inputs and {len(outputs)} outputs; only "
                                 "single-input models are compared")
    x = fit_probe(device, path, interpreter, inputs[0], probe)
    try:
        interpreter.set_tensor(inputs[0]["index"], x)
        interpreter.invoke()
        output = interpreter.get_output_details()[0]
        y = dequantize(interpreter.get_tensor(output["index"]), output)
    except (RuntimeError, ValueError) as e:
        raise HostReferenceError(f"{where}: inference on the host failed: {_one_line(e)}") from e
    return HostReference(model_sha256=sha256,
                         input=TensorInfo.from_detail(interpreter.get_input_details()[0]),
                         output=TensorInfo.from_detail(output), probe=x,
                         expected_checksum=output_digest(y))


# --- one measurement, in steps ----------------------------------------------------------------

@dataclass(frozen=True)
class TimedRun:
    """What one runner invocation measured. Units are in the names.

    ``output_checksum`` is ``None`` when the device's output could not be read back.
    ``command_s`` is the runner command's wall time seen from the host: process start, model
    load, warm-up and the timed loop (``window_s``); an energy window around
    :meth:`RemoteDevice.run_timed` spans all of it.
    """

    latency_ms_median: float
    latency_ms_p90: float
    n_inferences: int
    window_s: float
    threads: int
    output_checksum: str | None
    fingerprint: Mapping[str, str]
    command_s: float
    notes: tuple[str, ...] = ()


class Staged(NamedTuple):
    """What a device pushed next to the model (paths on the device)."""

    runner: str
    runner_sha256: str
    probe: str | None = None
    output: str | None = None


@dataclass(eq=False)
class PreparedRun:
    """A run directory on the device holding the model, the probe and the runner's path.

    A context manager: leaving it removes the run directory (best effort, once). Remote paths
    are absolute; ``probe`` and ``output`` are ``None`` when the output is not compared.

    Attributes:
        device: The device's name.
        model_path: The model on the host (for messages).
        run_dir, model, runner, probe, output: Paths on the device.
        reference: The host's expected output, or ``None`` (see ``notes``).
        runner_sha256: Digest of the runner pushed (script or binary).
        notes: Notes for the measurement (why the output is not compared ...).
    """

    device: str
    model_path: Path
    run_dir: str
    model: str
    runner: str
    runner_sha256: str
    probe: str | None
    output: str | None
    reference: HostReference | None
    notes: tuple[str, ...]
    remove: Callable[[str], None]
    removed: bool = False

    def close(self) -> None:
        """Remove the run directory (idempotent; never raises for a device problem)."""
        if not self.removed:
            self.removed = True
            self.remove(self.run_dir)

    def __enter__(self) -> PreparedRun:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class RemoteDevice(Device):
    """A device reached through a :class:`~devices.transports.Transport` (see the module
    docstring for the lifecycle, the measuring steps and the errors).

    Subclasses provide :meth:`_make_transport`, :meth:`_stage` (push the runner and the
    probe), :meth:`_run` (invoke the runner once) and :meth:`_check_runtime` (health).

    Args:
        spec: The inventory entry (name, transport, workdir, threads, limits...).
        timeouts: Deadlines of the steps (default: :class:`RemoteTimeouts`).
    """

    def __init__(self, spec: DeviceSpec, *, timeouts: RemoteTimeouts | None = None,
                 energy: EnergyProtocol | None = None) -> None:
        if spec.connection is None:
            raise ValueError(f"device {spec.name!r}: a remote device needs a connection; "
                             "the host is LocalDevice")
        super().__init__(spec.name, spec.tags, spec.device_class or None)
        self.spec = spec
        self.timeouts = timeouts or RemoteTimeouts()
        self._transport: Transport | None = None
        self._references = HostReferenceCache()
        self._closed = False
        self.energy_protocol = energy or EnergyProtocol()
        self.link_opens = 0
        self._verified_cache: dict[str, int] = {}  # remote runner path -> link it was verified on
        self._meter: PowerMeter | None = None
        self._meter_link = -1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, transport={self.spec.transport!r})"

    @property
    def has_energy_meter(self) -> bool:
        return self.spec.meter is not None

    # -- the link -----------------------------------------------------------------------------

    @abc.abstractmethod
    def _make_transport(self) -> Transport:
        """A new, unopened transport built from :attr:`spec`."""

    def _link(self) -> Transport:
        if self._closed:
            raise DeviceError(f"device {self.name!r}: closed; create a new device to use it again")
        if self._transport is None:
            self._transport = self._make_transport()
        if not self._transport.is_open:
            self._transport.open()
            self.link_opens += 1  # what was verified over an earlier link is checked again
        return self._transport

    def _call(self, operation: Callable[[Transport], T], *, retry_lost: bool = False) -> T:
        """``operation`` on the open link; a lost or stuck link is closed so the next call
        reconnects (the error is raised as it was).

        ``retry_lost``: on :class:`ConnectionLost`, reconnect and try once more. Only for a
        first step that is safe to repeat: a link that died while idle (a NAT dropped it while
        the host trained, the phone roamed) is found there, and should not fail the step.
        """
        for attempt in (1, 2):
            transport = self._link()
            try:
                return operation(transport)
            except ConnectionLost as e:
                transport.close()
                if not retry_lost or attempt == 2:
                    raise
                _log.info("device %r: link lost while idle (%s); reconnecting once", self.name, e)
            except CommandTimeout:
                transport.close()
                raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def run_command(self, argv_or_command: Sequence[str] | str, *, timeout_s: float) -> CommandResult:
        """Run one command on the device (for meters and tools; see :meth:`Transport.run`)."""
        return self._call(lambda t: t.run(argv_or_command, timeout_s=timeout_s))

    def close(self) -> None:
        self._closed = True
        if self._meter is not None:
            self._meter.close()
            self._meter = None
        if self._transport is not None:
            self._transport.close()

    # -- measuring ----------------------------------------------------------------------------

    def settings_for(self, settings: MeasureSettings) -> MeasureSettings:
        """``settings`` with this device's thread count (the inventory's ``threads`` wins)."""
        if self.spec.threads is None or self.spec.threads == settings.threads:
            return settings
        return dataclasses.replace(settings, threads=self.spec.threads)

    def measure(
        self, model_path: Path, settings: MeasureSettings, probe_input: np.ndarray | None = None
    ) -> Measurement:
        """Push, run once, remove: ``prepare`` → ``run_timed`` → ``to_measurement``.

        With a meter in the inventory, the energy protocol (:mod:`devices.energy_protocol`)
        then runs in the same run directory: the first run gives latency and the output check
        (and proves the model runs before any energy window is spent on it).
        """
        with self.prepare(model_path, probe_input) as prepared:
            run = self.run_timed(prepared, settings)
            measurement = self.to_measurement(prepared, run)
            if self.spec.meter is None:
                return measurement
            energy = self._measure_energy(prepared, settings)
        notes = tuple(n for n in measurement.notes if n != NO_ENERGY_NOTE) + tuple(
            f"energy: {flag}" for flag in energy.flags)
        return dataclasses.replace(
            measurement, energy_mj_median=energy.energy_mj_per_inference,
            energy_mj_spread=energy.energy_mj_spread, power_mw_mean=_inference_power_mw(energy),
            energy_source=energy.source, energy_window_s=energy.min_window_s,
            energy_detail=energy.to_dict(), notes=notes)

    def _measure_energy(self, prepared: PreparedRun, settings: MeasureSettings) -> EnergyResult:
        """Net energy per inference of the prepared model, by the configured protocol.

        The meter is built per link: what it found on the device (hwmon numbers, ODPM files,
        a sampler's clock) may differ after a reconnect or a reboot. After a failure it is
        closed at once, so whatever it left running on the device (a sampling loop whose window
        the broken link cut off) is stopped now, not at the next measurement.
        """
        self._link()
        if self._meter is None or self._meter_link != self.link_opens:
            if self._meter is not None:
                self._meter.close()
            assert self.spec.meter is not None
            self._meter = self._call(lambda t: build_meter(self.spec.meter, self.name, t))  # type: ignore[arg-type]
            self._meter_link = self.link_opens
        short = self.timeouts.command_s
        zones = self.spec.thermal_zones
        try:
            return measure_energy(
                lambda s: self.run_timed(prepared, s), self._meter, self.settings_for(settings),
                self.energy_protocol, device=self.name,
                temperatures=(lambda: self._call(lambda t: read_temperatures(t, zones, short)))
                if zones else None,
                charging=lambda: self._call(lambda t: device_is_charging(t, short)),
                cpu_freqs=lambda: self._call(lambda t: read_cpu_max_freqs_khz(t, short)))
        except BaseException:
            with contextlib.suppress(DeviceError):
                self._link()  # reconnect (counted as a new link) so the meter can reach its loops
            self._meter.close()
            self._meter = None
            raise

    def prepare(self, model_path: Path, probe_input: np.ndarray | None = None) -> PreparedRun:
        """A fresh run directory with the model, the runner and the probe pushed (sha256-checked).

        The model is always ``model.tflite`` on the device: the host's file name never reaches a
        device command. On failure the directory is removed before the error is raised.

        Raises:
            DeviceError: the model file is missing on the host, the probe does not fit it, or a
                transport or staging step failed.
        """
        path = Path(model_path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise DeviceError(f"device {self.name!r}: model file {path} does not exist") from e
        except OSError as e:
            raise DeviceError(f"device {self.name!r}: cannot read {path}: {e.strerror or e}") from e
        notes: list[str] = []
        try:
            reference: HostReference | None = self._references.get(self.name, path, data, probe_input)
        except HostReferenceError as e:
            reference = None
            notes.append(f"output not compared: {e}")
        run_dir = self._call(lambda t: t.make_run_dir("run", timeout_s=self.timeouts.command_s),
                             retry_lost=True)
        try:
            model = f"{run_dir}/model.tflite"
            self._push(path, model)
            staged = self._stage(run_dir, reference)
        except BaseException:
            self._remove_run_dir(run_dir)
            raise
        return PreparedRun(device=self.name, model_path=path, run_dir=run_dir, model=model,
                           runner=staged.runner, runner_sha256=staged.runner_sha256,
                           probe=staged.probe, output=staged.output, reference=reference,
                           notes=tuple(notes), remove=self._remove_run_dir)

    def run_timed(self, prepared: PreparedRun, settings: MeasureSettings) -> TimedRun:
        """Invoke the runner once on a prepared run (may be repeated, e.g. inside meter windows).

        ``settings.threads`` is replaced by the inventory's ``threads`` where it sets one.

        Raises:
            DeviceError: the run directory is gone, the runner failed, timed out, printed no
                result, or a requested delegate did not take the graph.
        """
        if prepared.removed:
            raise DeviceError(f"device {self.name!r}: the run directory {prepared.run_dir} was "
                              "already removed; prepare() again")
        try:
            return self._run(prepared, self.settings_for(settings))
        except RunnerError:
            self._verified_cache.clear()  # a broken or missing cached runner is checked again
            raise

    def to_measurement(self, prepared: PreparedRun, run: TimedRun) -> Measurement:
        """The :class:`Measurement` of ``run``: output compared with the host's, notes joined."""
        notes = list(prepared.notes) + list(run.notes)
        matches: bool | None = None
        if prepared.reference is not None and run.output_checksum is not None:
            matches = run.output_checksum == prepared.reference.expected_checksum
            if not matches:
                notes.append(f"device {self.name!r}: output differs from the host's for the same "
                             f"model and probe ({run.output_checksum[:15]}... vs "
                             f"{prepared.reference.expected_checksum[:15]}...): it may compute a "
                             "wrong answer; compare raw outputs before trusting its numbers")
        notes.append(NO_ENERGY_NOTE)
        return Measurement(
            device=self.name, latency_ms_median=run.latency_ms_median,
            latency_ms_p90=run.latency_ms_p90, n_inferences=run.n_inferences,
            window_s=run.window_s, threads=run.threads, energy_mj_median=None,
            energy_source="none", output_checksum=run.output_checksum, output_matches=matches,
            fingerprint=dict(run.fingerprint), notes=tuple(notes))

    @abc.abstractmethod
    def _stage(self, run_dir: str, reference: HostReference | None) -> Staged:
        """Push the runner (cached) and the probe into ``run_dir`` (``reference`` ``None``: no
        probe, the output is not compared)."""

    @abc.abstractmethod
    def _run(self, prepared: PreparedRun, settings: MeasureSettings) -> TimedRun:
        """Invoke the runner once with ``settings`` (threads already resolved)."""

    # -- shared steps -------------------------------------------------------------------------

    def _push(self, local: Path, remote: str) -> str:
        size = local.stat().st_size
        return self._call(lambda t: t.push(local, remote, timeout_s=self.timeouts.push_s(size)))

    def _remove_run_dir(self, run_dir: str) -> None:
        """Remove a run directory, best effort: a failure is logged, never raised (it must not
        hide the error that ended the run). A lost link is reopened for it."""
        try:
            self._call(lambda t: t.remove_dir(run_dir, timeout_s=self.timeouts.cleanup_s))
        except (DeviceError, OSError, ValueError) as e:
            _log.warning("device %r: could not remove run directory %s: %s", self.name, run_dir, e)

    def _ensure_cached(self, local: Path, name: str, *, executable: bool,
                       timeout_s: float | None = None) -> tuple[str, str]:
        """``local`` at ``<workdir>/cache/<sha256[:16]>/<name>``, pushed only when missing or
        different there (verified by sha256 on the device once per link); returns (remote path, sha256).

        ``timeout_s`` bounds the whole call (check, push and rename together), for a caller
        with a budget such as the health check; without it each step gets its usual timeout.
        A push goes to a temporary name first and is renamed into place, so a crashed push never
        leaves a half file under the cached name.
        """
        if not local.is_file():
            raise DeviceError(f"device {self.name!r}: {local} does not exist on the host")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def budget(step: str, usual_s: float) -> float:
            if deadline is None:
                return usual_s
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(self.name, f"cache {name}", f"the {timeout_s:g} s budget ran out before {step}")
            return remaining

        digest = cached_sha256_file(local)
        cache = f"{self.spec.workdir}/{_CACHE_DIR}/{digest[:16]}"
        remote = f"{cache}/{name}"
        # Verified once per link: hashing a many-MB binary on the device for every measurement
        # costs it CPU (measured in bench/fleet_bench.py); a reconnect checks it again.
        if self._transport is not None and self._transport.is_open \
                and self._verified_cache.get(remote) == self.link_opens:
            return remote, digest
        check = self._call(lambda t: t.run(
            ["sh", "-c", 'mkdir -p "$2" && test -f "$1" && { test "$3" = 0 || test -x "$1"; } '
                         '&& sha256sum < "$1"', "sh", remote, cache, "1" if executable else "0"],
            timeout_s=budget("the check", self.timeouts.command_s)))
        found = _SHA256_RE.search(check.stdout)
        if check.ok and found is not None and found.group(1) == digest:
            self._verified_cache[remote] = self.link_opens
            return remote, digest
        partial = f"{cache}/.{name}.{uuid.uuid4().hex[:8]}.part"
        try:
            size = local.stat().st_size
            self._call(lambda t: t.push(local, partial, timeout_s=budget("the push", self.timeouts.push_s(size))))
            mode = "755" if executable else "644"
            self._call(lambda t: t.run_checked(["sh", "-c", 'chmod "$1" "$2" && mv -f "$2" "$3"', "sh",
                                                mode, partial, remote],
                                               timeout_s=budget("the rename", self.timeouts.command_s)))
        except BaseException:
            try:  # best effort, with its own short timeout: a half file must not stay behind
                self._call(lambda t: t.run(["rm", "-f", partial], timeout_s=self.timeouts.cleanup_s))
            except DeviceError as e:
                _log.warning("device %r: could not remove %s: %s", self.name, partial, e)
            raise
        self._verified_cache[remote] = self.link_opens  # the push itself was sha256-checked
        return remote, digest

    def _named(self, error: RunnerError, what: str) -> RunnerError:
        """``error`` (same class) with the device's name and ``what`` in front of its message."""
        message = f"device {self.name!r}: {what}: {error}"
        if isinstance(error, RunnerOutputError):
            return RunnerOutputError(message, runner_error=error.runner_error)
        return type(error)(message)

    # -- health -------------------------------------------------------------------------------

    def health_check(self) -> HealthReport:
        """Reachable, runtime works, free disk in the workdir, every thermal zone below its limit,
        all within ``spec.health.timeout_s`` (connecting counts against it too, bounded by the
        connection's own ``connect_timeout_s``).

        Facts: ``free_mb``, ``temp_c`` (the hottest zone), ``temp_c:<zone file>`` per zone, and
        the runtime's (versions, model...). Never raises for a sick device.
        """
        limits = self.spec.health
        deadline = time.monotonic() + limits.timeout_s
        problems: list[str] = []
        facts: dict[str, str] = {"transport": self.spec.transport}
        try:
            # the time left, not the whole budget: a retry after a lost link shares it
            self._call(lambda t: t.run("true", timeout_s=max(0.05, min(deadline - time.monotonic(),
                                                                       self.timeouts.command_s))),
                       retry_lost=True)
        except DeviceError as e:
            facts[REACHABLE_FACT] = "false"
            return HealthReport(self.name, (f"unreachable: {e}",), facts)
        facts[REACHABLE_FACT] = "true"

        def left(step: str) -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _OutOfTime(step)
            return min(remaining, self.timeouts.command_s)

        try:
            for check in (self._check_runtime, self._check_disk, self._check_temperatures):
                try:
                    found, learned = check(left)
                except (DeviceError, OSError) as e:
                    found, learned = [f"{check.__name__.removeprefix('_check_')}: {_one_line(e)}"], {}
                problems += found
                facts.update(learned)
        except _OutOfTime as e:
            problems.append(f"health check did not finish within {limits.timeout_s:g} s "
                            f"(ran out at: {e.step})")
        return HealthReport(self.name, tuple(problems), facts)

    @abc.abstractmethod
    def _check_runtime(self, left: Callable[[str], float]) -> tuple[list[str], dict[str, str]]:
        """Whether the runner can run here: (problems, facts). ``left(step)`` is the time
        allowed for the next step (it raises once the health budget is spent)."""

    def _check_disk(self, left: Callable[[str], float]) -> tuple[list[str], dict[str, str]]:
        workdir = self.spec.workdir
        result = self._call(lambda t: t.run(["sh", "-c", 'mkdir -p "$1" && df -Pk "$1"', "sh", workdir],
                                            timeout_s=left("free disk")))
        if not result.ok:
            return [f"disk: cannot read the free space of {workdir} (exit code {result.exit_code}: "
                    f"{_one_line(result.stderr or result.stdout)})"], {}
        free_mb = parse_df_free_mb(result.stdout)
        facts = {"free_mb": f"{free_mb:.0f}"}
        if free_mb < self.spec.health.min_free_mb:
            return [f"low disk: {free_mb:.0f} MB free in {workdir}, below min_free_mb "
                    f"{self.spec.health.min_free_mb:g}"], facts
        return [], facts

    def _check_temperatures(self, left: Callable[[str], float]) -> tuple[list[str], dict[str, str]]:
        zones = self.spec.thermal_zones
        if not zones:
            return [], {}
        script = 'for f; do v=$(cat "$f" 2>/dev/null) && echo "ok $v" || echo missing; done'
        result = self._call(lambda t: t.run(["sh", "-c", script, "sh", *zones],
                                            timeout_s=left("temperatures")))
        lines = result.stdout.splitlines()
        problems: list[str] = []
        facts: dict[str, str] = {}
        hottest: float | None = None
        for i, zone in enumerate(zones):
            line = lines[i] if i < len(lines) else "missing"
            try:
                if not line.startswith("ok "):
                    raise ValueError("cannot read it")
                temp_c = parse_millidegrees(line[3:])
            except ValueError as e:
                problems.append(f"thermal zone {zone}: {e}")
                continue
            facts[f"temp_c:{zone}"] = f"{temp_c:.1f}"
            hottest = temp_c if hottest is None else max(hottest, temp_c)
            if temp_c > self.spec.health.max_temp_c:
                problems.append(f"hot: thermal zone {zone} at {temp_c:.1f} C, above max_temp_c "
                                f"{self.spec.health.max_temp_c:g}")
        if hottest is not None:
            facts["temp_c"] = f"{hottest:.1f}"
        return problems, facts


def _inference_power_mw(energy: EnergyResult) -> float:
    """Net power while inferring: the differenced energy over the differenced timed loop, median
    over the accepted repeats (the window-wide means would dilute it with start-up and idle)."""
    powers = [r.energy_mj_per_inference * (r.long_n - r.short_n) / (r.long_window_s - r.short_window_s)
              for r in energy.records
              if not r.rejected and r.long_window_s > r.short_window_s and math.isfinite(r.energy_mj_per_inference)]
    return float(np.median(powers)) if powers else energy.power_mw_net_mean


class _OutOfTime(Exception):
    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


# --- small pure helpers -----------------------------------------------------------------------

def parse_df_free_mb(text: str) -> float:
    """Free space in MB from ``df -Pk DIR`` output (coreutils, busybox, toybox).

    The last line holds the filesystem; its ``Available`` column (KiB) is the field before the
    ``Capacity`` percentage, found from the left so a file system name with spaces or a mount
    point with spaces does not shift it.

    Raises:
        ValueError: no line with a ``NN%`` capacity and a number before it.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) >= 2:
        fields = lines[-1].split()
        for i in range(1, len(fields)):
            if re.fullmatch(r"\d+%|-", fields[i]) and fields[i - 1].isdigit():
                return int(fields[i - 1]) / 1024
    raise ValueError(f"df -Pk output has no 'Available ... Capacity%' line: {_one_line(text)!r}")


def parse_millidegrees(text: str) -> float:
    """A thermal zone file's content (millidegrees C, e.g. ``"45000"``) in degrees C.

    Raises:
        ValueError: not a whole number.
    """
    value = text.strip()
    if not re.fullmatch(r"-?\d+", value):
        raise ValueError(f"{value!r} is not a temperature in millidegrees C")
    return int(value) / 1000


def parse_key_values(text: str, keys: Sequence[str]) -> dict[str, str]:
    """``key=value`` lines (the first ``=`` splits) for the given keys; empty values left out."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in keys and value.strip() and key not in found:
            found[key] = value.strip()
    return found


def key_value_script(commands: Mapping[str, str]) -> str:
    """A ``sh`` script printing ``key=<first line of the command's stdout>`` per entry.

    Keys and commands are fixed strings written in this package, never user input.
    """
    parts = [f"printf '%s=%s\\n' {shlex.quote(key)} \"$({command} 2>/dev/null | head -n 1)\""
             for key, command in commands.items()]
    return "; ".join(parts)


_HOST_DIGESTS: dict[tuple[str, int, int], str] = {}


def cached_sha256_file(path: Path) -> str:
    """The file's sha256; remembered by (path, size, mtime) so a runner binary of many MB is not
    hashed again for every measurement (a rebuilt binary changes its mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    known = _HOST_DIGESTS.get(key)
    if known is None:
        known = _HOST_DIGESTS[key] = files.sha256_file(path)
    return known


def tail(text: str, limit: int = 200) -> str:
    """The last ``limit`` characters of ``text`` on one line (lines joined with `` | ``)."""
    flat = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= limit else "..." + flat[-limit:]


def _one_line(error: BaseException | str) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(error).__name__)
