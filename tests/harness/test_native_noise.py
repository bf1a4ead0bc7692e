"""The CLI's stderr filter: TensorFlow's native chatter goes, everything else stays."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from harness.native_noise import strip_noise


@pytest.mark.parametrize(
    "line",
    [
        "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32\n",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n",
        "I0000 00:00:1795386267.423923     785 port.cc:153] oneDNN custom operations are on. You may see\n",
    ],
)
def test_native_lines_are_dropped(line: str) -> None:
    assert strip_noise(line) == ""


def test_a_progress_bar_before_a_native_line_is_kept() -> None:
    bar = "\rsearch:  40%|████      | 2/5 [00:03<00:04]"
    assert strip_noise(bar + "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32\n") == bar


@pytest.mark.parametrize("line", ["error: [search] sampler: unknown sampler 'foo'\n", "WARNING search.space: x\n"])
def test_other_lines_pass_unchanged(line: str) -> None:
    assert strip_noise(line) == line


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, check=False)


def test_filtered_process_drops_noise_and_keeps_the_rest() -> None:
    done = _run("""
        import os
        from harness.native_noise import filter_native_stderr
        filter_native_stderr()
        os.write(2, b"fully_quantize: 0, inference_type: 6\\nkept line\\n")
    """)
    assert done.returncode == 0
    assert done.stderr == "kept line\n"


def test_a_native_crash_still_shows_its_traceback() -> None:
    done = _run("""
        import ctypes
        from harness.native_noise import filter_native_stderr
        filter_native_stderr()
        ctypes.string_at(0)  # a segfault, as in a crashing converter
    """)
    assert done.returncode != 0
    assert "Segmentation fault" in done.stderr and "string_at" in done.stderr
