"""``benchmark_model``: argv, the parser on the exact devices.md samples, delegate checks, and
the fake binary (tests/peers/fake_benchmark_model.py) end to end on a real tiny .tflite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devices.base import DeviceError, MeasureSettings
from devices.runners import (
    BenchmarkParseError,
    BenchmarkResult,
    DelegateError,
    DelegateUse,
    benchmark_argv,
    check_delegate,
    parse_benchmark_output,
)

FAKE = Path(__file__).resolve().parents[1] / "peers" / "fake_benchmark_model.py"

# Verbatim from shared/reference/devices.md (newer builds).
NEW_SAMPLE = """\
INFO: The input model file size (MB): 16.9008
INFO: Initialized session in 17.187ms.
INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=1249964 curr=1240143 min=1238588 max=1252566 avg=1.24027e+06 std=2565 p5=1238753 median=1239807 p95=1247415
INFO: Inference timings in us: Init: 5579, First inference: 1357602, Warmup (avg): 1.3576e+06, Inference (avg): 1.24027e+06
INFO: Memory footprint delta from the start of the tool (MB): init=6.36328 overall=109.832
"""  # noqa: E501 - verbatim tool output

# Older builds as devices.md describes them: no "INFO: " prefix, no p5/median/p95, and the
# "Peak memory footprint" line (its values verbatim); with the warm-up block the tool prints.
OLD_SAMPLE = """\
The input model file size (MB): 16.9008
Initialized session in 17.187ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=1 curr=1357602

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=1249964 curr=1240143 min=1238588 max=1252566 avg=1.24027e+06 std=2565
Inference timings in us: Init: 5579, First inference: 1357602, Warmup (avg): 1.3576e+06, Inference (avg): 1.24027e+06
Peak memory footprint (MB): init=4.92969 overall=138.809
"""

SETTINGS = MeasureSettings(threads=2, warmup_runs=3, min_seconds=1.5, min_runs=40)


# --- parser -----------------------------------------------------------------------------------

def test_parses_the_new_format_sample() -> None:
    r = parse_benchmark_output(NEW_SAMPLE)
    assert r == BenchmarkResult(
        count=50, first_us=1249964, curr_us=1240143, min_us=1238588, max_us=1252566,
        avg_us=1.24027e6, std_us=2565, init_us=5579, first_inference_us=1357602,
        warmup_avg_us=1.3576e6, inference_avg_us=1.24027e6, p5_us=1238753, median_us=1239807,
        p95_us=1247415, init_session_ms=17.187, memory_delta_init_mb=6.36328,
        memory_delta_overall_mb=109.832, model_size_mb=16.9008)
    assert r.peak_memory_init_mb is None and r.delegates == ()
    assert r.delegate_nodes_replaced is None and r.delegate_nodes_total is None
    assert r.latency_ms_median == pytest.approx(1239.807)
    assert isinstance(r.count, int)


def test_parses_the_old_format_sample_and_takes_the_timed_block() -> None:
    r = parse_benchmark_output(OLD_SAMPLE)
    assert (r.count, r.first_us, r.curr_us, r.min_us, r.max_us) == (50, 1249964, 1240143, 1238588, 1252566)
    assert r.avg_us == 1.24027e6 and r.std_us == 2565
    assert r.p5_us is None and r.median_us is None and r.p95_us is None
    assert r.latency_ms_median == pytest.approx(1240.27)  # falls back to the average
    assert (r.peak_memory_init_mb, r.peak_memory_overall_mb) == (4.92969, 138.809)
    assert r.memory_delta_init_mb is None and r.memory_delta_overall_mb is None
    assert (r.init_us, r.warmup_avg_us) == (5579, 1.3576e6)


def test_scientific_notation_everywhere_and_crlf() -> None:
    text = NEW_SAMPLE.replace("first=1249964", "first=1.249964e+06").replace("std=2565", "std=2.565E3")
    r = parse_benchmark_output(text.replace("\n", "\r\n"))
    assert r.first_us == 1249964 and r.std_us == 2565


def test_delegate_lines_are_recorded_in_order() -> None:
    text = NEW_SAMPLE.replace(
        "INFO: Initialized",
        "INFO: Replacing 12 out of 12 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding "
        "1 partitions for the whole graph.\n"
        "INFO: Replacing 7 out of 9 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 2 "
        "partitions.\nINFO: Initialized")
    r = parse_benchmark_output(text)
    assert r.delegates == (DelegateUse("TfLiteXNNPackDelegate", 12, 12),
                           DelegateUse("TfLiteGpuDelegateV2", 7, 9))
    assert (r.delegate_nodes_replaced, r.delegate_nodes_total) == (7, 9)


@pytest.mark.parametrize("text, expected", [
    ("", "no timed-run statistics"),
    ("ERROR: Could not open '/data/local/tmp/m.tflite'.\n", "no timed-run statistics"),
    (NEW_SAMPLE.replace(" avg=1.24027e+06 std", " std"), "has no avg="),
    (NEW_SAMPLE.replace("avg=1.24027e+06", "avg=abc"), "avg is 'abc'"),
    (NEW_SAMPLE.replace("avg=1.24027e+06", "avg=nan"), "avg is 'nan'"),
    (NEW_SAMPLE.replace("min=1238588", "min=-5"), "finite, non-negative"),
    (NEW_SAMPLE.replace("median=1239807", "median=1.2.3"), "median is '1.2.3'"),
    (NEW_SAMPLE.replace("count=50", "count=2.5"), "whole number of runs"),
    (NEW_SAMPLE.replace("count=50", "count=0"), "whole number of runs"),
    (NEW_SAMPLE.replace("Init: 5579", "Init: 55x9"), "init_us is '55x9'"),
    (NEW_SAMPLE.replace("overall=109.832", "overall=inf"), "memory delta overall"),
    (NEW_SAMPLE.replace("(MB): 16.9008", "(MB): ?"), "model file size"),
    # crashed after the warm-up: the last block has no statistics line
    (OLD_SAMPLE.split("count=50")[0], "no timed-run statistics"),
    # crashed after printing the stats but before the final timings line
    ("\n".join(NEW_SAMPLE.splitlines()[:4]), "no 'Inference timings in us"),
    (NEW_SAMPLE + "INFO: Replacing 9 out of 3 node(s) with delegate (X) node\n", "whole N <= M"),
])
def test_malformed_output_raises_one_line_naming_the_expectation(text: str, expected: str) -> None:
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(text)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert isinstance(info.value, DeviceError)


def test_long_offending_lines_are_shortened() -> None:
    text = NEW_SAMPLE.replace("avg=1.24027e+06", "avg=" + "z" * 500)
    with pytest.raises(BenchmarkParseError) as info:
        parse_benchmark_output(text)
    assert len(str(info.value)) < 400


# --- argv -------------------------------------------------------------------------------------

def test_argv_carries_the_settings() -> None:
    argv = benchmark_argv("/data/local/tmp/benchmark_model", "/data/local/tmp/m 1.tflite", SETTINGS)
    assert argv == [
        "/data/local/tmp/benchmark_model", "--graph=/data/local/tmp/m 1.tflite", "--num_threads=2",
        "--warmup_runs=3", "--warmup_min_secs=0", "--num_runs=40", "--min_secs=1.5",
        "--max_secs=150",
    ]


def test_argv_options() -> None:
    argv = benchmark_argv("bm", "g.tflite", SETTINGS, use_xnnpack=False, delegate="gpu",
                          taskset_mask="f0", report_peak_memory=True)
    assert argv[:3] == ["taskset", "f0", "bm"]
    assert argv[-3:] == ["--use_xnnpack=false", "--use_gpu=true", "--report_peak_memory_footprint=true"]
    assert benchmark_argv("bm", "g", SETTINGS, taskset_mask=0xF0)[:2] == ["taskset", "f0"]
    assert "--use_xnnpack=true" in benchmark_argv("bm", "g", SETTINGS, use_xnnpack=True)
    assert benchmark_argv("bm", "g", SETTINGS, delegate="nnapi")[-1] == "--use_nnapi=true"
    assert benchmark_argv("bm", "g", SETTINGS, delegate="/x/libdel.so")[-1] == \
        "--external_delegate_path=/x/libdel.so"
    long = MeasureSettings(min_seconds=120.0)
    assert benchmark_argv("bm", "g", long)[-1] == "--max_secs=240"  # never cuts the window
    assert benchmark_argv("bm", "g", long, max_secs=130)[-1] == "--max_secs=130"


@pytest.mark.parametrize("kwargs, expected", [
    ({"delegate": "tpu"}, "unknown delegate 'tpu'"),
    ({"taskset_mask": "0"}, "non-zero hex CPU mask"),
    ({"taskset_mask": "f0; rm -rf /"}, "non-zero hex CPU mask"),
    ({"taskset_mask": -1}, "must be positive"),
    ({"max_secs": 1.0}, "below min_seconds 1.5"),
])
def test_argv_rejects_bad_values(kwargs: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        benchmark_argv("bm", "g", SETTINGS, **kwargs)
    with pytest.raises(ValueError, match="needs a binary and a graph"):
        benchmark_argv("bm", "", SETTINGS)


# --- delegate checks --------------------------------------------------------------------------

def _with(*uses: DelegateUse) -> BenchmarkResult:
    r = parse_benchmark_output(NEW_SAMPLE)
    return BenchmarkResult(**{**r.__dict__, "delegates": uses})


def test_check_delegate() -> None:
    check_delegate(_with(), requested=False)  # nothing asked, nothing checked
    check_delegate(_with(DelegateUse("TfLiteGpuDelegateV2", 5, 9)), requested=True)
    check_delegate(_with(DelegateUse("TfLiteGpuDelegateV2", 9, 9)), requested=True, require_all=True)
    with pytest.raises(DelegateError, match="no 'Replacing N out of M"):
        check_delegate(_with(), requested=True)
    with pytest.raises(DelegateError, match="replaced 0 out of 9"):
        check_delegate(_with(DelegateUse("TfLiteGpuDelegateV2", 0, 9)), requested=True)
    with pytest.raises(DelegateError, match="only 5 out of 9"):
        check_delegate(_with(DelegateUse("TfLiteGpuDelegateV2", 5, 9)), requested=True,
                       require_all=True)
    xnn = DelegateUse("TfLiteXNNPackDelegate", 9, 9)
    with pytest.raises(DelegateError, match="delegates seen: TfLiteXNNPackDelegate"):
        check_delegate(_with(xnn), requested=True, name="Gpu")
    check_delegate(_with(xnn, DelegateUse("TfLiteGpuDelegateV2", 3, 9)), requested=True, name="Gpu")


# --- the fake binary, end to end --------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras
    import numpy as np

    from search.lowering import lower

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,), name="input")
    outputs = keras.layers.Dense(4, activation="softmax", name="dense")(inputs)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).random((8, 16)).astype(np.float32)
    path = tmp_path_factory.mktemp("bm") / "tiny.tflite"
    path.write_bytes(lower(model, {"dense": "float32"}, x).tflite_bytes)
    return path


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The fake as an executable named like the real one, run by this venv's Python."""
    path = tmp_path_factory.mktemp("bin") / "benchmark_model"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    path.chmod(0o755)
    return str(path)


