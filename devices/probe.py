"""The probe input and the output digest that every runner, local or remote, computes alike.

A device proves it ran the model right by digesting the model's output for a fixed probe input;
the harness compares that digest with the host's. This module needs only numpy and the standard
library, so a remote runner can ship it next to its script and compute the same strings.

The digest (:func:`output_digest`) is SHA-256 over a version tag, the shape, the argmax of
every row (last axis) and the values rounded to :data:`SIGNIFICANT_DIGITS` significant digits
*of the largest magnitude in the array*: every value is rounded to the same absolute step,
``10 ** (floor(log10(max|v|)) - 2)``. So float noise far below that step (another CPU's
summation order, XNNPACK versus reference kernels) does not change the digest, and tiny tail
values (a softmax's 1e-9 entries, pure noise) count as zero instead of flipping it. Rounding
has edges: a value that sits on a rounding boundary can still round differently on two
machines. A mismatch is therefore evidence to look at the raw outputs, not proof of a wrong
answer; a match means the outputs agree to about three digits and in every argmax.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devices.base import DeviceError

if TYPE_CHECKING:
    from ai_edge_litert.interpreter import Interpreter

__all__ = ["DIGEST_VERSION", "SIGNIFICANT_DIGITS", "output_digest", "make_probe_input", "dequantize",
           "fit_probe"]

DIGEST_VERSION = "v1"
SIGNIFICANT_DIGITS = 3


def output_digest(array: np.ndarray) -> str:
    """A stable digest of a model output, ``"v1:"`` + 64 hex digits (see the module docstring).

    Integer outputs are digested as their values (dequantize first to compare an int8 model's
    output with a float one: :func:`dequantize`). NaN and infinities are digested as such.

    Raises:
        TypeError: the array is not numeric.
    """
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


def make_probe_input(shape: Sequence[int], dtype: np.dtype | str | type, *, seed: int = 0) -> np.ndarray:
    """A deterministic random input: same shape, dtype and seed give the same array anywhere.

    Floats are uniform in [0, 1) (the range of normalized images); 8-bit integers cover their
    whole range; wider integers are in [0, 128) (plausible ids and indices); bools are fair
    coins. NumPy's PCG64 generator gives the same numbers on every platform.
    """
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


def dequantize(values: np.ndarray, detail: Mapping[str, object]) -> np.ndarray:
    """A LiteRT output tensor as float32, using its ``quantization`` (scale, zero point).

    ``detail`` is an entry of ``Interpreter.get_output_details()``. Float tensors and integer
    tensors without quantization parameters are only cast.
    """
    scale, zero_point = detail.get("quantization", (0.0, 0))  # type: ignore[misc]
    array = np.asarray(values)
    if array.dtype.kind in "iu" and scale:
        return ((array.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)
    return array.astype(np.float32)


def fit_probe(device: str, path: Path, interpreter: Interpreter, detail: Mapping[str, object],
              probe: np.ndarray | None) -> np.ndarray:
    """The probe as the input tensor takes it (the host's rules, which ``litert_runner.py``
    repeats on boards): no probe is the shared default probe; another batch size resizes a
    dynamic input; a float probe for an integer input is quantized; other dtypes are cast.

    Raises:
        DeviceError: the shape does not fit, or the dtype cannot be converted.
    """
    shape = tuple(int(d) for d in detail["shape"])  # type: ignore[attr-defined]
    dtype = np.dtype(detail["dtype"])  # type: ignore[call-overload]
    if probe is None:
        return make_probe_input(shape, dtype)
    x = np.asarray(probe)
    where = f"device {device!r}: probe input for {path}"
    if x.shape != shape:
        signature = tuple(int(d) for d in detail["shape_signature"])  # type: ignore[attr-defined]
        if len(signature) != x.ndim or not all(s in (-1, d) for s, d in zip(signature, x.shape, strict=True)):
            raise DeviceError(f"{where}: shape {x.shape} does not fit the model's input {shape}")
        try:
            interpreter.resize_tensor_input(detail["index"], list(x.shape))  # type: ignore[arg-type]
            interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            raise DeviceError(f"{where}: cannot resize the input to {x.shape}: {' '.join(str(e).split())[:300]}") from e
    if dtype.kind in "iu" and x.dtype.kind == "f":
        scale, zero_point = detail["quantization"]  # type: ignore[misc]
        if not scale:
            raise DeviceError(f"{where}: the model takes {dtype} without quantization parameters; "
                              "give an integer probe")
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)
    if x.dtype.kind != dtype.kind and not (x.dtype.kind in "iu" and dtype.kind in "iu"):
        raise DeviceError(f"{where}: dtype {x.dtype} for the model's {dtype} input")
    return np.ascontiguousarray(x.astype(dtype, copy=False))
