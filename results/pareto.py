"""Pareto analysis of a study: non-dominated trials and the hypervolume they cover.

Optuna 5.0 computes hypervolumes only in private modules (``optuna._hypervolume``); its one
public entry point, ``optuna.visualization.plot_hypervolume_history``, needs a live ``Study``
and returns a figure, not a number. Private APIs change without notice, so :func:`hypervolume`
is written here: an exact sweep in 2-D and exact slicing by the last objective in more
dimensions, which is fast enough for the fronts of a few hundred trials this harness produces.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from results.records import ResultsError

__all__ = ["Direction", "hypervolume", "near_pareto_mask", "pareto_front", "pareto_mask"]

Direction = Literal["minimize", "maximize"]
_DIRECTIONS = ("minimize", "maximize")


def pareto_mask(values: np.ndarray, directions: Sequence[Direction]) -> np.ndarray:
    """Which rows of ``values`` no other row dominates.

    Row ``a`` dominates row ``b`` when ``a`` is at least as good in every objective and strictly
    better in one. Equal rows do not dominate each other, so duplicates on the front all stay.
    A row with a NaN is never on the front and never dominates another.

    Args:
        values: Shape ``(n_points, n_objectives)``.
        directions: ``"minimize"`` or ``"maximize"`` per objective (column).

    Returns:
        Boolean array of shape ``(n_points,)``.

    Raises:
        ResultsError: ``values`` is not 2-D, or ``directions`` does not match its columns.
    """
    losses = _as_losses(values, directions, "values")
    valid = ~np.isnan(losses).any(axis=1)
    mask = np.zeros(len(losses), dtype=bool)
    candidates = losses[valid]
    keep = np.ones(len(candidates), dtype=bool)
    for i, point in enumerate(candidates):
        if not keep[i]:
            continue  # already known to be dominated
        if ((candidates <= point).all(axis=1) & (candidates < point).any(axis=1)).any():
            keep[i] = False
        else:
            keep[(point <= candidates).all(axis=1) & (point < candidates).any(axis=1)] = False
    mask[np.flatnonzero(valid)[keep]] = True
    return mask


def near_pareto_mask(values: np.ndarray, directions: Sequence[Direction], slack: Sequence[float]) -> np.ndarray:
    """Which rows no other row beats by more than ``slack`` (additive epsilon-dominance).

    A row is dropped only when another is at least ``slack`` better in every objective and
    more than that in one; with zero slack this is :func:`pareto_mask`. It keeps the
    candidates just behind the front, whose order a noisy or short evaluation may have got
    wrong. NaN rows are never kept and never dominate.
    """
    losses = _as_losses(values, directions, "values")
    margin = np.asarray(slack, dtype=float)
    if margin.shape != (losses.shape[1],) or (margin < 0).any():
        raise ResultsError(f"slack needs one value >= 0 per objective, got {list(slack)}")
    valid = ~np.isnan(losses).any(axis=1)
    candidates = losses[valid]
    kept = np.array([
        not ((candidates <= point - margin).all(axis=1) & (candidates < point - margin).any(axis=1)).any()
        for point in candidates
    ], dtype=bool)
    mask = np.zeros(len(losses), dtype=bool)
    mask[np.flatnonzero(valid)[kept]] = True
    return mask


def pareto_front(
    frame: pd.DataFrame, objectives: Mapping[str, Direction], slack: Mapping[str, float] | None = None
) -> pd.DataFrame:
    """The complete trials of ``frame`` on the Pareto front of ``objectives``.

    Trials whose state is not ``complete`` or that lack a value of any objective are left out.

    Args:
        frame: A table from :func:`results.to_frame` or :func:`results.load`.
        objectives: Column name to direction, e.g. ``{"energy_mj": "minimize",
            "accuracy": "maximize"}``.
        slack: Per objective column, how far behind the front a trial may be and still count
            (:func:`near_pareto_mask`); missing columns get none.

    Returns:
        The front's rows, sorted by the first objective (ascending) then the others, with a
        fresh index.

    Raises:
        ResultsError: No objectives, an unknown direction, or a column missing from ``frame``.
    """
    if not objectives:
        raise ResultsError("pareto_front needs at least one objective")
    for column in ["state", *objectives]:
        if column not in frame.columns:
            raise ResultsError(
                f"column {column!r} not in the results table (columns: {', '.join(frame.columns)})"
            )
    names = list(objectives)
    complete = frame[frame["state"] == "complete"]
    values = complete[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    directions = list(objectives.values())
    if slack:
        unknown = set(slack) - set(objectives)
        if unknown:
            raise ResultsError(f"slack for {sorted(unknown)}, which are not objectives ({', '.join(names)})")
        mask = near_pareto_mask(values, directions, [slack.get(name, 0.0) for name in names])
    else:
        mask = pareto_mask(values, directions)
    front = complete[mask]
    return front.sort_values(names, kind="stable").reset_index(drop=True)


def hypervolume(
    points: np.ndarray | Sequence[Sequence[float]],
    reference_point: Sequence[float],
    directions: Sequence[Direction],
) -> float:
    """Volume of objective space the points dominate, bounded by ``reference_point``.

    Points that are not strictly better than the reference in every objective add nothing;
    dominated points add nothing. The result is in the product of the objectives' units
    (e.g. mJ x accuracy).

    Args:
        points: Shape ``(n_points, n_objectives)``; may be empty.
        reference_point: One value per objective, the worst value still counted.
        directions: ``"minimize"`` or ``"maximize"`` per objective.

    Raises:
        ResultsError: Shapes disagree, a direction is unknown, a point has a NaN, or the
            reference point is not finite.
    """
    losses = _as_losses(points, directions, "points")
    reference = _as_losses(np.asarray([reference_point], dtype=float), directions, "reference")[0]
    if not np.isfinite(reference).all():
        raise ResultsError(f"reference_point must be finite, got {list(reference_point)}")
    if np.isnan(losses).any():
        raise ResultsError("hypervolume points contain NaN; drop incomplete trials first")
    inside = losses[(losses < reference).all(axis=1)]
    if len(inside) == 0:
        return 0.0
    front = inside[pareto_mask(inside, ["minimize"] * inside.shape[1])]
    front = np.unique(front, axis=0)  # also sorts by the first objective
    return float(_volume(front, reference))


def _volume(front: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume of mutually non-dominated minimisation points strictly inside."""
    if front.shape[1] == 1:
        return float(reference[0] - front[:, 0].min())
    if front.shape[1] == 2:
        # Sorted by x ascending, a 2-D front has y descending: sum the vertical strips.
        order = np.argsort(front[:, 0], kind="stable")
        xs, ys = front[order, 0], front[order, 1]
        widths = np.append(xs[1:], reference[0]) - xs
        return float(np.dot(widths, reference[1] - ys))
    # Slice along the last objective: between consecutive values the covered cross-section is
    # the (n-1)-D hypervolume of the points already passed.
    order = np.argsort(front[:, -1], kind="stable")
    levels = np.append(front[order, -1], reference[-1])
    total = 0.0
    for i in range(len(order)):
        depth = levels[i + 1] - levels[i]
        if depth == 0.0:
            continue
        passed = front[order[: i + 1], :-1]
        passed = passed[pareto_mask(passed, ["minimize"] * passed.shape[1])]
        total += depth * _volume(np.unique(passed, axis=0), reference[:-1])
    return total


def _as_losses(
    values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[Direction], what: str
) -> np.ndarray:
    """``values`` as a float array in which smaller is better in every column."""
    array = np.asarray(values, dtype=float)
    if array.ndim == 1 and array.size == 0:
        array = array.reshape(0, len(directions))
    if array.ndim != 2:
        raise ResultsError(f"{what} must be 2-D (points x objectives), got shape {array.shape}")
    bad = [d for d in directions if d not in _DIRECTIONS]
    if bad:
        raise ResultsError(f"direction {bad[0]!r} is not one of {_DIRECTIONS}")
    if array.shape[1] != len(directions) or not directions:
        raise ResultsError(
            f"{what} has {array.shape[1]} objectives but {len(directions)} directions were given"
        )
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    losses: np.ndarray = array * signs
    return losses
