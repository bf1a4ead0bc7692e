"""Cost estimates: MACs, BOPs, parameter bits, input-bit tracing, the energy table, memory,
monotonicity, document 000's example model, and agreement with QKeras QTools."""

from __future__ import annotations

import math
from itertools import pairwise

import keras
import pytest

from search.candidate import CandidateSpec, LayerChoice
from search.energy_table import (
    DRAM_PJ_PER_BIT,
    FIXED_ADD_PJ_PER_BIT,
    FP16_ADD_PJ,
    FP16_MUL_PJ,
    FP32_ADD_PJ,
    FP32_MUL_PJ,
    mac_unit,
    sram_word_pj,
)
from search.estimates import EnergyModel, Estimate, EstimateError, LayerEstimate, estimate
from search.quantizers import Scheme, parse_scheme

L = keras.layers


def choice(kernel: str = "fixed(8)", bias: str = "fixed(8)", act: str = "fixed(8)",
           size: int | None = None) -> LayerChoice:
    return LayerChoice(parse_scheme(kernel), parse_scheme(bias), parse_scheme(act), size)


def spec(**layers: LayerChoice) -> CandidateSpec:
    return CandidateSpec.from_mapping(layers)


def one_layer(input_shape: tuple[int, ...], layer: keras.layers.Layer) -> keras.Model:
    inp = keras.Input(input_shape)
    return keras.Model(inp, layer(inp))


def run(model: keras.Model, candidate: CandidateSpec, **kwargs: object) -> Estimate:
    return estimate(model, candidate, **kwargs)  # type: ignore[arg-type]


def layer_of(result: Estimate, name: str) -> LayerEstimate:
    return next(e for e in result.layers if e.name == name)


def add_pj(bits: float) -> float:
    return 0.003125 * bits


def mul_pj(bits: float) -> float:
    return 0.002994791667 * bits**2 + 0.001041666667 * bits


# --- MAC counts on hand-checked shapes ----------------------------------------------------

MAC_CASES = [
    # Conv2D 10x10x3 -> 8x8x8, 3x3 kernel: Ho·Wo·Co·kh·kw·Ci = 8·8·8·3·3·3
    ("conv", (10, 10, 3), lambda: L.Conv2D(8, 3, name="x"), 8 * 8 * 8 * 3 * 3 * 3),
    # stride 2, same padding: 5x5 outputs
    ("conv_s2", (10, 10, 3), lambda: L.Conv2D(8, 3, strides=2, padding="same", name="x"),
     5 * 5 * 8 * 27),
    # groups=2: each filter sees Ci/2 channels
    ("conv_groups", (6, 6, 4), lambda: L.Conv2D(6, 3, groups=2, name="x"), 4 * 4 * 6 * 9 * 2),
    # Conv1D 20x4 -> 16x6, k=5: Lo·Co·k·Ci
    ("conv1d", (20, 4), lambda: L.Conv1D(6, 5, name="x"), 16 * 6 * 5 * 4),
    # Depthwise 10x10x8, mult 2: Ho·Wo·Ci·kh·kw·mult
    ("depthwise", (10, 10, 8), lambda: L.DepthwiseConv2D(3, depth_multiplier=2, name="x"),
     8 * 8 * 8 * 9 * 2),
    # Separable 6x6x16 -> 4x4x5, mult 2: depthwise 4·4·16·9·2 + pointwise 4·4·32·5
    ("separable", (6, 6, 16), lambda: L.SeparableConv2D(5, 3, depth_multiplier=2, name="x"),
     4 * 4 * 16 * 9 * 2 + 4 * 4 * 32 * 5),
    ("dense", (12,), lambda: L.Dense(7, name="x"), 12 * 7),
    # Dense on a (3, 12) input: applied at each of the 3 leading positions
    ("dense_leading", (3, 12), lambda: L.Dense(7, name="x"), 3 * 12 * 7),
]


