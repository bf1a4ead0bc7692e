"""The harness package's exceptions.

Every failure the harness raises on purpose is a :class:`HarnessError`. :class:`InputError` is
the user's to fix (a dataset, a model file, a flag): the CLI prints its message on one line and
exits with status 2. Messages name the thing that is wrong and say how to fix it; library
errors are translated at the boundary with ``raise InputError(...) from e``.
"""

from __future__ import annotations

__all__ = ["HarnessError", "InputError"]


class HarnessError(Exception):
    """Base class of every error the harness package raises on purpose."""


class InputError(HarnessError):
    """Bad user input: the message names the input, the bad value and the fix."""
