"""Lowering a float Keras model to .tflite in each mode, checked op by op in the flatbuffer."""

from __future__ import annotations

import hashlib
import os
import tempfile

import keras
import numpy as np
import pytest

from search.lowering import (
    LoweredModel,
    LoweringError,
    TfliteOp,
    evaluate_tflite,
    lower,
    lowering_mode,
    precision_for,
    run_tflite,
    tflite_ops,
    write_tflite,
)
from search.quantizers import parse_scheme

WEIGHTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}


def _tiny(names: tuple[str, str, str] = ("c1", "c2", "fc"), seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name=names[0])(inp)
    x = keras.layers.Conv2D(4, 3, name=names[1])(x)
    x = keras.layers.ReLU(name="act")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(10, name=names[2], bias_initializer="random_normal")(x)
    return keras.Model(inp, keras.layers.Softmax(name="sm")(x), name="tiny")


@pytest.fixture(scope="module")
def tiny() -> keras.Model:
    return _tiny()


@pytest.fixture(scope="module")
def x8() -> np.ndarray:
    return np.random.default_rng(0).random((40, 8, 8, 1)).astype(np.float32)


def _weighted_ops(tflite: bytes) -> list[TfliteOp]:
    return [op for op in tflite_ops(tflite) if op.opcode in WEIGHTED]


# --- the precision rule -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernel", "expected"),
    [("binary", "int8"), ("ternary", "int8"), ("po2(4)", "int8"), ("fixed(2)", "int8"),
     ("fixed(8)", "int8"), ("fixed(9)", "float32"), ("fixed(16)", "float32"),
     ("float16", "float16"), ("float32", "float32")],
)
def test_precision_follows_the_kernel(kernel: str, expected: str) -> None:
    assert precision_for(parse_scheme(kernel), parse_scheme("fixed(4)")) == expected
    assert precision_for(parse_scheme(kernel), parse_scheme("float32")) == expected


def test_lowering_mode_from_the_map() -> None:
    assert lowering_mode({}) == "float32"
    assert lowering_mode({"a": "float32"}) == "float32"
    assert lowering_mode({"a": "float16", "b": "float32"}) == "float16"
    assert lowering_mode({"a": "int8", "b": "int8"}) == "int8"
    assert lowering_mode({"a": "int8", "b": "float16"}) == "mixed"
    with pytest.raises(LoweringError, match="int4"):
        lowering_mode({"a": "int4"})  # type: ignore[dict-item]


# --- the four modes -----------------------------------------------------------------------


def test_float32_is_plain_float(tiny: keras.Model, x8: np.ndarray) -> None:
    lowered = lower(tiny, {"c1": "float32"}, x8)
    assert lowered.mode == "float32" and lowered.float_layers == ("c1",)
    ops = tflite_ops(lowered.tflite_bytes)
    assert not {"QUANTIZE", "DEQUANTIZE"} & {op.opcode for op in ops}
    for op in _weighted_ops(lowered.tflite_bytes):
        assert set(op.output_types) == {"float32"}
        assert set(op.constant_types) == {"float32"}
    assert lowered.conversion_s > 0
    np.testing.assert_allclose(run_tflite(lowered.tflite_bytes, x8), tiny.predict(x8, verbose=0),
                               atol=1e-5)


def test_float16_stores_half_weights_and_computes_float(tiny: keras.Model, x8: np.ndarray) -> None:
    lowered = lower(tiny, {"c1": "float16", "fc": "float32"}, x8)
    assert lowered.mode == "float16"
    assert dict(lowered.precision) == {"c1": "float16", "fc": "float16"}  # what the file does
    ops = tflite_ops(lowered.tflite_bytes)
    half = [op for op in ops if op.opcode == "DEQUANTIZE"]
    assert len(half) >= 3 and all(op.constant_types == ("float16",) for op in half)
    for op in _weighted_ops(lowered.tflite_bytes):
        assert set(op.output_types) == {"float32"} and "float16" not in op.constant_types
    np.testing.assert_allclose(run_tflite(lowered.tflite_bytes, x8), tiny.predict(x8, verbose=0),
                               atol=2e-3)


def test_int8_is_full_integer_with_float_edges(tiny: keras.Model, x8: np.ndarray) -> None:
    lowered = lower(tiny, {"c1": "int8", "c2": "int8", "fc": "int8"}, x8)
    assert lowered.mode == "int8" and lowered.float_layers == ()
    ops = tflite_ops(lowered.tflite_bytes)
    assert ops[0].opcode == "QUANTIZE" and ops[0].input_types == ("float32",)
    assert ops[-1].opcode == "DEQUANTIZE" and ops[-1].output_types == ("float32",)
    for op in ops[1:-1]:
        assert "float32" not in op.input_types + op.output_types, op
    weighted = _weighted_ops(lowered.tflite_bytes)
    assert len(weighted) == 3
    for op in weighted:
        assert op.output_types == ("int8",) and op.constant_types[0] == "int8"
    out = run_tflite(lowered.tflite_bytes, x8)
    np.testing.assert_allclose(out, tiny.predict(x8, verbose=0), atol=0.02)


