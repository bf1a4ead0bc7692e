"""The runners package's exceptions: one base, :class:`RunnerError`, and a subclass per case."""

from __future__ import annotations

from devices.base import DeviceError

__all__ = ["RunnerError", "BenchmarkParseError", "DelegateError", "RunnerOutputError"]

_MAX_LINE_CHARS = 120


def shorten(text: str) -> str:
    """``text`` cut to one readable excerpt for an error message."""
    return text if len(text) <= _MAX_LINE_CHARS else text[:_MAX_LINE_CHARS] + "..."


class RunnerError(DeviceError):
    """A model runner (``benchmark_model`` or ``litert_runner.py``) failed or answered wrongly."""


class BenchmarkParseError(RunnerError):
    """``benchmark_model`` output lacked an expected line or held a value that is no number.

    The message is one line naming what was expected and, where there was one, the offending
    line (``repr``-quoted).
    """


class DelegateError(RunnerError):
    """A delegate was requested but did not take the graph (0 nodes, or fewer than all)."""


class RunnerOutputError(RunnerError):
    """``litert_runner.py`` printed no valid JSON result, or reported an error of its own.

    Attributes:
        runner_error: The runner's own ``error`` message when it reported one, else ``None``.
    """

    def __init__(self, message: str, runner_error: str | None = None) -> None:
        super().__init__(message)
        self.runner_error = runner_error
