"""Scheme grammar, validation, and the value sets of each scheme's QKeras quantizers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from search.quantizers import (
    FLOAT32,
    INT8,
    Scheme,
    UnknownQuantizerError,
    parse_scheme,
    qkeras_custom_objects,
)

# ---------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "expected", "canonical"),
    [
        ("binary", Scheme("binary", 1), "binary"),
        ("BINARY", Scheme("binary", 1), "binary"),
        ("binary01", Scheme("binary01", 1), "binary01"),
        (" Binary01 ", Scheme("binary01", 1), "binary01"),
        ("ternary", Scheme("ternary", 2), "ternary"),
        ("po2(4)", Scheme("po2", 4), "po2(4)"),
        ("PO2( 5 )", Scheme("po2", 5), "po2(5)"),
        ("fixed(4)", Scheme("fixed", 4), "fixed(4)"),
        ("Fixed(08)", Scheme("fixed", 8), "fixed(8)"),
        ("fixed(8,3)", Scheme("fixed", 8, 3), "fixed(8,3)"),
        ("fixed( 6 , 0 )", Scheme("fixed", 6, 0), "fixed(6,0)"),
        ("float16", Scheme("float", 16), "float16"),
        ("FLOAT32", FLOAT32, "float32"),
    ],
)
def test_parse_scheme_accepts_every_form_and_canonicalises(text: str, expected: Scheme, canonical: str) -> None:
    scheme = parse_scheme(text)
    assert scheme == expected
    assert scheme.name == canonical
    assert str(scheme) == canonical
    assert parse_scheme(scheme.name) == scheme  # the canonical name round-trips


@pytest.mark.parametrize(
    "text",
    ["int8", "fixed", "fixed()", "fixed(4,2,1)", "po2", "po2()", "float8", "float64", "binary2",
     "tern", "", "fixed(-4)", "fixed(4.5)", "relu"],
)  # fmt: skip
def test_parse_scheme_rejects_unknown_names_listing_the_grammar(text: str) -> None:
    with pytest.raises(UnknownQuantizerError) as info:
        parse_scheme(text)
    message = str(info.value)
    assert repr(text) in message
    for form in ("binary", "binary01", "ternary", "po2(E)", "fixed(M)", "fixed(M,I)", "float16", "float32"):
        assert form in message


def test_parse_scheme_rejects_non_strings() -> None:
    with pytest.raises(UnknownQuantizerError, match="must be a string"):
        parse_scheme(8)  # type: ignore[arg-type]


def test_unknown_quantizer_error_is_a_value_error() -> None:
    assert issubclass(UnknownQuantizerError, ValueError)


@pytest.mark.parametrize(
    "text",
    ["fixed(2)", "fixed(32)", "fixed(4,3)", "fixed(4,0)", "fixed(4,-1)", "fixed(2,-16)", "po2(2)", "po2(8)",
     "binary(2^-16)", "binary01(2^16)", "ternary(2^0)", "ternary(2^-3)"],  # fmt: skip
)
def test_bit_range_limits_are_accepted(text: str) -> None:
    assert parse_scheme(text).name == text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("fixed(1)", "M must be between 2 and 32"),
        ("fixed(0)", "M must be between 2 and 32"),
        ("fixed(33)", "M must be between 2 and 32"),
        ("po2(1)", "E must be between 2 and 8"),
        ("po2(9)", "E must be between 2 and 8"),
        ("fixed(4,4)", "I must be between -16 and M-1"),
        ("fixed(4,9)", "I must be between -16 and M-1"),
        ("fixed(4,-17)", "I must be between -16 and M-1"),
        ("ternary(2^-17)", "c must be between -16 and 16"),
        ("binary(2^17)", "c must be between -16 and 16"),
    ],
)
def test_bit_range_validation(text: str, fragment: str) -> None:
    with pytest.raises(UnknownQuantizerError, match=fragment):
        parse_scheme(text)


def test_float_widths_other_than_16_and_32_are_refused() -> None:
    with pytest.raises(UnknownQuantizerError, match="only float16 and float32"):
        Scheme("float", 8)


@pytest.mark.parametrize(
    "args",
    [("binary", 3), ("ternary", 8), ("po2", 4, 2), ("float", 16, 3), ("int", 4),
     ("fixed", 4, None, -2), ("po2", 4, None, 1), ("float", 32, None, 0)],  # fmt: skip
)
def test_scheme_constructor_refuses_what_its_name_cannot_express(args: tuple) -> None:
    with pytest.raises(UnknownQuantizerError):
        Scheme(*args)


@pytest.mark.parametrize(
    ("text", "bits", "lowers_to_int8", "int8_exact", "bit_tuple"),
    [
        ("binary", 1, True, True, (1, 0, 0)),
        ("binary01", 1, True, True, (0, 0, 1)),
        ("ternary", 2, True, True, (-1, 0, 1)),
        ("po2(4)", 4, True, False, (1, 3, 0)),
        ("fixed(4)", 4, True, False, (1, 0, 3)),
        ("fixed(8)", 8, True, False, (1, 0, 7)),
        ("fixed(16)", 16, False, False, (1, 0, 15)),
        ("float16", 16, False, False, (1, 5, 10)),
        ("float32", 32, False, False, (1, 8, 23)),
    ],
)
def test_bits_int8_lowering_and_document_bit_tuples(
    text: str, bits: int, lowers_to_int8: bool, int8_exact: bool, bit_tuple: tuple
) -> None:
    scheme = parse_scheme(text)
    assert scheme.bits == bits
    assert scheme.lowers_to_int8 is lowers_to_int8
    assert scheme.int8_exact is int8_exact
    assert scheme.bit_tuple() == bit_tuple
    assert scheme.is_float is text.startswith("float")


def test_int8_constant_is_fixed8() -> None:
    assert parse_scheme("fixed(8)") == INT8
    assert parse_scheme("float32") == FLOAT32


# ---------------------------------------------------------------- quantizer value sets


def _kernel(seed: int = 0) -> np.ndarray:
    """A conv kernel (3, 3, 4, 6) whose channels have very different magnitudes."""
    rng = np.random.default_rng(seed)
    scale = np.array([0.01, 0.1, 0.5, 1.0, 3.0, 20.0], dtype="float32")
    return (rng.normal(size=(3, 3, 4, 6)) * scale).astype("float32")


def _quantize_kernel(text: str) -> np.ndarray:
    quantizer = parse_scheme(text).weight_quantizer()
    assert quantizer is not None
    return np.asarray(quantizer(tf.constant(_kernel())))


def _channels(values: np.ndarray) -> list[np.ndarray]:
    return [np.unique(values[..., c]) for c in range(values.shape[-1])]


def _is_power_of_two(value: float) -> bool:
    exponent = math.log2(abs(value))
    return value != 0 and exponent == round(exponent)


def test_binary_kernel_is_plus_minus_a_power_of_two_scale_per_channel() -> None:
    for levels in _channels(_quantize_kernel("binary")):
        assert len(levels) == 2
        assert levels[0] == -levels[1]
        assert _is_power_of_two(float(levels[1]))


def test_binary01_kernel_is_zero_or_a_power_of_two_scale_per_channel() -> None:
    for levels in _channels(_quantize_kernel("binary01")):
        nonzero = levels[levels != 0]
        assert len(nonzero) == 1 and nonzero[0] > 0
        assert _is_power_of_two(float(nonzero[0]))
        assert set(levels.tolist()) <= {0.0, float(nonzero[0])}


def test_ternary_kernel_is_minus_zero_plus_a_power_of_two_scale_per_channel() -> None:
    for levels in _channels(_quantize_kernel("ternary")):
        scale = float(np.max(np.abs(levels)))
        assert _is_power_of_two(scale)
        assert set(levels.tolist()) <= {-scale, 0.0, scale}


@pytest.mark.parametrize("exponent_bits", [2, 3, 4])
def test_po2_kernel_values_are_signed_powers_of_two(exponent_bits: int) -> None:
    values = _quantize_kernel(f"po2({exponent_bits})")
    assert all(_is_power_of_two(float(v)) for v in np.unique(values))
    # sign + (E-1)-bit exponent: at most 2^(E-1) magnitudes, 2^E values
    assert len(np.unique(np.abs(values))) <= 2 ** (exponent_bits - 1)
    assert len(np.unique(values)) <= 2**exponent_bits


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_fixed_kernel_has_at_most_2_pow_m_levels_per_channel(bits: int) -> None:
    values = _quantize_kernel(f"fixed({bits})")
    levels = _channels(values)
    assert all(len(channel) <= 2**bits for channel in levels)
    assert any(len(channel) > 2 for channel in levels)  # it is a grid, not a sign function
    assert not np.array_equal(values, _kernel())  # and it does quantize


def test_float_schemes_have_no_quantizers() -> None:
    for text in ("float16", "float32"):
        scheme = parse_scheme(text)
        assert scheme.weight_quantizer() is None
        assert scheme.bias_quantizer() is None
        assert scheme.activation_quantizer(True) is None
        assert scheme.activation_quantizer(False) is None


@pytest.mark.parametrize(
    ("text", "allowed"),
    [("binary", {-1.0, 1.0}), ("binary01", {0.0, 1.0}), ("ternary", {-1.0, 0.0, 1.0})],
)
def test_bias_quantizers_have_unit_scale(text: str, allowed: set[float]) -> None:
    bias = np.random.default_rng(0).normal(0.0, 2.0, 50).astype("float32")
    values = np.asarray(parse_scheme(text).bias_quantizer()(tf.constant(bias)))
    assert set(np.unique(values).tolist()) <= allowed


_ACTIVATION_INPUT = np.linspace(-6.0, 6.0, 97).astype("float32")


@pytest.mark.parametrize(
    "text",
    [
        "binary",
        "binary01",
        "ternary",
        "po2(4)",
        "fixed(2)",
        "fixed(4)",
        "fixed(8)",
    ],
)
def test_activation_quantizer_after_relu_is_never_negative(text: str) -> None:
    quantizer = parse_scheme(text).activation_quantizer(after_relu=True)
    values = np.asarray(quantizer(tf.constant(_ACTIVATION_INPUT)))
    assert values.min() >= 0.0


@pytest.mark.parametrize("bits", [2, 4, 6, 8])
@pytest.mark.parametrize("after_relu", [True, False])
def test_fixed_activation_has_at_most_2_pow_m_levels(bits: int, after_relu: bool) -> None:
    quantizer = parse_scheme(f"fixed({bits})").activation_quantizer(after_relu)
    values = np.asarray(quantizer(tf.constant(np.linspace(-100, 100, 4001).astype("float32"))))
    levels = len(np.unique(values))
    assert 2 < levels <= 2**bits
    assert bool(values.min() < 0) == (not after_relu)


@pytest.mark.parametrize("integer", [2, 0, -1, -3])
@pytest.mark.parametrize("after_relu", [True, False])
def test_fixed_activation_grid_tops_at_2_pow_i_with_step_2_pow_i_minus_m(integer: int, after_relu: bool) -> None:
    """fixed(M,I): a ReLU output spans [0, 2^I) in steps 2^(I-M); a signed one spends a bit on
    the sign. Negative I (ranges below 1/2, as calibration picks) included."""
    bits = 4
    quantizer = Scheme("fixed", bits, integer).activation_quantizer(after_relu)
    values = np.unique(np.asarray(quantizer(tf.constant(np.linspace(-40, 40, 80001).astype("float32")))))
    step = 2.0 ** (integer - bits + (0 if after_relu else 1))
    assert values.max() == pytest.approx(2.0**integer - step)
    assert np.diff(values) == pytest.approx(np.full(len(values) - 1, step))
    assert values.min() == pytest.approx(0.0 if after_relu else -(2.0**integer))


@pytest.mark.parametrize("bits", [31, 32])
@pytest.mark.parametrize("after_relu", [True, False])
def test_31_and_32_bit_fixed_activations_are_exact_to_float32(bits: int, after_relu: bool) -> None:
    """qkeras' quantized_relu overflows 2**31 in int32 and wraps 2**32 to 0 (NaN for every input)."""
    inputs = np.linspace(-3, 3, 6001).astype("float32")
    quantizer = Scheme("fixed", bits, 2).activation_quantizer(after_relu)
    values = np.asarray(quantizer(tf.constant(inputs)))
    assert np.all(np.isfinite(values))
    expected = np.maximum(inputs, 0.0) if after_relu else inputs
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert values.max() <= 3.0 and values.min() >= (0.0 if after_relu else -3.0)


