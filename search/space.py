"""The search space, built from the reference model's own layers (document 000).

For every quantizable layer there are three quantizer choices (kernel, bias, activation); for
every group of channel-tied resizable layers there is one size multiplier (``per-layer`` mode),
or one multiplier for the whole model (``model`` mode). Rules from the config restrict the
choices of layers whose name matches a regex.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import keras

from search.candidate import CandidateSpec, LayerChoice
from search.channels import CHANNEL_PRESERVING, QUANTIZABLE, SLICEABLE_WEIGHTED, find_size_groups, size_attribute
from search.graph import ModelGraph, read_graph
from search.quantizers import FLOAT32, INT8, Scheme, parse_scheme
from search.space_options import (
    DEFAULT_ACTIVATION,
    DEFAULT_BIAS,
    DEFAULT_KERNEL,
    DEFAULT_MULTIPLIERS,
    LayerRule,
    SpaceError,
    SpaceOptions,
)

if TYPE_CHECKING:
    import optuna

__all__ = [
    "SpaceError",
    "LayerRule",
    "SpaceOptions",
    "LayerSlot",
    "SizeGroup",
    "SearchSpace",
    "build_space",
    "DEFAULT_KERNEL",
    "DEFAULT_BIAS",
    "DEFAULT_ACTIVATION",
    "DEFAULT_MULTIPLIERS",
    "SEED_LABELS",
]

log = logging.getLogger(__name__)

#: Labels of the candidates every study is seeded with: :meth:`SearchSpace.reference_spec`
#: and :meth:`SearchSpace.int8_spec`.
SEED_LABELS = ("reference", "int8")

# Activation functions a quantizer can follow; others (softmax, sigmoid…) stay float.
_QUANTIZABLE_ACTIVATIONS = ("relu", "linear")


@dataclass(frozen=True)
class LayerSlot:
    """One quantizable layer of the reference and its allowed choices."""

    name: str
    class_name: str
    activation: str
    reference_size: int | None
    size_group: str | None
    kernel: tuple[Scheme, ...]
    bias: tuple[Scheme, ...]
    activation_schemes: tuple[Scheme, ...]
    use_bias: bool


@dataclass(frozen=True)
class SizeGroup:
    name: str
    layers: tuple[str, ...]
    reference_size: int
    multipliers: tuple[float, ...]


@dataclass(frozen=True)
class SearchSpace:
    """All the choices of a search, and how Optuna names them.

    Parameter names: ``kernel:<layer>``, ``bias:<layer>``, ``activation:<layer>``,
    ``size:<group>`` (per-layer mode) or ``size`` (model mode).
    """

    slots: tuple[LayerSlot, ...]
    size_groups: tuple[SizeGroup, ...]
    size_mode: Literal["per-layer", "model"]
    model_multipliers: tuple[float, ...]
    graph: ModelGraph
    skipped: tuple[tuple[str, str], ...] = field(default=())

    def slot(self, name: str) -> LayerSlot:
        for slot in self.slots:
            if slot.name == name:
                return slot
        raise KeyError(name)

    def distributions(self) -> dict[str, tuple[object, ...]]:
        """Parameter name -> allowed values, for Optuna categorical parameters."""
        params: dict[str, tuple[object, ...]] = {}
        for slot in self.slots:
            for role, schemes in self._roles(slot):
                if len(schemes) > 1:
                    params[f"{role}:{slot.name}"] = tuple(s.name for s in schemes)
        if self.size_mode == "model":
            if self.size_groups and len(self.model_multipliers) > 1:
                params["size"] = self.model_multipliers
        else:
            for group in self.size_groups:
                if len(group.multipliers) > 1:
                    params[f"size:{group.name}"] = group.multipliers
        return params

    def suggest(self, trial: optuna.trial.BaseTrial) -> CandidateSpec:
        params = {
            name: trial.suggest_categorical(name, list(values))  # type: ignore[arg-type]
            for name, values in self.distributions().items()
        }
        return self.spec_from_params(params)

    def spec_from_params(self, params: Mapping[str, object]) -> CandidateSpec:
        """The candidate for a full set of parameters (missing single-choice ones filled in)."""
        multipliers: dict[str, float] = {}
        for group in self.size_groups:
            key = "size" if self.size_mode == "model" else f"size:{group.name}"
            default = self.model_multipliers if self.size_mode == "model" else group.multipliers
            multipliers[group.name] = float(params.get(key, default[0]))  # type: ignore[arg-type]

        def pick(slot: LayerSlot, role: str, schemes: tuple[Scheme, ...]) -> Scheme:
            value = params.get(f"{role}:{slot.name}")
            return schemes[0] if value is None else parse_scheme(str(value))

        layers = {}
        for slot in self.slots:
            kernel_s, bias_s, act_s = self._roles(slot)
            size = slot.reference_size
            if slot.size_group is not None and size is not None:
                size = scaled_size(size, multipliers[slot.size_group])
            layers[slot.name] = LayerChoice(
                kernel=pick(slot, *kernel_s), bias=pick(slot, *bias_s), activation=pick(slot, *act_s), size=size
            )
        return CandidateSpec.from_mapping(layers)

    def params_for(self, spec: CandidateSpec) -> dict[str, object] | None:
        """Optuna parameters that reproduce ``spec``, or ``None`` if it is outside the space."""
        params: dict[str, object] = {}
        if any(slot.name not in spec for slot in self.slots):
            return None
        for name, values in self.distributions().items():
            role, _, target = name.partition(":")
            if role == "size":
                group = next(g for g in self.size_groups if not target or g.name == target)
                member = spec[group.layers[0]]
                value: object = next(
                    (m for m in values if scaled_size(group.reference_size, float(m)) == member.size),  # type: ignore[arg-type]
                    None,
                )
            else:
                value = getattr(spec[target], role).name
            if value not in values:
                return None
            params[name] = value
        return params if self.spec_from_params(params) == spec else None

    def uniform_spec(self, scheme: Scheme, label: str) -> CandidateSpec:
        """Every layer at its reference size with ``scheme`` wherever the layer allows it."""
        layers = {}
        for slot in self.slots:
            def choose(allowed: tuple[Scheme, ...]) -> Scheme:
                return scheme if scheme in allowed else allowed[0]

            layers[slot.name] = LayerChoice(
                kernel=choose(slot.kernel),
                bias=choose(slot.bias),
                activation=choose(slot.activation_schemes),
                size=slot.reference_size,
            )
        return CandidateSpec.from_mapping(layers, label)

    def reference_spec(self) -> CandidateSpec:
        """The reference as it is: float32 everywhere, reference sizes. It lies outside the
        space when float32 is not an allowed choice; a search then cannot seed it (it warns)."""
        layers = {
            slot.name: LayerChoice(FLOAT32, FLOAT32, FLOAT32, slot.reference_size)
            for slot in self.slots
        }
        return CandidateSpec.from_mapping(layers, "reference")

    def int8_spec(self) -> CandidateSpec:
        return self.uniform_spec(INT8, "int8")

    @staticmethod
    def _roles(slot: LayerSlot) -> tuple[tuple[str, tuple[Scheme, ...]], ...]:
        return (("kernel", slot.kernel), ("bias", slot.bias), ("activation", slot.activation_schemes))


def scaled_size(reference_size: int, multiplier: float) -> int:
    return max(1, round(reference_size * multiplier))


def _activation_name(layer: keras.layers.Layer) -> str:
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", str(activation)) if activation is not None else "linear"


def _feeds_output(graph: ModelGraph, name: str) -> bool:
    """Whether ``name``'s output reaches a model output through channel-preserving layers only."""
    frontier = [name]
    while frontier:
        current = frontier.pop()
        if current in graph.outputs:
            return True
        frontier.extend(
            c for c in graph.consumers(current) if graph.node(c).class_name in CHANNEL_PRESERVING
        )
    return False