@pytest.mark.parametrize(
    ("case", "shape", "make", "macs"), MAC_CASES, ids=[c[0] for c in MAC_CASES]
)
def test_macs_keras_layers(case: str, shape: tuple[int, ...], make, macs: int) -> None:
    result = run(one_layer(shape, make()), spec(x=choice()))
    assert result.macs == macs
    assert layer_of(result, "x").macs == macs


def test_macs_qkeras_layers_match_keras_layers() -> None:
    from qkeras import QConv1D, QConv2D, QDense, QDepthwiseConv2D, QSeparableConv2D

    q = "quantized_bits(4,0,1)"
    cases = [
        ((10, 10, 3), QConv2D(8, 3, kernel_quantizer=q, bias_quantizer=q, name="x"), 13824),
        ((20, 4), QConv1D(6, 5, kernel_quantizer=q, bias_quantizer=q, name="x"), 1920),
        ((10, 10, 8), QDepthwiseConv2D(3, depth_multiplier=2, name="x"), 9216),
        ((6, 6, 16), QSeparableConv2D(5, 3, depth_multiplier=2, name="x"), 7168),
        ((12,), QDense(7, kernel_quantizer=q, bias_quantizer=q, name="x"), 84),
    ]
    for shape, layer, macs in cases:
        result = run(one_layer(shape, layer), spec(x=choice("fixed(4)")))
        assert result.macs == macs, type(layer).__name__
        # The scheme comes from the spec, not from the layer's own quantizer.
        assert layer_of(result, "x").weight_bits == 4


# --- BOPs and parameter bits --------------------------------------------------------------

def test_bops_are_macs_times_weight_bits_times_input_bits() -> None:
    model = one_layer((12,), L.Dense(7, name="x"))
    result = run(model, spec(x=choice("fixed(4)")), input_scheme=parse_scheme("fixed(6)"))
    assert result.bops == 84 * 4 * 6
    float_result = run(model, spec(x=choice("float32")), input_scheme=parse_scheme("float16"))
    assert float_result.bops == 84 * 32 * 16


def test_param_bits_with_and_without_bias() -> None:
    with_bias = run(one_layer((12,), L.Dense(7, name="x")), spec(x=choice("fixed(4)", "fixed(16)")))
    assert (with_bias.param_count, with_bias.param_bits) == (91, 84 * 4 + 7 * 16)
    assert with_bias.model_bytes == (84 * 4 + 7 * 16) // 8
    no_bias = run(one_layer((12,), L.Dense(7, use_bias=False, name="x")),
                  spec(x=choice("fixed(4)", "fixed(16)")))
    assert (no_bias.param_count, no_bias.param_bits) == (84, 84 * 4)


def test_model_bytes_round_up_and_separable_counts_both_kernels() -> None:
    tiny = run(one_layer((3,), L.Dense(1, name="x")), spec(x=choice("ternary", "fixed(3)")))
    assert tiny.param_bits == 3 * 2 + 1 * 3
    assert tiny.model_bytes == 2  # ceil(9 / 8)
    sep = run(one_layer((6, 6, 16), L.SeparableConv2D(5, 3, depth_multiplier=2, name="x")),
              spec(x=choice("fixed(2)", "fixed(8)")))
    assert sep.param_count == 3 * 3 * 16 * 2 + 32 * 5 + 5
    assert sep.param_bits == (3 * 3 * 16 * 2 + 32 * 5) * 2 + 5 * 8


# --- Input bits traced through the graph ---------------------------------------------------

def test_input_bits_pass_through_pooling_batchnorm_and_flatten() -> None:
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, name="c1")(inp)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.BatchNormalization(name="bn")(x)
    x = L.Activation("relu", name="act")(x)
    x = L.Flatten(name="flat")(x)
    x = L.Dense(3, name="d")(x)
    model = keras.Model(inp, x)
    result = run(model, spec(c1=choice("fixed(8)", act="fixed(3)"), d=choice("fixed(5)")),
                 input_scheme=parse_scheme("fixed(6)"))
    assert layer_of(result, "c1").input_bits == 6  # the model input
    assert layer_of(result, "d").input_bits == 3  # c1's activation, through 4 layers
    assert layer_of(result, "d").bops == 3 * 3 * 4 * 3 * 5 * 3  # 36 inputs · 3 units · 5 · 3


