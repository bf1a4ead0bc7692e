"""Turn a candidate spec into Keras models: one to train (QAT), one to deploy (plain float).

The trainable model is the reference rewired with QKeras layers and new sizes; it inherits the
reference's trained weights. A shrinking layer keeps the filters with the largest L1 norm (for
channel-tied layers, the largest summed norm, so the tie holds) and the next layer's input
channels are sliced to match; a growing layer keeps all its filters and initialises the new
ones, and the next layer gets zero weights for them, so the grown model starts out computing
the same function as the reference.

The deploy model has the same architecture with plain Keras layers, the original activation
functions, and each weight replaced by its quantized value: what TFLite should run.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from search.candidate import CandidateSpec
from search.channels import ELEMENTWISE_MERGES, is_channel_concat, is_channel_preserving, is_resizable
from search.graph import INPUT_NODE, ModelGraph
from search.space import SearchSpace

__all__ = ["BuildError", "build_candidate", "build_deploy_model"]

ChannelMap = list[int | None]  # candidate channel j holds reference channel map[j] (None: new)

_QKERAS_CLASS = {
    "Conv1D": "QConv1D",
    "Conv2D": "QConv2D",
    "DepthwiseConv2D": "QDepthwiseConv2D",
    "SeparableConv2D": "QSeparableConv2D",
    "Dense": "QDense",
}
# Which weight each QKeras layer quantizes, by constructor argument and variable attribute.
_KERNEL_ROLES = {
    "QDepthwiseConv2D": (("depthwise_quantizer", "depthwise_kernel"),),
    "QSeparableConv2D": (
        ("depthwise_quantizer", "depthwise_kernel"),
        ("pointwise_quantizer", "pointwise_kernel"),
    ),
}
_DEFAULT_KERNEL_ROLE = (("kernel_quantizer", "kernel"),)


class BuildError(RuntimeError):
    """A candidate could not be built from the reference (names the layer)."""


def build_candidate(
    reference: keras.Model, space: SearchSpace, spec: CandidateSpec, *, seed: int = 0
) -> keras.Model:
    """A QAT model for ``spec``, initialised from ``reference``'s trained weights.

    Raises:
        BuildError: ``spec`` resizes a layer the space keeps fixed, or sizes tied layers apart.
    """
    _check_sizes(space, spec)
    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(
        reference, clone_function=lambda layer: _quantized_clone(layer, spec)
    )
    _inherit_weights(reference, model, space, spec)
    return model


def build_deploy_model(trained: keras.Model, reference: keras.Model, spec: CandidateSpec) -> keras.Model:
    """A plain float model computing what ``trained`` computes with its quantized weights.

    Training-only activation quantizers are lowered to the reference's activation function.
    """
    plain = keras.models.clone_model(
        trained, clone_function=lambda layer: _plain_clone(layer, reference, spec)
    )
    for layer in trained.layers:
        target = plain.get_layer(layer.name)
        values = [np.asarray(v) for v in _quantized_weights(layer)]
        if values:
            target.set_weights(values)
    return plain


def _quantized_clone(layer: keras.layers.Layer, spec: CandidateSpec) -> keras.layers.Layer:
    config = layer.get_config()
    if layer.name not in spec:
        return type(layer).from_config(config)
    choice = spec[layer.name]
    attribute = "units" if type(layer).__name__ == "Dense" else "filters"
    if choice.size is not None and attribute in config:
        config[attribute] = choice.size
    if all(s.is_float for s in (choice.kernel, choice.bias, choice.activation)):
        return type(layer).from_config(config)
    import qkeras

    q_name = _QKERAS_CLASS[type(layer).__name__]
    for argument, _ in _KERNEL_ROLES.get(q_name, _DEFAULT_KERNEL_ROLE):
        config[argument] = choice.kernel.weight_quantizer()
    config["bias_quantizer"] = choice.bias.bias_quantizer()
    if not choice.activation.is_float:
        after_relu = config.get("activation") == "relu"
        config["activation"] = choice.activation.activation_quantizer(after_relu)
    return getattr(qkeras, q_name)(**config)


def _check_sizes(space: SearchSpace, spec: CandidateSpec) -> None:
    for slot in space.slots:
        if slot.name not in spec:
            raise BuildError(f"layer {slot.name!r}: the candidate has no choice for it")
        size = spec[slot.name].size
        if slot.size_group is None and size != slot.reference_size:
            raise BuildError(
                f"layer {slot.name!r}: size {size} but its size is fixed at {slot.reference_size}"
            )
    for group in space.size_groups:
        sizes = {spec[name].size for name in group.layers}
        if len(sizes) != 1:
            raise BuildError(f"tied layers {', '.join(group.layers)} must share one size, got {sorted(sizes)}")


def _plain_clone(layer: keras.layers.Layer, reference: keras.Model, spec: CandidateSpec) -> keras.layers.Layer:
    if layer.name not in spec:
        return type(layer).from_config(layer.get_config())
    base = type(reference.get_layer(layer.name))
    config = layer.get_config()
    for key in list(config):
        if key.endswith("_quantizer") or key.endswith("_range") or key == "mask":
            del config[key]
    config["activation"] = keras.activations.serialize(reference.get_layer(layer.name).activation)
    if isinstance(config["activation"], dict):
        config["activation"] = config["activation"].get("config", {}).get("name", "linear")
    # QKeras layers set constraints/initializers for their quantizers; the deploy model needs none.
    for key in ("kernel_constraint", "bias_constraint", "depthwise_constraint", "pointwise_constraint"):
        if key in config:
            config[key] = None
    return base.from_config(config)


def _quantized_weights(layer: keras.layers.Layer) -> list[object]:
    """The layer's weights as deployed: each through its QKeras quantizer where it has one."""
    depthwise = getattr(layer, "depthwise_quantizer_internal", None)
    quantizers = {
        "kernel": getattr(layer, "kernel_quantizer_internal", depthwise),
        "depthwise_kernel": getattr(layer, "depthwise_quantizer_internal", None),
        "pointwise_kernel": getattr(layer, "pointwise_quantizer_internal", None),
        "bias": getattr(layer, "bias_quantizer_internal", None),
    }
    values = []
    for variable in layer.weights:
        attribute = variable.path.rsplit("/", 1)[-1]
        quantizer = quantizers.get(attribute)
        values.append(quantizer(variable) if quantizer is not None else variable)
    return values


