#!/usr/bin/env python3
"""Time one .tflite with LiteRT on a Linux board; print exactly one JSON object on stdout.

This single file is pushed to the board and run there with its Python: it imports only the
standard library, numpy and ``ai_edge_litert`` (nothing from the harness)::

    python3 litert_runner.py MODEL.tflite --threads N --warmup-runs W --min-seconds S \
        --min-runs R [--probe probe.npy]

It times like the host's ``devices.local``: fixed threads, untimed warm-up, then single
inferences each timed with ``time.perf_counter_ns`` until both ``--min-runs`` and
``--min-seconds`` are met, garbage collector paused. Without ``--probe`` the input is the
deterministic probe for the model's input shape and dtype (seed 0).

Success prints ``{"latency_ms_median", "latency_ms_p90", "n_inferences", "window_s",
"threads", "warmup_runs", "output_checksum", "fingerprint": {...}, "runner_version"}`` and
exits 0. Any failure prints ``{"error": "...", "error_kind": "..."}`` and exits 2 (usage) or
1 (model, probe or runtime). LiteRT's native chatter written to fd 1 is sent to stderr while
the model runs, so stdout holds only the JSON.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import sys
import time
from importlib import metadata

RUNNER_VERSION = 1
_TFLITE_IDENTIFIER = b"TFL3"


class RunnerFailure(Exception):
    """A failure reported as the JSON ``error``; ``kind`` names the case, ``exit_code`` the status."""

    def __init__(self, message: str, kind: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.kind = kind
        self.exit_code = exit_code


# --- copied from devices/probe.py (output_digest, make_probe_input, dequantize) -------------
# Kept verbatim in behaviour so the board's digest equals the host's for the same output;
# tests/devices/test_runner_litert.py checks that both give the same strings and arrays.
# Change both together (and bump DIGEST_VERSION there and here).

DIGEST_VERSION = "v1"
SIGNIFICANT_DIGITS = 3


def output_digest(array):  # type: ignore[no-untyped-def]
    import numpy as np

    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        raise TypeError(f"output_digest needs a numeric array, got dtype {values.dtype}")
    values = values.astype(np.float64)
    digest = hashlib.sha256()
    digest.update(f"{DIGEST_VERSION};shape={tuple(values.shape)};".encode())
    if values.size == 0:
        return f"{DIGEST_VERSION}:{digest.hexdigest()}"

    rows = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
    ranked = np.where(np.isnan(rows), -np.inf, rows)
    digest.update(b"argmax;" + np.argmax(ranked, axis=1).astype("<i8").tobytes())

    finite = np.isfinite(values)
    largest = float(np.max(np.abs(values[finite]))) if finite.any() else 0.0
    if largest > 0.0:
        exponent = math.floor(math.log10(largest)) - (SIGNIFICANT_DIGITS - 1)
        rounded = np.round(np.where(finite, values, 0.0) / 10.0**exponent)
    else:
        exponent, rounded = 0, np.zeros(values.shape)
    digest.update(f"step=1e{exponent};".encode() + rounded.astype("<i8").tobytes())
    special = np.select([np.isnan(values), np.isposinf(values), np.isneginf(values)], [1, 2, 3], 0)
    digest.update(b"special;" + special.astype("<i1").tobytes())
    return f"{DIGEST_VERSION}:{digest.hexdigest()}"


def make_probe_input(shape, dtype, *, seed=0):  # type: ignore[no-untyped-def]
    import numpy as np

    kind = np.dtype(dtype)
    size = tuple(int(d) for d in shape)
    if any(d < 0 for d in size):
        raise ValueError(f"probe shape {size} has a dynamic (negative) dimension")
    rng = np.random.default_rng(seed)
    if kind.kind == "f":
        return rng.random(size, dtype=np.float64).astype(kind)
    if kind.kind == "b":
        return rng.integers(0, 2, size).astype(kind)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        low, high = (info.min, info.max) if kind.itemsize == 1 else (0, 127)
        return rng.integers(low, high, size, endpoint=True).astype(kind)
    raise ValueError(f"no probe input for dtype {kind}")


def dequantize(values, detail):  # type: ignore[no-untyped-def]
    import numpy as np

    scale, zero_point = detail.get("quantization", (0.0, 0))
    array = np.asarray(values)
    if array.dtype.kind in "iu" and scale:
        return ((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
    return array.astype(np.float32)

# --- end of the copy ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise RunnerFailure(f"usage: {message}", "usage", exit_code=2)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="litert_runner.py", description="Time a .tflite with LiteRT; print JSON.")
    parser.add_argument("model")
    parser.add_argument("--threads", type=_positive_int, default=1)
    parser.add_argument("--warmup-runs", type=_non_negative_int, default=5)
    parser.add_argument("--min-seconds", type=_non_negative_float, default=1.0)
    parser.add_argument("--min-runs", type=_positive_int, default=20)
    parser.add_argument("--probe", default=None, help="a .npy array: one batch for the model's input")
    return parser.parse_args(argv)


def fingerprint() -> dict[str, str]:
    """Runtime versions and the machine, with the host fingerprint's key names."""
    import numpy as np

    result = {
        "cpu_model": _cpu_model() or platform.processor() or "unknown",
        "cpu_count": str(os.cpu_count() or 0),
        "machine": platform.machine(),
        "kernel": platform.release(),
        "os": platform.system(),
        "python": platform.python_version(),
        "ai_edge_litert": _version("ai-edge-litert"),
        "numpy": np.__version__,
    }
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") as f:
            result["governor"] = f.read().strip()
    except OSError:
        pass
    return result