def test_mixed_keeps_only_the_denylisted_layer_float(tiny: keras.Model, x8: np.ndarray) -> None:
    lowered = lower(tiny, {"c1": "int8", "c2": "float32", "fc": "int8"}, x8)
    assert lowered.mode == "mixed"
    assert dict(lowered.precision) == {"c1": "int8", "c2": "float32", "fc": "int8"}
    assert lowered.float_layers == ("c2",)
    c1, c2, fc = _weighted_ops(lowered.tflite_bytes)  # execution order
    assert c2.input_types == ("float32", "float32", "float32") and c2.output_types == ("float32",)
    assert c2.constant_types == ("float32", "float32")
    for op in (c1, fc):
        assert op.output_types == ("int8",) and op.constant_types[0] == "int8"
    opcodes = [op.opcode for op in tflite_ops(lowered.tflite_bytes)]
    # float edges of the model, and a dequantize/quantize pair around the float conv
    assert opcodes[0] == "QUANTIZE" and opcodes[-1] == "DEQUANTIZE"
    assert opcodes.count("QUANTIZE") == 2 and opcodes.count("DEQUANTIZE") == 2
    np.testing.assert_allclose(run_tflite(lowered.tflite_bytes, x8), tiny.predict(x8, verbose=0),
                               atol=0.02)


def test_flatbuffer_reader_agrees_with_the_interpreter(tiny: keras.Model, x8: np.ndarray) -> None:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    lowered = lower(tiny, {"c1": "int8", "c2": "float32", "fc": "int8"}, x8)
    interpreter = Interpreter(
        model_content=lowered.tflite_bytes,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    tensors = interpreter.get_tensor_details()
    ops = tflite_ops(lowered.tflite_bytes)
    details = interpreter._get_ops_details()  # the same walk as the debugger's own
    assert [d["op_name"] for d in details] == [op.opcode for op in ops]
    for detail, op in zip(details, ops, strict=True):
        assert tuple(tensors[i]["name"] for i in detail["outputs"]) == op.names
        assert tuple(np.dtype(tensors[i]["dtype"]).name for i in detail["outputs"]) == op.output_types


@pytest.mark.parametrize("floated", ["conv2d", "conv2d_1"])
def test_denylist_tells_apart_names_tensorflow_renames(floated: str, x8: np.ndarray) -> None:
    # TensorFlow traces layer conv2d under the scope "conv2d_1", the other layer's name.
    model = _tiny(("conv2d", "conv2d_1", "dense"))
    precision = {"conv2d": "int8", "conv2d_1": "int8", "dense": "int8"} | {floated: "float32"}
    lowered = lower(model, precision, x8)
    first, second, dense = _weighted_ops(lowered.tflite_bytes)
    float_op, int_op = (first, second) if floated == "conv2d" else (second, first)
    assert float_op.output_types == ("float32",) and float_op.constant_types[0] == "float32"
    assert int_op.output_types == ("int8",) and int_op.constant_types[0] == "int8"
    assert dense.output_types == ("int8",)
    assert lowered.float_layers == (floated,)


def test_output_layer_can_be_kept_float(x8: np.ndarray) -> None:
    # The op computing the model's output is named after the output ("Identity"), not its layer.
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(x), name="head")
    lowered = lower(model, {"c1": "int8", "fc": "float32"}, x8)
    conv, dense = _weighted_ops(lowered.tflite_bytes)
    assert dense.is_graph_output and dense.output_types == ("float32",)
    assert dense.constant_types[0] == "float32" and conv.output_types == ("int8",)
    assert lowered.float_layers == ("fc",)
    int8_head = lower(model, {"c1": "float32", "fc": "int8"}, x8)
    conv, dense = _weighted_ops(int8_head.tflite_bytes)
    assert conv.output_types == ("float32",) and dense.output_types == ("int8",)
    assert dict(int8_head.precision) == {"c1": "float32", "fc": "int8"}


