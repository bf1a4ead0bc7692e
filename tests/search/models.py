"""Tiny reference models shared by the search tests.

Every factory returns a built model with deterministic, non-trivial weights (BatchNorm
statistics included, so slicing them wrongly shows up in the outputs). Layer names are fixed so
tests can refer to them.
"""

from __future__ import annotations

import keras
import numpy as np

from search.candidate import CandidateSpec, LayerChoice
from search.quantizers import FLOAT32
from search.space import SearchSpace

L = keras.layers


def randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give every weight a random value; BatchNorm variances stay positive."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape).astype("float32"),
                rng.normal(0.0, 0.5, beta.shape).astype("float32"),
                rng.normal(0.0, 0.5, mean.shape).astype("float32"),
                rng.uniform(0.5, 1.5, var.shape).astype("float32"),
            ])  # fmt: skip
        elif layer.weights:
            layer.set_weights([rng.normal(0.0, 0.5, w.shape).astype("float32") for w in layer.get_weights()])
    return model


def inputs_for(model: keras.Model, batch: int = 3, seed: int = 1) -> np.ndarray | list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(-1.0, 1.0, (batch, *t.shape[1:])).astype("float32") for t in model.inputs]
    return arrays[0] if len(arrays) == 1 else arrays


def sequential_bn() -> keras.Model:
    """conv1(4) -> BN -> conv2(6) -> Flatten -> Dense(3, softmax); 6x6x1 input."""
    model = keras.Sequential([
        keras.Input((6, 6, 1)),
        L.Conv2D(4, 3, activation="relu", name="conv1"),
        L.BatchNormalization(name="bn"),
        L.Conv2D(6, 3, activation="relu", name="conv2"),
        L.Flatten(name="flat"),
        L.Dense(3, activation="softmax", name="out"),
    ], name="seq_bn")  # fmt: skip
    return randomize(model, 0)


def residual() -> keras.Model:
    """Residual block (stem + b1c2 tied by add1), then proj(1x1) tied to dw->sep by add2."""
    i = keras.Input((6, 6, 3), name="inp")
    s = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(i)
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="b1c1")(s)
    a = L.Conv2D(8, 3, padding="same", name="b1c2")(a)
    x = L.Add(name="add1")([s, a])
    x = L.ReLU(name="r1")(x)
    p = L.Conv2D(6, 1, name="proj")(x)
    b = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    b = L.SeparableConv2D(6, 3, padding="same", name="sep")(b)
    y = L.Add(name="add2")([p, b])
    g = L.GlobalAveragePooling2D(name="gap")(y)
    o = L.Dense(4, name="out")(g)
    return randomize(keras.Model(i, o, name="residual"), 1)


def concat_flatten_dense() -> keras.Model:
    """a(4) and b(4) concatenated, flattened into fc(5, relu), then out(2)."""
    i = keras.Input((3, 3, 2), name="inp")
    a = L.Conv2D(4, 2, activation="relu", name="a")(i)
    b = L.Conv2D(4, 2, activation="relu", name="b")(i)
    c = L.Concatenate(name="cat")([a, b])
    f = L.Flatten(name="flat")(c)
    h = L.Dense(5, activation="relu", name="fc")(f)
    o = L.Dense(2, name="out")(h)
    return randomize(keras.Model(i, o, name="concat_flatten_dense"), 2)


def dense_mlp() -> keras.Model:
    """h1(6, relu) -> h2(4, relu) -> out(3): the smallest model with two resizable layers."""
    model = keras.Sequential([
        keras.Input((5,)),
        L.Dense(6, activation="relu", name="h1"),
        L.Dense(4, activation="relu", name="h2"),
        L.Dense(3, name="out"),
    ], name="mlp")  # fmt: skip
    return randomize(model, 3)


def misaligned_concat_add() -> keras.Model:
    """Add(concat(a4, b4, c8), concat(d8, e4, f4)): equal total widths, different boundaries."""
    i = keras.Input((3, 3, 2), name="inp")
    a, b, c, d, e, f = (L.Conv2D(n, 1, name=k)(i) for k, n in zip("abcdef", (4, 4, 8, 8, 4, 4), strict=True))
    s = L.Add(name="add")([L.Concatenate(name="cat1")([a, b, c]), L.Concatenate(name="cat2")([d, e, f])])
    o = L.Dense(2, name="out")(L.GlobalAveragePooling2D(name="gap")(s))
    return randomize(keras.Model(i, o, name="misaligned_concat_add"), 4)


def float_spec(space: SearchSpace, multiplier: float | None = None) -> CandidateSpec:
    """Float32 everywhere; every size group at ``multiplier`` (reference sizes when None)."""
    params: dict[str, object] = {}
    if multiplier is not None:
        if space.size_mode == "model":
            params["size"] = multiplier
        else:
            params = {f"size:{g.name}": multiplier for g in space.size_groups}
    sized = space.spec_from_params(params) if multiplier is not None else space.reference_spec()
    return CandidateSpec.from_mapping(
        {name: LayerChoice(FLOAT32, FLOAT32, FLOAT32, choice.size) for name, choice in sized}
    )


def max_abs_diff(a: object, b: object) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
