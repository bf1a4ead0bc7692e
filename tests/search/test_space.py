"""build_space, the SearchSpace's parameters, and spec <-> parameter round trips."""

from __future__ import annotations

import keras
import optuna
import pytest

from search.candidate import CandidateSpec, LayerChoice
from search.quantizers import FLOAT32, INT8, UnknownQuantizerError, parse_scheme
from search.space import (
    DEFAULT_ACTIVATION,
    DEFAULT_BIAS,
    DEFAULT_KERNEL,
    DEFAULT_MULTIPLIERS,
    LayerRule,
    SearchSpace,
    SpaceError,
    SpaceOptions,
    build_space,
    scaled_size,
)
from tests.search import models

L = keras.layers
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def seq() -> keras.Model:
    return models.sequential_bn()


@pytest.fixture(scope="module")
def res() -> keras.Model:
    return models.residual()


@pytest.fixture(scope="module")
def mlp() -> keras.Model:
    return models.dense_mlp()


def _names(schemes: tuple) -> tuple[str, ...]:
    return tuple(s.name for s in schemes)


def _replace(spec: CandidateSpec, layer: str, **changes: object) -> CandidateSpec:
    choices = {name: choice for name, choice in spec}
    old = choices[layer]
    fields = {"kernel": old.kernel, "bias": old.bias, "activation": old.activation, "size": old.size}
    fields.update(changes)
    choices[layer] = LayerChoice(**fields)  # type: ignore[arg-type]
    return CandidateSpec.from_mapping(choices, spec.label)


# ---------------------------------------------------------------- slots and parameters


def test_slots_describe_the_quantizable_layers(seq: keras.Model) -> None:
    space = build_space(seq)
    assert [(s.name, s.class_name, s.reference_size, s.size_group, s.use_bias) for s in space.slots] == [
        ("conv1", "Conv2D", 4, "conv1", True),
        ("conv2", "Conv2D", 6, "conv2", True),
        ("out", "Dense", 3, None, True),
    ]
    conv1 = space.slot("conv1")
    assert _names(conv1.kernel) == DEFAULT_KERNEL
    assert _names(conv1.bias) == DEFAULT_BIAS
    assert _names(conv1.activation_schemes) == DEFAULT_ACTIVATION
    assert conv1.activation == "relu"
    assert [(g.name, g.layers, g.reference_size, g.multipliers) for g in space.size_groups] == [
        ("conv1", ("conv1",), 4, DEFAULT_MULTIPLIERS),
        ("conv2", ("conv2",), 6, DEFAULT_MULTIPLIERS),
    ]
    with pytest.raises(KeyError):
        space.slot("bn")


def test_depthwise_slot_has_no_size_and_tied_slots_share_a_group(res: keras.Model) -> None:
    space = build_space(res)
    dw = space.slot("dw")
    assert dw.reference_size is None and dw.size_group is None
    assert space.slot("stem").size_group == space.slot("b1c2").size_group == "stem+b1c2"
    assert space.slot("proj").size_group == space.slot("sep").size_group == "proj+sep"
    assert "size:stem+b1c2" in space.distributions()


def test_per_layer_mode_parameter_names(seq: keras.Model) -> None:
    params = build_space(seq).distributions()
    assert list(params) == [
        "kernel:conv1", "bias:conv1", "activation:conv1",
        "kernel:conv2", "bias:conv2", "activation:conv2",
        "kernel:out", "bias:out",
        "size:conv1", "size:conv2",
    ]  # fmt: skip
    assert params["kernel:conv1"] == DEFAULT_KERNEL
    assert params["size:conv1"] == DEFAULT_MULTIPLIERS


def test_model_mode_has_one_size_parameter(res: keras.Model) -> None:
    space = build_space(res, SpaceOptions(size_mode="model", multipliers=(0.5, 1.0, 2.0)))
    params = space.distributions()
    assert params["size"] == (0.5, 1.0, 2.0)
    assert not any(name.startswith("size:") for name in params)
    spec = space.spec_from_params({**{k: v[0] for k, v in params.items()}, "size": 2.0})
    assert [spec[n].size for n in ("stem", "b1c1", "b1c2", "proj", "sep", "out")] == [16, 16, 16, 12, 12, 4]
    assert spec["dw"].size is None