def test_layers_fused_into_the_output_op_follow_the_float_layer(x8: np.ndarray) -> None:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="c1")(inp)
    x = keras.layers.Conv2D(4, 3, name="c2")(x)
    model = keras.Model(inp, keras.layers.ReLU(name="relu")(x), name="fused")
    lowered = lower(model, {"c1": "int8", "c2": "float32", "relu": "int8"}, x8)
    first, second = _weighted_ops(lowered.tflite_bytes)  # c2 and relu are one CONV_2D
    assert first.output_types == ("int8",) and second.output_types == ("float32",)
    assert dict(lowered.precision) == {"c1": "int8", "c2": "float32", "relu": "float32"}
    # the int8 relu has no op of its own once c1 and c2 stay float: a float32 model
    alone = lower(model, {"c1": "float16", "c2": "float32", "relu": "int8"}, x8)
    assert alone.mode == "float32" and alone.float_layers == ("c1", "c2", "relu")
    assert all(op.output_types == ("float32",) for op in _weighted_ops(alone.tflite_bytes))


def test_mixed_with_float16_layer_runs_it_in_float32(tiny: keras.Model, x8: np.ndarray) -> None:
    lowered = lower(tiny, {"c1": "float16", "c2": "int8", "fc": "int8"}, x8)
    assert lowered.mode == "mixed"
    assert lowered.precision["c1"] == "float32" and lowered.float_layers == ("c1",)
    first = _weighted_ops(lowered.tflite_bytes)[0]
    assert first.input_types[0] == "float32" and first.output_types == ("float32",)


def test_int8_io_flag_makes_integer_edges(tiny: keras.Model, x8: np.ndarray) -> None:
    from ai_edge_litert.interpreter import Interpreter

    for precision in ({"c1": "int8", "c2": "int8", "fc": "int8"},
                      {"c1": "int8", "c2": "float32", "fc": "int8"}):
        lowered = lower(tiny, precision, x8, int8_io=True)
        interpreter = Interpreter(model_content=lowered.tflite_bytes)
        assert interpreter.get_input_details()[0]["dtype"] == np.int8
        assert interpreter.get_output_details()[0]["dtype"] == np.int8
        # run_tflite quantizes float input and dequantizes the output
        np.testing.assert_allclose(run_tflite(lowered.tflite_bytes, x8),
                                   tiny.predict(x8, verbose=0), atol=0.02)
    with pytest.raises(LoweringError, match="int8_io"):
        lower(tiny, {"c1": "float32"}, x8, int8_io=True)


def test_no_temporary_files_are_left(tiny: keras.Model, x8: np.ndarray, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for precision in ({}, {"c1": "float16"}, {"c1": "int8"}, {"c1": "int8", "c2": "float32"}):
        lower(tiny, precision, x8)
    assert list(tmp_path.iterdir()) == []


def test_dynamic_batch_and_chunked_runs_agree(tiny: keras.Model, x8: np.ndarray) -> None:
    static = lower(tiny, {}, x8)
    dynamic = lower(tiny, {}, x8, batch_size=None)
    expected = tiny.predict(x8[:37], verbose=0)
    for tflite in (static.tflite_bytes, dynamic.tflite_bytes):
        np.testing.assert_allclose(run_tflite(tflite, x8[:37], batch_size=8), expected, atol=1e-5)


# --- accuracy ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits() -> tuple[keras.Model, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tiny CNN trained on sklearn digits, then its weights snapped to po2 x small ints."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train, x_val, y_val = x[:1400], y[:1400], x[1400:], y[1400:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
        keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(10, activation="softmax", name="fc"),
    ], name="digits_cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    # fixed(4)-like: kernel = 2^-k * {-7..7}, bias = 2^-6 * ints
    for layer in (model.get_layer(n) for n in ("c1", "c2", "fc")):
        kernel, bias = layer.get_weights()
        step = 2.0 ** np.ceil(np.log2(np.abs(kernel).max() / 7))
        layer.set_weights([np.clip(np.round(kernel / step), -7, 7) * step,
                           np.round(bias * 64) / 64])
    return model, x_train, y_train, x_val, y_val


def _keras_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(model.predict(x, verbose=0).argmax(axis=1) == y))


def test_evaluate_matches_keras_for_float32(digits) -> None:
    model, _, _, x_val, y_val = digits
    lowered = lower(model, {}, x_val)
    accuracy = evaluate_tflite(lowered.tflite_bytes, x_val, y_val)
    assert accuracy == pytest.approx(_keras_accuracy(model, x_val, y_val), abs=1e-9)
    one_hot = np.eye(10)[y_val]
    assert evaluate_tflite(lowered.tflite_bytes, x_val, one_hot, batch_size=7) == accuracy


