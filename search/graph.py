"""A read-only view of a Keras model's layer graph: who feeds whom.

Keras 3 keeps the wiring in private node objects; the public ``get_config()`` has the same
facts (each layer's inbound ``keras_history``), so this module reads that instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import keras

__all__ = ["GraphError", "LayerNode", "ModelGraph", "read_graph", "INPUT_NODE"]

INPUT_NODE = "<input>"  # the implicit input of a Sequential model


class GraphError(ValueError):
    """The model's wiring is outside what the search can rewrite (names the layer)."""


@dataclass(frozen=True)
class LayerNode:
    """One layer and the names of the layers whose outputs it consumes, in call order."""

    name: str
    class_name: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class ModelGraph:
    """Layers in topological order, with the model's input and output layer names."""

    nodes: tuple[LayerNode, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __iter__(self) -> Iterator[LayerNode]:
        return iter(self.nodes)

    def node(self, name: str) -> LayerNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self, name: str) -> tuple[str, ...]:
        return tuple(n.name for n in self.nodes if name in n.inputs)


def _histories(value: object) -> Iterator[str]:
    """Yield producer layer names from a serialized call's (nested) arguments."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            yield value["config"]["keras_history"][0]
        else:
            for item in value.values():
                yield from _histories(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _histories(item)


def read_graph(model: keras.Model) -> ModelGraph:
    """Read the wiring of a Sequential or functional model.

    Raises:
        GraphError: a layer is called more than once (shared weights) or a nested model is
            used as a layer; the search cannot resize or quantize those consistently.
    """
    if isinstance(model, keras.Sequential):
        nodes = []
        previous = INPUT_NODE
        for layer in model.layers:
            nodes.append(LayerNode(layer.name, type(layer).__name__, (previous,)))
            previous = layer.name
        graph_nodes = (LayerNode(INPUT_NODE, "InputLayer", ()), *nodes)
        return ModelGraph(graph_nodes, (INPUT_NODE,), (previous,))

    config = model.get_config()
    if "layers" not in config or "output_layers" not in config:
        raise GraphError(f"model {model.name!r} is a subclassed model; save it as functional")
    nodes = []
    layer_names = {layer.name for layer in model.layers}
    for entry in config["layers"]:
        name = entry["config"]["name"] if "name" in entry["config"] else entry["name"]
        if name not in layer_names:
            raise GraphError(
                f"operation {name!r} ({entry['class_name']}) is a Keras op, not a layer; "
                "use the layer form (e.g. keras.layers.Add) so the search can rewrite it"
            )
        inbound = entry.get("inbound_nodes", [])
        if len(inbound) > 1:
            raise GraphError(f"layer {name!r} is called {len(inbound)} times (shared layer)")
        if entry["class_name"] in ("Functional", "Sequential", "Model"):
            raise GraphError(f"layer {name!r} is a nested model; flatten it into one model")
        producers = tuple(_histories(inbound[0])) if inbound else ()
        nodes.append(LayerNode(name, entry["class_name"], producers))
    inputs = tuple(item[0] for item in _as_list(config["input_layers"]))
    outputs = tuple(item[0] for item in _as_list(config["output_layers"]))
    return ModelGraph(tuple(nodes), inputs, outputs)


def _as_list(value: list) -> list[list]:
    # A single input or output is serialized as ['name', 0, 0], several as a list of those.
    return [value] if value and isinstance(value[0], str) else value