def test_input_bits_at_merges_take_the_widest_producer() -> None:
    inp = keras.Input((6, 6, 2))
    a = L.Conv2D(4, 1, name="a")(inp)
    b = L.Conv2D(4, 1, name="b")(inp)
    added = L.Add(name="add")([a, b])
    c = L.Conv2D(4, 1, name="c")(added)
    cat = L.Concatenate(name="cat")([a, c])
    d = L.Conv2D(2, 1, name="d")(L.AveragePooling2D(2, name="avg")(cat))
    model = keras.Model(inp, d)
    candidate = spec(a=choice(act="fixed(3)"), b=choice(act="fixed(5)"),
                     c=choice(act="po2(4)"), d=choice())
    result = run(model, candidate)
    assert layer_of(result, "c").input_bits == 5
    assert layer_of(result, "d").input_bits == 4  # max(3, po2(4))
    # A tie in bits goes to the more general scheme: fixed(4) beats po2(4).
    tie = spec(a=choice(act="fixed(4)"), b=choice(act="fixed(4)"), c=choice(act="po2(4)"),
               d=choice("fixed(8)"))
    assert layer_of(run(model, tie), "d").multiplier == "fixed"


def test_sequential_model_uses_the_input_scheme_first() -> None:
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, name="d1"), L.Dense(2, name="d2")])
    result = run(model, spec(d1=choice(act="fixed(2)"), d2=choice()),
                 input_scheme=parse_scheme("fixed(7)"))
    assert [e.input_bits for e in result.layers] == [7, 2]


# --- The multiplier table -------------------------------------------------------------------

def s(name: str) -> Scheme:
    return parse_scheme(name)


MULTIPLIER_CASES = [
    # (input, weight, unit, multiply pJ, product bits)
    ("fixed(8)", "fixed(8)", "fixed", mul_pj(8), 16),
    ("fixed(8)", "fixed(2)", "fixed", mul_pj(4), 10),  # bits = sqrt(8·2) = 4
    ("fixed(8)", "po2(4)", "shift", add_pj(math.sqrt(16 * 8) * math.log10(math.sqrt(16 * 8))), 16),
    ("po2(3)", "fixed(6)", "shift", add_pj(math.sqrt(8 * 6) * math.log10(math.sqrt(8 * 6))), 10),
    ("po2(4)", "po2(3)", "add", add_pj(5), 16),
    ("fixed(8)", "binary", "mux", 0.3 * add_pj(8), 9),
    ("fixed(8)", "ternary", "mux", 0.6 * add_pj(8), 9),
    ("binary", "fixed(4)", "mux", 0.3 * add_pj(4), 5),
    ("ternary", "po2(4)", "mux", 0.6 * add_pj(4), 5),
    ("binary", "ternary", "mux", 0.6 * add_pj(1), 2),  # the weight selects
    ("binary", "binary", "xor", 0.3 * add_pj(1), 1),
    ("fixed(8)", "binary01", "and", 0.1 * add_pj(8), 8),
    ("binary01", "fixed(4)", "and", 0.1 * add_pj(4), 4),
    ("binary01", "binary", "and", 0.1 * add_pj(1), 1),
]


@pytest.mark.parametrize(("bi", "bw", "kind", "pj", "product"), MULTIPLIER_CASES,
                         ids=[f"{c[0]}x{c[1]}" for c in MULTIPLIER_CASES])
def test_multiplier_pairs(bi: str, bw: str, kind: str, pj: float, product: int) -> None:
    unit = mac_unit(s(bi), s(bw))
    assert unit.kind == kind
    assert unit.multiply_pj == pytest.approx(pj, rel=1e-9)
    assert unit.product_bits == product
    assert unit.float_bits is None