def test_int8_of_po2_grid_weights_keeps_accuracy(digits) -> None:
    model, x_train, _, x_val, y_val = digits
    keras_accuracy = _keras_accuracy(model, x_val, y_val)
    assert keras_accuracy > 0.85  # the task is learned, so the comparison means something
    int8 = lower(model, {"c1": "int8", "c2": "int8", "fc": "int8"}, x_train)
    mixed = lower(model, {"c1": "int8", "c2": "float32", "fc": "int8"}, x_train)
    assert evaluate_tflite(int8.tflite_bytes, x_val, y_val) == pytest.approx(keras_accuracy, abs=0.02)
    assert evaluate_tflite(mixed.tflite_bytes, x_val, y_val) == pytest.approx(keras_accuracy, abs=0.02)
    float32 = lower(model, {}, x_train)
    assert int8.size_bytes < float32.size_bytes


def _int8_conv_kernel(tflite: bytes, layer: str) -> np.ndarray:
    """The int8 kernel of conv ``layer`` in the .tflite, dequantized per output channel."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) == 4 and layer in detail["name"]:
            scales = detail["quantization_parameters"]["scales"]
            assert detail["quantization_parameters"]["quantized_dimension"] == 0
            values = interpreter.get_tensor(detail["index"]).astype(np.float64)  # constant: readable
            return values * scales.reshape(-1, 1, 1, 1)  # OHWI
    raise AssertionError(f"no int8 kernel of {layer} in the model")


@pytest.mark.parametrize("grid", ["ternary", "fixed(4)"])
def test_int8_holds_ternary_kernels_exactly_and_rerounds_fixed_grids(grid: str, x8: np.ndarray) -> None:
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    hidden = keras.layers.Flatten()(keras.layers.Conv2D(4, 3, activation="relu", name="c1")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(hidden))
    kernel, bias = model.get_layer("c1").get_weights()
    rng = np.random.default_rng(1)
    scale = 2.0 ** -rng.integers(2, 6, size=kernel.shape[-1])  # a power-of-two scale per channel
    levels = rng.integers(-1, 2, size=kernel.shape) if grid == "ternary" else rng.integers(-7, 8, size=kernel.shape)
    levels[0, 0, 0, :] = levels.max()  # every channel reaches its largest level
    model.get_layer("c1").set_weights([(levels * scale).astype(np.float32), bias])

    lowered = lower(model, {"c1": "int8", "fc": "int8"}, x8)
    stored = np.transpose(_int8_conv_kernel(lowered.tflite_bytes, "c1"), (1, 2, 3, 0))  # OHWI -> HWIO
    trained = levels * scale
    assert parse_scheme(grid).int8_exact is (grid == "ternary")
    if grid == "ternary":
        np.testing.assert_allclose(stored, trained, rtol=1e-6, atol=0)
    else:
        half_step = np.abs(trained).max(axis=(0, 1, 2)) / 127 / 2
        error = np.abs(stored - trained)
        assert np.all(error <= half_step * (1 + 1e-6))
        assert error.max() > 0  # 127 / 7 is no integer: the grid's points moved


# --- files and errors ---------------------------------------------------------------------------


def test_write_is_atomic_and_returns_the_digest(tiny: keras.Model, x8: np.ndarray, tmp_path) -> None:
    lowered = lower(tiny, {}, x8)
    target = tmp_path / "deep" / "model.tflite"
    digest = write_tflite(lowered, target)
    assert digest == hashlib.sha256(target.read_bytes()).hexdigest() == lowered.sha256
    assert sorted(os.listdir(target.parent)) == ["model.tflite"]
    assert write_tflite(b"TFL3 other", target) != digest  # replaces in place
    assert sorted(os.listdir(target.parent)) == ["model.tflite"]
    assert isinstance(lowered, LoweredModel) and "tflite_bytes" not in repr(lowered)


def test_errors_name_the_model_or_layer(tiny: keras.Model, x8: np.ndarray, tmp_path) -> None:
    with pytest.raises(LoweringError, match=r"'tiny'.*'nope'"):
        lower(tiny, {"nope": "int8"}, x8)
    with pytest.raises(LoweringError, match=r"'tiny'.*'c1'.*'int4'"):
        lower(tiny, {"c1": "int4"}, x8)  # type: ignore[dict-item]
    with pytest.raises(LoweringError, match=r"'tiny'.*representative_x"):
        lower(tiny, {"c1": "int8"}, np.zeros((4, 9, 9, 1), np.float32))
    with pytest.raises(LoweringError, match="not a .tflite"):
        tflite_ops(b"\x00" * 64)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(os.urandom(256))
    with pytest.raises(LoweringError, match="bad.tflite"):
        run_tflite(bad, x8)
    with pytest.raises(LoweringError, match="missing.tflite"):
        run_tflite(tmp_path / "missing.tflite", x8)
    good = lower(tiny, {}, x8).tflite_bytes
    with pytest.raises(LoweringError, match="does not fit"):
        run_tflite(good, np.zeros((2, 7, 7, 1), np.float32))
    with pytest.raises(LoweringError, match="samples"):
        evaluate_tflite(good, x8, np.zeros(3))