FAST = MeasureSettings(threads=1, warmup_runs=2, min_seconds=0.2, min_runs=10)


def _run(argv: list[str], timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


@pytest.mark.parametrize("fmt", ["new", "old"])
def test_fake_binary_output_round_trips(tiny_model: Path, binary: str, fmt: str) -> None:
    done = _run(benchmark_argv(binary, str(tiny_model), FAST, use_xnnpack=True),
                FAKE_BENCHMARK_FORMAT=fmt)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("INFO: ") == (fmt == "new")
    r = parse_benchmark_output(done.stdout)
    # a sub-µs model: min_secs, not min_runs, ends the loop (times are whole µs, as the tool's)
    assert r.count > 10 * FAST.min_runs
    assert r.min_us <= r.avg_us <= r.max_us
    assert (r.median_us is not None) == (fmt == "new")
    assert (r.memory_delta_overall_mb is not None) == (fmt == "new")
    assert (r.peak_memory_overall_mb is not None) == (fmt == "old")
    assert r.model_size_mb == pytest.approx(tiny_model.stat().st_size / 2**20, rel=1e-3)
    assert r.delegate_nodes_total and r.delegate_nodes_replaced == r.delegate_nodes_total
    check_delegate(r, requested=True, require_all=True)


def test_fake_binary_times_its_runs(tiny_model: Path, binary: str) -> None:
    settings = MeasureSettings(warmup_runs=1, min_seconds=0.0, min_runs=5)
    done = _run(benchmark_argv(binary, str(tiny_model), settings), FAKE_BENCHMARK_SLEEP_US="20000")
    r = parse_benchmark_output(done.stdout)
    assert r.count == 5 and r.delegates == ()
    assert 20000 <= r.median_us < 200000  # type: ignore[operator]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="no taskset on this host")
def test_fake_binary_runs_pinned(tiny_model: Path, binary: str) -> None:
    done = _run(benchmark_argv(binary, str(tiny_model), FAST, taskset_mask="1"))
    assert done.returncode == 0, done.stderr
    assert parse_benchmark_output(done.stdout).count >= FAST.min_runs


def test_fake_binary_delegate_that_took_nothing(tiny_model: Path, binary: str) -> None:
    done = _run(benchmark_argv(binary, str(tiny_model), FAST, delegate="gpu"),
                FAKE_BENCHMARK_DELEGATE_NODES="0")
    assert done.returncode == 0
    r = parse_benchmark_output(done.stdout)
    with pytest.raises(DelegateError, match=r"TfLiteGpuDelegateV2 replaced 0 out of \d+"):
        check_delegate(r, requested=True)


def test_fake_binary_faults(tiny_model: Path, binary: str) -> None:
    crashed = _run(benchmark_argv(binary, str(tiny_model), FAST), FAKE_BENCHMARK_EXIT="139")
    assert crashed.returncode == 139 and "count=" in crashed.stdout  # the warm-up's line
    with pytest.raises(BenchmarkParseError, match="timed.run"):
        parse_benchmark_output(crashed.stdout)
    with pytest.raises(subprocess.TimeoutExpired):
        _run(benchmark_argv(binary, str(tiny_model), FAST), timeout=3, FAKE_BENCHMARK_HANG_S="60")
    missing = _run(benchmark_argv(binary, str(tiny_model.with_name("none.tflite")), FAST))
    assert missing.returncode == 1 and "Could not open" in missing.stdout
    with pytest.raises(BenchmarkParseError):
        parse_benchmark_output(missing.stdout)
    unknown = _run([binary, f"--graph={tiny_model}", "--num-threads=2"])
    assert unknown.returncode == 1 and "Unconsumed cmdline flags" in unknown.stdout
