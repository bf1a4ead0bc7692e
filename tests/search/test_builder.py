"""build_candidate (QKeras clone inheriting reference weights) and build_deploy_model."""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
import pytest
import tensorflow as tf

from search.builder import BuildError, build_candidate, build_deploy_model
from search.candidate import CandidateSpec, LayerChoice
from search.quantizers import FLOAT32, parse_scheme, qkeras_custom_objects
from search.space import SearchSpace, build_space
from tests.search import models

L = keras.layers
Factory = Callable[[], keras.Model]

BINARY, FIXED4, FIXED8 = parse_scheme("binary"), parse_scheme("fixed(4)"), parse_scheme("fixed(8)")


def _depthwise_multiplier_model() -> keras.Model:
    model = keras.Sequential([
        keras.Input((5, 5, 2)),
        L.Conv2D(3, 1, name="c1"),
        L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        L.Conv2D(4, 1, activation="relu", name="c2"),
        L.Flatten(name="flat"),
        L.Dense(2, name="out"),
    ], name="dw_multiplier")  # fmt: skip
    return models.randomize(model, 5)


def _conv1d_model() -> keras.Model:
    model = keras.Sequential([
        keras.Input((8, 2)),
        L.Conv1D(4, 3, activation="relu", name="c1"),
        L.MaxPooling1D(name="pool"),
        L.Conv1D(5, 3, padding="same", name="c2"),
        L.GlobalAveragePooling1D(name="gap"),
        L.Dense(2, name="out"),
    ], name="conv1d")  # fmt: skip
    return models.randomize(model, 6)


ALL_FACTORIES = [
    models.sequential_bn,
    models.residual,
    models.concat_flatten_dense,
    models.dense_mlp,
    _depthwise_multiplier_model,
    _conv1d_model,
]


def _spec(space: SearchSpace, sizes: dict[str, float] | None = None, **layers: LayerChoice) -> CandidateSpec:
    """Float everywhere, size groups at ``sizes`` (default 1.0), with some layers overridden."""
    params = {f"size:{g.name}": (sizes or {}).get(g.name, 1.0) for g in space.size_groups}
    base = models.float_spec(space, None)
    sized = space.spec_from_params(params)
    choices = {name: LayerChoice(FLOAT32, FLOAT32, FLOAT32, sized[name].size) for name, _ in base}
    choices.update(layers)
    return CandidateSpec.from_mapping(choices)


def _kernel(model: keras.Model, name: str) -> np.ndarray:
    return np.asarray(model.get_layer(name).kernel)


def _set_filter_norms(layer: keras.layers.Layer, norms: list[float], attribute: str = "kernel") -> None:
    """Give filter j an L1 norm of exactly norms[j] (random signs, equal magnitudes)."""
    variable = getattr(layer, attribute)
    shape = tuple(variable.shape)
    per_filter = int(np.prod(shape[:-1]))
    signs = np.random.default_rng(7).choice([-1.0, 1.0], size=shape)
    variable.assign((signs * np.asarray(norms) / per_filter).astype("float32"))


# ---------------------------------------------------------------- function preserved


@pytest.mark.parametrize("factory", ALL_FACTORIES, ids=lambda f: f.__name__)
def test_reference_spec_reproduces_the_reference_exactly(factory: Factory) -> None:
    reference = factory()
    space = build_space(reference)
    candidate = build_candidate(reference, space, space.reference_spec())
    x = models.inputs_for(reference)
    np.testing.assert_array_equal(np.asarray(candidate(x)), np.asarray(reference(x)))
    for layer in reference.layers:
        for ref_w, new_w in zip(layer.get_weights(), candidate.get_layer(layer.name).get_weights(), strict=True):
            np.testing.assert_array_equal(ref_w, new_w)


@pytest.mark.parametrize("factory", ALL_FACTORIES, ids=lambda f: f.__name__)
def test_growing_every_group_keeps_the_reference_function(factory: Factory) -> None:
    reference = factory()
    space = build_space(reference)
    assert space.size_groups, "the model must have something to grow"
    spec = models.float_spec(space, 2.0)
    candidate = build_candidate(reference, space, spec)
    for group in space.size_groups:
        for name in group.layers:
            layer = candidate.get_layer(name)
            size = layer.units if isinstance(layer, L.Dense) else layer.filters
            assert size == 2 * group.reference_size, name
    x = models.inputs_for(reference)
    # Extra zero terms may change the summation order: equal up to float32 rounding.
    np.testing.assert_allclose(np.asarray(candidate(x)), np.asarray(reference(x)), rtol=0, atol=1e-5)


