"""Runners: what executes a .tflite on a device and how the host reads the result.

* :mod:`devices.runners.benchmark_model` -- the TFLite ``benchmark_model`` tool (Android):
  :func:`benchmark_argv`, :func:`parse_benchmark_output`, :func:`check_delegate`.
* :mod:`devices.runners.litert_runner` -- a single-file script pushed to Linux boards (stdlib,
  numpy, ai_edge_litert); :mod:`devices.runners.runner_output` builds its command and reads
  its JSON (:func:`runner_argv`, :func:`parse_runner_output`).

All failures are :class:`RunnerError` (a :class:`~devices.base.DeviceError`).
"""

from __future__ import annotations

from devices.runners.benchmark_model import (
    BenchmarkResult,
    DelegateUse,
    benchmark_argv,
    check_delegate,
    parse_benchmark_output,
)
from devices.runners.errors import BenchmarkParseError, DelegateError, RunnerError, RunnerOutputError
from devices.runners.runner_output import RUNNER_SCRIPT, RunnerOutput, parse_runner_output, runner_argv

__all__ = [
    "BenchmarkParseError",
    "BenchmarkResult",
    "DelegateError",
    "DelegateUse",
    "RUNNER_SCRIPT",
    "RunnerError",
    "RunnerOutput",
    "RunnerOutputError",
    "benchmark_argv",
    "check_delegate",
    "parse_benchmark_output",
    "parse_runner_output",
    "runner_argv",
]
