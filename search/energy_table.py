"""The Horowitz (ISSCC 2014) energy table and the multiply-accumulate units built from it.

Every coefficient is a named constant with its source. Two sources are cited:

* **QTools** — qkeras ``qtools/config_public.py``, process ``"horowitz"``, and
  ``qtools/quantized_operators/multiplier_impl.py`` (gate factors, product widths). These are
  the exact values; ``/work/shared/reference/method.md`` section 1 quotes them.
* **Doc. 000** — document 000, Table 1 (CN115836298A): the same fixed-point and float rows,
  rounded (0.0031 for the add, 0.0030 / 0.0010 for the multiply), plus its own SRAM formula.

All energies are in pJ. They rank candidates; they are not absolute energies (see
:mod:`search.estimates`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from search.quantizers import Scheme, ceil_log2

__all__ = [
    "FIXED_ADD_PJ_PER_BIT",
    "FIXED_MUL_PJ_PER_BIT2",
    "FIXED_MUL_PJ_PER_BIT",
    "FP16_ADD_PJ",
    "FP16_MUL_PJ",
    "FP32_ADD_PJ",
    "FP32_MUL_PJ",
    "SRAM_WORD_BITS",
    "SRAM_DOC000_PJ_PER_WORD",
    "SRAM_QTOOLS_PJ_PER_WORD",
    "DRAM_PJ_PER_BIT",
    "MUX_BINARY_GATE_FACTOR",
    "MUX_TERNARY_GATE_FACTOR",
    "XOR_GATE_FACTOR",
    "AND_GATE_FACTOR",
    "SramFormula",
    "MultiplierKind",
    "MacUnit",
    "fixed_add_pj",
    "fixed_mul_pj",
    "sram_word_pj",
    "mac_unit",
]

# --- Arithmetic (pJ). QTools config_public.py "horowitz"; doc. 000 Table 1 rounds them. ---
#: Fixed-point add: 0.003125 pJ per bit of width (QTools ``fpm_add``; doc. 000: 0.0031).
FIXED_ADD_PJ_PER_BIT = 0.003125
#: Fixed-point multiply, quadratic term: 0.002994791667 · bits² (QTools ``fpm_mul``).
FIXED_MUL_PJ_PER_BIT2 = 0.002994791667
#: Fixed-point multiply, linear term: 0.001041666667 · bits (QTools ``fpm_mul``).
FIXED_MUL_PJ_PER_BIT = 0.001041666667
#: fp16 add / multiply, constant per operation (QTools ``fp16_add``/``fp16_mul``; doc. 000).
FP16_ADD_PJ = 0.4
FP16_MUL_PJ = 1.1
#: fp32 add / multiply, constant per operation (QTools ``fp32_add``/``fp32_mul``; doc. 000).
FP32_ADD_PJ = 0.9
FP32_MUL_PJ = 3.7

# --- Memory. ---
#: SRAM is read and written in 64-bit words (doc. 000 Table 1 divides by 64; QTools
#: ``sram_mul_factor = 1/64``).
SRAM_WORD_BITS = 64
#: Doc. 000 Table 1, "SRAM access": (0.02455·L² − 0.2656·L + 0.8661) pJ per 64-bit word,
#: L = log2(max(total bits, minimum SRAM size)). Coefficients as (L², L, 1).
SRAM_DOC000_PJ_PER_WORD = (0.02455, -0.2656, 0.8661)
#: QTools ``sram_rd`` (newer table): 9.02427321e-4·L³ − 2.68847858e-2·L² + 2.08900804e-1·L
#: pJ per 64-bit word, same L. Coefficients as (L³, L², L, 1).
SRAM_QTOOLS_PJ_PER_WORD = (9.02427321e-04, -2.68847858e-02, 2.08900804e-01, 0.0)
#: DRAM read or write: 20.3125 pJ per bit (QTools ``dram_rd``; doc. 000 Table 1).
DRAM_PJ_PER_BIT = 20.3125

# --- Gates that replace a multiplier, as a fraction of an add (QTools multiplier_impl.py). ---
#: ±1 × x: a mux choosing x or −x, 0.3 of an add of x's width (QTools ``Mux``).
MUX_BINARY_GATE_FACTOR = 0.3
#: {−1, 0, +1} × x: a two-level mux, 2 × 0.3 of an add of x's width (QTools ``Mux``).
MUX_TERNARY_GATE_FACTOR = 0.6
#: ±1 × ±1: one XOR gate, 0.3 of a 1-bit add (QTools ``XorGate``).
XOR_GATE_FACTOR = 0.3
#: {0, 1} × x: AND gates, 0.1 of an add of max(bi, bw) bits (QTools ``AndGate``).
AND_GATE_FACTOR = 0.1

SramFormula = Literal["doc000", "qtools"]
MultiplierKind = Literal["fixed", "shift", "add", "mux", "xor", "and", "fp16", "fp32"]


def fixed_add_pj(bits: float) -> float:
    """Energy of one fixed-point add of ``bits`` width. Units: pJ."""
    return FIXED_ADD_PJ_PER_BIT * bits


def fixed_mul_pj(bits: float) -> float:
    """Energy of one fixed-point multiply of ``bits`` width (a·bits² + b·bits). Units: pJ."""
    return FIXED_MUL_PJ_PER_BIT2 * bits * bits + FIXED_MUL_PJ_PER_BIT * bits


def sram_word_pj(log2_bits: float, formula: SramFormula) -> float:
    """Energy of one 64-bit SRAM word access at L = ``log2_bits``. Units: pJ per word."""
    if formula == "doc000":
        a, b, c = SRAM_DOC000_PJ_PER_WORD
        return a * log2_bits**2 + b * log2_bits + c
    a3, a2, a1, a0 = SRAM_QTOOLS_PJ_PER_WORD
    return a3 * log2_bits**3 + a2 * log2_bits**2 + a1 * log2_bits + a0


@dataclass(frozen=True)
class MacUnit:
    """The hardware that does one multiply-accumulate for an (input, weight) scheme pair.

    Attributes:
        kind: The multiplier: ``fixed`` multiplier, barrel ``shift``\\er, exponent ``add``\\er
            (po2 × po2), ``mux``, ``xor``, ``and`` gates, or the ``fp16``/``fp32`` multiplier.
        multiply_pj: Energy of one multiply. Units: pJ.
        product_bits: Width of the product fed to a fixed-point accumulator (unused for float).
        float_bits: 16 or 32 when the product, and so the accumulator, is floating point.
    """

    kind: MultiplierKind
    multiply_pj: float
    product_bits: int
    float_bits: int | None = None

    def accumulate_pj(self, fan_in: int) -> float:
        """One accumulator add summing ``fan_in`` products. Units: pJ.

        Fixed point: an add of ceil(log2(fan_in)) + product width bits (method.md §1).
        Floating point: the fp16/fp32 add constant.
        """
        if self.float_bits is not None:
            return FP16_ADD_PJ if self.float_bits == 16 else FP32_ADD_PJ
        return fixed_add_pj(ceil_log2(fan_in) + self.product_bits)


def mac_unit(input_scheme: Scheme, weight_scheme: Scheme) -> MacUnit:
    """Choose the multiplier for an (input, weight) pair (method.md §1; QTools' table).

    Rules, first match wins:

    1. either operand float: the float multiplier of the wider float (fp16 or fp32);
    2. either operand {0, 1} (``binary01``): AND gates, 0.1 × add(max(bi, bw)),
       product max(bi, bw) bits;
    3. both ±1 (``binary``): one XOR, 0.3 × add(1), product 1 bit;
    4. one operand ±1 or ternary: a mux whose select is that operand (the weight when both
       are), 0.3 (±1) or 0.6 (ternary) × add(other operand's bits); product = other + 1 bits
       (the negated operand may need a sign bit);
    5. both po2: the exponents are added, add(max(Ei, Ew) + 1); the product is a po2 value
       of max(Ei, Ew) + 1 bits, 2^max(Ei, Ew) bits wide as fixed point (QTools ``Adder``,
       ``Po2Accumulator``);
    6. po2(E) × fixed(M): a barrel shifter, add(b·log10 b) with b = sqrt(2^E · M); product
       M + 2^(E−1) bits (M, the exponent's range 2^(E−1) − 1, one sign bit; QTools
       ``Shifter``);
    7. fixed × fixed: the fixed multiplier at bits = sqrt(bi · bw); product bi + bw bits.

    Signedness is not tracked (a :class:`Scheme` has none): product widths are those of an
    unsigned input times a signed weight, the case after a ReLU, and so upper bounds.
    """
    pair = (input_scheme, weight_scheme)
    kinds = {s.kind for s in pair}
    bi, bw = input_scheme.bits, weight_scheme.bits
    if "float" in kinds:
        width = max(s.bits for s in pair if s.kind == "float")
        return MacUnit(
            "fp16" if width == 16 else "fp32",
            FP16_MUL_PJ if width == 16 else FP32_MUL_PJ,
            width,
            width,
        )
    if "binary01" in kinds:
        width = max(bi, bw)
        return MacUnit("and", AND_GATE_FACTOR * fixed_add_pj(width), width)
    if kinds == {"binary"}:
        return MacUnit("xor", XOR_GATE_FACTOR * fixed_add_pj(1), 1)
    if kinds & {"binary", "ternary"}:
        select, other = (
            (weight_scheme, input_scheme)
            if weight_scheme.kind in ("binary", "ternary")
            else (input_scheme, weight_scheme)
        )
        factor = MUX_BINARY_GATE_FACTOR if select.kind == "binary" else MUX_TERNARY_GATE_FACTOR
        return MacUnit("mux", factor * fixed_add_pj(other.bits), other.bits + 1)
    if kinds == {"po2"}:
        widest = max(bi, bw)
        return MacUnit("add", fixed_add_pj(widest + 1), 2**widest)
    if "po2" in kinds:
        po2, fixed = pair if input_scheme.kind == "po2" else (weight_scheme, input_scheme)
        b = math.sqrt(2**po2.bits * fixed.bits)
        return MacUnit("shift", fixed_add_pj(b * math.log10(b)), fixed.bits + 2 ** (po2.bits - 1))
    return MacUnit("fixed", fixed_mul_pj(math.sqrt(bi * bw)), bi + bw)