def test_scaled_grammar_tolerates_spaces_and_a_plus_sign_and_names_itself_canonically() -> None:
    assert parse_scheme(" Ternary( 2 ^ +2 ) ") == Scheme("ternary", 2, scale_exponent=2)
    assert parse_scheme("binary01(2^-3)").name == "binary01(2^-3)"
    assert parse_scheme("binary01(2^-3)") != parse_scheme("binary01")  # a different candidate
    with pytest.raises(UnknownQuantizerError, match=r"ternary\(2\^-3\)"):
        parse_scheme("ternary(-3)")  # the bare exponent is not the grammar: 2^c is spelled out


@pytest.mark.parametrize(
    ("text", "after_relu", "levels"),
    [
        ("binary(2^-2)", False, [-0.25, 0.25]),
        ("binary(2^-2)", True, [0.0, 0.25]),
        ("binary01(2^1)", False, [0.0, 2.0]),
        ("ternary(2^-3)", False, [-0.125, 0.0, 0.125]),
        ("ternary(2^-3)", True, [0.0, 0.125]),
        ("ternary", False, [-1.0, 0.0, 1.0]),
        ("binary01", True, [0.0, 1.0]),
    ],
)
def test_scaled_activation_levels_are_the_fixed_scale(text: str, after_relu: bool, levels: list[float]) -> None:
    quantizer = parse_scheme(text).activation_quantizer(after_relu)
    values = np.asarray(quantizer(tf.constant(np.linspace(-4, 4, 8001).astype("float32"))))
    assert sorted(np.unique(values).tolist()) == levels


