from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from results import ResultsError, hypervolume, pareto_front, pareto_mask, to_frame
from results.pareto import near_pareto_mask
from tests.results._results_factories import make_record

NAN = float("nan")


def test_mask_mixed_directions_duplicates_and_nan() -> None:
    # columns: energy (minimize), accuracy (maximize)
    values = np.array(
        [
            [1.0, 0.5],  # A: cheapest
            [2.0, 0.9],  # B
            [3.0, 0.8],  # C: dominated by B
            [2.0, 0.7],  # D: same energy as B, worse accuracy
            [4.0, 0.95],  # E: most accurate
            [2.0, 0.9],  # F: duplicate of B, stays with it
            [NAN, 0.99],  # G: missing energy, never on the front
            [5.0, 0.95],  # H: same accuracy as E, more energy
        ]
    )
    mask = pareto_mask(values, ["minimize", "maximize"])
    assert mask.tolist() == [True, True, False, False, True, True, False, False]


def test_mask_flipping_directions_flips_front() -> None:
    values = np.array([[1.0, 1.0], [2.0, 2.0], [1.5, 0.5]])
    assert pareto_mask(values, ["minimize", "minimize"]).tolist() == [True, False, True]
    assert pareto_mask(values, ["maximize", "maximize"]).tolist() == [False, True, False]
    assert pareto_mask(values, ["maximize", "minimize"]).tolist() == [False, True, True]


def test_mask_three_objectives_and_edge_cases() -> None:
    values = np.array([[1, 2, 3], [2, 1, 3], [2, 2, 3], [1, 2, 2]], dtype=float)
    assert pareto_mask(values, ["minimize"] * 3).tolist() == [False, True, False, True]
    assert pareto_mask(np.empty((0, 2)), ["minimize", "maximize"]).tolist() == []
    assert pareto_mask(np.array([[3.0]]), ["maximize"]).tolist() == [True]


@pytest.mark.parametrize(
    ("values", "directions", "message"),
    [
        (np.ones((2, 2)), ["minimize"], "2 objectives but 1 directions"),
        (np.ones((2, 2)), ["minimize", "lower"], "'lower'"),
        (np.ones(3), ["minimize"], "2-D"),
    ],
)
def test_mask_rejects_bad_arguments(
    values: np.ndarray, directions: list[str], message: str
) -> None:
    with pytest.raises(ResultsError, match=message):
        pareto_mask(values, directions)  # type: ignore[arg-type]


def test_front_uses_complete_trials_only_and_sorts() -> None:
    frame = to_frame(
        [
            make_record(0, energy_mj=4.0, accuracy=0.95),
            make_record(1, energy_mj=1.0, accuracy=0.6),
            make_record(2, energy_mj=2.0, accuracy=0.9),
            make_record(3, energy_mj=3.0, accuracy=0.8),  # dominated by 2
            make_record(4, energy_mj=0.1, accuracy=0.99, state="failed"),  # would dominate all
            make_record(5, energy_mj=None, accuracy=1.0),  # complete but no energy
        ]
    )
    front = pareto_front(frame, {"energy_mj": "minimize", "accuracy": "maximize"})
    assert front["trial_number"].tolist() == [1, 2, 0]
    assert front.index.tolist() == [0, 1, 2]


def test_front_missing_column_named() -> None:
    frame = to_frame([make_record(0)])
    with pytest.raises(ResultsError, match="'latency_ms' not in the results table"):
        pareto_front(frame, {"latency_ms": "minimize", "accuracy": "maximize"})
    with pytest.raises(ResultsError, match="at least one objective"):
        pareto_front(frame, {})


def test_front_of_empty_frame_is_empty() -> None:
    frame = to_frame([make_record(0, state="failed")])
    assert pareto_front(frame, {"energy_mj": "minimize"}).empty


MIN2 = ["minimize", "minimize"]


@pytest.mark.parametrize(
    ("points", "reference", "directions", "expected"),
    [
        # Staircase: strips of width 1 with heights 1, 2, 3.
        ([[1, 3], [2, 2], [3, 1]], [4, 4], MIN2, 6.0),
        # Adding a dominated point, a duplicate, and points outside the box changes nothing.
        ([[1, 3], [2, 2], [3, 1], [3, 3], [2, 2], [5, 0], [0, 4], [0, 9]], [4, 4], MIN2, 6.0),
        # Single point: its box.
        ([[1, 1]], [3, 5], MIN2, 8.0),
        # Mixed directions (energy min, accuracy max): 3.2 + 2.25 - 2.0.
        ([[2, 0.9], [5, 0.95]], [10, 0.5], ["minimize", "maximize"], 3.45),
        # Both maximised: box from (0, 0) to each point.
        ([[2, 1], [1, 2]], [0, 0], ["maximize", "maximize"], 3.0),
        # Nothing strictly inside the box.
        ([[4, 1], [1, 4]], [4, 4], MIN2, 0.0),
        ([], [4, 4], MIN2, 0.0),
        # 1-D: distance to the reference.
        ([[3], [1]], [5], ["minimize"], 4.0),
        # 3-D: one unit cube.
        ([[1, 1, 1]], [2, 2, 2], ["minimize"] * 3, 1.0),
        # 3-D: three 2x1x1 boxes, pairwise and triple overlaps are the unit cube: 6 - 3 + 1.
        ([[0, 1, 1], [1, 0, 1], [1, 1, 0]], [2, 2, 2], ["minimize"] * 3, 4.0),
        # 3-D: 4 + 2 - 1, plus a dominated point and one outside.
        ([[0, 0, 1], [1, 1, 0], [1, 1, 1], [0, 0, 3]], [2, 2, 2], ["minimize"] * 3, 5.0),
    ],
)
def test_hypervolume_hand_computed(
    points: list[list[float]], reference: list[float], directions: list[str], expected: float
) -> None:
    assert hypervolume(points, reference, directions) == pytest.approx(expected)  # type: ignore[arg-type]