def measure(args: argparse.Namespace) -> dict[str, object]:
    try:
        import numpy as np
    except ImportError as e:
        raise RunnerFailure(f"numpy is not installed on this board: {e}", "runtime_missing") from e
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise RunnerFailure(f"ai_edge_litert is not installed for {sys.executable}: {e}; "
                            "install it with 'pip install ai-edge-litert'", "runtime_missing") from e

    try:
        with open(args.model, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise RunnerFailure(f"model file {args.model} does not exist", "model_missing") from e
    except OSError as e:
        raise RunnerFailure(f"cannot read {args.model}: {e.strerror or e}", "model_unreadable") from e
    if data[4:8] != _TFLITE_IDENTIFIER:
        raise RunnerFailure(f"{args.model} is not a .tflite file (no TFL3 identifier in its "
                            f"{len(data)} bytes)", "model_invalid")
    try:
        interpreter = Interpreter(model_content=data, num_threads=args.threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise RunnerFailure(f"LiteRT cannot load {args.model}: {_one_line(e)}", "model_invalid") from e
    inp = interpreter.get_input_details()
    out = interpreter.get_output_details()
    if len(inp) != 1 or not out:
        raise RunnerFailure(f"{args.model} has {len(inp)} inputs and {len(out)} outputs; only "
                            "single-input models are measured", "model_unsupported")
    x = _fit_probe(np, interpreter, inp[0], _load_probe(np, args.probe), args.model)
    interpreter.set_tensor(inp[0]["index"], x)

    durations, window_ns = _time(interpreter, args)
    output = dequantize(interpreter.get_tensor(out[0]["index"]), out[0])
    ms = np.asarray(durations, dtype=np.float64) / 1e6
    return {
        "latency_ms_median": float(np.median(ms)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "n_inferences": len(durations),
        "window_s": window_ns / 1e9,
        "threads": args.threads,
        "warmup_runs": args.warmup_runs,
        "output_checksum": output_digest(output),
        "fingerprint": fingerprint(),
        "runner_version": RUNNER_VERSION,
    }


def _load_probe(np, path):  # type: ignore[no-untyped-def]
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError as e:
        raise RunnerFailure(f"probe file {path} does not exist", "probe_missing") from e
    except (OSError, ValueError) as e:
        raise RunnerFailure(f"probe file {path} is not a .npy array: {_one_line(e)}",
                            "probe_invalid") from e


def _fit_probe(np, interpreter, detail, probe, model):  # type: ignore[no-untyped-def]
    """The probe as the input tensor wants it (same rules as ``devices.local``)."""
    shape = tuple(int(d) for d in detail["shape"])
    dtype = np.dtype(detail["dtype"])
    if probe is None:
        return make_probe_input(shape, dtype)
    x = np.asarray(probe)
    if x.shape != shape:
        signature = tuple(int(d) for d in detail["shape_signature"])
        # no strict=: this file runs on the board's Python, which may predate 3.10; lengths checked just before
        fits = len(signature) == x.ndim and all(s in (-1, d) for s, d in zip(signature, x.shape))  # noqa: B905
        if not fits:
            raise RunnerFailure(f"probe input of shape {x.shape} does not fit the input {shape} "
                                f"of {model}", "probe_invalid")
        try:
            interpreter.resize_tensor_input(detail["index"], list(x.shape))
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            raise RunnerFailure(f"cannot resize the input of {model} to {x.shape}: {_one_line(e)}",
                                "probe_invalid") from e
    if dtype.kind in "iu" and x.dtype.kind == "f":
        scale, zero_point = detail["quantization"]
        if not scale:
            raise RunnerFailure(f"{model} takes {dtype} without quantization parameters; give an "
                                "integer probe input", "probe_invalid")
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
    if x.dtype.kind != dtype.kind and not (x.dtype.kind in "iu" and dtype.kind in "iu"):
        raise RunnerFailure(f"probe input of dtype {x.dtype} for the {dtype} input of {model}",
                            "probe_invalid")
    return x.astype(dtype, copy=False)


def _time(interpreter, args):  # type: ignore[no-untyped-def]
    min_ns = int(args.min_seconds * 1e9)
    durations: list[int] = []
    invoke = interpreter.invoke
    clock = time.perf_counter_ns
    collecting = gc.isenabled()
    try:
        for _ in range(args.warmup_runs):
            invoke()
        gc.disable()
        start = end = clock()
        while len(durations) < args.min_runs or end - start < min_ns:
            before = clock()
            invoke()
            end = clock()
            durations.append(end - before)
    except (RuntimeError, ValueError) as e:
        raise RunnerFailure(f"inference of {args.model} failed: {_one_line(e)}", "inference_failed") from e
    finally:
        if collecting:
            gc.enable()
    return durations, end - start


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields:
            fields[key] = value
    for key in ("model name", "model", "hardware", "cpu model", "processor"):
        value = fields.get(key, "")
        if value and not value.isdigit():
            return value
    if "cpu implementer" in fields or "cpu part" in fields:
        return f"arm implementer {fields.get('cpu implementer', '?')} part {fields.get('cpu part', '?')}"
    return ""


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(error).__name__)


def main(argv: list[str] | None = None) -> int:
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    os.dup2(2, 1)  # native LiteRT logs to fd 1 would corrupt the JSON: send them to stderr
    try:
        try:
            result: dict[str, object] = measure(parse_args(sys.argv[1:] if argv is None else argv))
            code = 0
        except RunnerFailure as e:
            result, code = {"error": str(e), "error_kind": e.kind}, e.exit_code
        except Exception as e:  # noqa: BLE001 - the host must get JSON whatever broke
            result, code = {"error": f"unexpected {type(e).__name__}: {_one_line(e)}",
                            "error_kind": "internal"}, 1
    finally:
        sys.stdout.flush()
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
