"""search.groups: document 000's group search plan (which layers, in what order, how many trials)."""

from __future__ import annotations

import keras
import pytest

from harness.example import build_doc000
from search.estimates import estimate
from search.groups import GroupError, GroupSettings, _budgets, group_at, plan_groups
from search.space import SpaceOptions, build_space
from tests.search.models import residual


@pytest.fixture(scope="module")
def doc000() -> keras.Model:
    return build_doc000((28, 28, 1), 10)


def int8_costs(model: keras.Model, space) -> dict[str, float]:
    return {e.name: e.energy_pj for e in estimate(model, space.int8_spec()).layers}


def test_default_groups_are_the_layers_costliest_first_with_budgets_by_cost(doc000: keras.Model) -> None:
    space = build_space(doc000)
    costs = int8_costs(doc000, space)
    groups = plan_groups(space, costs, GroupSettings(), 100)
    assert [g.layers for g in groups] == [(n,) for n in sorted(costs, key=lambda n: -costs[n])]
    assert [g.cost_pj for g in groups] == sorted(costs.values(), reverse=True)
    assert sum(g.trials for g in groups) == 100
    assert all(g.trials >= 10 for g in groups)
    assert [g.trials for g in groups] == sorted((g.trials for g in groups), reverse=True)
    # the spare 60 trials are shared by cost, each group within one trial of its exact share
    total = sum(costs.values())
    for g in groups:
        assert abs(g.trials - 10 - 60 * g.cost_pj / total) < 1
    # every parameter is searched by exactly one group; a layer's size by its own group
    owned = [p for g in groups for p in g.params]
    assert sorted(owned) == sorted(space.distributions())
    conv2 = next(g for g in groups if g.layers == ("conv2",))
    assert set(conv2.params) == {"kernel:conv2", "bias:conv2", "activation:conv2", "size:conv2"}


def test_sequential_order_keeps_the_listed_patterns(doc000: keras.Model) -> None:
    space = build_space(doc000)
    settings = GroupSettings(patterns=("dense", "conv[12]", "conv3"), order="sequential", min_trials=2)
    groups = plan_groups(space, int8_costs(doc000, space), settings, 20)
    assert [g.name for g in groups] == ["dense", "conv[12]", "conv3"]
    assert groups[1].layers == ("conv1", "conv2")
    assert sum(g.trials for g in groups) == 20


def test_a_tied_size_belongs_to_the_first_group_searched_that_holds_one_of_its_layers() -> None:
    model = residual()
    space = build_space(model)
    costs = {"stem": 1.0, "b1c1": 1.0, "b1c2": 5.0, "proj": 1.0, "dw": 1.0, "sep": 1.0, "out": 1.0}
    settings = GroupSettings(patterns=("stem|b1c1", "b1c2", "proj|dw|sep|out"), min_trials=1)
    groups = {g.name: g for g in plan_groups(space, costs, settings, 10)}
    assert [*groups] == ["b1c2", "proj|dw|sep|out", "stem|b1c1"]  # costs 5, 4, 2
    assert "size:stem+b1c2" in groups["b1c2"].params  # searched before stem's group
    assert "size:stem+b1c2" not in groups["stem|b1c1"].params
    assert "size:proj+sep" in groups["proj|dw|sep|out"].params

    model_mode = build_space(model, SpaceOptions(size_mode="model"))
    groups = plan_groups(model_mode, costs, settings, 10)
    assert "size" in groups[0].params and all("size" not in g.params for g in groups[1:])


def test_a_group_with_nothing_to_choose_gets_no_trials(doc000: keras.Model) -> None:
    from search.space_options import LayerRule

    rule = LayerRule("dense", kernel=("fixed(8)",), bias=("fixed(8)",))
    space = build_space(doc000, SpaceOptions(rules=(rule,)))
    groups = plan_groups(space, int8_costs(doc000, space), GroupSettings(min_trials=5), 30)
    assert [g.name for g in groups if "dense" in g.layers] == []
    assert sum(g.trials for g in groups) == 30


@pytest.mark.parametrize(("settings", "trials", "message"), [
    (GroupSettings(patterns=("conv.*", "fc")), 100, r"pattern 'fc' matches no quantizable layer"),
    (GroupSettings(patterns=("conv.*",)), 100, r"layer 'dense' matches no group pattern"),
    (GroupSettings(), 39, r"39 trials cannot give each of 4 groups its 10"),
])  # fmt: skip
def test_plans_that_cannot_work_are_refused(doc000: keras.Model, settings, trials: int, message: str) -> None:
    space = build_space(doc000)
    with pytest.raises(GroupError, match=message):
        plan_groups(space, int8_costs(doc000, space), settings, trials)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"order": "random"}, "order 'random'"),
    ({"min_trials": 0}, "min_trials must be >= 1"),
    ({"patterns": ("conv(",)}, "not a valid regex"),
    ({"patterns": ("conv1", "conv1")}, "name a pattern twice"),
])  # fmt: skip
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(GroupError, match=message):
        GroupSettings(**kwargs)


def test_budgets_give_the_minimum_then_share_the_rest_by_largest_remainder() -> None:
    assert _budgets([3.0, 1.0], 24, 10) == [13, 11]
    assert _budgets([1.0, 1.0, 1.0], 10, 2) == [4, 3, 3]  # ties: the earlier group first
    assert _budgets([0.0, 0.0], 7, 2) == [4, 3]  # no cost known: an even share
    assert sum(_budgets([5.0, 2.0, 2.0, 1.0], 100, 10)) == 100


def test_group_at_maps_trial_ordinals_to_groups(doc000: keras.Model) -> None:
    space = build_space(doc000)
    groups = plan_groups(space, int8_costs(doc000, space), GroupSettings(min_trials=1), 10)
    ends = [sum(g.trials for g in groups[: i + 1]) for i in range(len(groups))]
    assert group_at(groups, 0) == 0
    assert group_at(groups, ends[0] - 1) == 0 and group_at(groups, ends[0]) == 1
    assert group_at(groups, ends[-1] - 1) == len(groups) - 1
    assert group_at(groups, ends[-1] + 5) == len(groups) - 1  # a resumed study with more trials


def test_a_pattern_whose_layers_an_earlier_one_took_is_named(doc000: keras.Model) -> None:
    space = build_space(doc000)
    with pytest.raises(GroupError, match=r"pattern 'conv1': all its layers are taken by earlier patterns"):
        plan_groups(space, int8_costs(doc000, space), GroupSettings(patterns=("conv.*", "conv1", "dense")), 100)