def test_model_mode_without_resizable_groups_has_no_size_parameter() -> None:
    model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="only")])
    space = build_space(model, SpaceOptions(size_mode="model"))
    assert "size" not in space.distributions()
    assert space.size_groups == ()


def test_output_and_softmax_layers_only_have_float_activations() -> None:
    i = keras.Input((6,))
    h = L.Dense(5, activation="softmax", name="hidden_softmax")(i)
    h = L.Dense(4, activation="sigmoid", name="hidden_sigmoid")(h)
    h = L.Dense(4, activation="relu", name="hidden_relu")(h)
    z = L.Dense(3, name="logits")(h)  # linear, but feeds the output through Activation/Dropout
    o = L.Activation("softmax", name="probs")(L.Dropout(0.1, name="drop")(z))
    space = build_space(keras.Model(i, o))
    params = space.distributions()
    for name in ("hidden_softmax", "hidden_sigmoid", "logits"):
        assert space.slot(name).activation_schemes == (FLOAT32,), name
        assert f"activation:{name}" not in params
        assert f"kernel:{name}" in params  # the weights are still searched
    assert _names(space.slot("hidden_relu").activation_schemes) == DEFAULT_ACTIVATION


# ---------------------------------------------------------------- rules


def test_regex_rule_restricts_only_the_layers_it_fully_matches(res: keras.Model) -> None:
    rule = LayerRule(match="b1c.", kernel=("fixed(4)", "FIXED(8)"), activation=("fixed(8)",))
    space = build_space(res, SpaceOptions(rules=(rule,)))
    for name in ("b1c1", "b1c2"):
        assert _names(space.slot(name).kernel) == ("fixed(4)", "fixed(8)")
        assert space.slot(name).activation_schemes == (INT8,)
        assert f"activation:{name}" not in space.distributions()  # one choice: not a parameter
    assert _names(space.slot("stem").kernel) == DEFAULT_KERNEL  # 'b1c.' must match fully


def test_later_rule_overrides_an_earlier_one(seq: keras.Model) -> None:
    rules = (LayerRule("conv1", kernel=("binary",)), LayerRule("conv.*", kernel=("fixed(4)", "fixed(8)")))
    space = build_space(seq, SpaceOptions(rules=rules))
    assert _names(space.slot("conv1").kernel) == ("fixed(4)", "fixed(8)")


def test_rule_multipliers_restrict_the_whole_tied_group(res: keras.Model) -> None:
    space = build_space(res, SpaceOptions(rules=(LayerRule("stem", multipliers=(0.5, 1.0, 3.0)),)))
    group = next(g for g in space.size_groups if g.name == "stem+b1c2")
    assert group.multipliers == (0.5, 1.0)  # 3.0 is not allowed for the tied b1c2


def test_resize_false_keeps_the_size_but_not_the_quantizers(seq: keras.Model) -> None:
    space = build_space(seq, SpaceOptions(rules=(LayerRule("conv1", resize=False),)))
    params = space.distributions()
    assert "size:conv1" not in params and "size:conv2" in params
    assert "kernel:conv1" in params
    assert space.slot("conv1").size_group is None
    assert space.spec_from_params({"size:conv2": 0.5})["conv1"].size == 4


def test_resize_false_on_one_tied_member_keeps_the_whole_group(res: keras.Model) -> None:
    space = build_space(res, SpaceOptions(rules=(LayerRule("b1c2", resize=False),)))
    assert "size:stem+b1c2" not in space.distributions()
    assert space.slot("stem").size_group is None


def test_skip_rule_keeps_the_layer_float_at_its_reference_size(seq: keras.Model) -> None:
    space = build_space(seq, SpaceOptions(rules=(LayerRule("conv2", skip=True),)))
    slot = space.slot("conv2")
    assert slot.kernel == slot.bias == slot.activation_schemes == (FLOAT32,)
    assert not any(name.endswith(":conv2") for name in space.distributions())
    assert ("conv2", "skipped by a layer rule") in space.skipped
    spec = space.spec_from_params({"size:conv1": 2.0})
    assert spec["conv2"] == LayerChoice(FLOAT32, FLOAT32, FLOAT32, 6)