def _inherit_weights(
    reference: keras.Model, model: keras.Model, space: SearchSpace, spec: CandidateSpec
) -> None:
    kept = _kept_output_channels(reference, space, spec)
    maps: dict[str, ChannelMap] = {}
    graph: ModelGraph = space.graph
    for node in graph:
        if node.class_name == "InputLayer":
            width = _reference_channels(reference, node.name)
            maps[node.name] = list(range(width))
            continue
        ref_layer, new_layer = reference.get_layer(node.name), model.get_layer(node.name)
        incoming = [maps[name] for name in node.inputs]
        try:
            maps[node.name] = _transfer(ref_layer, new_layer, incoming, kept.get(node.name))
        except (ValueError, IndexError) as e:
            raise BuildError(f"layer {node.name!r}: cannot inherit reference weights: {e}") from e


def _reference_channels(reference: keras.Model, name: str) -> int:
    if name == INPUT_NODE:
        return int(reference.inputs[0].shape[-1])
    return int(reference.get_layer(name).output.shape[-1])


def _kept_output_channels(
    reference: keras.Model, space: SearchSpace, spec: CandidateSpec
) -> dict[str, ChannelMap]:
    """Per resized layer: the reference filters kept, then ``None`` for each added one."""
    kept: dict[str, ChannelMap] = {}
    for group in space.size_groups:
        size = spec[group.layers[0]].size
        assert size is not None
        norms = sum(_filter_l1_norms(reference.get_layer(name)) for name in group.layers)
        keep = min(size, group.reference_size)
        indices = sorted(int(i) for i in np.argsort(-norms, kind="stable")[:keep])
        for name in group.layers:
            kept[name] = [*indices, *[None] * (size - keep)]
    return kept


def _filter_l1_norms(layer: keras.layers.Layer) -> np.ndarray:
    weight = layer.pointwise_kernel if type(layer).__name__ == "SeparableConv2D" else layer.kernel
    values = np.abs(np.asarray(weight))
    return values.reshape(-1, values.shape[-1]).sum(axis=0)