def test_growth_keeps_old_filters_and_zeroes_the_rows_that_read_new_ones() -> None:
    reference = models.sequential_bn()
    space = build_space(reference)
    candidate = build_candidate(reference, space, models.float_spec(space, 2.0))
    ref_conv2, new_conv2 = _kernel(reference, "conv2"), _kernel(candidate, "conv2")
    assert new_conv2.shape == (3, 3, 8, 12)
    np.testing.assert_array_equal(new_conv2[:, :, :4, :6], ref_conv2)
    assert not new_conv2[:, :, 4:, :].any()  # rows reading conv1's new filters
    assert new_conv2[:, :, :4, 6:].any()  # conv2's own new filters are initialised, not zero
    new_out = _kernel(candidate, "out")  # flatten of 2x2x12: rows p*12 + c, c >= 6 are new
    rows = np.arange(new_out.shape[0]) % 12
    assert not new_out[rows >= 6].any()
    np.testing.assert_array_equal(new_out[rows < 6], _kernel(reference, "out"))


# ---------------------------------------------------------------- shrinking


def test_shrink_keeps_the_largest_l1_filters_and_slices_the_next_layer() -> None:
    reference = models.sequential_bn()
    _set_filter_norms(reference.get_layer("conv1"), [1.0, 5.0, 2.0, 4.0])
    _set_filter_norms(reference.get_layer("conv2"), [3.0, 1.0, 6.0, 2.0, 5.0, 4.0])
    space = build_space(reference)
    candidate = build_candidate(reference, space, _spec(space, {"conv1": 0.5, "conv2": 0.5}))
    keep1, keep2 = [1, 3], [2, 4, 5]

    np.testing.assert_array_equal(_kernel(candidate, "conv1"), _kernel(reference, "conv1")[..., keep1])
    np.testing.assert_array_equal(
        np.asarray(candidate.get_layer("conv1").bias), np.asarray(reference.get_layer("conv1").bias)[keep1]
    )
    for ref_w, new_w in zip(
        reference.get_layer("bn").get_weights(), candidate.get_layer("bn").get_weights(), strict=True
    ):
        np.testing.assert_array_equal(new_w, ref_w[keep1])
    np.testing.assert_array_equal(
        _kernel(candidate, "conv2"), _kernel(reference, "conv2")[:, :, keep1, :][..., keep2]
    )
    # Flatten of a 2x2x6 map: reference row p*6 + c; the candidate keeps channels keep2 per position.
    rows = [p * 6 + c for p in range(4) for c in keep2]
    np.testing.assert_array_equal(_kernel(candidate, "out"), _kernel(reference, "out")[rows])
    np.testing.assert_array_equal(
        np.asarray(candidate.get_layer("out").bias), np.asarray(reference.get_layer("out").bias)
    )
    assert candidate(models.inputs_for(reference)).shape == (3, 3)


def test_shrink_through_concatenate_flatten_dense_expands_the_rows() -> None:
    reference = models.concat_flatten_dense()
    _set_filter_norms(reference.get_layer("a"), [1.0, 4.0, 3.0, 2.0])
    _set_filter_norms(reference.get_layer("b"), [4.0, 1.0, 2.0, 5.0])
    space = build_space(reference)
    candidate = build_candidate(reference, space, _spec(space, {"a": 0.5, "b": 0.5}))
    np.testing.assert_array_equal(_kernel(candidate, "a"), _kernel(reference, "a")[..., [1, 2]])
    np.testing.assert_array_equal(_kernel(candidate, "b"), _kernel(reference, "b")[..., [0, 3]])
    kept = [1, 2, 4 + 0, 4 + 3]  # channels of the 8-wide concatenation
    rows = [p * 8 + c for p in range(4) for c in kept]  # 2x2 positions
    np.testing.assert_array_equal(_kernel(candidate, "fc"), _kernel(reference, "fc")[rows])
    np.testing.assert_array_equal(_kernel(candidate, "out"), _kernel(reference, "out"))