def test_rule_matching_no_layer_raises(seq: keras.Model) -> None:
    with pytest.raises(SpaceError, match="'conv9'.*matches no quantizable layer"):
        build_space(seq, SpaceOptions(rules=(LayerRule("conv9", kernel=("binary",)),)))
    with pytest.raises(SpaceError, match="matches no quantizable layer"):
        build_space(seq, SpaceOptions(rules=(LayerRule("bn"),)))  # a layer, but not quantizable


def test_rule_with_an_invalid_regex_raises(seq: keras.Model) -> None:
    with pytest.raises(SpaceError, match="not a valid regex"):
        build_space(seq, SpaceOptions(rules=(LayerRule("conv[", kernel=("binary",)),)))


def test_unknown_quantizer_in_options_or_rules_raises(seq: keras.Model) -> None:
    with pytest.raises(UnknownQuantizerError, match="'int4'"):
        build_space(seq, SpaceOptions(kernel=("binary", "int4")))
    with pytest.raises(UnknownQuantizerError, match="'int4'"):
        build_space(seq, SpaceOptions(rules=(LayerRule("conv1", bias=("int4",)),)))


def test_empty_quantizer_list_raises(seq: keras.Model) -> None:
    with pytest.raises(SpaceError, match="'conv1' kernel.*empty"):
        build_space(seq, SpaceOptions(kernel=()))


def test_empty_quantizer_list_in_a_rule_raises(seq: keras.Model) -> None:
    with pytest.raises(SpaceError):
        build_space(seq, SpaceOptions(rules=(LayerRule("conv1", kernel=()),)))


def test_options_are_validated_at_construction() -> None:
    with pytest.raises(SpaceError, match="size_mode 'global'"):
        SpaceOptions(size_mode="global")  # type: ignore[arg-type]
    with pytest.raises(SpaceError, match="multiplier 0"):
        SpaceOptions(multipliers=(0.5, 0))
    with pytest.raises(SpaceError, match="multiplier -1.0"):
        SpaceOptions(multipliers=(-1.0,))


def test_rule_multipliers_are_validated(seq: keras.Model) -> None:
    with pytest.raises(SpaceError, match="-1.0"):
        build_space(seq, SpaceOptions(rules=(LayerRule("conv1", multipliers=(-1.0, 0.0)),)))


# ---------------------------------------------------------------- specs and round trips


def test_scaled_size_rounds_and_never_reaches_zero() -> None:
    assert scaled_size(8, 0.5) == 4
    assert scaled_size(6, 0.75) == 4  # 4.5 rounds to even
    assert scaled_size(8, 1.5) == 12
    assert scaled_size(1, 0.5) == 1
    assert scaled_size(3, 0.01) == 1


@pytest.mark.parametrize("mode", ["per-layer", "model"])
@pytest.mark.parametrize("factory", [models.sequential_bn, models.residual, models.concat_flatten_dense])
def test_suggested_specs_round_trip_through_params_for(mode: str, factory: object) -> None:
    model = factory()  # type: ignore[operator]
    space = build_space(model, SpaceOptions(size_mode=mode))  # type: ignore[arg-type]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(8):
        trial = study.ask()
        spec = space.suggest(trial)
        assert set(trial.params) == set(space.distributions())
        assert space.params_for(spec) == trial.params
        assert space.spec_from_params(trial.params) == spec
        for group in space.size_groups:
            key = "size" if mode == "model" else f"size:{group.name}"
            expected = scaled_size(group.reference_size, trial.params[key])
            assert all(spec[member].size == expected for member in group.layers)


def test_params_for_returns_none_outside_the_space(seq: keras.Model) -> None:
    space = build_space(seq, SpaceOptions(kernel=("binary", "fixed(4)")))
    inside = space.spec_from_params({"kernel:conv1": "fixed(4)", "size:conv1": 1.5})
    assert space.params_for(inside) is not None
    assert space.params_for(_replace(inside, "conv1", kernel=parse_scheme("fixed(3)"))) is None
    assert space.params_for(_replace(inside, "conv1", size=5)) is None  # 1.25x is not a choice
    assert space.params_for(_replace(inside, "out", activation=INT8)) is None  # output stays float
    assert space.params_for(_replace(inside, "out", size=6)) is None  # output size is fixed
    extra = CandidateSpec((*inside.layers, ("bn", LayerChoice(INT8, INT8, INT8, 4))))
    assert space.params_for(extra) is None


