"""Lowering: a trained candidate, as a plain float Keras model, becomes a deployable .tflite.

The builder hands over a model of standard layers whose weights already hold their quantized
values (a binary kernel is exactly +-scale) and a per-layer :data:`Precision` map. The map's
values pick one of four conversions (:func:`lowering_mode`):

=============================  =========  ==================================================
precisions in the map          mode       conversion
=============================  =========  ==================================================
none, or only ``float32``      float32    plain conversion
``float16`` (+ ``float32``)    float16    float16 weights (every layer's, ``float32`` ones too)
only ``int8``                  int8       full-integer int8, representative-dataset calibration
``int8`` and a float one       mixed      int8, with the float layers' ops denylisted through
                                          ``tf.lite.experimental.QuantizationDebugger``
=============================  =========  ==================================================

Layers the map does not name (pooling, flatten, softmax...) follow the graph: int8 in int8 and
mixed models. In a mixed model a ``float16`` layer runs in float32: the selective quantizer
keeps denylisted ops in float32 and cannot store some weights as float16 in the same pass. A
mixed map whose int8 layers all have no op of their own (an int8 ReLU layer fused into a float
conv) lowers as float32.
:attr:`LoweredModel.precision` records what the artifact does, not what was asked.

Input and output stay float32 by default, in every mode: every candidate of a search then
takes the same input array and yields comparable outputs, and the (de)quantize ops at the edges
are part of what the device measures, as they would be in an app that feeds float data.
``int8_io=True`` makes int8 and mixed models take and return int8 instead (microcontrollers).

The graph is traced with a static batch of 1 (``batch_size``): on-device latency and energy
are per single inference, and a static shape lets the converter fold shape arithmetic (a
Flatten becomes one RESHAPE instead of SHAPE, STRIDED_SLICE, PACK and RESHAPE).

Conversion goes through a frozen concrete function, so it writes no SavedModel to a temporary
directory; every TensorFlow object it makes is dropped before :func:`lower` returns, so hundreds
of conversions in one process neither grow memory nor leave files behind.

Not thread-safe: lower one model at a time per process. :func:`run_tflite` and
:func:`evaluate_tflite` use only ``ai_edge_litert`` and may run in any thread on their own
bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from search.quantizers import Scheme

if TYPE_CHECKING:
    import keras
    from ai_edge_litert.interpreter import Interpreter

__all__ = [
    "Precision",
    "LoweringMode",
    "LoweringError",
    "LoweredModel",
    "TfliteOp",
    "precision_for",
    "lowering_mode",
    "lower",
    "write_tflite",
    "run_tflite",
    "evaluate_tflite",
    "tflite_ops",
]

Precision = Literal["int8", "float16", "float32"]
LoweringMode = Literal["float32", "float16", "int8", "mixed"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# Clones of the model for a mixed lowering get layer names ``<name>__L<index>``; TensorFlow may
# append ``_<n>`` to a name scope, so a path component names layer <index> when it ends so.
_TOKEN = re.compile(r"__L(\d+)(?:_\d+)*$")
_EDGE_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_COMPUTE_TYPES = frozenset({"float32", "float16", "int8", "uint8", "int16"})


class LoweringError(Exception):
    """A model could not be lowered or run; the one-line message names the model or layer."""


def precision_for(kernel: Scheme, activation: Scheme) -> Precision:
    """The TFLite precision of a layer with these schemes.

    A non-float kernel of at most 8 bits lowers to ``int8``; a ``float16`` kernel to
    ``float16``; anything else to ``float32``. That includes ``fixed(M)`` with M > 8: an int8
    tensor cannot hold its grid, so int8 would merge its points. A ``fixed`` or ``po2`` grid of
    at most 8 bits is re-rounded by at most half an int8 step (see
    :attr:`~search.quantizers.Scheme.int8_exact`).

    The kernel decides alone. ``activation`` is taken so that callers pass a layer's whole
    choice and the rule can grow without changing them: int8 TFLite quantizes every activation
    to 8 bits by calibration whatever its training scheme was.
    """
    del activation  # see the docstring: int8 activations come from calibration
    if kernel.lowers_to_int8:
        return "int8"
    if kernel.is_float and kernel.bits == 16:
        return "float16"
    return "float32"


def lowering_mode(precision: Mapping[str, Precision]) -> LoweringMode:
    """Which conversion a precision map asks for (see the module docstring)."""
    values = set(precision.values())
    unknown = values - set(PRECISIONS)
    if unknown:
        raise LoweringError(f"unknown precision {sorted(unknown)!r}: expected one of {PRECISIONS}")
    if "int8" in values:
        return "int8" if values == {"int8"} else "mixed"
    return "float16" if "float16" in values else "float32"


@dataclass(frozen=True)
class LoweredModel:
    """A converted model.

    Attributes:
        tflite_bytes: The .tflite flatbuffer.
        precision: Per layer of the precision map, what the artifact does (``float16`` layers
            of a mixed model run ``float32``; ``float32`` layers of a float16 model store
            float16 weights).
        mode: ``float32``, ``float16``, ``int8`` or ``mixed``.
        float_layers: The map's layers that run in float, in the map's order.
        conversion_s: Wall time of the conversion. Units: s.
    """

    tflite_bytes: bytes = field(repr=False)
    precision: Mapping[str, Precision]
    mode: LoweringMode
    float_layers: tuple[str, ...]
    conversion_s: float

    @property
    def size_bytes(self) -> int:
        return len(self.tflite_bytes)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.tflite_bytes).hexdigest()


def lower(
    model: keras.Model,
    precision: Mapping[str, Precision],
    representative_x: np.ndarray,
    *,
    num_calibration: int = 100,
    int8_io: bool = False,
    batch_size: int | None = 1,
) -> LoweredModel:
    """Convert ``model`` to TFLite with the per-layer ``precision``.

    Args:
        model: A Functional or Sequential model with one input and one output; its weights
            already hold their quantized values.
        precision: Layer name -> precision; layers not named follow the graph.
        representative_x: Samples shaped like the model's input (batch first); int8 and mixed
            models calibrate on up to ``num_calibration`` of them, evenly spaced.
        num_calibration: How many samples calibrate activation ranges.
        int8_io: Int8 and mixed models take and return int8 instead of float32.
        batch_size: Static batch of the traced graph; ``None`` keeps it dynamic.

    Raises:
        LoweringError: a layer of the map is not in the model, a precision is unknown, the
            input cannot be traced, or the converter failed; the message names the model.
    """
    started = time.perf_counter()
    name = getattr(model, "name", type(model).__name__)
    _check_layers(model, precision)
    mode = lowering_mode(precision)
    input_shape, input_dtype = _single_input(model)
    if int8_io and mode not in ("int8", "mixed"):
        raise LoweringError(f"model {name!r}: int8_io needs an int8 layer, but the map is all {mode}")
    if num_calibration < 1:
        raise LoweringError(f"num_calibration must be >= 1, got {num_calibration}")
    if batch_size is not None and batch_size < 1:
        raise LoweringError(f"batch_size must be >= 1 or None, got {batch_size}")
    calibration = None
    if mode in ("int8", "mixed"):
        calibration = _calibration_data(name, representative_x, input_shape, input_dtype,
                                         num_calibration, batch_size or 1)

    try:
        with _quiet():
            mixed = None
            if mode == "mixed":
                assert calibration is not None
                mixed = _convert_mixed(model, precision, calibration, batch_size, int8_io)
                if mixed is None:  # every op belongs to a float layer: nothing is left to quantize
                    mode = "float32"
            if mixed is not None:
                tflite, realized = mixed
            else:
                tflite = _convert_uniform(model, mode, calibration, batch_size, int8_io)
                uniform: Precision = "int8" if mode == "int8" else mode  # type: ignore[assignment]
                realized = {layer: uniform for layer in precision}
    except LoweringError:
        raise
    except Exception as e:  # the converter raises anything from ValueError to ConverterError
        raise LoweringError(f"model {name!r}: {mode} conversion failed: {_one_line(e)}") from e
    float_layers = tuple(layer for layer, p in realized.items() if p != "int8")
    return LoweredModel(
        tflite_bytes=tflite,
        precision=realized,
        mode=mode,
        float_layers=float_layers,
        conversion_s=time.perf_counter() - started,
    )


def write_tflite(lowered: LoweredModel | bytes, path: str | os.PathLike[str]) -> str:
    """Write the model to ``path`` atomically (temp file, fsync, rename); returns its sha256."""
    data = lowered.tflite_bytes if isinstance(lowered, LoweredModel) else bytes(lowered)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
        raise
    return hashlib.sha256(data).hexdigest()


def run_tflite(
    tflite: bytes | str | os.PathLike[str],
    x: np.ndarray,
    *,
    batch_size: int = 256,
    num_threads: int = 1,
) -> np.ndarray:
    """The model's (first) output for every sample of ``x``, dequantized to float32.

    Float ``x`` is quantized with the input's parameters when the model takes int8. A model
    with a dynamic batch runs ``batch_size`` samples per call; one with a static batch runs in
    chunks of that batch (the last one zero-padded).

    Raises:
        LoweringError: the model cannot be loaded, ``x`` does not fit its input, or it fails.
    """
    interpreter = _interpreter(tflite, num_threads)
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    if len(inputs) != 1 or not outputs:
        raise LoweringError(f"{_label(tflite)}: has {len(inputs)} inputs and {len(outputs)} "
                            "outputs; only single-input models run here")
    inp, out = inputs[0], outputs[0]
    x = np.asarray(x)
    sample_shape = tuple(int(d) for d in inp["shape"][1:])
    if x.ndim == 0 or tuple(x.shape[1:]) != sample_shape:
        raise LoweringError(f"{_label(tflite)}: input of shape {x.shape} does not fit the model's "
                            f"(batch, {', '.join(map(str, sample_shape))})")
    if batch_size < 1:
        raise LoweringError(f"batch_size must be >= 1, got {batch_size}")
    dynamic = int(inp["shape_signature"][0]) == -1
    chunk = batch_size if dynamic else int(inp["shape"][0])
    results: list[np.ndarray] = []
    try:
        for start in range(0, len(x), chunk):
            part = x[start:start + chunk]
            n = len(part)
            if dynamic:
                if tuple(interpreter.get_input_details()[0]["shape"]) != (n, *sample_shape):
                    interpreter.resize_tensor_input(inp["index"], [n, *sample_shape])
                    interpreter.allocate_tensors()
            elif n < chunk:
                part = np.concatenate([part, np.zeros((chunk - n, *sample_shape), part.dtype)])
            interpreter.set_tensor(inp["index"], _quantize(part, inp))
            interpreter.invoke()
            results.append(_dequantize(interpreter.get_tensor(out["index"]), out)[:n])
    except (RuntimeError, ValueError) as e:
        raise LoweringError(f"{_label(tflite)}: inference failed: {_one_line(e)}") from e
    if not results:
        return np.zeros((0, *[int(d) for d in out["shape"][1:]]), np.float32)
    return np.concatenate(results)


def evaluate_tflite(
    tflite: bytes | str | os.PathLike[str],
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 256,
    num_threads: int = 1,
) -> float:
    """Top-1 accuracy of the model on ``(x, y)``: argmax of the last output axis.

    ``y`` holds class ids ``(n,)`` or one-hot rows ``(n, classes)``.

    Raises:
        LoweringError: as :func:`run_tflite`, or when ``x`` and ``y`` disagree in length or the
            model has a single output unit (argmax would always be 0).
    """
    y = np.asarray(y)
    labels = y.argmax(axis=-1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)
    if len(labels) != len(x):
        raise LoweringError(f"x has {len(x)} samples but y has {len(labels)}")
    if len(labels) == 0:
        raise LoweringError("cannot evaluate on zero samples")
    outputs = run_tflite(tflite, x, batch_size=batch_size, num_threads=num_threads)
    scores = outputs.reshape(len(outputs), -1)
    if scores.shape[1] < 2:
        raise LoweringError(f"{_label(tflite)}: one output unit; argmax accuracy needs >= 2")
    return float(np.mean(scores.argmax(axis=1) == labels))


@dataclass(frozen=True)
class TfliteOp:
    """One operator of a .tflite's main graph, read from the flatbuffer (no interpreter).

    Types are numpy-style names (``float32``, ``int8``...); ``""`` marks an absent optional
    input. ``constant_types`` are the types of the inputs that hold data in the file (weights,
    biases, shapes). ``inputs`` and ``outputs`` are tensor indices (-1: absent), and
    ``is_graph_output`` marks an op that writes one of the graph's outputs.
    """

    index: int
    opcode: str
    names: tuple[str, ...]
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    constant_types: tuple[str, ...]
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()
    is_graph_output: bool = False

    @property
    def locations(self) -> tuple[str, ...]:
        """The TensorFlow op names this op came from (fused ops have several)."""
        return tuple(loc for name in self.names for loc in name.split(";") if loc)


def tflite_ops(tflite: bytes | str | os.PathLike[str]) -> tuple[TfliteOp, ...]:
    """The operators of the model's first subgraph, in execution order."""
    from ai_edge_litert import schema_py_generated as schema

    opcodes, types = _tables()

    def type_of(tensor: object) -> str:
        code = tensor.Type()  # type: ignore[attr-defined]
        return types.get(code, f"type{code}")

    data = _read_bytes(tflite)
    if data[4:8] != b"TFL3":
        raise LoweringError(f"{_label(tflite)}: not a .tflite (no TFL3 identifier)")
    try:
        model = schema.Model.GetRootAs(data, 0)
        codes = [max(c.BuiltinCode(), c.DeprecatedBuiltinCode())
                 for c in (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))]
        graph = model.Subgraphs(0)
        graph_outputs = {int(t) for t in graph.OutputsAsNumpy()} if graph.OutputsLength() else set()
        ops: list[TfliteOp] = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            inputs = [int(t) for t in op.InputsAsNumpy()] if op.InputsLength() else []
            outputs = [int(t) for t in op.OutputsAsNumpy()] if op.OutputsLength() else []
            constants = [t for t in inputs if t >= 0 and _is_constant(model, graph.Tensors(t))]
            ops.append(TfliteOp(
                index=i,
                opcode=opcodes.get(codes[op.OpcodeIndex()], "CUSTOM"),
                names=tuple(graph.Tensors(t).Name().decode() for t in outputs),
                input_types=tuple(type_of(graph.Tensors(t)) if t >= 0 else "" for t in inputs),
                output_types=tuple(type_of(graph.Tensors(t)) for t in outputs),
                constant_types=tuple(type_of(graph.Tensors(t)) for t in constants),
                inputs=tuple(inputs),
                outputs=tuple(outputs),
                is_graph_output=bool(graph_outputs.intersection(outputs)),
            ))
    except Exception as e:  # a truncated or foreign buffer fails anywhere in the reader
        raise LoweringError(f"{_label(tflite)}: not a readable .tflite: {_one_line(e)}") from e
    return tuple(ops)