def test_tied_layers_keep_the_same_filters_chosen_by_their_summed_norms() -> None:
    reference = models.residual()
    # Alone, stem would keep {0,1,4,6} and b1c2 {2,3,5,7}; summed norms pick {0,1,5,7}.
    _set_filter_norms(reference.get_layer("stem"), [10, 10, 1, 1, 6, 0, 5, 0])
    _set_filter_norms(reference.get_layer("b1c2"), [0, 0, 5, 5, 0, 7, 0, 7])
    space = build_space(reference)
    candidate = build_candidate(reference, space, _spec(space, {"stem+b1c2": 0.5}))
    keep = [0, 1, 5, 7]
    np.testing.assert_array_equal(_kernel(candidate, "stem"), _kernel(reference, "stem")[..., keep])
    np.testing.assert_array_equal(_kernel(candidate, "b1c2"), _kernel(reference, "b1c2")[..., keep])
    # Consumers of the tied channels read the same ones.
    np.testing.assert_array_equal(_kernel(candidate, "b1c1"), _kernel(reference, "b1c1")[:, :, keep, :])
    np.testing.assert_array_equal(_kernel(candidate, "proj"), _kernel(reference, "proj")[:, :, keep, :])
    np.testing.assert_array_equal(_kernel(candidate, "dw"), _kernel(reference, "dw")[:, :, keep, :])
    ref_sep, new_sep = reference.get_layer("sep"), candidate.get_layer("sep")
    np.testing.assert_array_equal(
        np.asarray(new_sep.depthwise_kernel), np.asarray(ref_sep.depthwise_kernel)[:, :, keep, :]
    )
    np.testing.assert_array_equal(
        np.asarray(new_sep.pointwise_kernel), np.asarray(ref_sep.pointwise_kernel)[:, :, keep, :]
    )
    assert candidate(models.inputs_for(reference)).shape == (3, 4)


def test_quantized_shrunk_residual_candidate_runs() -> None:
    reference = models.residual()
    space = build_space(reference)
    params = {name: values[0] for name, values in space.distributions().items()}
    params.update({name: 0.5 for name in params if name.startswith("size:")})
    candidate = build_candidate(reference, space, space.spec_from_params(params))
    out = np.asarray(candidate(models.inputs_for(reference)))
    assert out.shape == (3, 4) and np.isfinite(out).all()
    assert candidate.get_layer("stem").filters == 4 and candidate.get_layer("sep").filters == 3


# ---------------------------------------------------------------- QKeras only where quantized


def _is_qkeras(layer: keras.layers.Layer) -> bool:
    return type(layer).__module__.startswith("qkeras")


def test_qkeras_layers_appear_only_where_a_scheme_is_not_float() -> None:
    reference = models.sequential_bn()
    space = build_space(reference)
    spec = _spec(
        space,
        conv2=LayerChoice(FIXED4, FLOAT32, FLOAT32, 6),
        out=LayerChoice(FLOAT32, FIXED8, FLOAT32, 3),
    )
    candidate = build_candidate(reference, space, spec)
    assert {layer.name: type(layer).__name__ for layer in candidate.layers} == {
        "conv1": "Conv2D", "bn": "BatchNormalization", "conv2": "QConv2D", "flat": "Flatten", "out": "QDense",
    }  # fmt: skip
    assert not _is_qkeras(candidate.get_layer("conv1"))
    activation_only = _spec(space, conv1=LayerChoice(FLOAT32, FLOAT32, FIXED4, 4))
    assert type(build_candidate(reference, space, activation_only).get_layer("conv1")).__name__ == "QConv2D"


def test_all_float_candidate_has_no_qkeras_layer() -> None:
    reference = models.residual()
    space = build_space(reference)
    candidate = build_candidate(reference, space, models.float_spec(space, 0.5))
    assert not any(_is_qkeras(layer) for layer in candidate.layers)


def test_quantized_residual_uses_the_matching_qkeras_classes() -> None:
    reference = models.residual()
    space = build_space(reference)
    candidate = build_candidate(reference, space, space.int8_spec())
    types = {layer.name: type(layer).__name__ for layer in candidate.layers}
    assert types["stem"] == "QConv2D" and types["dw"] == "QDepthwiseConv2D"
    assert types["sep"] == "QSeparableConv2D" and types["out"] == "QDense"
    assert types["add1"] == "Add" and types["gap"] == "GlobalAveragePooling2D"


# ---------------------------------------------------------------- deploy model


def _quantized_residual(
    reference: keras.Model, space: SearchSpace, activation: str
) -> tuple[keras.Model, CandidateSpec]:
    act = parse_scheme(activation)
    choices = {}
    for slot in space.slots:
        slot_act = act if act in slot.activation_schemes else FLOAT32
        choices[slot.name] = LayerChoice(BINARY, FIXED8, slot_act, slot.reference_size)
    spec = CandidateSpec.from_mapping(choices)
    return build_candidate(reference, space, spec), spec