@pytest.mark.parametrize(("bi", "bw", "kind", "mul", "add"), [
    ("float32", "fixed(8)", "fp32", FP32_MUL_PJ, FP32_ADD_PJ),
    ("fixed(8)", "float16", "fp16", FP16_MUL_PJ, FP16_ADD_PJ),
    ("float16", "float32", "fp32", FP32_MUL_PJ, FP32_ADD_PJ),
    ("binary01", "float16", "fp16", FP16_MUL_PJ, FP16_ADD_PJ),  # float wins over AND
])
def test_float_pairs_use_float_units(bi: str, bw: str, kind: str, mul: float, add: float) -> None:
    unit = mac_unit(s(bi), s(bw))
    assert (unit.kind, unit.multiply_pj, unit.accumulate_pj(1000)) == (kind, mul, add)


def test_float_table_values() -> None:
    assert (FP16_ADD_PJ, FP16_MUL_PJ, FP32_ADD_PJ, FP32_MUL_PJ) == (0.4, 1.1, 0.9, 3.7)
    assert mul_pj(8) == pytest.approx(0.2, rel=1e-9)  # Horowitz: ~0.2 pJ for an 8-bit multiply


def test_accumulator_width_is_log2_fan_in_plus_product_bits() -> None:
    unit = mac_unit(s("fixed(8)"), s("fixed(8)"))
    assert unit.accumulate_pj(27) == pytest.approx(FIXED_ADD_PJ_PER_BIT * (5 + 16))
    assert unit.accumulate_pj(32) == pytest.approx(FIXED_ADD_PJ_PER_BIT * (5 + 16))
    assert unit.accumulate_pj(33) == pytest.approx(FIXED_ADD_PJ_PER_BIT * (6 + 16))
    assert unit.accumulate_pj(1) == pytest.approx(FIXED_ADD_PJ_PER_BIT * 16)
    assert mac_unit(s("binary"), s("binary")).accumulate_pj(64) == pytest.approx(
        FIXED_ADD_PJ_PER_BIT * (6 + 1))


def test_layer_compute_energy_by_hand() -> None:
    # Dense 16 -> 1, 8x8 bits: 16 MACs of (mul(8) + add(log2 16 + 16)).
    result = run(one_layer((16,), L.Dense(1, name="x")), spec(x=choice()))
    per_mac = mul_pj(8) + add_pj(4 + 16)
    assert layer_of(result, "x").multiplier == "fixed"
    assert result.energy_pj_compute == pytest.approx(16 * per_mac)
    # Conv 3x3x3: fan-in 27 -> 5 bits; binary kernel -> mux on the 8-bit input.
    conv = run(one_layer((5, 5, 3), L.Conv2D(2, 3, name="x")), spec(x=choice("binary")))
    assert layer_of(conv, "x").multiplier == "mux"
    per_mac = 0.3 * add_pj(8) + add_pj(5 + 9)
    assert conv.energy_pj_compute == pytest.approx(3 * 3 * 2 * 27 * per_mac)


def test_depthwise_and_separable_fan_in() -> None:
    dw = run(one_layer((6, 6, 8), L.DepthwiseConv2D(3, name="x")), spec(x=choice()))
    # fan-in is kh·kw = 9 (4 bits), not kh·kw·Ci
    assert dw.energy_pj_compute == pytest.approx(dw.macs * (mul_pj(8) + add_pj(4 + 16)))
    sep = run(one_layer((6, 6, 16), L.SeparableConv2D(5, 3, depth_multiplier=2, name="x")),
              spec(x=choice()))
    depthwise = 4 * 4 * 16 * 9 * 2 * (mul_pj(8) + add_pj(4 + 16))
    pointwise = 4 * 4 * 32 * 5 * (mul_pj(8) + add_pj(5 + 16))  # fan-in Ci·mult = 32
    assert sep.energy_pj_compute == pytest.approx(depthwise + pointwise)


# --- Memory ------------------------------------------------------------------------------

