"""search.activation_ranges: least-squared-error fixed-point ranges and binary/ternary scales
from the reference."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from search.activation_ranges import ActivationRanges, _best_exponent, calibrate
from search.candidate import CandidateSpec, LayerChoice
from search.quantizers import MAX_SCALE_EXPONENT, MIN_INTEGER_BITS, MIN_SCALE_EXPONENT, Scheme, parse_scheme
from search.space import build_space
from search.space_options import SpaceOptions

L = keras.layers
WIDTHS = (2, 4, 8)


def _scaled_model() -> keras.Model:
    """``small`` (ReLU) outputs stay below ~0.3, ``large`` (linear) spans about +-2."""
    inputs = keras.Input((16,), name="input")
    small = L.Dense(8, activation="relu", name="small")(inputs)
    large = L.Dense(8, name="large")(small)
    outputs = L.Dense(3, activation="softmax", name="out")(large)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    model.get_layer("small").set_weights([rng.normal(0, 0.02, (16, 8)), np.zeros(8)])
    model.get_layer("large").set_weights([rng.normal(0, 6.0, (8, 8)), np.zeros(8)])
    model.get_layer("out").set_weights([rng.normal(0, 0.1, (8, 3)), np.zeros(3)])
    return model


def _space(model: keras.Model, activation: tuple[str, ...] = tuple(f"fixed({m})" for m in WIDTHS)):
    return build_space(model, SpaceOptions(kernel=("fixed(8)",), bias=("float32",), activation=activation))


def _samples() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (256, 16)).astype("float32")


def _outputs(model: keras.Model, name: str) -> np.ndarray:
    probe = keras.Model(model.inputs, model.get_layer(name).output)
    return np.asarray(probe.predict(_samples(), verbose=0)).ravel()


def _pre_activation(model: keras.Model, name: str) -> np.ndarray:
    """What a quantizer that replaces the layer's ReLU sees (the ReLU's input)."""
    layer = model.get_layer(name)
    kernel, bias = layer.get_weights()
    probe = keras.Model(model.inputs, layer.input)
    return (np.asarray(probe.predict(_samples(), verbose=0)) @ kernel + bias).ravel().astype("float32")


def _error(values: np.ndarray, width: int, integer: int, after_relu: bool) -> float:
    quantizer = Scheme("fixed", width, integer).activation_quantizer(after_relu)
    return float(np.mean((np.asarray(quantizer(values)) - values) ** 2))


@pytest.fixture(scope="module")
def calibrated() -> tuple[keras.Model, ActivationRanges]:
    model = _scaled_model()
    return model, calibrate(model, _space(model), _samples())


def test_each_width_gets_the_range_with_the_least_error_over_every_allowed_range(calibrated) -> None:
    model, ranges = calibrated
    for name, after_relu in (("small", True), ("large", False)):
        values = _outputs(model, name)
        for width in WIDTHS:
            errors = {i: _error(values, width, i, after_relu) for i in range(MIN_INTEGER_BITS, width)}
            chosen = ranges.bits[name][width]
            assert errors[chosen] == pytest.approx(min(errors.values())), (name, width, chosen)


def test_ranges_follow_the_layers_values_and_beat_the_half_width_default(calibrated) -> None:
    model, ranges = calibrated
    assert ranges.bits["small"][4] < 0 < ranges.bits["large"][4]  # below 1/2 vs several units
    for name, after_relu in (("small", True), ("large", False)):
        values = _outputs(model, name)
        for width in WIDTHS:
            default = _error(values, width, width // 2, after_relu)
            assert _error(values, width, ranges.bits[name][width], after_relu) < default, (name, width)


def test_the_output_layer_po2_and_the_users_own_ranges_are_not_calibrated() -> None:
    model = _scaled_model()
    space = _space(model, activation=("fixed(4)", "fixed(6,2)", "binary", "po2(4)", "float32"))
    ranges = calibrate(model, space, _samples())
    assert set(ranges.bits) == {"small", "large"}  # "out" feeds the softmax: float only
    # fixed(6,2) is the user's; po2's exponent range cannot move
    assert all(set(keys) == {4, "binary"} for keys in ranges.bits.values())


def _scaled_levels(kind: str, pre: np.ndarray, c: int, after_relu: bool) -> np.ndarray:
    """What a 2^c-scaled activation should output, written out in numpy (not through qkeras):
    the nearest level, a ReLU's output having only the {0, 2^c} half."""
    scale, half = 2.0**c, 2.0 ** (c - 1)
    if after_relu or kind == "binary01":
        return np.where(pre >= half, scale, 0.0)
    if kind == "binary":
        return np.where(pre >= 0, scale, -scale)
    return np.sign(pre) * np.where(np.abs(pre) >= half, scale, 0.0)


