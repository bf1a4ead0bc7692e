"""Group search by energy (document 000; method.md §1, "Group search").

Instead of proposing every layer's choices at once, the search runs a group of layers at a
time: groups are sorted by their share of the 8-bit reference's estimated energy, costliest
first, and each gets a share of the trial budget. While a group is searched, every other
layer keeps the choices of the best candidate found so far (the uniform-int8 candidate, the
document's 8-bit reference, before the first group has a result), so the trials go where the
energy is.

What differs from the public implementation (QKeras' ``AutoQKerasScheduler``), and why:

* Budget: each group gets ``min_trials``, and the rest of ``trials`` is shared in proportion
  to the groups' costs (largest remainders), so a grouped search spends exactly ``trials`` and
  compares with a joint search at equal cost. The public rule, ``max(10, trials · share)`` per
  group, spends more than ``trials`` whenever a group is cheap.
* Candidates still inherit the reference's trained weights and train every layer: the
  carried choices are choices, not a frozen model, so a later group can still shift them.

This module plans the groups; :mod:`harness.search_loop` runs them. It imports no TensorFlow,
so a config's group settings are checked without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from search.space import SearchSpace

__all__ = ["GROUP_ORDERS", "GroupError", "GroupSettings", "LayerGroup", "plan_groups", "group_at"]

GROUP_ORDERS = ("cost", "sequential")


class GroupError(ValueError):
    """The group settings do not fit the search space or the trial budget."""


@dataclass(frozen=True)
class GroupSettings:
    """``[search.groups]``: ``patterns`` (regexes that fully match layer names, one group
    each; default one group per quantizable layer), ``order`` (``cost``: costliest first;
    ``sequential``: as listed) and the fewest trials a group gets."""

    patterns: tuple[str, ...] | None = None
    order: Literal["cost", "sequential"] = "cost"
    min_trials: int = 10

    def __post_init__(self) -> None:
        if self.order not in GROUP_ORDERS:
            raise GroupError(f"order {self.order!r}: expected 'cost' or 'sequential'")
        if self.min_trials < 1:
            raise GroupError(f"min_trials must be >= 1, got {self.min_trials}")
        if self.patterns is not None and len(set(self.patterns)) != len(self.patterns):
            raise GroupError(f"patterns {list(self.patterns)} name a pattern twice")
        for pattern in self.patterns or ():
            try:
                re.compile(pattern)
            except re.error as e:
                raise GroupError(f"pattern {pattern!r} is not a valid regex: {e}") from e


@dataclass(frozen=True)
class LayerGroup:
    """One group of the schedule: its layers, the Optuna parameters it searches, its cost
    (pJ, the int8 candidate's estimate of its layers) and its trial budget."""

    name: str
    layers: tuple[str, ...]
    params: tuple[str, ...]
    cost_pj: float
    trials: int


def plan_groups(
    space: SearchSpace, layer_cost_pj: Mapping[str, float], settings: GroupSettings, trials: int
) -> tuple[LayerGroup, ...]:
    """The groups in the order they are searched, with their budgets (summing to ``trials``).

    Raises:
        GroupError: a pattern matches no layer, a layer with choices matches no pattern, or
            ``trials`` cannot give every group ``min_trials``.
    """
    names = [slot.name for slot in space.slots]
    patterns = settings.patterns or tuple(re.escape(name) for name in names)
    members: dict[str, list[str]] = {pattern: [] for pattern in patterns}
    for name in names:
        pattern = next((p for p in patterns if re.fullmatch(p, name)), None)
        if pattern is not None:
            members[pattern].append(name)
    for pattern, layers in members.items():
        if not layers:
            taken = any(re.fullmatch(pattern, name) for name in names)
            raise GroupError(f"pattern {pattern!r} matches no quantizable layer (layers: {', '.join(names)})"
                             if not taken else f"pattern {pattern!r}: all its layers are taken by earlier patterns")

    owner = {layer: pattern for pattern, layers in members.items() for layer in layers}
    cost = {p: float(sum(layer_cost_pj.get(layer, 0.0) for layer in layers)) for p, layers in members.items()}
    ordered = list(patterns)
    if settings.order == "cost":
        ordered.sort(key=lambda p: -cost[p])  # stable: ties keep the listed order

    params: dict[str, list[str]] = {p: [] for p in ordered}
    for param in space.distributions():
        role, _, target = param.partition(":")
        if role == "size":
            # a size choice moves every layer of its channel-tied set: the first group searched
            # that holds one of them owns it (model mode's single "size": the first group)
            tied = next((g.layers for g in space.size_groups if g.name == target), tuple(names)) if target else names
            holders = {owner[layer] for layer in tied if layer in owner}
            if not holders:
                raise GroupError(f"size choice {param!r}: none of its layers is in a group")
            params[next(p for p in ordered if p in holders)].append(param)
        elif target not in owner:
            raise GroupError(f"layer {target!r} matches no group pattern; add one, or fix its choices "
                             "with a [[search.layer]] rule")
        else:
            params[owner[target]].append(param)

    searched = [p for p in ordered if params[p]]  # a group with nothing to choose gets no trials
    if not searched:
        raise GroupError("no group has a choice to search")
    budgets = _budgets([cost[p] for p in searched], trials, settings.min_trials)
    return tuple(
        LayerGroup(p, tuple(members[p]), tuple(params[p]), cost[p], budget)
        for p, budget in zip(searched, budgets, strict=True)
    )


def _budgets(costs: Sequence[float], trials: int, min_trials: int) -> list[int]:
    """``min_trials`` each, the rest in proportion to ``costs`` by largest remainders."""
    spare = trials - min_trials * len(costs)
    if spare < 0:
        raise GroupError(f"{trials} trials cannot give each of {len(costs)} groups its {min_trials} "
                         "(raise trials or lower [search.groups] min_trials)")
    total = sum(costs)
    shares = [spare * c / total if total > 0 else spare / len(costs) for c in costs]
    budgets = [int(share) for share in shares]
    by_remainder = sorted(range(len(costs)), key=lambda i: (-(shares[i] - budgets[i]), i))
    for i in by_remainder[: spare - sum(budgets)]:
        budgets[i] += 1
    return [min_trials + b for b in budgets]


def group_at(groups: Sequence[LayerGroup], ordinal: int) -> int:
    """The index of the group the ``ordinal``-th trial (from 0) belongs to; the last group
    takes any trial past the budget (a study resumed with a larger ``trials`` keeps its plan)."""
    end = 0
    for index, group in enumerate(groups):
        end += group.trials
        if ordinal < end:
            return index
    return len(groups) - 1