# --- conversion ---------------------------------------------------------------------------


def _convert_uniform(
    model: keras.Model,
    mode: LoweringMode,
    calibration: Callable[[], Iterator[list[np.ndarray]]] | None,
    batch_size: int | None,
    int8_io: bool,
) -> bytes:
    import tensorflow as tf

    with _converter(model, batch_size) as converter:
        if mode == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif mode == "int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = calibration
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        return bytes(converter.convert())


def _convert_mixed(
    model: keras.Model,
    precision: Mapping[str, Precision],
    calibration: Callable[[], Iterator[list[np.ndarray]]],
    batch_size: int | None,
    int8_io: bool,
) -> tuple[bytes, dict[str, Precision]] | None:
    """Selective int8: the float layers' ops are denylisted by their TFLite tensor names.

    Keras and TensorFlow name every op after the name scopes it was traced in, and TensorFlow
    may append ``_1``, ``_2``... to a scope (so ``conv2d``'s ops can come out under
    ``conv2d_1/``, which is also another layer's name). To make the mapping exact the model is
    cloned with layer names ``<name>__L<index>`` and the same weights; a TFLite op belongs to
    every layer whose token appears in one of its locations (a fused conv + ReLU layer names
    both). The denylist is the output tensor names of the calibrated model's ops that belong to
    a float layer; the quantized result is then checked op by op. ``None`` when every op
    belongs to a float layer (an int8 ReLU layer fused into a float conv has no op of its own).
    """
    import tensorflow as tf

    names = [layer.name for layer in model.layers]
    tokens = {layer: index for index, layer in enumerate(names)}
    tail = _output_chain(model)
    float_wanted = [layer for layer, p in precision.items() if p != "int8"]
    clone = _renamed_clone(model, tokens)
    try:
        with _converter(clone, batch_size) as converter:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = calibration
            options = tf.lite.experimental.QuantizationDebugOptions(fully_quantize=int8_io)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=calibration, debug_options=options)
            try:
                calibrated = tflite_ops(debugger.calibrated_model)
                owners = _attribute(calibrated, names, tail)
                for layer in float_wanted:
                    if not any(layer in owners[op.index] for op in calibrated):
                        raise LoweringError(f"model {model.name!r}: layer {layer!r} has no op in "
                                            "the converted graph to keep float")
                denylist = sorted({n for op in calibrated
                                   if owners[op.index] & set(float_wanted) for n in op.names})
                left = [op for op in calibrated if op.opcode not in _EDGE_OPS
                        and set(op.output_types) & _COMPUTE_TYPES and not set(op.names) <= set(denylist)]
                if not left:
                    return None
                debugger.options = tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_nodes=denylist, fully_quantize=int8_io)
                tflite = bytes(debugger.get_nondebug_quantized_model())
            finally:
                del debugger
    finally:
        del clone
    realized = _realized_precision(model.name, tflite, precision, names, tail)
    return tflite, realized