@pytest.mark.parametrize("kind", ["binary", "binary01", "ternary"])
def test_binary_kinds_get_the_scale_with_the_least_error_judged_on_the_pre_activation(kind: str) -> None:
    model = _scaled_model()
    ranges = calibrate(model, _space(model, activation=(kind, "fixed(4)")), _samples())
    for name, after_relu in (("small", True), ("large", False)):
        pre = _pre_activation(model, name)
        target = np.maximum(pre, 0) if after_relu else pre
        errors = {}
        for c in range(MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT + 1):
            errors[c] = float(np.mean((_scaled_levels(kind, pre, c, after_relu) - target) ** 2))
        chosen = ranges.bits[name][kind]
        assert errors[chosen] == pytest.approx(min(errors.values())), (name, chosen)
    # "small" outputs average 0.04 where positive: qkeras' own scale of 1 fits it badly
    assert ranges.bits["small"][kind] < min(0, ranges.bits["large"][kind])


def test_resolve_sets_uncalibrated_activations_and_keeps_everything_else() -> None:
    ranges = ActivationRanges({"a": {4: -1, 8: 2}, "b": {4: 1, "ternary": 3}, "d": {"ternary": -2}})
    f8, binary = parse_scheme("fixed(8)"), parse_scheme("binary")
    spec = CandidateSpec(
        (
            ("a", LayerChoice(f8, f8, parse_scheme("fixed(4)"), 3)),
            ("b", LayerChoice(binary, f8, parse_scheme("fixed(4,3)"), 5)),
            ("c", LayerChoice(f8, f8, parse_scheme("fixed(4)"), 2)),
            ("d", LayerChoice(parse_scheme("ternary"), f8, parse_scheme("ternary"), 2)),
            ("e", LayerChoice(f8, f8, parse_scheme("ternary(2^1)"), 2)),
        ),
        label="int8",
    )
    resolved = ranges.resolve(spec)
    assert resolved.label == "int8"
    assert resolved["a"] == LayerChoice(f8, f8, Scheme("fixed", 4, -1), 3)
    assert resolved["b"] == spec["b"]  # the user's own fixed(M,I) wins
    assert resolved["c"] == spec["c"]  # not calibrated: left as it was
    # the activation gets its scale; a ternary kernel keeps its learned per-channel one
    assert resolved["d"] == LayerChoice(parse_scheme("ternary"), f8, parse_scheme("ternary(2^-2)"), 2)
    assert resolved["e"] == spec["e"]  # the user's own scale wins
    assert resolved.key != spec.key  # a different grid is a different candidate
    assert ActivationRanges().resolve(spec) == spec


def _least_error(values: np.ndarray, width: int, after_relu: bool) -> float:
    return min(_error(values, width, i, after_relu) for i in range(MIN_INTEGER_BITS, width))


@pytest.mark.parametrize(
    ("values", "after_relu", "width"),
    [
        (np.ones(64), True, 4),  # a peak at exactly 2^0: the grid at I = 0 stops one step short
        (np.full(64, 0.99), True, 2),
        (np.concatenate([np.random.default_rng(2).normal(0, 0.01, 2000), [2.0, -2.0]]), False, 4),
        (np.random.default_rng(3).laplace(0, 0.05, 4000), False, 2),  # the best range clips
        (np.random.default_rng(4).exponential(3e-4, 4000), True, 8),  # tiny values: negative I
        (np.random.default_rng(5).exponential(0.5, 4000), True, 32),  # 2**32 wrapped in qkeras' int32
    ],
    ids=["ones", "just-below-one", "signed-power-of-two-peak", "laplace-2-bit", "tiny", "32-bit"],
)
def test_best_range_is_found_where_the_peak_gives_no_hint(values, after_relu: bool, width: int) -> None:
    values = values.astype("float32")
    chosen = _best_exponent(values, Scheme("fixed", width), after_relu)
    assert _error(values, width, chosen, after_relu) == pytest.approx(_least_error(values, width, after_relu))
    assert np.isfinite(_least_error(values, width, after_relu))


def test_all_zero_outputs_get_a_range_and_non_finite_outputs_name_the_layer() -> None:
    from search.activation_ranges import ActivationRangeError

    zeros = np.zeros(16, "float32")
    assert MIN_INTEGER_BITS <= _best_exponent(zeros, Scheme("fixed", 4), True) < 4
    for kind, bits in (("binary", 1), ("binary01", 1), ("ternary", 2)):
        for after_relu in (True, False):  # not 2^16 or 2^-16: a dead layer may wake
            assert _best_exponent(zeros, Scheme(kind, bits), after_relu) == 0, (kind, after_relu)
    model = _scaled_model()
    weights = model.get_layer("large").get_weights()
    model.get_layer("large").set_weights([weights[0] * np.inf, weights[1]])
    with pytest.raises(ActivationRangeError, match="layer 'large' of the reference outputs NaN or infinity"):
        calibrate(model, _space(model), _samples())


def test_ranges_round_trip_through_their_study_attribute_form() -> None:
    ranges = ActivationRanges({"a": {4: -1, 8: 2, "ternary": -3}})
    assert ranges.to_dict() == {"a": {"4": -1, "8": 2, "ternary": -3}}
    assert ActivationRanges.from_dict(ranges.to_dict()) == ranges
    assert ranges.without_kinds({"binary", "ternary"}) == ActivationRanges({"a": {4: -1, 8: 2}})
    assert ranges.without_kinds({"fixed"}) == ActivationRanges({"a": {"ternary": -3}})