def test_deploy_model_has_plain_layers_and_the_trained_quantized_weights() -> None:
    reference = models.residual()
    space = build_space(reference)
    trained, spec = _quantized_residual(reference, space, "float32")
    deploy = build_deploy_model(trained, reference, spec)
    assert all(type(layer).__module__.startswith("keras") for layer in deploy.layers)
    assert [type(layer).__name__ for layer in deploy.layers] == [type(layer).__name__ for layer in reference.layers]

    weight_q, bias_q = BINARY.weight_quantizer(), FIXED8.bias_quantizer()
    for name in ("stem", "b1c1", "b1c2", "proj", "out"):
        kernel = np.asarray(deploy.get_layer(name).kernel)
        expected = np.asarray(weight_q(tf.constant(np.asarray(trained.get_layer(name).kernel))))
        np.testing.assert_array_equal(kernel, expected)
        for channel in range(kernel.shape[-1]):  # binary: exactly +-s in every output channel
            levels = np.unique(kernel[..., channel])
            assert len(levels) == 2 and levels[0] == -levels[1], name
        bias = np.asarray(deploy.get_layer(name).bias)
        expected_bias = np.asarray(bias_q(tf.constant(np.asarray(trained.get_layer(name).bias))))
        np.testing.assert_array_equal(bias, expected_bias)
    dw = np.asarray(deploy.get_layer("dw").kernel)
    np.testing.assert_array_equal(
        dw, np.asarray(weight_q(tf.constant(np.asarray(trained.get_layer("dw").depthwise_kernel))))
    )
    for attribute in ("depthwise_kernel", "pointwise_kernel"):
        trained_value = np.asarray(getattr(trained.get_layer("sep"), attribute))
        np.testing.assert_array_equal(
            np.asarray(getattr(deploy.get_layer("sep"), attribute)), np.asarray(weight_q(tf.constant(trained_value)))
        )


def test_deploy_model_matches_the_trained_model_when_activations_are_float() -> None:
    reference = models.residual()
    space = build_space(reference)
    trained, spec = _quantized_residual(reference, space, "float32")
    deploy = build_deploy_model(trained, reference, spec)
    x = models.inputs_for(reference)
    np.testing.assert_allclose(np.asarray(deploy(x)), np.asarray(trained(x)), rtol=0, atol=1e-6)
    assert models.max_abs_diff(deploy(x), reference(x)) > 1e-3  # and it is really quantized


def test_deploy_model_restores_the_reference_activation_functions() -> None:
    reference = models.residual()
    space = build_space(reference)
    trained, spec = _quantized_residual(reference, space, "fixed(4)")
    assert "quantized_relu" in str(trained.get_layer("stem").get_config()["activation"])
    deploy = build_deploy_model(trained, reference, spec)
    assert deploy.get_layer("stem").get_config()["activation"] == "relu"
    assert deploy.get_layer("b1c2").get_config()["activation"] == "linear"
    assert not any(key.endswith("_quantizer") for key in deploy.get_layer("stem").get_config())
    assert deploy(models.inputs_for(reference)).shape == (3, 4)


def test_deploy_model_of_a_resized_sequential_keeps_the_candidate_sizes() -> None:
    reference = models.sequential_bn()
    space = build_space(reference)
    spec = CandidateSpec.from_mapping({
        "conv1": LayerChoice(FIXED4, FIXED8, FLOAT32, 2),
        "conv2": LayerChoice(parse_scheme("ternary"), FIXED8, FLOAT32, 12),
        "out": LayerChoice(FIXED8, FIXED8, FLOAT32, 3),
    })  # fmt: skip
    trained = build_candidate(reference, space, spec)
    deploy = build_deploy_model(trained, reference, spec)
    assert deploy.get_layer("conv1").filters == 2 and deploy.get_layer("conv2").filters == 12
    kernel = np.asarray(deploy.get_layer("conv2").kernel)
    for channel in range(kernel.shape[-1]):
        assert len(np.unique(kernel[..., channel])) <= 3
    x = models.inputs_for(reference)
    np.testing.assert_allclose(np.asarray(deploy(x)), np.asarray(trained(x)), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- serialization


def test_candidate_saves_and_loads_with_the_qkeras_custom_objects(tmp_path: object) -> None:
    reference = models.residual()
    space = build_space(reference)
    params = {name: values[1] for name, values in space.distributions().items()}
    spec = space.spec_from_params(params)
    candidate = build_candidate(reference, space, spec)
    path = f"{tmp_path}/candidate.keras"
    candidate.save(path)
    loaded = keras.models.load_model(path, custom_objects=qkeras_custom_objects())
    assert [type(layer).__name__ for layer in loaded.layers] == [type(layer).__name__ for layer in candidate.layers]
    x = models.inputs_for(reference)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(candidate(x)))