def _realized_precision(
    model_name: str,
    tflite: bytes,
    precision: Mapping[str, Precision],
    names: list[str],
    tail: tuple[str, ...],
) -> dict[str, Precision]:
    """Per layer, whether its ops compute in int8 or float in the converted model.

    A layer's deciding ops are those that read a float or integer constant other than int32
    (its weights) or, for a weightless layer, all of its compute ops; quantize/dequantize
    edges and shape arithmetic do not count.
    """
    every = tflite_ops(tflite)
    owners = _attribute(every, names, tail)
    ops = [op for op in every if op.opcode not in _EDGE_OPS]
    realized: dict[str, Precision] = {}
    for layer, wanted in precision.items():
        mine = [op for op in ops if layer in owners[op.index]
                and set(op.output_types) & _COMPUTE_TYPES]
        weighted = [op for op in mine if set(op.constant_types) & _COMPUTE_TYPES]
        deciding = weighted or mine
        if not deciding:
            realized[layer] = wanted if wanted == "int8" else "float32"
            continue
        is_float = any(t.startswith("float") for op in deciding for t in op.output_types)
        if wanted != "int8" and not is_float:
            raise LoweringError(f"model {model_name!r}: layer {layer!r} was denylisted but its ops "
                                "were quantized to int8")
        realized[layer] = "float32" if is_float else "int8"
    return realized


