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

``binary``, ``binary01`` and ``ternary`` activations have the same problem at one level: qkeras
gives them a scale of 1, so after a ReLU a ``binary01`` layer outputs 1 wherever the reference
output 0.04-0.2. They get the power-of-two scale 2^c with the least squared error the same way,
and with it round to their nearest level instead of qkeras' step at 0
(:meth:`search.quantizers.Scheme.activation_quantizer`).

The chosen I (or c) is written into the candidate's spec (``fixed(4)`` becomes e.g.
``fixed(4,-1)``, ``ternary`` e.g. ``ternary(2^-3)``), so records, keys and reports name the grid
each candidate was trained with. An activation the config gives as ``fixed(M,I)`` or with a
``2^c`` scale is the user's choice and is never changed. ``po2(E)`` activations are not
calibrated (qkeras' ``max_value`` clips them but does not move their exponent range).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import keras
import numpy as np

from search.candidate import CandidateSpec
from search.quantizers import MAX_SCALE_EXPONENT, MIN_INTEGER_BITS, MIN_SCALE_EXPONENT, Scheme
from search.space import SearchSpace

__all__ = ["ActivationRanges", "ActivationRangeError", "CALIBRATED_KINDS", "calibrate"]

#: The activation scheme kinds :func:`calibrate` fits, in the order they were added; a study
#: records them so that a resumed one never starts calibrating a kind its first trials ran without.
CALIBRATED_KINDS = ("fixed", "binary", "binary01", "ternary")

#: What a range is calibrated for: a ``fixed`` width M, or a binary/binary01/ternary kind name.
RangeKey = int | str

#: Output values per layer the error is measured on; a fixed random subset keeps the search
#: over I cheap on large feature maps without changing which I wins.
_MAX_VALUES = 1 << 20


class ActivationRangeError(ValueError):
    """The reference's outputs give no range (names the layer)."""


@dataclass(frozen=True)
class ActivationRanges:
    """Calibrated exponents per layer: ``bits[layer][M] = I`` for ``fixed(M)`` (integer bits)
    and ``bits[layer][kind] = c`` for a binary, binary01 or ternary kind (scale 2^c)."""

    bits: Mapping[str, Mapping[RangeKey, int]] = field(default_factory=dict)

    def resolve(self, spec: CandidateSpec) -> CandidateSpec:
        """``spec`` with each uncalibrated activation set to its calibrated range."""
        layers = []
        for name, choice in spec:
            activation = choice.activation
            calibrated = self.bits.get(name, {}).get(_range_key(activation)) if _calibratable(activation) else None
            if calibrated is not None:
                choice = replace(choice, activation=_with_exponent(activation, calibrated))
            layers.append((name, choice))
        return CandidateSpec(tuple(layers), label=spec.label)

    def without_kinds(self, kinds: set[str]) -> ActivationRanges:
        """These ranges less those of the given scheme kinds (``"fixed"`` for the widths)."""
        return ActivationRanges({
            name: {key: i for key, i in ranges.items() if _key_kind(key) not in kinds}
            for name, ranges in self.bits.items()
        })  # fmt: skip

    def to_dict(self) -> dict[str, dict[str, int]]:
        """JSON-able (an Optuna study attribute): widths as strings ("4"), kinds by name."""
        return {name: {str(key): i for key, i in ranges.items()} for name, ranges in self.bits.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, int]]) -> ActivationRanges:
        return cls({
            name: {(int(key) if key.isdigit() else key): int(i) for key, i in ranges.items()}
            for name, ranges in data.items()
        })  # fmt: skip


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
    bits: dict[str, dict[RangeKey, int]] = {}
    for slot in space.slots:
        schemes = {_range_key(s): s for s in slot.activation_schemes if _calibratable(s)}
        if not schemes:
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
        bits[slot.name] = {key: _best_exponent(values, scheme, after_relu) for key, scheme in schemes.items()}
    return ActivationRanges(bits)


def _calibratable(scheme: Scheme) -> bool:
    if scheme.kind == "fixed":
        return scheme.integer_bits is None
    return scheme.kind in CALIBRATED_KINDS and scheme.scale_exponent is None


def _range_key(scheme: Scheme) -> RangeKey:
    return scheme.bits if scheme.kind == "fixed" else scheme.kind


def _key_kind(key: RangeKey) -> str:
    return "fixed" if isinstance(key, int) else key


def _with_exponent(scheme: Scheme, exponent: int) -> Scheme:
    if scheme.kind == "fixed":
        return Scheme("fixed", scheme.bits, exponent)
    return Scheme(scheme.kind, scheme.bits, scale_exponent=exponent)


def _best_exponent(values: np.ndarray, scheme: Scheme, after_relu: bool) -> int:
    """The exponent with the least squared error between the quantized and the reference's
    outputs: I in [MIN_INTEGER_BITS, M - 1] for ``fixed(M)``, c in [MIN_SCALE_EXPONENT,
    MAX_SCALE_EXPONENT] for a 2^c scale. Ties go to the wider fixed range (it clips less on
    inputs the samples did not cover) and to the scale nearest qkeras' 1. A layer whose outputs
    are all 0 keeps qkeras' scale of 1: any scale fits it, or the least does (a binary's ±2^c),
    and a scale of 2^-16 or 2^16 would stall or blow up once QAT wakes the layer.

    Every exponent is tried: the error is not unimodal in I, and the best range may clip (low
    widths) or sit above the peak (a grid's top is one step below 2^I).

    After a ReLU the quantizer replaces the ReLU and sees the pre-activation, which the outputs
    no longer hold where they are 0; a negative stand-in takes its place there (every
    quantizer after a ReLU maps all of x <= 0 alike, except a step's x = 0, which a ReLU output
    of exactly 0 almost never came from)."""
    inputs = np.where(values > 0, values, np.float32(-1)) if after_relu else values
    if scheme.kind == "fixed":
        exponents = range(scheme.bits - 1, MIN_INTEGER_BITS - 1, -1)
    elif not np.any(values):
        return 0
    else:
        exponents = sorted(range(MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT + 1), key=abs)
    best, best_error = 0, math.inf
    for exponent in exponents:
        quantizer = _with_exponent(scheme, exponent).activation_quantizer(after_relu)
        error = float(np.mean((np.asarray(quantizer(inputs)) - values) ** 2)) if values.size else 0.0
        if error < best_error:
            best, best_error = exponent, error
    return best
