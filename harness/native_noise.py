"""Drop TensorFlow's native start-up and converter chatter from the CLI's stderr.

TensorFlow's C++ layers write to file descriptor 2 directly (absl logs before logging is set
up, the MLIR quantizer's ``fully_quantize:`` line, Grappler remapper notes) and ignore
``TF_CPP_MIN_LOG_LEVEL`` for some of them. Between progress bars they bury the lines a user
needs. The CLI routes fd 2 through a pipe and a thread that drops only lines matching the known
patterns below; everything else, our own errors included, passes through unchanged.

A native line often lands right after a progress bar's redraw (``\r 40%|####  | 2/5``), with no
newline in between, so a pattern may match anywhere in a line: the bar text before it is kept.
Python's fault handler writes to the real stderr, so a crash in native code still shows its
traceback although the pump thread dies with the process.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import re
import sys
import threading

__all__ = ["NOISE_PATTERNS", "filter_native_stderr", "strip_noise"]

NOISE_PATTERNS = (
    r"WARNING: All log messages before absl::InitializeLog\(\) is called",
    r"I0000 .*(oneDNN custom operations|cpu_feature_guard)",
    r"To enable the following instructions: .* rebuild TensorFlow",
    r"fully_quantize: \d+, inference_type",
    r"E0000 .*meta_optimizer\.cc.*remapper failed",
    r"INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
    r"W0000 .*(tf_tfl_flatbuffer_helpers|flatbuffer_export)",
)
_NOISE = re.compile("|".join(NOISE_PATTERNS))


def strip_noise(line: str) -> str:
    """``line`` without a known native message (from its start to the line's end)."""
    match = _NOISE.search(line)
    return line if match is None else line[: match.start()]


def filter_native_stderr() -> None:
    """Start filtering fd 2 for the rest of the process (idempotent; a no-op off POSIX)."""
    global _started
    if _started or not hasattr(os, "pipe"):
        return
    _started = True
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as source, os.fdopen(real_stderr, "wb", buffering=0) as sink:
            for line in iter(source.readline, b""):
                text = line.decode("utf-8", "replace")
                kept = strip_noise(text)
                if kept == text:
                    sink.write(line)  # the bytes as they came
                elif kept:
                    sink.write(kept.encode("utf-8"))

    global _fault_stream
    _fault_stream = os.fdopen(os.dup(real_stderr), "w")  # kept open for the process's life
    faulthandler.enable(file=_fault_stream, all_threads=True)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def drain() -> None:
        # Hand fd 2 back to the real stderr; the pipe then reaches EOF and the pump finishes.
        sys.stderr.flush()
        saved = os.dup(real_stderr)
        os.dup2(saved, 2)
        os.close(saved)
        thread.join(timeout=2.0)

    atexit.register(drain)


_started = False
_fault_stream = None