def _attribute(ops: tuple[TfliteOp, ...], names: list[str], tail: tuple[str, ...]) -> dict[int, set[str]]:
    """Op index -> the layers it belongs to.

    An op belongs to every layer whose token is in one of its locations. The op that computes
    the graph's output is named after the output ("Identity"), not after its layer: when it
    has no token it belongs to ``tail``, the layers that may have been fused into it.
    """
    owners = {op.index: _owners(op, names) for op in ops}
    producer = {t: op for op in ops for t in op.outputs}
    for op in ops:
        if not op.is_graph_output:
            continue
        source: TfliteOp | None = op
        while source is not None and source.opcode in _EDGE_OPS and source.inputs:
            source = producer.get(source.inputs[0])
        if source is not None and not owners[source.index]:
            owners[source.index] = set(tail)
    return owners


def _output_chain(model: keras.Model) -> tuple[str, ...]:
    """The output layer and, back through weightless one-input layers, the first weighted one.

    Those are the layers a converter may fuse into the op that computes the output (a Conv2D
    followed by a ReLU layer becomes one CONV_2D). Read from ``get_config()``'s wiring; empty
    when the wiring is not a plain single-output graph.
    """
    import keras

    producers: dict[str, tuple[str, ...]] = {}
    if isinstance(model, keras.Sequential):
        order = [layer.name for layer in model.layers]
        producers = {name: (order[i - 1],) if i else () for i, name in enumerate(order)}
        output = order[-1] if order else ""
    else:
        config = model.get_config()
        outputs = config.get("output_layers") or []
        if outputs and isinstance(outputs[0], str):
            outputs = [outputs]
        if len(outputs) != 1:
            return ()
        output = outputs[0][0]
        for entry in config.get("layers", []):
            inbound = entry.get("inbound_nodes", [])
            history = _histories(inbound[0]) if len(inbound) == 1 else ()
            producers[entry.get("name", entry["config"].get("name"))] = tuple(history)
    chain = [output] if output else []
    layers = {layer.name: layer for layer in model.layers}
    while chain and chain[-1] in layers and not layers[chain[-1]].weights:
        before = producers.get(chain[-1], ())
        if len(before) != 1 or before[0] in chain:
            break
        chain.append(before[0])
    return tuple(chain)


