"""The host itself as a device named ``local``: LiteRT on this CPU, timed, with no energy meter.

The host has no power sensor (see ``shared/reference/devices.md``), so every measurement has
``energy_mj_median = None`` and ``energy_source = "none"``, and says so in a note: the energy
objective falls back to the estimate. Latency is honest: a fixed thread count, untimed
warm-up, then a loop of single inferences, each timed with ``time.perf_counter_ns``, that runs
until both ``min_runs`` and ``min_seconds`` are reached; the garbage collector is paused during
the loop so a collection does not land in one inference's time.

Lifecycle: usable at once, refuses to measure after :meth:`LocalDevice.close`. Not
thread-safe (as every :class:`~devices.base.Device`); timing also assumes the caller keeps
other work off the CPU meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devices.base import Device, DeviceError, Measurement, MeasureSettings
from devices.probe import dequantize, fit_probe, output_digest

if TYPE_CHECKING:
    from ai_edge_litert.interpreter import Interpreter

__all__ = ["LocalDevice", "host_fingerprint", "parse_cpu_model", "NO_METER_NOTE"]

NO_METER_NOTE = ("host has no power meter: energy is not measured (energy_source none); "
                 "the energy objective falls back to the estimate")
_TFLITE_IDENTIFIER = b"TFL3"
_CPUINFO = Path("/proc/cpuinfo")
_GOVERNOR = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")


class LocalDevice(Device):
    """This machine's CPU, running models with ``ai_edge_litert``'s interpreter.

    Raises:
        DeviceError: from :meth:`measure` when the file is missing, is not a .tflite, cannot be
            loaded or fails to run, or when the probe input does not fit the model; the message
            names ``local`` and the file.
    """

    def __init__(self, tags: tuple[str, ...] = ()) -> None:
        super().__init__("local", tags)
        self._closed = False

    @property
    def has_energy_meter(self) -> bool:
        return False

    def measure(
        self, model_path: Path, settings: MeasureSettings, probe_input: np.ndarray | None = None
    ) -> Measurement:
        """Time ``model_path`` on this CPU; ``probe_input`` (one batch) feeds the checksum.

        Without a probe the input is :func:`devices.probe.make_probe_input` for the model's
        input shape and dtype (seed 0), the same array a remote runner makes.
        """
        path = Path(model_path)
        if self._closed:
            raise DeviceError(f"device 'local': closed; create a new LocalDevice to measure {path}")
        interpreter = self._load(path, settings.threads)
        try:
            inp = interpreter.get_input_details()
            out = interpreter.get_output_details()
            if len(inp) != 1 or not out:
                raise DeviceError(f"device 'local': {path} has {len(inp)} inputs and {len(out)} "
                                  "outputs; only single-input models are measured")
            x = fit_probe(self.name, path, interpreter, inp[0], probe_input)
            interpreter.set_tensor(inp[0]["index"], x)
            durations_ns, window_ns = self._time(interpreter, settings, path)
            output = dequantize(interpreter.get_tensor(out[0]["index"]), out[0])
        finally:
            del interpreter
        durations_ms = np.asarray(durations_ns, dtype=np.float64) / 1e6
        return Measurement(
            device=self.name,
            latency_ms_median=float(np.median(durations_ms)),
            latency_ms_p90=float(np.percentile(durations_ms, 90)),
            n_inferences=len(durations_ns),
            window_s=window_ns / 1e9,
            threads=settings.threads,
            energy_mj_median=None,
            energy_source="none",
            output_checksum=output_digest(output),
            fingerprint=host_fingerprint(),
            notes=(NO_METER_NOTE,),
        )

    def close(self) -> None:
        self._closed = True

    # --- steps ------------------------------------------------------------------------------

    def _load(self, path: Path, threads: int) -> Interpreter:
        from ai_edge_litert.interpreter import Interpreter

        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise DeviceError(f"device 'local': model file {path} does not exist") from e
        except OSError as e:
            raise DeviceError(f"device 'local': cannot read {path}: {e.strerror or e}") from e
        if data[4:8] != _TFLITE_IDENTIFIER:
            raise DeviceError(f"device 'local': {path} is not a .tflite file (no TFL3 identifier "
                              f"in its {len(data)} bytes)")
        try:
            interpreter = Interpreter(model_content=data, num_threads=threads)
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            raise DeviceError(f"device 'local': LiteRT cannot load {path}: {_one_line(e)}") from e
        return interpreter

    @staticmethod
    def _time(interpreter: Interpreter, settings: MeasureSettings, path: Path) -> tuple[list[int], int]:
        """Warm-up, then single inferences until ``min_runs`` and ``min_seconds`` are both met."""
        min_ns = int(settings.min_seconds * 1e9)
        durations: list[int] = []
        invoke = interpreter.invoke
        clock = time.perf_counter_ns
        collecting = gc.isenabled()
        try:
            for _ in range(settings.warmup_runs):
                invoke()
            gc.disable()
            start = end = clock()
            while len(durations) < settings.min_runs or end - start < min_ns:
                before = clock()
                invoke()
                end = clock()
                durations.append(end - before)
        except (RuntimeError, ValueError) as e:
            raise DeviceError(f"device 'local': inference of {path} failed: {_one_line(e)}") from e
        finally:
            if collecting:
                gc.enable()
        return durations, end - start


def host_fingerprint(
    cpuinfo: Path = _CPUINFO, governor: Path = _GOVERNOR
) -> dict[str, str]:
    """What identifies this host's runtime: CPU model, kernel, Python, LiteRT, numpy, governor."""
    try:
        cpu = parse_cpu_model(cpuinfo.read_text(errors="replace"))
    except OSError:
        cpu = ""
    fingerprint = {
        "cpu_model": cpu or platform.processor() or "unknown",
        "cpu_count": str(os.cpu_count() or 0),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "os": platform.system(),
        "python": platform.python_version(),
        "ai_edge_litert": _version("ai-edge-litert"),
        "numpy": np.__version__,
    }
    with contextlib.suppress(OSError):  # no cpufreq in containers and VMs: leave it out rather than guess
        fingerprint["governor"] = governor.read_text().strip()
    return fingerprint


def parse_cpu_model(cpuinfo: str) -> str:
    """The CPU model from ``/proc/cpuinfo`` text; ``""`` when it names none.

    x86 has ``model name``; arm64 kernels often only ``CPU implementer`` / ``CPU part`` (given
    as ``arm implementer 0x41 part 0xd0b``), boards may add ``Hardware`` or ``Model``.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    for key in ("model name", "model", "hardware", "cpu model", "processor"):
        value = fields.get(key, "")
        if value and not value.isdigit():  # x86 "processor : 0" is an index, not a name
            return value
    if "cpu implementer" in fields or "cpu part" in fields:
        return (f"arm implementer {fields.get('cpu implementer', '?')} "
                f"part {fields.get('cpu part', '?')}")
    return ""


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(error).__name__)
