"""read_graph (who feeds whom) and find_size_groups (which sizes are tied or fixed)."""

from __future__ import annotations

import logging

import keras
import pytest

from search.channels import SizeGroups, find_size_groups
from search.graph import INPUT_NODE, GraphError, read_graph
from search.space import SpaceError, SpaceOptions, build_space
from tests.search import models

L = keras.layers


def _groups(model: keras.Model) -> SizeGroups:
    return find_size_groups(model, read_graph(model))


# ---------------------------------------------------------------- read_graph


def test_read_graph_sequential_chains_layers_from_an_implicit_input() -> None:
    graph = read_graph(models.sequential_bn())
    assert [(n.name, n.class_name, n.inputs) for n in graph] == [
        (INPUT_NODE, "InputLayer", ()),
        ("conv1", "Conv2D", (INPUT_NODE,)),
        ("bn", "BatchNormalization", ("conv1",)),
        ("conv2", "Conv2D", ("bn",)),
        ("flat", "Flatten", ("conv2",)),
        ("out", "Dense", ("flat",)),
    ]
    assert graph.inputs == (INPUT_NODE,)
    assert graph.outputs == ("out",)
    assert graph.consumers("bn") == ("conv2",)
    assert graph.node("flat").class_name == "Flatten"
    with pytest.raises(KeyError):
        graph.node("nope")


def test_read_graph_functional_add_keeps_producers_in_call_order() -> None:
    graph = read_graph(models.residual())
    assert graph.inputs == ("inp",)
    assert graph.outputs == ("out",)
    assert graph.node("inp").class_name == "InputLayer"
    assert graph.node("add1").inputs == ("stem", "b1c2")
    assert graph.node("add2").inputs == ("proj", "sep")
    assert graph.node("dw").inputs == ("r1",)
    assert set(graph.consumers("r1")) == {"proj", "dw"}
    assert set(graph.consumers("stem")) == {"b1c1", "add1"}
    names = [n.name for n in graph]
    for node in graph:  # topological order: every producer comes first
        assert all(names.index(p) < names.index(node.name) for p in node.inputs)


def test_read_graph_functional_concatenate_and_multiple_inputs_outputs() -> None:
    i1, i2 = keras.Input((4,), name="i1"), keras.Input((3,), name="i2")
    cat = L.Concatenate(name="cat")([L.Dense(5, name="d2")(i2), L.Dense(6, name="d1")(i1)])
    model = keras.Model([i1, i2], [L.Dense(2, name="o1")(cat), L.Dense(3, name="o2")(cat)])
    graph = read_graph(model)
    assert graph.inputs == ("i1", "i2")
    assert graph.outputs == ("o1", "o2")
    assert graph.node("cat").inputs == ("d2", "d1")
    assert graph.consumers("cat") == ("o1", "o2")


def test_read_graph_refuses_a_shared_layer() -> None:
    i = keras.Input((4,))
    shared = L.Dense(4, name="shared")
    model = keras.Model(i, L.Dense(2, name="out")(shared(shared(i))))
    with pytest.raises(GraphError, match="'shared'.*shared layer"):
        read_graph(model)
    with pytest.raises(GraphError):
        build_space(model)


def test_read_graph_refuses_a_nested_model() -> None:
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3)], name="inner")
    i = keras.Input((4,))
    model = keras.Model(i, L.Dense(2)(inner(i)))
    with pytest.raises(GraphError, match="'inner'.*nested model"):
        read_graph(model)


def test_keras_ops_in_a_functional_graph_raise_graph_error() -> None:
    i = keras.Input((4, 4, 2))
    a, b = L.Conv2D(3, 1, name="a")(i), L.Conv2D(3, 1, name="b")(i)
    model = keras.Model(i, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(a + b)))
    with pytest.raises(GraphError):
        build_space(model)


# ---------------------------------------------------------------- size groups