def test_sram_formulas_by_hand() -> None:
    doc000 = EnergyModel(sram_formula="doc000")
    qtools = EnergyModel(sram_formula="qtools")
    # 4096 bits: 64 words at L = 12
    assert doc000.memory_pj(4096, "sram") == pytest.approx(
        64 * (0.02455 * 144 - 0.2656 * 12 + 0.8661))
    assert qtools.memory_pj(4096, "sram") == pytest.approx(
        64 * (9.02427321e-4 * 1728 - 2.68847858e-2 * 144 + 2.08900804e-1 * 12))
    # 10 bits: one word, L clamped to log2(64) = 6 by the default minimum SRAM size
    assert doc000.memory_pj(10, "sram") == pytest.approx(0.02455 * 36 - 0.2656 * 6 + 0.8661)
    # A 1 Mibit minimum SRAM prices every word at L = 20: linear in bits below that size
    big = EnergyModel(min_sram_bits=2**20)
    assert big.memory_pj(6400, "sram") == pytest.approx(100 * sram_word_pj(20, "doc000"))
    assert big.memory_pj(6400, "sram") == pytest.approx(2 * big.memory_pj(3200, "sram"))


def test_dram_is_per_bit_and_dearer_than_sram() -> None:
    assert EnergyModel().memory_pj(1000, "dram") == pytest.approx(1000 * 20.3125)
    assert DRAM_PJ_PER_BIT == 20.3125
    model = one_layer((12,), L.Dense(7, name="x"))
    candidate = spec(x=choice("fixed(4)", "fixed(16)", "fixed(6)"))
    dram = EnergyModel(weights_in="dram", activations_in="dram")
    all_dram = run(model, candidate, energy_model=dram)
    bits = 84 * 4 + 7 * 16 + 12 * 8 + 7 * 6  # kernel + bias + input read + output written
    assert all_dram.energy_pj_memory == pytest.approx(bits * 20.3125)
    sram = run(model, candidate)
    weights_dram = run(model, candidate, energy_model=EnergyModel(weights_in="dram"))
    assert sram.energy_pj_memory < weights_dram.energy_pj_memory < all_dram.energy_pj_memory
    assert sram.energy_pj_compute == all_dram.energy_pj_compute
    assert sram.energy_pj == pytest.approx(sram.energy_pj_compute + sram.energy_pj_memory)


@pytest.mark.parametrize("kwargs", [
    {"process": "accelergy"}, {"sram_formula": "cubic"}, {"min_sram_bits": 0},
    {"weights_in": "flash"}, {"activations_in": "cache"},
])
def test_energy_model_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(EstimateError, match=str(next(iter(kwargs.values())))):
        EnergyModel(**kwargs)  # type: ignore[arg-type]


# --- Monotonicity -------------------------------------------------------------------------

def small_cnn(filters: int = 8) -> keras.Model:
    inp = keras.Input((12, 12, 1))
    x = L.Conv2D(filters, 3, activation="relu", name="c1")(inp)
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = L.Flatten(name="flat")(x)
    return keras.Model(inp, L.Dense(4, name="d")(x))


def uniform(kernel: str, act: str = "fixed(8)", c1_size: int | None = None) -> CandidateSpec:
    return spec(c1=choice(kernel, act=act, size=c1_size), c2=choice(kernel, act=act),
                d=choice(kernel, act="float32"))


@pytest.mark.parametrize("formula", ["doc000", "qtools"])
def test_fewer_kernel_bits_cost_less(formula: str) -> None:
    model = small_cnn()
    energy = EnergyModel(sram_formula=formula)  # type: ignore[arg-type]
    kernels = ["float32", "float16", "fixed(8)", "fixed(6)", "fixed(4)", "fixed(2)", "ternary",
               "binary"]
    results = [run(model, uniform(k), energy_model=energy) for k in kernels]
    for label, e in (("total", [r.energy_pj for r in results]),
                     ("compute", [r.energy_pj_compute for r in results])):
        assert all(a > b for a, b in pairwise(e)), (label, e)
    # fixed(2) and ternary both take 2 bits: bit counts tie where the energy does not.
    for label, n in (("bops", [r.bops for r in results]),
                     ("param_bits", [r.param_bits for r in results])):
        assert all(a >= b for a, b in pairwise(n)) and n[0] > n[-1], (label, n)


