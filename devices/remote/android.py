"""An Android phone over adb, timed by the user's own TFLite ``benchmark_model`` binary.

The binary (the inventory's ``benchmark_binary``, built for the phone) is pushed once per
sha256 into ``<workdir>/cache`` (default ``/data/local/tmp/energy-harness``), marked
executable, and re-verified by sha256 before every use. Each measurement gets its own run
directory with ``model.tflite`` and ``probe.bin``; see :mod:`devices.remote.common` for the
lifecycle, deadlines and errors.

The run is ``[taskset <mask>] benchmark_model --graph=… (settings) --input_layer=<name>
--input_layer_shape=<d,d,…> --input_layer_value_files=<name>:<probe.bin>
--output_filepath=<output.bin>``: the tool reads the probe as the input tensor's raw bytes (the
host's probe, already in the input's dtype) and, after the run, writes every output tensor's raw
bytes; the first output's bytes are pulled, dequantized and digested like the host's. The tool
takes value files only for inputs named in ``--input_layer`` (each with its shape), and splits
``name:path`` at ``:``, so a ``:`` in a tensor name is written ``::`` (current builds; builds
from before that escape cannot take such names). Without a host reference the tool runs on its
own random input and the output is not compared.

The tool prints its statistics on stdout (``TFLITE_LOG(INFO)``) while LiteRT's own log lines,
among them ``Replacing N out of M node(s) with delegate``, go to stderr: both are parsed.
``benchmark_model`` prints p5/median/p95 but no p90: ``latency_ms_p90`` is its p95 (its max in
older builds without percentiles), and a note says so; ``window_s`` is count × average (the
tool prints no window length). A requested delegate that did not take the graph is a
:class:`~devices.runners.DelegateError`.

Measurement.fingerprint: ``model`` (``ro.product.model``), ``build_fingerprint``
(``ro.build.fingerprint``), ``kernel`` (``uname -r``), ``governor`` (cpu0's scaling governor,
when readable), ``sdk``, and the binary's ``benchmark_model_sha256``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from devices.base import MeasureSettings
from devices.energy_protocol import EnergyProtocol
from devices.inventory import DeviceSpec
from devices.probe import output_digest
from devices.remote.common import (
    HostReference,
    PreparedRun,
    RemoteDevice,
    RemoteTimeouts,
    Staged,
    TensorInfo,
    TimedRun,
    key_value_script,
    parse_key_values,
    tail,
)
from devices.runners import (
    BenchmarkParseError,
    DelegateError,
    RunnerError,
    benchmark_argv,
    check_delegate,
    parse_benchmark_output,
)
from devices.transports import AdbTransport, Transport

__all__ = ["AndroidDevice", "FINGERPRINT_COMMANDS", "benchmark_io_flags"]

FINGERPRINT_COMMANDS = {
    "model": "getprop ro.product.model",
    "build_fingerprint": "getprop ro.build.fingerprint",
    "sdk": "getprop ro.build.version.sdk",
    "kernel": "uname -r",
    "governor": "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
}
"""What identifies the phone's software, each the first line of one shell command."""
_DELEGATE_NAMES = {"gpu": "Gpu", "nnapi": "Nnapi"}  # in "... with delegate (TfLiteGpuDelegateV2)"


def benchmark_io_flags(input_name: str, shape: tuple[int, ...], probe: str, output: str) -> list[str]:
    """``benchmark_model`` flags that feed ``probe`` (raw bytes) to the input and write the
    outputs to ``output`` (paths on the device, unquoted: the transport quotes argv).

    Raises:
        ValueError: a name holding ``,`` (the tool splits ``--input_layer`` at commas).
    """
    if "," in input_name or not input_name:
        raise ValueError(f"input tensor name {input_name!r} cannot be passed to benchmark_model "
                         "(empty, or holds ',')")
    return [f"--input_layer={input_name}",
            f"--input_layer_shape={','.join(str(d) for d in shape)}",
            f"--input_layer_value_files={input_name.replace(':', '::')}:{probe}",
            f"--output_filepath={output}"]


