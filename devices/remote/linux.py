"""A Linux board (Raspberry Pi, Jetson, any aarch64/x86 box) over SSH, timed by ``litert_runner.py``.

The board needs a Python with numpy and ``ai-edge-litert`` (the inventory's ``python``); the
runner script is pushed once per version into ``<workdir>/cache`` and run from there. Each
measurement gets its own run directory with ``model.tflite`` and ``probe.npy`` (the host's
probe, already in the input's dtype), removed afterwards; see :mod:`devices.remote.common` for
the lifecycle, deadlines and errors.

Measurement.fingerprint is the runner's own (CPU model, kernel, Python, LiteRT and numpy
versions, governor). Units are in the names.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from devices.base import MeasureSettings
from devices.energy_protocol import EnergyProtocol
from devices.inventory import DeviceSpec
from devices.remote.common import (
    HostReference,
    PreparedRun,
    RemoteDevice,
    RemoteTimeouts,
    Staged,
    TimedRun,
    tail,
)
from devices.runners import RUNNER_SCRIPT, RunnerError, RunnerOutputError, parse_runner_output, runner_argv
from devices.transports import SshTransport, Transport

__all__ = ["LinuxBoardDevice"]

_RUNTIME_PROBE = ("import importlib.metadata as m, platform, numpy, ai_edge_litert; "
                  "print(platform.python_version(), numpy.__version__, m.version('ai-edge-litert'))")


class LinuxBoardDevice(RemoteDevice):
    """A Linux board reached over SSH (host key pinned), running ``litert_runner.py``.

    Args:
        spec: An ``ssh`` inventory entry.
        timeouts: Deadlines of the steps (default: :class:`~devices.remote.common.RemoteTimeouts`).

    Raises:
        ValueError: from the constructor, when ``spec`` is not an ssh device.
        DeviceError: from :meth:`measure` (see :mod:`devices.remote.common`).
    """

    def __init__(self, spec: DeviceSpec, *, timeouts: RemoteTimeouts | None = None,
                 energy: EnergyProtocol | None = None) -> None:
        if spec.transport != "ssh":
            raise ValueError(f"device {spec.name!r}: LinuxBoardDevice needs an ssh device, got "
                             f"transport {spec.transport!r}")
        super().__init__(spec, timeouts=timeouts, energy=energy)

    def _make_transport(self) -> Transport:
        ssh = self.spec.ssh
        return SshTransport(self.name, host=ssh.host, port=ssh.port, user=ssh.user,
                            key_file=ssh.key_file, known_hosts=ssh.known_hosts,
                            workdir=self.spec.workdir, connect_timeout_s=ssh.connect_timeout_s,
                            allow_unknown_hosts=ssh.allow_unknown_hosts, keepalive_s=ssh.keepalive_s)

    def _stage(self, run_dir: str, reference: HostReference | None) -> Staged:
        runner, digest = self._ensure_cached(RUNNER_SCRIPT, "litert_runner.py", executable=False)
        if reference is None:
            return Staged(runner, digest)  # the runner makes the shared default probe itself
        probe = f"{run_dir}/probe.npy"
        with tempfile.TemporaryDirectory(prefix="harness-probe-") as tmp:
            local = Path(tmp) / "probe.npy"
            np.save(local, reference.probe, allow_pickle=False)
            self._push(local, probe)
        return Staged(runner, digest, probe=probe)

    def _run(self, prepared: PreparedRun, settings: MeasureSettings) -> TimedRun:
        python = self.spec.ssh.python
        argv = runner_argv(python, prepared.runner, prepared.model, settings, probe=prepared.probe)
        result = self._call(lambda t: t.run(argv, timeout_s=self.timeouts.run_s(settings)))
        try:
            out = parse_runner_output(result.stdout)
        except RunnerOutputError as e:
            if e.runner_error is None and not result.ok:
                # no JSON at all: the interpreter never ran the script (wrong path, crash...)
                raise RunnerError(
                    f"device {self.name!r}: litert_runner exited with code {result.exit_code} "
                    f"without a result; stderr tail {tail(result.stderr or result.stdout)!r}; "
                    f"check the inventory's python ({python!r}) on the board") from e
            raise self._named(e, f"measuring {prepared.model_path.name!r}") from e
        return TimedRun(latency_ms_median=out.latency_ms_median, latency_ms_p90=out.latency_ms_p90,
                        n_inferences=out.n_inferences, window_s=out.window_s, threads=out.threads,
                        output_checksum=out.output_checksum, fingerprint=dict(out.fingerprint),
                        command_s=result.duration_s)

    def _check_runtime(self, left: Callable[[str], float]) -> tuple[list[str], dict[str, str]]:
        python = self.spec.ssh.python
        result = self._call(lambda t: t.run([python, "-c", _RUNTIME_PROBE], timeout_s=left("runtime")))
        fields = result.stdout.split()
        if not result.ok or len(fields) != 3:
            return [f"runtime missing: {python!r} -c 'import numpy, ai_edge_litert' failed (exit code "
                    f"{result.exit_code}: {tail(result.stderr or result.stdout)}); install numpy and "
                    "ai-edge-litert for it or fix the inventory's python"], {}
        return [], {"python": fields[0], "numpy": fields[1], "ai_edge_litert": fields[2]}