def test_fixed_scales_32_bit_and_negative_range_activations_survive_saving(tmp_path: object) -> None:
    """The quantizers qkeras needs float arguments for (2^c, 2^-I, 2^32) read back the same."""
    from dataclasses import replace

    reference = models.residual()
    space = build_space(reference)
    spec = space.spec_from_params({name: values[1] for name, values in space.distributions().items()})
    activations = ["ternary(2^-2)", "binary01(2^-1)", "fixed(32,3)", "fixed(4,-2)", "binary(2^1)"]
    spec = CandidateSpec(tuple(
        (name, replace(choice, activation=parse_scheme(activations[i % len(activations)])))
        for i, (name, choice) in enumerate(spec)
    ))  # fmt: skip
    candidate = build_candidate(reference, space, spec)
    path = f"{tmp_path}/candidate.keras"
    candidate.save(path)
    loaded = keras.models.load_model(path, custom_objects=qkeras_custom_objects())
    x = models.inputs_for(reference)
    assert np.all(np.isfinite(np.asarray(candidate(x))))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(candidate(x)))


# ---------------------------------------------------------------- known bugs


def test_concatenate_on_a_spatial_axis_builds_the_reference() -> None:
    i = keras.Input((4, 4, 2))
    a, b = L.Conv2D(3, 1, name="a")(i), L.Conv2D(3, 1, name="b")(i)
    c = L.Concatenate(axis=1, name="cat")([a, b])
    d = L.Conv2D(5, 1, name="d")(c)
    reference = models.randomize(keras.Model(i, L.Dense(2, name="out")(L.Flatten()(d))), 8)
    space = build_space(reference)
    candidate = build_candidate(reference, space, space.reference_spec())
    x = models.inputs_for(reference)
    np.testing.assert_array_equal(np.asarray(candidate(x)), np.asarray(reference(x)))


def test_growing_a_merge_of_misaligned_concatenations_keeps_the_function() -> None:
    reference = models.misaligned_concat_add()
    space = build_space(reference)
    candidate = build_candidate(reference, space, models.float_spec(space, 2.0))
    x = models.inputs_for(reference)
    np.testing.assert_allclose(np.asarray(candidate(x)), np.asarray(reference(x)), rtol=0, atol=1e-5)


def _softmax_over_channels() -> keras.Model:
    model = keras.Sequential([
        keras.Input((4, 4, 2)),
        L.Conv2D(4, 1, name="c1"),
        L.Softmax(name="sm"),
        L.Conv2D(3, 1, name="c2"),
        L.GlobalAveragePooling2D(),
        L.Dense(2, name="out"),
    ])  # fmt: skip
    return models.randomize(model, 9)


def _batchnorm_on_height() -> keras.Model:
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        L.Conv2D(4, 1, name="c1"),
        L.BatchNormalization(axis=1, name="bn"),
        L.Conv2D(3, 1, name="c2"),
        L.GlobalAveragePooling2D(),
        L.Dense(2, name="out"),
    ])  # fmt: skip
    return models.randomize(model, 10)


@pytest.mark.parametrize(
    "factory",
    [
        _softmax_over_channels,
        _batchnorm_on_height,
    ],
    ids=lambda f: f.__name__,
)
def test_growing_through_a_channel_mixing_layer_keeps_the_function(factory: Factory) -> None:
    reference = factory()
    space = build_space(reference)
    candidate = build_candidate(reference, space, models.float_spec(space, 2.0))
    x = models.inputs_for(reference)
    np.testing.assert_allclose(np.asarray(candidate(x)), np.asarray(reference(x)), rtol=0, atol=1e-5)


def test_resizing_a_fixed_layer_is_refused() -> None:
    reference = models.dense_mlp()
    space = build_space(reference)
    spec = _spec(space, out=LayerChoice(FLOAT32, FLOAT32, FLOAT32, 6))
    with pytest.raises(BuildError, match="'out'"):
        build_candidate(reference, space, spec)
