"""The meters package's exceptions: one base, :class:`MeterError`, and a subclass per case."""

from __future__ import annotations

from devices.base import DeviceError

__all__ = ["MeterError", "MeterParseError", "MeterReadError", "MeterNotConfiguredError"]

_MAX_LINE_CHARS = 120


class MeterError(DeviceError):
    """A power meter could not produce a reading or a window; the message says what to do."""


class MeterParseError(MeterError):
    """Raw meter output did not have the expected format.

    The message is one line: the source, the offending line (``repr``-quoted, so a newline or
    an empty string shows) and what was expected there.

    Attributes:
        source: What was being parsed, e.g. ``"ODPM energy_value"``.
        line: The offending line (or the whole text when it is empty).
        expected: What a valid line looks like.
    """

    def __init__(self, source: str, line: str, expected: str) -> None:
        shown = line if len(line) <= _MAX_LINE_CHARS else line[:_MAX_LINE_CHARS] + "..."
        super().__init__(f"{source}: cannot parse {shown!r}: expected {expected}")
        self.source = source
        self.line = line
        self.expected = expected


class MeterReadError(MeterError):
    """The injected ``read`` callable failed or overran its deadline (see ``__cause__``)."""


class MeterNotConfiguredError(MeterError):
    """A device has no power meter, so no energy window can be measured on it."""