def test_fewer_activation_bits_cost_less() -> None:
    model = small_cnn()
    energies = [run(model, uniform("fixed(4)", act)).energy_pj
                for act in ("fixed(8)", "fixed(6)", "fixed(4)", "fixed(2)")]
    assert all(a > b for a, b in pairwise(energies))


def test_fewer_filters_cost_less() -> None:
    wide = run(small_cnn(16), uniform("fixed(4)", c1_size=16))
    narrow = run(small_cnn(8), uniform("fixed(4)", c1_size=8))
    assert narrow.macs < wide.macs
    assert narrow.energy_pj_compute < wide.energy_pj_compute
    assert narrow.energy_pj_memory < wide.energy_pj_memory
    assert narrow.param_bits < wide.param_bits


# --- Spec / model agreement ----------------------------------------------------------------

def test_size_mismatch_and_unknown_layers_are_refused() -> None:
    model = small_cnn(8)
    with pytest.raises(EstimateError, match="c1.*filters=8.*size 16"):
        run(model, uniform("fixed(4)", c1_size=16))
    with pytest.raises(EstimateError, match="'nope'"):
        run(model, spec(nope=choice()))
    with pytest.raises(EstimateError, match="'flat'"):
        run(model, spec(flat=choice()))


def test_layers_missing_from_the_spec_are_float32() -> None:
    result = run(small_cnn(), spec(c1=choice("fixed(4)")))
    assert [e.multiplier for e in result.layers] == ["fixed", "fp32", "fp32"]
    assert layer_of(result, "c2").input_bits == 8  # c1's fixed(8) activation
    assert layer_of(result, "d").input_bits == 32


def test_to_dict_has_flat_totals_only() -> None:
    result = run(small_cnn(), uniform("fixed(4)"))
    row = result.to_dict()
    assert set(row) == {"macs", "param_count", "param_bits", "bops", "model_bytes",
                        "energy_pj", "energy_pj_compute", "energy_pj_memory"}
    assert row["energy_pj"] == result.energy_pj
    assert row["macs"] == sum(e.macs for e in result.layers)


# --- Document 000's worked example ---------------------------------------------------------

def doc000_model() -> keras.Model:
    """conv 16 -> conv 32 -> conv 64 -> dense 10 (ReLU, softmax), on 28x28x1 inputs."""
    inp = keras.Input((28, 28, 1))
    x = L.Conv2D(16, 3, activation="relu", name="conv1")(inp)
    x = L.MaxPooling2D(name="pool1")(x)
    x = L.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(name="pool2")(x)
    x = L.Conv2D(64, 3, activation="relu", name="conv3")(x)
    x = L.Flatten(name="flatten")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax", name="dense")(x))


def test_document_000_example_int8_is_finite_and_binary_kernels_are_cheaper() -> None:
    model = doc000_model()
    int8 = spec(conv1=choice(), conv2=choice(), conv3=choice(), dense=choice(act="float32"))
    binary = spec(conv1=choice("binary"), conv2=choice("binary"), conv3=choice("binary"),
                  dense=choice("binary", act="float32"))
    reference = spec(**{n: choice("float32", "float32", "float32")
                        for n in ("conv1", "conv2", "conv3", "dense")})
    e8, eb, ef = run(model, int8), run(model, binary), run(model, reference)
    assert math.isfinite(e8.energy_pj) and e8.energy_pj > 0
    assert e8.macs == 26 * 26 * 16 * 9 + 11 * 11 * 32 * 9 * 16 + 3 * 3 * 64 * 9 * 32 + 576 * 10
    assert eb.energy_pj < e8.energy_pj < ef.energy_pj
    assert eb.energy_pj_compute < e8.energy_pj_compute < ef.energy_pj_compute
    assert [e.multiplier for e in eb.layers] == ["mux"] * 4
    assert [e.multiplier for e in e8.layers] == ["fixed"] * 4