def test_sequential_groups_and_fixed_output_layer() -> None:
    groups = _groups(models.sequential_bn())
    assert groups.groups == {"conv1": ("conv1",), "conv2": ("conv2",)}
    assert set(groups.fixed) == {"out"}
    assert "output" in groups.fixed["out"]
    assert groups.group_of("conv2") == "conv2"
    assert groups.group_of("out") is None


def test_add_ties_its_inputs_including_across_a_projection_conv_and_depthwise() -> None:
    groups = _groups(models.residual())
    # add1 ties the stem to the block's last conv; add2 ties the 1x1 projection to the separable
    # conv, whose input went through the channel-preserving depthwise conv.
    assert groups.groups == {"stem+b1c2": ("stem", "b1c2"), "b1c1": ("b1c1",), "proj+sep": ("proj", "sep")}
    assert set(groups.fixed) == {"out"}
    assert groups.group_of("b1c2") == "stem+b1c2"


def test_add_chain_merges_three_layers_into_one_group() -> None:
    i = keras.Input((4, 4, 2))
    a = L.Conv2D(4, 1, name="a")(i)
    b = L.Conv2D(4, 1, name="b")(a)
    c = L.Conv2D(4, 1, name="c")(b)
    x = L.Add(name="add_ab")([a, b])
    y = L.Add(name="add_xc")([x, c])
    model = keras.Model(i, L.Dense(2, name="out")(L.Flatten()(y)))
    assert _groups(model).groups == {"a+b+c": ("a", "b", "c")}


def test_add_with_the_model_input_fixes_the_other_branch() -> None:
    i = keras.Input((4, 4, 2))
    a = L.Conv2D(2, 1, name="a")(i)
    y = L.Add(name="add")([i, a])
    model = keras.Model(i, L.Dense(2, name="out")(L.Flatten()(y)))
    groups = _groups(model)
    assert groups.groups == {}
    assert set(groups.fixed) == {"a", "out"}


def test_depthwise_conv_passes_channels_through_to_tie_a_merge() -> None:
    i = keras.Input((5, 5, 2))
    a = L.Conv2D(4, 1, name="a")(i)
    d = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
    b = L.Conv2D(4, 1, name="b")(i)
    y = L.Add(name="add")([d, b])
    model = keras.Model(i, L.Dense(2, name="out")(L.GlobalAveragePooling2D()(y)))
    assert _groups(model).groups == {"a+b": ("a", "b")}


def test_depthwise_multiplier_above_one_fixes_its_producer() -> None:
    model = keras.Sequential([
        keras.Input((5, 5, 2)),
        L.Conv2D(3, 1, name="c1"),
        L.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
        L.Conv2D(4, 1, name="c2"),
        L.Flatten(),
        L.Dense(2, name="out"),
    ])  # fmt: skip
    groups = _groups(model)
    assert groups.groups == {"c2": ("c2",)}
    assert "dw" in groups.fixed["c1"]


def test_concatenate_feeding_flatten_dense_keeps_each_branch_free() -> None:
    groups = _groups(models.concat_flatten_dense())
    assert groups.groups == {"a": ("a",), "b": ("b",), "fc": ("fc",)}
    assert set(groups.fixed) == {"out"}


def test_concatenate_of_the_same_layer_twice_is_one_group() -> None:
    i = keras.Input((4, 4, 2))
    a = L.Conv2D(3, 1, name="a")(i)
    c = L.Concatenate(name="cat")([a, a])
    model = keras.Model(i, L.Dense(2, name="out")(L.Flatten()(L.Conv2D(2, 1, name="b")(c))))
    assert _groups(model).groups == {"a": ("a",), "b": ("b",)}


def test_concatenate_on_a_spatial_axis_fixes_its_producers() -> None:
    i = keras.Input((4, 4, 2))
    a, b = L.Conv2D(3, 1, name="a")(i), L.Conv2D(3, 1, name="b")(i)
    c = L.Concatenate(axis=1, name="cat")([a, b])
    model = keras.Model(i, L.Dense(2, name="out")(L.Flatten()(L.Conv2D(5, 1, name="d")(c))))
    groups = _groups(model)
    assert groups.groups == {"d": ("d",)}
    assert "Concatenate" in groups.fixed["a"] and "Concatenate" in groups.fixed["b"]