def test_params_for_a_spec_missing_a_layer_is_none(seq: keras.Model) -> None:
    space = build_space(seq)
    reference = space.reference_spec()
    assert space.params_for(CandidateSpec(reference.layers[:-1])) is None


def test_reference_spec_is_float_at_reference_sizes(res: keras.Model) -> None:
    space = build_space(res)
    spec = space.reference_spec()
    assert spec.label == "reference"
    assert [name for name, _ in spec] == [s.name for s in space.slots]
    for slot in space.slots:
        assert spec[slot.name] == LayerChoice(FLOAT32, FLOAT32, FLOAT32, slot.reference_size)
    params = space.params_for(spec)  # float32 and 1.0 are default choices: inside the space
    assert params is not None and params["size:stem+b1c2"] == 1.0


def test_reference_spec_may_lie_outside_a_space_without_float(seq: keras.Model) -> None:
    space = build_space(seq, SpaceOptions(kernel=("binary", "fixed(8)")))
    assert space.params_for(space.reference_spec()) is None


def test_int8_spec_uses_fixed8_wherever_allowed(seq: keras.Model) -> None:
    space = build_space(seq)
    spec = space.int8_spec()
    assert spec.label == "int8"
    assert spec["conv1"] == LayerChoice(INT8, INT8, INT8, 4)
    assert spec["out"] == LayerChoice(INT8, INT8, FLOAT32, 3)  # softmax output stays float
    assert space.params_for(spec) is not None


def test_uniform_spec_falls_back_to_the_first_allowed_choice(seq: keras.Model) -> None:
    rule = LayerRule("conv2", kernel=("ternary", "binary"))
    space = build_space(seq, SpaceOptions(rules=(rule,)))
    spec = space.uniform_spec(parse_scheme("fixed(4)"), "w4")
    assert spec.label == "w4"
    assert spec["conv1"].kernel == parse_scheme("fixed(4)")
    assert spec["conv2"].kernel == parse_scheme("ternary")
    assert spec["conv1"].bias == parse_scheme("fixed(8)")  # fixed(4) is not a bias choice


def test_spec_from_params_fills_single_choice_parameters(mlp: keras.Model) -> None:
    rule = LayerRule("h1", kernel=("po2(4)",), bias=("float32",), activation=("fixed(6)",), multipliers=(2.0,))
    space = build_space(mlp, SpaceOptions(rules=(rule,)))
    assert not any(name.endswith(":h1") for name in space.distributions())
    spec = space.spec_from_params({})
    assert spec["h1"] == LayerChoice(parse_scheme("po2(4)"), FLOAT32, parse_scheme("fixed(6)"), 12)


def test_space_is_frozen_data(seq: keras.Model) -> None:
    space = build_space(seq)
    assert isinstance(space, SearchSpace)
    with pytest.raises(AttributeError):
        space.size_mode = "model"  # type: ignore[misc]


def test_candidate_spec_dict_round_trip_and_key(res: keras.Model) -> None:
    space = build_space(res)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    spec = space.suggest(study.ask())
    again = CandidateSpec.from_dict(spec.to_dict(), "other label")
    assert again == spec
    assert again.key == spec.key and len(spec.key) == 64
    assert space.int8_spec().key != space.reference_spec().key
    assert "stem:" in spec.summary() and f"x{spec['stem'].size}" in spec.summary()


@pytest.mark.parametrize(
    "recurrent",
    [
        lambda: keras.layers.LSTM(4, name="seq"),
        lambda: keras.layers.GRU(4, name="seq"),
        lambda: keras.layers.Bidirectional(keras.layers.SimpleRNN(4), name="seq"),
    ],
)
def test_recurrent_layers_are_refused_even_without_strict_layers(recurrent) -> None:
    # int8 calibration of any model with a recurrent layer segfaults TensorFlow 2.21's converter
    inp = keras.Input((6, 5))
    hidden = recurrent()(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(hidden))
    with pytest.raises(SpaceError, match="layer 'seq': .* is recurrent"):
        build_space(model, SpaceOptions(strict_layers=False))