class AndroidDevice(RemoteDevice):
    """An Android phone reached through the adb server, running the user's ``benchmark_model``.

    Args:
        spec: An ``adb`` inventory entry (``benchmark_binary``, ``taskset``, ``use_xnnpack``,
            ``delegate``...).
        timeouts: Deadlines of the steps (default: :class:`~devices.remote.common.RemoteTimeouts`).

    Raises:
        ValueError: from the constructor, when ``spec`` is not an adb device.
        DeviceError: from :meth:`measure` (see :mod:`devices.remote.common`).
    """

    def __init__(self, spec: DeviceSpec, *, timeouts: RemoteTimeouts | None = None,
                 energy: EnergyProtocol | None = None) -> None:
        if spec.transport != "adb":
            raise ValueError(f"device {spec.name!r}: AndroidDevice needs an adb device, got "
                             f"transport {spec.transport!r}")
        super().__init__(spec, timeouts=timeouts, energy=energy)
        self._fingerprint_cache: tuple[int, dict[str, str]] | None = None

    def _make_transport(self) -> Transport:
        adb = self.spec.adb
        return AdbTransport(self.name, adb.serial, workdir=self.spec.workdir,
                            adb_server=adb.adb_server, connect_timeout_s=adb.connect_timeout_s)

    def _stage(self, run_dir: str, reference: HostReference | None) -> Staged:
        binary, digest = self._ensure_cached(self.spec.adb.benchmark_binary, "benchmark_model",
                                             executable=True)
        if reference is None:
            return Staged(binary, digest)
        probe = f"{run_dir}/probe.bin"
        with tempfile.TemporaryDirectory(prefix="harness-probe-") as tmp:
            local = Path(tmp) / "probe.bin"
            local.write_bytes(reference.probe.astype(reference.probe.dtype.newbyteorder("<")).tobytes())
            self._push(local, probe)
        return Staged(binary, digest, probe=probe, output=f"{run_dir}/output.bin")

    def _run(self, prepared: PreparedRun, settings: MeasureSettings) -> TimedRun:
        adb = self.spec.adb
        argv = benchmark_argv(prepared.runner, prepared.model, settings, use_xnnpack=adb.use_xnnpack,
                              delegate=adb.delegate, taskset_mask=adb.taskset)
        notes: list[str] = []
        io_flags: list[str] = []
        reference = prepared.reference
        if reference is not None and prepared.probe is not None and prepared.output is not None:
            try:
                io_flags = benchmark_io_flags(reference.input.name, reference.input.shape,
                                              prepared.probe, prepared.output)
            except ValueError as e:
                notes.append(f"output not compared: {e}; the tool ran on its own random input")
        argv += io_flags
        result = self._call(lambda t: t.run(argv, timeout_s=self.timeouts.run_s(settings)))
        what = f"benchmark_model on {prepared.model_path.name!r}"
        if not result.ok:
            evidence = "; ".join(f"{name} tail {tail(text, 160)!r}" for name, text
                                 in (("stderr", result.stderr), ("stdout", result.stdout)) if text.strip())
            raise RunnerError(f"device {self.name!r}: {what} exited with code {result.exit_code}"
                              + (f"; {evidence}" if evidence else ""))
        try:
            # The tool logs its statistics to stdout, but LiteRT's own log lines, among them
            # "Replacing N out of M node(s) with delegate", go to stderr: read both.
            bench = parse_benchmark_output(f"{result.stdout}\n{result.stderr}")
            check_delegate(bench, requested=adb.delegate is not None,
                           name=_DELEGATE_NAMES.get(adb.delegate or ""))
        except (BenchmarkParseError, DelegateError) as e:
            raise self._named(e, what) from e
        checksum = None
        if io_flags and reference is not None and prepared.output is not None:
            checksum = self._output_checksum(reference.output, prepared.output)
        if bench.p95_us is not None:
            p90_us = bench.p95_us
            notes.append("benchmark_model prints no p90: latency_ms_p90 is its p95")
        else:
            p90_us = bench.max_us
            notes.append("this benchmark_model prints no percentiles: latency_ms_p90 is its max")
        fingerprint = self._fingerprint()
        fingerprint["benchmark_model_sha256"] = prepared.runner_sha256
        return TimedRun(latency_ms_median=bench.latency_ms_median, latency_ms_p90=p90_us / 1e3,
                        n_inferences=bench.count, window_s=bench.count * bench.avg_us / 1e6,
                        threads=settings.threads, output_checksum=checksum,
                        fingerprint=fingerprint, command_s=result.duration_s, notes=tuple(notes))

    def _output_checksum(self, tensor: TensorInfo, remote: str) -> str:
        """Pull the tool's output file and digest its first output tensor like the host's."""
        with tempfile.TemporaryDirectory(prefix="harness-output-") as tmp:
            local = Path(tmp) / "output.bin"
            self._call(lambda t: t.pull(remote, local, timeout_s=self.timeouts.push_s(tensor.nbytes)))
            raw = local.read_bytes()
        if len(raw) < tensor.nbytes:
            raise RunnerError(f"device {self.name!r}: benchmark_model wrote {len(raw)} bytes to "
                              f"{remote}, expected at least {tensor.nbytes} for output "
                              f"{tensor.name!r} {tensor.shape} {tensor.dtype}")
        return output_digest(tensor.decode(raw))

    def _fingerprint(self) -> dict[str, str]:
        """Model, build, kernel, governor: read once per link (a reboot or a new phone on the
        same serial means a new link), not once per measurement."""
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != self.link_opens:
            result = self._call(lambda t: t.run(key_value_script(FINGERPRINT_COMMANDS),
                                                timeout_s=self.timeouts.command_s))
            self._fingerprint_cache = (self.link_opens,
                                       parse_key_values(result.stdout, list(FINGERPRINT_COMMANDS)))
        return dict(self._fingerprint_cache[1])

    def _check_runtime(self, left: Callable[[str], float]) -> tuple[list[str], dict[str, str]]:
        binary = self.spec.adb.benchmark_binary
        if not binary.is_file():
            return [f"runtime missing: benchmark_binary {str(binary)!r} does not exist on the host; "
                    "build benchmark_model for this phone or fix the inventory"], {}
        remote, digest = self._ensure_cached(binary, "benchmark_model", executable=True,
                                             timeout_s=left("benchmark_model push"))
        facts = {"benchmark_model_sha256": digest}
        problems: list[str] = []
        if self.spec.adb.taskset is not None:
            found = self._call(lambda t: t.run("command -v taskset", timeout_s=left("taskset")))
            if not found.ok:
                problems.append(f"taskset missing: the inventory pins runs with taskset "
                                f"{self.spec.adb.taskset} but the phone has no taskset command")
        info = self._call(lambda t: t.run(key_value_script(FINGERPRINT_COMMANDS),
                                          timeout_s=left("device properties")))
        facts.update(parse_key_values(info.stdout, list(FINGERPRINT_COMMANDS)))
        facts["benchmark_model"] = remote
        return problems, facts
