"""Cost estimates of a candidate exactly as trained: MACs, BOPs, parameter bits, energy.

The energy is document 000's first-order model (method.md §1): the sum over operations of
Horowitz's (ISSCC 2014) per-operation energies, with the coefficients QKeras QTools uses for
its ``"horowitz"`` process (:mod:`search.energy_table`). **It ranks candidates; it is not an
absolute energy** — document 000 says so, and a device measurement is the real figure.

What is counted, per quantizable layer (Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D,
Dense and their QKeras subclasses):

* **MACs** (method.md §1): conv = Ho·Wo·Co·kh·kw·Ci (Conv1D: Lo·Co·k·Ci; grouped convs use the
  kernel's Ci/groups); depthwise = Ho·Wo·Ci·kh·kw·multiplier; separable = its depthwise part +
  its pointwise part Ho·Wo·Co·Ci·multiplier; dense = in·out times every leading non-batch
  dimension. Computed as (output positions) × (kernel elements), shapes read from the model.
* **BOPs** = MACs × weight bits × input bits (NEMO, document 004).
* **Parameter bits** = kernel params × kernel bits + bias params × bias bits;
  ``model_bytes`` = ceil(parameter bits / 8): parameters only — no graph, metadata or
  activation memory. BatchNormalization is taken as folded into the layer before it, and
  layers the search does not quantize are not counted (they are the same in every candidate).
* **Input bits**: the activation scheme of the nearest quantizable producer up the graph,
  through non-quantizable layers (pooling, BatchNorm, Flatten, activations…); the widest
  producer's scheme at a merge (Add, Concatenate…); ``input_scheme`` at a model input.
* **Compute energy** = MACs × (multiply + one accumulator add), the multiplier chosen from the
  (input scheme, weight scheme) pair by :func:`search.energy_table.mac_unit`; the accumulator
  add is ceil(log2(fan-in)) + product bits wide (fan-in = products summed per output; the
  bias is preloaded), or a float add when the product is float.
* **Memory energy**: the layer's weights (kernel and bias, each as one tensor) and its input
  activations are read, and its outputs written, once per inference, by their total bits —
  from SRAM, ceil(bits / 64) words at the per-word energy of L = log2(max(bits,
  ``min_sram_bits``)) (document 000's quadratic or QTools' cubic), or from DRAM at
  20.3125 pJ/bit. Separable layers keep their depthwise output internal.

Non-quantizable layers (pooling, merges, BatchNorm) cost nothing here. Sizes come from the
model (candidates are built at their searched sizes); schemes come from the spec. A
quantizable layer absent from the spec is costed as float32 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import keras

from search.candidate import CandidateSpec, LayerChoice
from search.energy_table import (
    DRAM_PJ_PER_BIT,
    SRAM_WORD_BITS,
    MultiplierKind,
    SramFormula,
    mac_unit,
    sram_word_pj,
)
from search.graph import read_graph
from search.quantizers import FLOAT32, INT8, Scheme

__all__ = [
    "EstimateError",
    "EnergyModel",
    "LayerEstimate",
    "Estimate",
    "estimate",
    "DEFAULT_MIN_SRAM_BITS",
]

MemoryKind = Literal["sram", "dram"]

#: One 64-bit word. L then follows each tensor's own size, as with QTools' default
#: ``min_sram_size=0``, but never drops below 6, where both SRAM formulas rise with L.
DEFAULT_MIN_SRAM_BITS = SRAM_WORD_BITS

# Order of generality, to pick the widest scheme at a merge when bit widths tie.
_KIND_RANK = {"binary01": 0, "binary": 1, "ternary": 2, "po2": 3, "fixed": 4, "float": 5}
_FLOAT_CHOICE = LayerChoice(FLOAT32, FLOAT32, FLOAT32)


class EstimateError(ValueError):
    """The model and the spec do not describe the same candidate, or the model's shapes are
    not all known (names the layer and the value at fault)."""


@dataclass(frozen=True)
class EnergyModel:
    """Where values live and which SRAM formula prices them.

    Attributes:
        process: The energy table; only ``"horowitz"`` (ISSCC 2014, QTools' coefficients).
        sram_formula: ``"doc000"`` (document 000 Table 1, quadratic in L; default) or
            ``"qtools"`` (QTools' newer cubic table).
        min_sram_bits: The smallest SRAM the L = log2(max(total bits, min_sram_bits)) term
            assumes. Default 64 bits (see :data:`DEFAULT_MIN_SRAM_BITS`); set it to the target's
            SRAM size to price every access at that memory's L instead.
        weights_in: Memory the kernels and biases are read from: ``"sram"`` (default) or
            ``"dram"``.
        activations_in: Memory the activations are read from and written to: ``"sram"``
            (default) or ``"dram"``.
    """

    process: Literal["horowitz"] = "horowitz"
    sram_formula: SramFormula = "doc000"
    min_sram_bits: int = DEFAULT_MIN_SRAM_BITS
    weights_in: MemoryKind = "sram"
    activations_in: MemoryKind = "sram"

    def __post_init__(self) -> None:
        if self.process != "horowitz":
            raise EstimateError(f"process {self.process!r}: only 'horowitz' is known")
        if self.sram_formula not in ("doc000", "qtools"):
            raise EstimateError(
                f"sram_formula {self.sram_formula!r}: expected 'doc000' or 'qtools'"
            )
        if not isinstance(self.min_sram_bits, int) or self.min_sram_bits < 1:
            raise EstimateError(f"min_sram_bits {self.min_sram_bits!r} must be an int >= 1")
        for field_name in ("weights_in", "activations_in"):
            value = getattr(self, field_name)
            if value not in ("sram", "dram"):
                raise EstimateError(f"{field_name} {value!r}: expected 'sram' or 'dram'")

    def memory_pj(self, total_bits: int, memory: MemoryKind) -> float:
        """Energy to read or write one tensor of ``total_bits`` from ``memory``. Units: pJ."""
        if total_bits <= 0:
            return 0.0
        if memory == "dram":
            return DRAM_PJ_PER_BIT * total_bits
        log2_bits = math.log2(max(total_bits, self.min_sram_bits))
        words = math.ceil(total_bits / SRAM_WORD_BITS)
        return words * sram_word_pj(log2_bits, self.sram_formula)


@dataclass(frozen=True)
class LayerEstimate:
    """The costs of one quantizable layer. Energies in pJ; ``*_bits`` per value."""

    name: str
    class_name: str
    macs: int
    param_count: int
    param_bits: int
    bops: int
    input_bits: int
    weight_bits: int
    multiplier: MultiplierKind
    energy_pj_compute: float
    energy_pj_memory: float
    energy_pj: float


@dataclass(frozen=True)
class Estimate:
    """Whole-model totals and the per-layer breakdown (in model order)."""

    macs: int
    param_count: int
    param_bits: int
    bops: int
    model_bytes: int
    energy_pj: float
    energy_pj_compute: float
    energy_pj_memory: float
    layers: tuple[LayerEstimate, ...]

    def to_dict(self) -> dict[str, float]:
        """Flat numbers for a results row (no per-layer part)."""
        return {
            "macs": self.macs,
            "param_count": self.param_count,
            "param_bits": self.param_bits,
            "bops": self.bops,
            "model_bytes": self.model_bytes,
            "energy_pj": self.energy_pj,
            "energy_pj_compute": self.energy_pj_compute,
            "energy_pj_memory": self.energy_pj_memory,
        }


@dataclass(frozen=True)
class _Part:
    """One kernel of a layer: its shape, output positions, and products summed per output."""

    kernel_shape: tuple[int, ...]
    positions: int
    fan_in: int

    @property
    def macs(self) -> int:
        return self.positions * math.prod(self.kernel_shape)


def estimate(
    model: keras.Model,
    spec: CandidateSpec,
    *,
    input_scheme: Scheme = INT8,
    energy_model: EnergyModel = EnergyModel(),
) -> Estimate:
    """Estimate the costs of ``model`` quantized as ``spec`` says (see the module docstring).

    Args:
        model: The candidate as built and trained: same layer names as the spec, sizes as
            searched; plain Keras or QKeras layers. Must be built (its shapes known).
        spec: The candidate's per-layer schemes.
        input_scheme: Scheme of the model's input data. Default ``fixed(8)``.
        energy_model: Memory placement and SRAM formula.

    Raises:
        EstimateError: the spec names a layer the model lacks or that is not quantizable, a
            layer's size differs from the spec's, or a shape is not fully known.
        search.graph.GraphError: the model's wiring cannot be read (shared or nested layers).
    """
    graph = read_graph(model)
    quantizable = {
        node.name: model.get_layer(node.name)
        for node in graph
        if node.name not in graph.inputs and _is_quantizable(model.get_layer(node.name))
    }
    for name, _ in spec:
        if name not in quantizable:
            raise EstimateError(
                f"spec layer {name!r} is not a quantizable layer of model {model.name!r}"
            )

    out_scheme: dict[str, Scheme] = {}  # scheme of each layer's output tensor
    in_scheme: dict[str, Scheme] = {}  # scheme of each quantizable layer's input
    for node in graph:
        if node.name in graph.inputs or not node.inputs:
            out_scheme[node.name] = input_scheme
            continue
        incoming = _widest([out_scheme[p] for p in node.inputs])
        if node.name in quantizable:
            in_scheme[node.name] = incoming
            out_scheme[node.name] = _choice(spec, node.name).activation
        else:
            out_scheme[node.name] = incoming

    layers = tuple(
        _layer_estimate(layer, _choice(spec, name), in_scheme[name], energy_model)
        for name, layer in quantizable.items()
    )
    param_bits = sum(e.param_bits for e in layers)
    compute = sum(e.energy_pj_compute for e in layers)
    memory = sum(e.energy_pj_memory for e in layers)
    return Estimate(
        macs=sum(e.macs for e in layers),
        param_count=sum(e.param_count for e in layers),
        param_bits=param_bits,
        bops=sum(e.bops for e in layers),
        model_bytes=math.ceil(param_bits / 8),
        energy_pj=compute + memory,
        energy_pj_compute=compute,
        energy_pj_memory=memory,
        layers=layers,
    )


def _is_quantizable(layer: keras.layers.Layer) -> bool:
    return isinstance(
        layer,
        (
            keras.layers.Conv1D,
            keras.layers.Conv2D,
            keras.layers.DepthwiseConv2D,
            keras.layers.SeparableConv2D,
            keras.layers.Dense,
        ),
    )


def _choice(spec: CandidateSpec, name: str) -> LayerChoice:
    return spec[name] if name in spec else _FLOAT_CHOICE  # noqa: SIM401 - CandidateSpec has no get()


def _widest(schemes: Sequence[Scheme]) -> Scheme:
    return max(schemes, key=lambda s: (s.bits, _KIND_RANK[s.kind]))


def _shape(layer: keras.layers.Layer, which: Literal["input", "output"]) -> tuple[int, ...]:
    """The layer's input or output shape without the batch axis, every dimension known."""
    try:
        shape = tuple(getattr(layer, which).shape)[1:]
    except (AttributeError, ValueError) as e:
        raise EstimateError(
            f"layer {layer.name!r} has no {which} shape: build the model on a keras.Input"
        ) from e
    if any(d is None for d in shape):
        raise EstimateError(
            f"layer {layer.name!r} {which} shape {shape} has an unknown dimension: "
            "give the model a fixed input shape"
        )
    return tuple(int(d) for d in shape)


def _parts(layer: keras.layers.Layer) -> tuple[_Part, ...]:
    """The layer's kernels with their output positions and fan-in (method.md §1 MACs)."""
    out_shape = _shape(layer, "output")
    if isinstance(layer, keras.layers.Dense):
        positions = math.prod(out_shape[:-1])
    elif getattr(layer, "data_format", "channels_last") == "channels_first":
        positions = math.prod(out_shape[1:])
    else:
        positions = math.prod(out_shape[:-1])
    if isinstance(layer, keras.layers.SeparableConv2D):
        dw = _weight_shape(layer, "depthwise_kernel")  # (kh, kw, Ci, mult)
        pw = _weight_shape(layer, "pointwise_kernel")  # (1, 1, Ci·mult, Co)
        return (
            _Part(dw, positions, math.prod(dw[:-2])),
            _Part(pw, positions, math.prod(pw[:-1])),
        )
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        dw = _weight_shape(layer, "depthwise_kernel", "kernel")  # (kh, kw, Ci, mult)
        return (_Part(dw, positions, math.prod(dw[:-2])),)
    kernel = _weight_shape(layer, "kernel")  # conv: (k..., Ci/groups, Co); dense: (in, out)
    return (_Part(kernel, positions, math.prod(kernel[:-1])),)


def _weight_shape(layer: keras.layers.Layer, *names: str) -> tuple[int, ...]:
    """Shape of the first of ``names`` the layer has (Keras' DepthwiseConv2D names its
    kernel ``kernel``, QKeras' QDepthwiseConv2D ``depthwise_kernel``)."""
    for name in names:
        variable = getattr(layer, name, None)
        if variable is not None:
            return tuple(int(d) for d in variable.shape)
    raise EstimateError(
        f"layer {layer.name!r} has no weight named {' or '.join(names)}: is it built?"
    )


def _layer_estimate(
    layer: keras.layers.Layer, choice: LayerChoice, input_scheme: Scheme, energy: EnergyModel
) -> LayerEstimate:
    size_attr = "units" if isinstance(layer, keras.layers.Dense) else "filters"
    actual = getattr(layer, size_attr, None)
    if choice.size is not None and actual is not None and int(actual) != choice.size:
        raise EstimateError(
            f"layer {layer.name!r} has {size_attr}={actual} but the spec says size "
            f"{choice.size}: estimate the model built from this spec"
        )
    parts = _parts(layer)
    unit = mac_unit(input_scheme, choice.kernel)
    macs = sum(p.macs for p in parts)
    compute = sum(p.macs * (unit.multiply_pj + unit.accumulate_pj(p.fan_in)) for p in parts)

    kernel_counts = [math.prod(p.kernel_shape) for p in parts]
    bias_count = math.prod(_weight_shape(layer, "bias")) if getattr(layer, "use_bias", False) else 0
    kernel_bits = [n * choice.kernel.bits for n in kernel_counts]
    bias_bits = bias_count * choice.bias.bits
    memory = sum(energy.memory_pj(bits, energy.weights_in) for bits in kernel_bits)
    memory += energy.memory_pj(bias_bits, energy.weights_in)
    in_bits = math.prod(_shape(layer, "input")) * input_scheme.bits
    out_bits = math.prod(_shape(layer, "output")) * choice.activation.bits
    memory += energy.memory_pj(in_bits, energy.activations_in)
    memory += energy.memory_pj(out_bits, energy.activations_in)

    return LayerEstimate(
        name=layer.name,
        class_name=type(layer).__name__,
        macs=macs,
        param_count=sum(kernel_counts) + bias_count,
        param_bits=sum(kernel_bits) + bias_bits,
        bops=macs * choice.kernel.bits * input_scheme.bits,
        input_bits=input_scheme.bits,
        weight_bits=choice.kernel.bits,
        multiplier=unit.kind,
        energy_pj_compute=compute,
        energy_pj_memory=memory,
        energy_pj=compute + memory,
    )