def _inclusion_exclusion(losses: np.ndarray, reference: np.ndarray) -> float:
    """Union of boxes [p, reference] by inclusion-exclusion: exact, exponential, independent."""
    inside = [p for p in losses if (p < reference).all()]
    total = 0.0
    for k in range(1, len(inside) + 1):
        for subset in itertools.combinations(inside, k):
            corner = np.max(subset, axis=0)
            total += (-1) ** (k + 1) * float(np.prod(reference - corner))
    return total


@pytest.mark.parametrize("n_objectives", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(n_objectives: int) -> None:
    rng = np.random.default_rng(n_objectives)
    directions = ["minimize", "maximize", "minimize", "maximize"][:n_objectives]
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    for _ in range(20):
        points = rng.integers(0, 6, size=(9, n_objectives)).astype(float) * signs
        reference = np.full(n_objectives, 5.0) * signs
        expected = _inclusion_exclusion(points * signs, reference * signs)
        got = hypervolume(points, reference, directions)  # type: ignore[arg-type]
        assert got == pytest.approx(expected)


def test_hypervolume_rejects_nan_and_bad_reference() -> None:
    with pytest.raises(ResultsError, match="NaN"):
        hypervolume([[1.0, NAN]], [2, 2], MIN2)  # type: ignore[arg-type]
    with pytest.raises(ResultsError, match="finite"):
        hypervolume([[1.0, 1.0]], [2, float("inf")], MIN2)  # type: ignore[arg-type]
    with pytest.raises(ResultsError, match="3 objectives but 2"):
        hypervolume([[1.0, 1.0]], [2, 2, 2], MIN2)  # type: ignore[arg-type]


def test_front_and_hypervolume_from_frame() -> None:
    frame = to_frame(
        [make_record(0, energy_mj=2, accuracy=0.9), make_record(1, energy_mj=5, accuracy=0.95)]
    )
    objectives = {"energy_mj": "minimize", "accuracy": "maximize"}
    front = pareto_front(frame, objectives)  # type: ignore[arg-type]
    value = hypervolume(front[list(objectives)].to_numpy(), [10, 0.5], list(objectives.values()))  # type: ignore[arg-type]
    assert value == pytest.approx(3.45)
    assert isinstance(front, pd.DataFrame)


def test_near_front_with_zero_slack_is_the_front() -> None:
    rng = np.random.default_rng(3)
    values = rng.random((60, 3))
    values[5] = values[9]  # a duplicate pair
    values[7, 1] = np.nan
    directions = ["maximize", "minimize", "minimize"]
    np.testing.assert_array_equal(near_pareto_mask(values, directions, [0, 0, 0]), pareto_mask(values, directions))


def test_near_front_keeps_trials_within_the_slack_only() -> None:
    # accuracy (max), energy (min): 0 and 1 are the front; 2 is 0.5 points behind 1, 3 is 3 points behind
    values = np.array([[0.90, 1.0], [0.95, 2.0], [0.945, 2.0], [0.92, 2.5]])
    directions = ["maximize", "minimize"]
    assert list(pareto_mask(values, directions)) == [True, True, False, False]
    assert list(near_pareto_mask(values, directions, [0.01, 0.0])) == [True, True, True, False]
    assert list(near_pareto_mask(values, directions, [0.05, 0.0])) == [True, True, True, True]
    with pytest.raises(ResultsError, match="slack"):
        near_pareto_mask(values, directions, [0.01])


def test_pareto_front_slack_names_objectives() -> None:
    frame = pd.DataFrame({"state": ["complete"] * 3, "accuracy": [0.9, 0.95, 0.945], "energy_mj": [1.0, 2.0, 2.0]})
    objectives = {"accuracy": "maximize", "energy_mj": "minimize"}
    assert len(pareto_front(frame, objectives)) == 2
    assert len(pareto_front(frame, objectives, slack={"accuracy": 0.01})) == 3
    with pytest.raises(ResultsError, match="latency_ms"):
        pareto_front(frame, objectives, slack={"latency_ms": 1.0})