def _schemes(names: Sequence[str], what: str) -> tuple[Scheme, ...]:
    if not names:
        raise SpaceError(f"{what}: the list of quantizers is empty")
    schemes = tuple(dict.fromkeys(parse_scheme(n) for n in names))
    return schemes


def _is_recurrent(layer: keras.layers.Layer) -> bool:
    """An RNN layer (LSTM, GRU, SimpleRNN, ConvLSTM…), also inside a Bidirectional wrapper."""
    if isinstance(layer, keras.layers.Bidirectional):
        return True
    return isinstance(layer, keras.layers.RNN)


def build_space(model: keras.Model, options: SpaceOptions | None = None) -> SearchSpace:
    """Read the reference model and the options into a :class:`SearchSpace`.

    Raises:
        SpaceError: a rule names no layer, a quantizer name is unknown, the model has a
            recurrent layer (int8 conversion crashes on them), or (with ``strict_layers``) it
            has another weighted layer the search cannot handle.
        search.graph.GraphError: the model's wiring cannot be rewritten (shared layers).
    """
    options = options or SpaceOptions()
    graph = read_graph(model)
    skipped: list[tuple[str, str]] = []
    for node in graph:
        if node.class_name == "InputLayer":
            continue
        layer = model.get_layer(node.name)
        if _is_recurrent(layer):
            raise SpaceError(
                f"layer {node.name!r}: {node.class_name} is recurrent, and TensorFlow's int8 converter "
                "crashes the process (a segfault in its calibrator) on models with recurrent layers, so "
                "candidates of this model cannot be lowered"
            )
        if layer.weights and node.class_name not in QUANTIZABLE + SLICEABLE_WEIGHTED:
            reason = f"{node.class_name} is not a quantizable layer type"
            if options.strict_layers:
                raise SpaceError(f"layer {node.name!r}: {reason} (strict_layers is set)")
            log.warning("skipping layer %r: %s; it stays float and is left out of the estimates", node.name, reason)
            skipped.append((node.name, reason))
    for rule in options.rules:
        if not any(rule.matches(n.name) for n in graph if n.class_name in QUANTIZABLE):
            raise SpaceError(f"layer rule {rule.match!r} matches no quantizable layer")

    groups = find_size_groups(model, graph)
    for name, reason in groups.fixed.items():
        log.info("layer %r keeps its size: %s", name, reason)

    slots: list[LayerSlot] = []
    layer_multipliers: dict[str, tuple[float, ...] | None] = {}
    for node in graph:
        if node.class_name not in QUANTIZABLE:
            continue
        layer = model.get_layer(node.name)
        kernel, bias, activation = options.kernel, options.bias, options.activation
        multipliers: tuple[float, ...] | None = options.multipliers
        skip = False
        for rule in options.rules:
            if rule.matches(node.name):
                kernel = rule.kernel if rule.kernel is not None else kernel
                bias = rule.bias if rule.bias is not None else bias
                activation = rule.activation if rule.activation is not None else activation
                multipliers = rule.multipliers if rule.multipliers is not None else multipliers
                if not rule.resize:
                    multipliers = None
                skip = skip or rule.skip
        act_name = _activation_name(layer)
        if skip:
            kernel_s = bias_s = act_s = (FLOAT32,)
            multipliers = None
            skipped.append((node.name, "skipped by a layer rule"))
        else:
            kernel_s = _schemes(kernel, f"layer {node.name!r} kernel")
            bias_s = _schemes(bias, f"layer {node.name!r} bias")
            act_s = _schemes(activation, f"layer {node.name!r} activation")
            if act_name not in _QUANTIZABLE_ACTIVATIONS or _feeds_output(graph, node.name):
                # softmax/sigmoid would change meaning; quantized logits only lose accuracy
                act_s = (FLOAT32,)
        attribute = size_attribute(layer)
        layer_multipliers[node.name] = multipliers
        slots.append(
            LayerSlot(
                name=node.name,
                class_name=node.class_name,
                activation=act_name,
                reference_size=None if attribute is None else int(getattr(layer, attribute)),
                size_group=None,
                kernel=kernel_s,
                bias=bias_s,
                activation_schemes=act_s,
                use_bias=bool(getattr(layer, "use_bias", False)),
            )
        )

    size_groups: list[SizeGroup] = []
    sizes = {s.name: s.reference_size for s in slots}
    for group_name, members in groups.groups.items():
        choices = [layer_multipliers.get(m) for m in members]
        reference_sizes = {sizes[m] for m in members}
        if any(c is None for c in choices) or len(reference_sizes) != 1:
            continue  # a member may not be resized, or tied members differ: keep all as they are
        allowed = tuple(m for m in choices[0] if all(m in c for c in choices))  # type: ignore[union-attr]
        if options.size_mode == "model":
            allowed = options.multipliers
        size_groups.append(SizeGroup(group_name, members, reference_sizes.pop(), allowed or (1.0,)))
    grouped = {m: g.name for g in size_groups for m in g.layers}
    slots = [
        LayerSlot(**{**slot.__dict__, "size_group": grouped.get(slot.name)}) for slot in slots
    ]
    return SearchSpace(
        slots=tuple(slots),
        size_groups=tuple(size_groups),
        size_mode=options.size_mode,
        model_multipliers=tuple(options.multipliers),
        graph=graph,
        skipped=tuple(skipped),
    )