@pytest.mark.parametrize(
    ("text", "after_relu", "expected"),
    [
        ("ternary(2^-2)", False, [-0.25, -0.25, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25]),
        ("ternary(2^-2)", True, [0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25]),
        ("binary(2^-2)", True, [0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25]),
        ("binary01(2^-2)", False, [0.0, 0.0, 0.0, 0.0, 0.0, 0.25, 0.25, 0.25]),
        ("binary(2^-2)", False, [-0.25, -0.25, -0.25, 0.25, 0.25, 0.25, 0.25, 0.25]),
    ],
)
def test_fixed_scale_activations_round_to_the_nearest_level(text: str, after_relu: bool, expected: list) -> None:
    """A dead band of half the scale (qkeras' ternary threshold, 0.33, and its binary's step at
    0, which sends 0.001 to the scale, suit scale 1 only)."""
    inputs = np.array([-0.2, -0.13, -0.12, 0.0, 0.12, 0.13, 0.2, 9.0], "float32")
    values = np.asarray(parse_scheme(text).activation_quantizer(after_relu)(tf.constant(inputs)))
    assert values.tolist() == expected


@pytest.mark.parametrize(
    ("text", "after_relu", "expected"),
    [
        ("ternary", False, [-1.0, 0.0, 0.0, 0.0, 1.0, 1.0]),  # qkeras' threshold 0.33
        ("ternary", True, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]),  # a step at 0: the ReLU's {0, 1} half
        ("binary", True, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
        ("binary01", False, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0]),
        ("binary", False, [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_unscaled_activations_keep_qkeras_own_quantizers(text: str, after_relu: bool, expected: list) -> None:
    """What the harness trained before scales were calibrated; `activation_range = "half"` keeps it."""
    inputs = np.array([-0.5, -0.1, 0.0, 0.1, 0.34, 0.5], "float32")
    quantizer = parse_scheme(text).activation_quantizer(after_relu)
    assert np.asarray(quantizer(tf.constant(inputs))).tolist() == expected
    assert quantizer.get_config()["alpha"] == 1  # as qkeras is given it, saved in every .keras


def test_fixed_scale_replaces_the_learned_per_channel_scale_of_a_kernel() -> None:
    kernel = tf.constant(np.random.default_rng(0).normal(0, 3, (3, 3, 4, 8)).astype("float32"))
    learned = np.abs(np.asarray(parse_scheme("binary").weight_quantizer()(kernel)))
    fixed = np.asarray(parse_scheme("binary(2^-1)").weight_quantizer()(kernel))
    assert np.unique(np.abs(fixed)).tolist() == [0.5]
    assert not np.allclose(learned, 0.5)  # the learned scale follows the weights' magnitude


def test_qkeras_custom_objects_names_the_layers_and_quantizers_the_builder_uses() -> None:
    objects = qkeras_custom_objects()
    for name in ("QConv1D", "QConv2D", "QDepthwiseConv2D", "QSeparableConv2D", "QDense",
                 "binary", "ternary", "quantized_bits", "quantized_po2", "quantized_relu"):  # fmt: skip
        assert name in objects, name