def _transfer(
    ref: keras.layers.Layer, new: keras.layers.Layer, incoming: Sequence[ChannelMap], kept: ChannelMap | None
) -> ChannelMap:
    """Copy ``ref``'s weights into ``new`` through the channel maps; return the output map."""
    class_name = type(ref).__name__
    in_map = incoming[0] if incoming else []
    if is_resizable(ref):
        out_map = kept if kept is not None else list(range(int(ref.output.shape[-1])))
        _copy_resizable(ref, new, in_map, out_map)
        return out_map
    if class_name == "DepthwiseConv2D" and is_channel_preserving(ref):
        _copy_along(_depthwise_kernel(ref), _depthwise_kernel(new), {2: in_map})
        if ref.use_bias:
            _copy_along(ref.bias, new.bias, {0: in_map})
        return list(in_map)
    if class_name == "BatchNormalization" and is_channel_preserving(ref):
        for ref_var, new_var in zip(ref.weights, new.weights, strict=True):
            _copy_along(ref_var, new_var, {0: in_map})
        return list(in_map)
    if class_name == "Flatten":
        spatial = int(np.prod(ref.input.shape[1:-1])) if len(ref.input.shape) > 2 else 1
        width = int(ref.input.shape[-1])
        return [None if m is None else p * width + m for p in range(spatial) for m in in_map]
    if is_channel_concat(ref):
        out: ChannelMap = []
        offset = 0
        for parent_map, tensor in zip(incoming, ref.input, strict=True):
            out.extend(None if m is None else offset + m for m in parent_map)
            offset += int(tensor.shape[-1])
        return out
    if is_channel_preserving(ref) or class_name in ELEMENTWISE_MERGES:
        return list(in_map)
    # Not resizable and not channel-preserving: its inputs were kept at reference size.
    if ref.weights:
        new.set_weights(ref.get_weights())
    return list(range(int(ref.output.shape[-1])))


def _depthwise_kernel(layer: keras.layers.Layer) -> keras.Variable:
    # Keras 3 names it `kernel`; QKeras' QDepthwiseConv2D keeps the Keras 2 name.
    kernel = getattr(layer, "depthwise_kernel", None)
    return layer.kernel if kernel is None else kernel


def _copy_resizable(ref: keras.layers.Layer, new: keras.layers.Layer, in_map: ChannelMap, out_map: ChannelMap) -> None:
    if type(ref).__name__ == "SeparableConv2D":
        multiplier = int(ref.depth_multiplier)
        _copy_along(ref.depthwise_kernel, new.depthwise_kernel, {2: in_map})
        expanded = [None if m is None else m * multiplier + k for m in in_map for k in range(multiplier)]
        _copy_along(ref.pointwise_kernel, new.pointwise_kernel, {2: expanded, 3: out_map}, zero_new_rows=2)
    else:
        kernel_in_axis = len(ref.kernel.shape) - 2
        _copy_along(
            ref.kernel, new.kernel, {kernel_in_axis: in_map, kernel_in_axis + 1: out_map},
            zero_new_rows=kernel_in_axis,
        )
    if ref.use_bias:
        _copy_along(ref.bias, new.bias, {0: out_map})


def _copy_along(
    ref_var: keras.Variable,
    new_var: keras.Variable,
    maps: dict[int, ChannelMap],
    zero_new_rows: int | None = None,
) -> None:
    """new[idx] = ref[map[idx]] along the mapped axes; new entries keep their fresh values,
    except along ``zero_new_rows`` (new input channels), which are zeroed so a grown layer's
    predecessor does not change what the following layer computes."""
    ref_value = np.asarray(ref_var)
    value = np.array(new_var)
    if zero_new_rows is not None:
        new_rows = [j for j, m in enumerate(maps[zero_new_rows]) if m is None]
        index = [slice(None)] * value.ndim
        index[zero_new_rows] = new_rows
        value[tuple(index)] = 0.0
    new_pos = [
        [j for j, m in enumerate(maps.get(a, range(value.shape[a]))) if m is not None] for a in range(value.ndim)
    ]
    ref_pos = [[m for m in maps.get(a, range(value.shape[a])) if m is not None] for a in range(value.ndim)]
    value[np.ix_(*new_pos)] = ref_value[np.ix_(*ref_pos)]
    new_var.assign(value)