def _histories(value: object) -> list[str]:
    """Producer layer names in a serialized call's (nested) arguments."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            return [value["config"]["keras_history"][0]]
        return [name for item in value.values() for name in _histories(item)]
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _histories(item)]
    return []


def _owners(op: TfliteOp, names: list[str]) -> set[str]:
    found: set[str] = set()
    for location in op.locations:
        for component in location.split("/"):
            match = _TOKEN.search(component)
            if match is not None and int(match.group(1)) < len(names):
                found.add(names[int(match.group(1))])
    return found


def _renamed_clone(model: keras.Model, tokens: Mapping[str, int]) -> keras.Model:
    """A copy of ``model`` whose top-level layers are named ``<name>__L<index>``."""
    import keras

    clones: dict[int, keras.layers.Layer] = {}

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if id(layer) not in clones:  # a shared layer is cloned once
            config = layer.get_config()
            config["name"] = f"{layer.name}__L{tokens[layer.name]}"
            clones[id(layer)] = layer.__class__.from_config(config)
        return clones[id(layer)]

    try:
        clone = keras.models.clone_model(model, clone_function=clone_layer)
        for layer in model.layers:
            if layer.name in tokens and layer.weights:
                clone.get_layer(f"{layer.name}__L{tokens[layer.name]}").set_weights(layer.get_weights())
    except Exception as e:
        raise LoweringError(f"model {model.name!r}: cannot clone it to name its layers for a mixed "
                            f"lowering ({_one_line(e)}); use a Functional or Sequential model "
                            "of standard layers") from e
    return clone


@contextlib.contextmanager
def _converter(model: keras.Model, batch_size: int | None) -> Iterator[object]:
    """A TFLite converter from a frozen concrete function of ``model(x, training=False)``."""
    import tensorflow as tf

    input_shape, input_dtype = _single_input(model)
    spec = tf.TensorSpec((batch_size, *input_shape), dtype=input_dtype, name="input")
    function = tf.function(lambda x: model(x, training=False), input_signature=[spec],
                           autograph=False)
    concrete = function.get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    # Freeze in memory instead of round-tripping a SavedModel through a temporary directory.
    converter.experimental_lower_to_saved_model = False
    try:
        yield converter
    finally:
        del converter, concrete, function


def _calibration_data(
    name: str,
    x: np.ndarray,
    input_shape: tuple[int, ...],
    input_dtype: str,
    count: int,
    batch: int,
) -> Callable[[], Iterator[list[np.ndarray]]]:
    x = np.asarray(x)
    if x.ndim == 0 or tuple(x.shape[1:]) != input_shape:
        raise LoweringError(f"model {name!r}: representative_x of shape {x.shape} does not fit "
                            f"the input (batch, {', '.join(map(str, input_shape))})")
    if len(x) < batch:
        raise LoweringError(f"model {name!r}: int8 needs representative samples, got {len(x)}")
    index = np.unique(np.linspace(0, len(x) - 1, num=min(count, len(x))).round().astype(int))
    samples = x[index].astype(input_dtype)
    steps = max(1, len(samples) // batch)

    def dataset() -> Iterator[list[np.ndarray]]:
        for step in range(steps):
            yield [samples[step * batch:(step + 1) * batch]]

    return dataset


def _check_layers(model: keras.Model, precision: Mapping[str, Precision]) -> None:
    known = {layer.name for layer in model.layers}
    for layer, value in precision.items():
        if layer not in known:
            raise LoweringError(f"model {model.name!r}: layer {layer!r} of the precision map is "
                                "not one of its (top-level) layers")
        if value not in PRECISIONS:
            raise LoweringError(f"model {model.name!r}: layer {layer!r} has unknown precision "
                                f"{value!r}; expected one of {PRECISIONS}")


def _single_input(model: keras.Model) -> tuple[tuple[int, ...], str]:
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError) as e:
        raise LoweringError(f"model {model.name!r}: no defined input ({_one_line(e)}); build it "
                            "from keras.Input") from e
    if len(inputs) != 1 or len(outputs) != 1:
        raise LoweringError(f"model {model.name!r}: has {len(inputs)} inputs and {len(outputs)} "
                            "outputs; lowering takes one of each")
    shape = tuple(inputs[0].shape)[1:]
    if any(d is None for d in shape):
        raise LoweringError(f"model {model.name!r}: input shape {tuple(inputs[0].shape)} must be "
                            "static except the batch")
    return tuple(int(d) for d in shape), str(inputs[0].dtype)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the converter's Python warnings (deprecated tf.lite.Interpreter inside it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- running and reading ------------------------------------------------------------------


def _interpreter(tflite: bytes | str | os.PathLike[str], num_threads: int) -> Interpreter:
    from ai_edge_litert.interpreter import Interpreter

    data = _read_bytes(tflite)
    if data[4:8] != b"TFL3":
        raise LoweringError(f"{_label(tflite)}: not a .tflite (no TFL3 identifier)")
    try:
        interpreter = Interpreter(model_content=data, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as e:
        raise LoweringError(f"{_label(tflite)}: cannot load: {_one_line(e)}") from e
    return interpreter


def _quantize(x: np.ndarray, detail: Mapping[str, object]) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])  # type: ignore[call-overload]
    if dtype.kind == "f" or x.dtype.kind != "f":
        return x.astype(dtype, copy=False)
    scale, zero_point = detail["quantization"]  # type: ignore[misc]
    if not scale:
        return x.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: Mapping[str, object]) -> np.ndarray:
    scale, zero_point = detail["quantization"]  # type: ignore[misc]
    if y.dtype.kind in "iu" and scale:
        return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return y.astype(np.float32)


def _read_bytes(tflite: bytes | str | os.PathLike[str]) -> bytes:
    if isinstance(tflite, (bytes, bytearray, memoryview)):
        return bytes(tflite)
    try:
        return Path(tflite).read_bytes()
    except OSError as e:
        raise LoweringError(f"{tflite}: cannot read: {e.strerror or e}") from e


def _label(tflite: bytes | str | os.PathLike[str]) -> str:
    if isinstance(tflite, (bytes, bytearray, memoryview)):
        return f"tflite <{len(tflite)} bytes, sha256 {hashlib.sha256(tflite).hexdigest()[:12]}>"
    return f"tflite {str(tflite)!r}"


def _is_constant(model: object, tensor: object) -> bool:
    buffer = model.Buffers(tensor.Buffer())  # type: ignore[attr-defined]
    return buffer is not None and (buffer.DataLength() > 0 or buffer.Offset() > 1)


@functools.cache
def _tables() -> tuple[dict[int, str], dict[int, str]]:
    """Opcode and tensor-type names of the flatbuffer schema, by their numbers."""
    from ai_edge_litert import schema_py_generated as schema

    def names(enum: type) -> dict[int, str]:
        return {v: k for k, v in vars(enum).items() if not k.startswith("_") and isinstance(v, int)}

    types = {code: name.lower() for code, name in names(schema.TensorType).items()}
    return names(schema.BuiltinOperator), types


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(error).__name__)
