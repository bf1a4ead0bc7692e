"""The quantization schemes of document 000 and their QKeras quantizers.

A :class:`Scheme` is a data-only description of how one tensor (kernel, bias or activation)
is represented. Names are what users write in a search config:

==============  ==========================================  =====
name            values                                      bits
==============  ==========================================  =====
``binary``      {-1, +1} x power-of-two scale               1
``binary01``    {0, 1} x power-of-two scale (modified bin.)  1
``ternary``     {-1, 0, +1} x power-of-two scale            2
``binary(2^c)`` any of the three, the scale fixed at 2^c    1-2
``po2(E)``      +-2^k, k from an (E-1)-bit exponent         E
``fixed(M)``    M-bit two's-complement grid                 M
``fixed(M,I)``  same, I of the M bits left of the point     M
``float16``     IEEE half                                   16
``float32``     IEEE single (not quantized)                 32
==============  ==========================================  =====

Training uses qkeras-v3 quantizers (straight-through estimators). Weight quantizers get a
per-channel power-of-two scale (``alpha="auto_po2"``): that is the constant exponent ``c`` of
document 000's bit tuples. Activations and biases have no learned scale: ``binary``,
``binary01`` and ``ternary`` ones have qkeras' scale of 1 unless written with a fixed scale,
``binary(2^c)``, ``binary01(2^c)`` or ``ternary(2^c)`` (for a kernel the fixed scale replaces the
per-channel one), which the search's activation-range calibration fills in
(:mod:`search.activation_ranges`). A fixed-scale activation rounds to its nearest level; an
unscaled one after a ReLU (and ``binary01`` anywhere) is qkeras' step at 0.

Every scheme of at most 8 bits lowers to an int8 TFLite kernel (:attr:`Scheme.lowers_to_int8`),
but only the binary and ternary grids keep their exact values there
(:attr:`Scheme.int8_exact`): TFLite's per-channel weight scale is ``max|w| / 127``, not a power
of two, so the points of a ``fixed`` or ``po2`` grid are re-rounded to the nearest int8 step, by
at most half a step (``max|w| / 254``). The search records the .tflite's accuracy next to the
Keras accuracy and flags a lowering that loses more than its tolerance.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal

__all__ = [
    "Scheme",
    "UnknownQuantizerError",
    "parse_scheme",
    "FLOAT32",
    "INT8",
    "qkeras_custom_objects",
]

#: Lowest integer bits of ``fixed(M,I)``: a range of 2^-16 is far below any useful tensor.
MIN_INTEGER_BITS = -16
#: Range of the exponent c of a fixed ``binary(2^c)``/``binary01(2^c)``/``ternary(2^c)`` scale.
MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT = -16, 16
_SCALED_KINDS = ("binary", "binary01", "ternary")

SchemeKind = Literal["binary", "binary01", "ternary", "po2", "fixed", "float"]

_SCHEME_GRAMMAR = (
    "binary, binary01, ternary (each optionally with a fixed scale, e.g. ternary(2^-3)), "
    "po2(E), fixed(M), fixed(M,I), float16 or float32"
)
_PATTERN = re.compile(
    r"^\s*(?:(?P<scaled>binary01|binary|ternary)\s*\(\s*2\s*\^\s*(?P<c>[+-]?\d+)\s*\)"
    r"|(?P<simple>binary01|binary|ternary|float16|float32)"
    r"|po2\(\s*(?P<po2>\d+)\s*\)"
    r"|fixed\(\s*(?P<m>\d+)\s*(?:,\s*(?P<i>-?\d+)\s*)?\))\s*$"
)


class UnknownQuantizerError(ValueError):
    """A quantizer name that is not in the scheme library."""


@dataclass(frozen=True)
class Scheme:
    """How the values of one tensor are represented.

    Attributes:
        kind: The scheme family.
        bits: Bits per value (1 for binary, 2 for ternary, E for po2, M for fixed, 16/32 float).
        integer_bits: For ``fixed`` only: bits left of the binary point, or ``None`` to use the
            role's default (0 for weights, which carry a power-of-two scale, M // 2 for
            activations, which do not, unless the search calibrates them: see
            :mod:`search.activation_ranges`). Negative for values below 1/2: the grid's top is
            2^I and its step 2^(I-M), or 2^(I-M+1) with a sign bit.
        scale_exponent: For ``binary``, ``binary01`` and ``ternary`` only: c of a fixed scale
            2^c (values ±2^c, {0, 2^c}, {-2^c, 0, 2^c}), or ``None`` for the role's default
            (a learned per-channel scale for weights, 1 for biases and activations).
    """

    kind: SchemeKind
    bits: int
    integer_bits: int | None = None
    scale_exponent: int | None = None

    def __post_init__(self) -> None:
        fixed_widths = {"binary": 1, "binary01": 1, "ternary": 2}
        if self.kind not in (*fixed_widths, "po2", "fixed", "float"):
            raise UnknownQuantizerError(f"unknown scheme kind {self.kind!r}")
        if self.kind in fixed_widths and self.bits != fixed_widths[self.kind]:
            raise UnknownQuantizerError(f"{self.kind} has {fixed_widths[self.kind]} bit(s), not {self.bits}")
        if self.integer_bits is not None and self.kind != "fixed":
            raise UnknownQuantizerError(f"{self.kind}: integer bits apply to fixed(M,I) only")
        if self.scale_exponent is not None and self.kind not in _SCALED_KINDS:
            raise UnknownQuantizerError(f"{self.name}: a fixed 2^c scale applies to binary, binary01 and ternary only")
        if self.scale_exponent is not None and not MIN_SCALE_EXPONENT <= self.scale_exponent <= MAX_SCALE_EXPONENT:
            raise UnknownQuantizerError(
                f"{self.kind}(2^{self.scale_exponent}): c must be between {MIN_SCALE_EXPONENT} and {MAX_SCALE_EXPONENT}"
            )
        if self.kind == "fixed" and not 2 <= self.bits <= 32:
            raise UnknownQuantizerError(f"fixed({self.bits}): M must be between 2 and 32 bits")
        if self.kind == "po2" and not 2 <= self.bits <= 8:
            raise UnknownQuantizerError(f"po2({self.bits}): E must be between 2 and 8 bits")
        if self.integer_bits is not None and not MIN_INTEGER_BITS <= self.integer_bits < self.bits:
            raise UnknownQuantizerError(
                f"fixed({self.bits},{self.integer_bits}): I must be between {MIN_INTEGER_BITS} and M-1"
            )
        if self.kind == "float" and self.bits not in (16, 32):
            raise UnknownQuantizerError(f"float{self.bits}: only float16 and float32 exist")

    @property
    def name(self) -> str:
        """The canonical config name, e.g. ``fixed(4)`` or ``po2(5)``."""
        if self.kind in _SCALED_KINDS:
            return self.kind if self.scale_exponent is None else f"{self.kind}(2^{self.scale_exponent})"
        if self.kind == "float":
            return f"float{self.bits}"
        if self.kind == "po2":
            return f"po2({self.bits})"
        if self.integer_bits is None:
            return f"fixed({self.bits})"
        return f"fixed({self.bits},{self.integer_bits})"

    def __str__(self) -> str:
        return self.name

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def lowers_to_int8(self) -> bool:
        """Whether a kernel of this scheme becomes int8 in the .tflite (at most 8 bits, not float)."""
        return not self.is_float and self.bits <= 8

    @property
    def int8_exact(self) -> bool:
        """Whether int8 TFLite holds a kernel of this scheme without re-rounding it.

        A grid of one magnitude per channel (binary ``±a``, binary01 ``{0, a}``, ternary
        ``{-a, 0, a}``) maps to ``{-127, 0, 127}`` exactly under TFLite's ``max|w| / 127``
        scale. A ``fixed`` or ``po2`` grid has several magnitudes whose ratios 127 does not
        divide, so the lowering moves them by up to half an int8 step.
        """
        return self.kind in ("binary", "binary01", "ternary")

    def weight_quantizer(self) -> object | None:
        """A QKeras quantizer for a kernel, or ``None`` for float (trained unquantized)."""
        from qkeras import quantized_bits, quantized_po2

        if self.kind in _SCALED_KINDS:
            return self._scaled_quantizer("auto_po2" if self.scale_exponent is None else None)
        if self.kind == "po2":
            return quantized_po2(self.bits)
        if self.kind == "fixed":
            return quantized_bits(self.bits, self.integer_bits or 0, alpha="auto_po2")
        return None

    def bias_quantizer(self) -> object | None:
        """A QKeras quantizer for a bias: a fixed grid, no per-channel scale."""
        from qkeras import quantized_bits, quantized_po2

        if self.kind in _SCALED_KINDS:
            return self._scaled_quantizer()
        if self.kind == "po2":
            return quantized_po2(self.bits)
        if self.kind == "fixed":
            return quantized_bits(self.bits, self.bias_integer_bits, alpha=1)
        return None

    @property
    def bias_integer_bits(self) -> int:
        """Biases carry no scale, so some integer bits keep them from clipping at +-1."""
        if self.integer_bits is not None:
            return self.integer_bits
        return min(3, self.bits // 2)

    def activation_quantizer(self, after_relu: bool) -> object | None:
        """A QKeras quantizer for a layer output; ``after_relu`` folds the ReLU into it."""
        from qkeras import quantized_bits, quantized_po2, quantized_relu_po2

        if self.kind in _SCALED_KINDS:
            if self.scale_exponent is not None and (after_relu or self.kind == "binary01"):
                # {0, 2^c} rounded to the nearest level (qkeras' binary steps at 0 and sends even
                # a 0.001 to 2^c): the 1-bit ReLU grid [0, 2^(c+1)) in steps of 2^c
                return _relu_grid(1, self.scale_exponent + 1)
            # Unscaled (qkeras' scale 1): after a ReLU only the {0, +1} half of binary and
            # ternary can occur; a step at 0 on the pre-activation keeps the ReLU's meaning.
            step = replace(self, kind="binary01", bits=1) if after_relu else self
            return step._scaled_quantizer()
        if self.kind == "po2":
            return quantized_relu_po2(self.bits) if after_relu else quantized_po2(self.bits)
        if self.kind == "fixed":
            integer = self.activation_integer_bits
            return _relu_grid(self.bits, integer) if after_relu else quantized_bits(self.bits, integer, alpha=1)
        return None

    def _scaled_quantizer(self, learned: str | None = None) -> object:
        """binary, binary01 or ternary with the ``learned`` qkeras scale (``"auto_po2"``), else
        the fixed 2^c (qkeras' 1 without one); a fixed-scale ternary rounds to its nearest level."""
        from qkeras import binary, ternary

        alpha = learned or (1 if self.scale_exponent is None else 2.0**self.scale_exponent)
        if self.kind == "ternary":
            threshold = None if learned or self.scale_exponent is None else alpha / 2  # qkeras' default: 0.33
            return ternary(alpha=alpha, threshold=threshold)
        return binary(use_01=self.kind == "binary01", alpha=alpha)

    @property
    def activation_integer_bits(self) -> int:
        if self.integer_bits is not None:
            return self.integer_bits
        return self.bits // 2 if self.kind == "fixed" else 0

    def bit_tuple(self) -> tuple[int, int, int]:
        """Document 000's (sign, exponent, mantissa) tuple; ``c`` (shared exponent) as 0."""
        if self.kind == "binary":
            return (1, 0, 0)
        if self.kind == "binary01":
            return (0, 0, 1)
        if self.kind == "ternary":
            return (-1, 0, 1)
        if self.kind == "po2":
            return (1, self.bits - 1, 0)
        if self.kind == "fixed":
            return (1, 0, self.bits - 1)
        return (1, 5, 10) if self.bits == 16 else (1, 8, 23)


FLOAT32 = Scheme("float", 32)
INT8 = Scheme("fixed", 8)


def parse_scheme(text: str) -> Scheme:
    """Parse a scheme name from a config.

    Raises:
        UnknownQuantizerError: ``text`` is not a scheme name; the message lists the grammar.
    """
    if not isinstance(text, str):
        raise UnknownQuantizerError(f"quantizer {text!r} must be a string ({_SCHEME_GRAMMAR})")
    match = _PATTERN.match(text.lower())
    if match is None:
        raise UnknownQuantizerError(f"unknown quantizer {text!r}: expected {_SCHEME_GRAMMAR}")
    simple = match.group("simple")
    if simple == "float16":
        return Scheme("float", 16)
    if simple == "float32":
        return Scheme("float", 32)
    if simple is not None:
        return Scheme(simple, 1 if simple.startswith("binary") else 2)  # type: ignore[arg-type]
    scaled = match.group("scaled")
    if scaled is not None:
        return Scheme(scaled, 1 if scaled.startswith("binary") else 2, scale_exponent=int(match.group("c")))  # type: ignore[arg-type]
    if match.group("po2") is not None:
        return Scheme("po2", int(match.group("po2")))
    integer = match.group("i")
    return Scheme("fixed", int(match.group("m")), None if integer is None else int(integer))


def _relu_grid(bits: int, integer: int) -> object:
    """qkeras' ``quantized_relu``: [0, 2^integer) in steps of 2^(integer - bits).

    It computes 2**integer and 2**bits in integer arithmetic, which refuses a negative exponent
    and overflows int32 from 2**31 on (2**32 wraps to 0: every output NaN); float exponents give
    the same grid."""
    from qkeras import quantized_relu

    return quantized_relu(bits if bits < 31 else float(bits), integer if integer >= 0 else float(integer))


def qkeras_custom_objects() -> dict[str, object]:
    """Everything ``keras.models.load_model`` needs to read a trained candidate back."""
    from qkeras.utils import _add_supported_quantized_objects  # the library's own registry

    objects: dict[str, object] = {}
    _add_supported_quantized_objects(objects)
    return objects


def ceil_log2(value: int) -> int:
    """Bits needed to count to ``value`` (accumulator growth); 0 for 1."""
    return 0 if value <= 1 else math.ceil(math.log2(value))
