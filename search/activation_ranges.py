"""Fixed-point activation ranges calibrated on the reference model's own activations.

A ``fixed(M)`` activation is an M-bit grid whose range is a power of two: ``fixed(M,I)`` spans
[0, 2^I) after a ReLU (step 2^(I-M)) or [-2^I, 2^I) otherwise. Without a calibration the
range defaults to I = M // 2, which suits no layer in particular: the document-000 model's
ReLU outputs on Fashion-MNIST have a median of 0.04-0.2 and a 99.9th percentile near 1, so a
``fixed(4)`` grid of step 0.25 rounds most of them to zero and QAT spends its short proxy
budget rescaling weights instead of learning the grid.

:func:`calibrate` picks, per layer and width M, the I whose grid reproduces the reference's
outputs on calibration samples with the least squared error. That is the MSE range
calibration integer inference engines use (TensorRT, TFLite's int8 scales), restricted to
powers of two because document 000's fixed point has no other scale. It costs no energy: the
grid keeps its M bits, only its binary point moves. The reference is a prior for the candidate
(quantized and resized neighbours shift the distribution a little); QAT adapts the rest.

The chosen I is written into the candidate's spec (``fixed(4)`` becomes e.g. ``fixed(4,-1)``),
so records, keys and reports name the grid each candidate was trained with. An activation the
config gives as ``fixed(M,I)`` is the user's choice and is never changed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import keras
import numpy as np

from search.candidate import CandidateSpec
from search.quantizers import MIN_INTEGER_BITS, Scheme
from search.space import SearchSpace

__all__ = ["ActivationRanges", "ActivationRangeError", "calibrate"]

#: Output values per layer the error is measured on; a fixed random subset keeps the search
#: over I cheap on large feature maps without changing which I wins.
_MAX_VALUES = 1 << 20


class ActivationRangeError(ValueError):
    """The reference's outputs give no range (names the layer)."""


@dataclass(frozen=True)
class ActivationRanges:
    """Calibrated integer bits per layer and width: ``bits[layer][M] = I``."""

    bits: Mapping[str, Mapping[int, int]] = field(default_factory=dict)

    def resolve(self, spec: CandidateSpec) -> CandidateSpec:
        """``spec`` with each uncalibrated ``fixed(M)`` activation set to its calibrated range."""
        layers = []
        for name, choice in spec:
            activation = choice.activation
            calibrated = self.bits.get(name, {}).get(activation.bits)
            if _calibratable(activation) and calibrated is not None:
                choice = replace(choice, activation=Scheme("fixed", activation.bits, calibrated))
            layers.append((name, choice))
        return CandidateSpec(tuple(layers), label=spec.label)

    def to_dict(self) -> dict[str, dict[str, int]]:
        """JSON-able (an Optuna study attribute): widths as strings."""
        return {name: {str(m): i for m, i in widths.items()} for name, widths in self.bits.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> ActivationRanges:
        return cls({name: {int(m): int(i) for m, i in widths.items()} for name, widths in data.items()})


def calibrate(reference: keras.Model, space: SearchSpace, samples: np.ndarray) -> ActivationRanges:
    """The least-squared-error range for every ``fixed(M)`` activation the space offers.

    Args:
        reference: The trained reference model the candidates inherit from.
        space: Its search space; only widths some candidate can choose are calibrated.
        samples: Model inputs (a few hundred training samples suffice).

    Raises:
        ActivationRangeError: a layer of the reference outputs NaN or infinity on the samples.
    """
    rng = np.random.default_rng(0)
    bits: dict[str, dict[int, int]] = {}
    for slot in space.slots:
        widths = sorted({s.bits for s in slot.activation_schemes if _calibratable(s)})
        if not widths:
            continue
        # one layer at a time: all of a large model's feature maps at once need not fit in memory
        probe = keras.Model(reference.inputs, reference.get_layer(slot.name).output)
        values = np.asarray(probe.predict(samples, verbose=0), dtype=np.float32).ravel()
        if not np.all(np.isfinite(values)):
            raise ActivationRangeError(
                f"layer {slot.name!r} of the reference outputs NaN or infinity on the calibration "
                "samples, so its activation range cannot be calibrated"
            )
        if values.size > _MAX_VALUES:
            values = rng.choice(values, _MAX_VALUES, replace=False)
        after_relu = slot.activation == "relu"
        bits[slot.name] = {m: _best_integer_bits(values, m, after_relu) for m in widths}
    return ActivationRanges(bits)


def _calibratable(scheme: Scheme) -> bool:
    return scheme.kind == "fixed" and scheme.integer_bits is None


def _best_integer_bits(values: np.ndarray, width: int, after_relu: bool) -> int:
    """The I in [MIN_INTEGER_BITS, M - 1] with the least squared error; ties go to the wider
    range (it clips less on inputs the samples did not cover).

    Every I is tried: the error is not unimodal in I, and the best range may clip (low widths)
    or sit above the peak (a grid's top is one step below 2^I)."""
    best, best_error = 0, math.inf
    for integer in range(width - 1, MIN_INTEGER_BITS - 1, -1):
        quantizer = Scheme("fixed", width, integer).activation_quantizer(after_relu)
        error = float(np.mean((np.asarray(quantizer(values)) - values) ** 2)) if values.size else 0.0
        if error < best_error:
            best, best_error = integer, error
    return best