# --- Agreement with QKeras QTools ----------------------------------------------------------

def qtools_model(kernel_quantizer: str, use_bias: bool = True) -> keras.Model:
    """Fixed-alpha quantizers everywhere: QTools' "auto_po2" path raises on Keras 3."""
    from qkeras import QActivation, QConv2D, QDense

    bias = "quantized_bits(8,0,alpha=1)"
    inp = keras.Input((8, 8, 1))
    x = QConv2D(4, 3, kernel_quantizer=kernel_quantizer, bias_quantizer=bias,
                use_bias=use_bias, name="c1")(inp)
    x = QActivation("quantized_relu(8,0)", name="a1")(x)
    x = L.Flatten(name="flat")(x)
    x = QDense(10, kernel_quantizer=kernel_quantizer, bias_quantizer=bias, use_bias=use_bias,
               name="d")(x)
    return keras.Model(inp, QActivation("quantized_bits(8,0,alpha=1)", name="a2")(x))


def test_compute_energy_agrees_with_qtools() -> None:
    """Same table, same multiplier choices: per-layer MAC energy equals QTools' op_cost (to
    its 2-decimal rounding) without a bias, and is exactly one accumulator bit per MAC lower
    with one (QTools widens the accumulator by a bit to add the bias; we count
    ceil(log2(fan-in)) + product bits, method.md §1). The same ordering across kernels."""
    pytest.importorskip("qkeras.qtools")
    from qkeras import quantized_relu
    from qkeras.qtools import run_qtools

    kernels = {"fixed(8)": "quantized_bits(8,0,alpha=1)", "fixed(4)": "quantized_bits(4,0,alpha=1)",
               "ternary": "ternary(alpha=1)", "binary": "binary(alpha=1)"}
    qt_params = EnergyModel(sram_formula="qtools", min_sram_bits=64)
    ours: dict[tuple[str, bool], float] = {}
    theirs: dict[tuple[str, bool], float] = {}
    for use_bias in (True, False):
        for scheme, quantizer in kernels.items():
            model = qtools_model(quantizer, use_bias)
            qt = run_qtools.QTools(
                model, process="horowitz", source_quantizers=[quantized_relu(8, 0)],
                is_inference=False, weights_path=None, keras_quantizer="fp32",
                keras_accumulator="fp32", for_reference=False,
            )
            qt_energy = qt.pe(weights_on_memory="sram", activations_on_memory="sram",
                              min_sram_size=64, rd_wr_on_io=False)
            candidate = spec(c1=choice(scheme), d=choice(scheme))
            result = run(model, candidate, energy_model=qt_params)
            for layer in result.layers:
                their = qt_energy[layer.name]["energy"]
                guard_bit_pj = layer.macs * FIXED_ADD_PJ_PER_BIT if use_bias else 0.0
                assert their["op_cost"] - layer.energy_pj_compute == pytest.approx(
                    guard_bit_pj, abs=0.006), (scheme, use_bias, layer.name)
                # The same SRAM formula prices the same reads identically.
                kernel_bits = layer.param_bits - (10 if layer.name == "d" else 4) * 8 * use_bias
                params = qt_params.memory_pj(kernel_bits, "sram")
                params += qt_params.memory_pj(layer.param_bits - kernel_bits, "sram")
                assert params == pytest.approx(their["parameters"], abs=0.006)
                input_bits = (64 if layer.name == "c1" else 144) * layer.input_bits
                assert qt_params.memory_pj(input_bits, "sram") == pytest.approx(
                    their["inputs"], abs=0.006)
            ours[(scheme, use_bias)] = result.energy_pj_compute
            theirs[(scheme, use_bias)] = sum(
                qt_energy[n]["energy"]["op_cost"] for n in ("c1", "d"))
    for use_bias in (True, False):
        order = [k for k in kernels]
        assert sorted(order, key=lambda k: -ours[(k, use_bias)]) == order
        assert sorted(order, key=lambda k: -theirs[(k, use_bias)]) == order