def test_reshape_barrier_fixes_its_producers() -> None:
    model = keras.Sequential([
        keras.Input((4, 4, 2)),
        L.Conv2D(4, 1, name="c1"),
        L.Conv2D(6, 1, name="c2"),
        L.Reshape((16, 6), name="reshape"),
        L.Dense(5, name="d1"),
        L.Flatten(),
        L.Dense(2, name="out"),
    ])  # fmt: skip
    groups = _groups(model)
    assert groups.groups == {"c1": ("c1",), "d1": ("d1",)}
    assert "Reshape" in groups.fixed["c2"] and "'reshape'" in groups.fixed["c2"]


def test_every_output_of_a_multi_output_model_is_fixed_through_a_concatenate() -> None:
    i = keras.Input((4,))
    cat = L.Concatenate(name="cat")([L.Dense(3, name="d1")(i), L.Dense(2, name="d2")(i)])
    model = keras.Model(i, [cat, L.Dense(2, name="o2")(cat)])
    groups = _groups(model)
    assert groups.groups == {}
    assert set(groups.fixed) == {"d1", "d2", "o2"}


def test_grouped_conv_is_not_resizable_and_fixes_its_producer() -> None:
    model = keras.Sequential([
        keras.Input((4, 4, 4)),
        L.Conv2D(4, 1, name="c1"),
        L.Conv2D(4, 1, groups=2, name="gc"),
        L.Flatten(),
        L.Dense(2, name="out"),
    ])  # fmt: skip
    groups = _groups(model)
    assert groups.groups == {}
    assert "gc" in groups.fixed["c1"]
    assert "gc" not in groups.fixed  # not resizable at all, so not listed as fixed


def _with_unsupported(kind: str) -> keras.Model:
    if kind == "Conv2DTranspose":
        return keras.Sequential([
            keras.Input((4, 4, 2)),
            L.Conv2D(3, 1, name="c1"),
            L.Conv2DTranspose(4, 2, name="unsupported"),
            L.Conv2D(5, 1, name="c2"),
            L.GlobalAveragePooling2D(),
            L.Dense(2, name="out"),
        ])  # fmt: skip
    return keras.Sequential([
        keras.Input((5, 3)),
        L.Conv1D(4, 2, name="c1"),
        L.Conv1DTranspose(6, 2, name="unsupported"),  # recurrent layers are refused outright
        L.Dense(5, name="c2"),
        L.Dense(2, name="out"),
    ])  # fmt: skip


@pytest.mark.parametrize("kind", ["Conv2DTranspose", "Conv1DTranspose"])
def test_unsupported_weighted_layer_is_skipped_with_a_warning(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    model = _with_unsupported(kind)
    with caplog.at_level(logging.WARNING, logger="search.space"):
        space = build_space(model)
    assert any("unsupported" in r.getMessage() and kind in r.getMessage() for r in caplog.records)
    assert [name for name, _ in space.skipped] == ["unsupported"]
    assert "unsupported" not in [s.name for s in space.slots]
    groups = _groups(model)
    assert kind in groups.fixed["c1"]  # its producer keeps its size
    assert groups.groups == {"c2": ("c2",)}  # its consumer is still free


@pytest.mark.parametrize("kind", ["Conv2DTranspose", "Conv1DTranspose"])
def test_unsupported_weighted_layer_is_refused_with_strict_layers(kind: str) -> None:
    with pytest.raises(SpaceError, match=f"'unsupported'.*{kind}.*strict_layers"):
        build_space(_with_unsupported(kind), SpaceOptions(strict_layers=True))


def test_strict_layers_accepts_a_model_it_fully_handles() -> None:
    space = build_space(models.residual(), SpaceOptions(strict_layers=True))
    assert space.skipped == ()


def test_merge_of_concatenations_with_different_boundaries_has_no_resizable_group() -> None:
    model = models.misaligned_concat_add()
    assert build_space(model).size_groups == ()

