"""Which layers' channel counts are tied together, and which may not change at all.

Every tensor's channel count is set by a *source*: a resizable layer (Conv, SeparableConv,
Dense), or something the search may not resize (the model input, an unsupported layer).
Channel-preserving layers (BatchNorm, activations, pooling, Flatten…) pass their input's
source on; element-wise merges (Add, Multiply…) force all their inputs to one source; a
concatenation is several sources side by side. Model outputs keep their size.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from search.graph import ModelGraph

__all__ = [
    "QUANTIZABLE",
    "RESIZABLE",
    "CHANNEL_PRESERVING",
    "ELEMENTWISE_MERGES",
    "SizeGroups",
    "find_size_groups",
    "size_attribute",
]

QUANTIZABLE = ("Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense")
RESIZABLE = ("Conv1D", "Conv2D", "SeparableConv2D", "Dense")
CHANNEL_PRESERVING = (
    "InputLayer", "BatchNormalization", "Activation", "ReLU", "LeakyReLU", "ELU",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D", "Cropping1D", "Cropping2D",
    "UpSampling1D", "UpSampling2D", "Flatten", "Identity", "Rescaling", "ActivityRegularization",
)  # fmt: skip
ELEMENTWISE_MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")

# The float-only layers that still carry weights the search knows how to slice.
SLICEABLE_WEIGHTED = ("BatchNormalization",)


def size_attribute(layer: keras.layers.Layer) -> str | None:
    """``filters`` or ``units`` for a resizable layer, else ``None``."""
    name = type(layer).__name__
    if name == "Dense":
        return "units"
    if name in RESIZABLE:
        return "filters"
    return None


# Activations that mix channels (a new channel would enter every output's denominator).
_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


def is_channel_preserving(layer: keras.layers.Layer) -> bool:
    """Whether channel j of the output depends on channel j of the input alone."""
    name = type(layer).__name__
    if name == "DepthwiseConv2D":
        return int(layer.depth_multiplier) == 1
    if name == "Activation":
        activation = getattr(layer.activation, "__name__", str(layer.activation))
        return activation not in _CHANNEL_MIXING_ACTIVATIONS
    if name == "BatchNormalization":
        return _on_last_axis(layer, layer.axis)
    return name in CHANNEL_PRESERVING


def is_channel_concat(layer: keras.layers.Layer) -> bool:
    return type(layer).__name__ == "Concatenate" and _on_last_axis(layer, layer.axis)


def _on_last_axis(layer: keras.layers.Layer, axis: object) -> bool:
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    rank = len(layer.output.shape)
    return len(axes) == 1 and int(axes[0]) in (-1, rank - 1)


def is_resizable(layer: keras.layers.Layer) -> bool:
    return type(layer).__name__ in RESIZABLE and int(getattr(layer, "groups", 1)) == 1


@dataclass(frozen=True)
class SizeGroups:
    """Resizable layers grouped by tied channel count.

    Attributes:
        groups: Group name -> member layer names (in model order). A group is named after its
            first member, joined with ``+`` when several layers are tied.
        fixed: Resizable layers whose size must stay as in the reference, with the reason.
    """

    groups: dict[str, tuple[str, ...]]
    fixed: dict[str, str]

    def group_of(self, layer_name: str) -> str | None:
        for group, members in self.groups.items():
            if layer_name in members:
                return group
        return None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.fixed_reason: dict[str, str] = {}

    def find(self, item: str) -> str:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: str, b: str) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        self.parent[root_b] = root_a
        if root_b in self.fixed_reason:
            self.fixed_reason.setdefault(root_a, self.fixed_reason.pop(root_b))

    def fix(self, item: str, reason: str) -> None:
        self.fixed_reason.setdefault(self.find(item), reason)

    def reason(self, item: str) -> str | None:
        return self.fixed_reason.get(self.find(item))


def find_size_groups(model: keras.Model, graph: ModelGraph) -> SizeGroups:
    """Group the model's resizable layers by tied channel count (see module docstring)."""
    sets = _UnionFind()
    # Each tensor's channels as a tuple of (source, width) segments (several after a Concatenate).
    segments: dict[str, tuple[tuple[str, int], ...]] = {}
    for node in graph:
        if node.class_name == "InputLayer":
            segments[node.name] = ((f"input:{node.name}", 0),)
            sets.fix(f"input:{node.name}", "it is fed by the model input")
            continue
        layer = model.get_layer(node.name)
        incoming = [segments[name] for name in node.inputs]
        if is_resizable(layer):
            segments[node.name] = ((node.name, int(layer.output.shape[-1])),)
            sets.find(node.name)
        elif is_channel_preserving(layer) and len(incoming) == 1:
            segments[node.name] = incoming[0]
        elif node.class_name in ELEMENTWISE_MERGES and _same_layout(incoming):
            for parts in zip(*incoming, strict=True):  # _same_layout: equal segment counts
                for source, _ in parts[1:]:
                    sets.union(parts[0][0], source)
            segments[node.name] = incoming[0]
        elif is_channel_concat(layer):
            segments[node.name] = tuple(part for parts in incoming for part in parts)
        else:
            for parts in incoming:
                for source, _ in parts:
                    sets.fix(source, f"it feeds {node.class_name} layer {node.name!r}")
            segments[node.name] = ((f"fixed:{node.name}", 0),)
            sets.fix(f"fixed:{node.name}", f"{node.class_name} is not resizable")
    for output in graph.outputs:
        for source, _ in segments[output]:
            sets.fix(source, "it sets the model's output size")

    groups: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for node in graph:
        if node.class_name == "InputLayer" or not is_resizable(model.get_layer(node.name)):
            continue
        reason = sets.reason(node.name)
        if reason is not None:
            fixed[node.name] = reason
        else:
            groups.setdefault(sets.find(node.name), []).append(node.name)
    named = {"+".join(members): tuple(members) for members in groups.values()}
    return SizeGroups(named, fixed)


def _same_layout(incoming: list[tuple[tuple[str, int], ...]]) -> bool:
    """Whether every merge input is cut into segments of the same widths at the same places."""
    return len({tuple(width for _, width in parts) for parts in incoming}) == 1
