"""Energy accounting, pure functions: power samples -> energy, counter deltas, rail sums.

Units: time in seconds (``time.monotonic()``), power in mW, energy in mJ (mW × s = mJ).
Bad arguments (unsorted or non-finite samples, a window the samples do not cover, a counter
that went backwards without a wrap range, an unknown rail) raise ``ValueError``; meters
translate it into a :class:`~devices.meters.errors.MeterError` naming the meter.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from itertools import pairwise

__all__ = [
    "trapezoid_energy_mj",
    "integrate_rails_mj",
    "energy_delta_mj",
    "energy_deltas_mj",
    "sum_rails_mj",
]


def _check_samples(samples: Sequence[tuple[float, float]]) -> None:
    previous_s = -math.inf
    for time_s, power_mw in samples:
        if not (math.isfinite(time_s) and math.isfinite(power_mw)):
            raise ValueError(f"sample ({time_s}, {power_mw}) is not finite")
        if time_s < previous_s:
            raise ValueError(f"sample times must not decrease: {time_s} s after {previous_s} s")
        previous_s = time_s


def trapezoid_energy_mj(
    samples: Sequence[tuple[float, float]],
    start_s: float | None = None,
    end_s: float | None = None,
) -> float:
    """Integrate ``(time_s, power_mw)`` samples over ``[start_s, end_s]`` by the trapezoid rule.

    Power is taken as linear between consecutive samples, so the result is exact for
    piecewise-linear power whose breakpoints are sample times. A window edge that falls
    between two samples is clipped there, with the power linearly interpolated. Two samples
    with the same time make a step. ``start_s``/``end_s`` default to the first/last sample.

    Returns:
        Energy in the window. Units: mJ.

    Raises:
        ValueError: no samples; times decreasing or values not finite; ``end_s < start_s``; or
            a window reaching outside the samples' span (energy there is unknown).
    """
    if not samples:
        raise ValueError("no power samples to integrate")
    _check_samples(samples)
    first_s, last_s = samples[0][0], samples[-1][0]
    start_s = first_s if start_s is None else start_s
    end_s = last_s if end_s is None else end_s
    if end_s < start_s:
        raise ValueError(f"window ends ({end_s} s) before it starts ({start_s} s)")
    if start_s < first_s or end_s > last_s:
        raise ValueError(
            f"window [{start_s}, {end_s}] s is not covered by samples spanning "
            f"[{first_s}, {last_s}] s"
        )
    energy_mj = 0.0
    for (t0_s, p0_mw), (t1_s, p1_mw) in pairwise(samples):
        low_s, high_s = max(t0_s, start_s), min(t1_s, end_s)
        if high_s <= low_s:
            continue
        slope_mw_per_s = (p1_mw - p0_mw) / (t1_s - t0_s)
        low_mw = p0_mw + slope_mw_per_s * (low_s - t0_s)
        high_mw = p0_mw + slope_mw_per_s * (high_s - t0_s)
        energy_mj += (low_mw + high_mw) / 2.0 * (high_s - low_s)
    return energy_mj


def integrate_rails_mj(
    samples: Sequence[tuple[float, Mapping[str, float]]],
    start_s: float | None = None,
    end_s: float | None = None,
) -> dict[str, float]:
    """Per-rail :func:`trapezoid_energy_mj` of ``(time_s, {rail: power_mw})`` samples.

    Raises:
        ValueError: as :func:`trapezoid_energy_mj`, or when samples disagree on the rails.
    """
    if not samples:
        raise ValueError("no power samples to integrate")
    rails = set(samples[0][1])
    for time_s, power_mw in samples:
        if set(power_mw) != rails:
            raise ValueError(
                f"sample at {time_s} s has rails {sorted(power_mw)}, expected {sorted(rails)}"
            )
    return {
        rail: trapezoid_energy_mj([(t, p[rail]) for t, p in samples], start_s, end_s)
        for rail in sorted(rails)
    }


def energy_delta_mj(begin_mj: float, end_mj: float, range_mj: float | None = None) -> float:
    """Energy between two readings of a cumulative counter. Units: mJ.

    A reading lower than the previous one means the counter wrapped: ``range_mj`` (RAPL's
    ``max_energy_range_uj``, in mJ) is added. At most one wrap per window can be seen, so a
    window must be shorter than the time the counter takes to cover its range.

    Raises:
        ValueError: the counter went backwards and has no ``range_mj`` (it was reset, e.g. by
            a reboot), or ``range_mj`` is not positive.
    """
    if range_mj is not None and not range_mj > 0:
        raise ValueError(f"range_mj must be positive, got {range_mj}")
    if end_mj >= begin_mj:
        return end_mj - begin_mj
    if range_mj is None:
        raise ValueError(
            f"counter went backwards from {begin_mj} to {end_mj} mJ and has no wrap range "
            "(was it reset, e.g. by a reboot?)"
        )
    return end_mj + range_mj - begin_mj


def energy_deltas_mj(
    begin_mj: Mapping[str, float],
    end_mj: Mapping[str, float],
    range_mj: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-rail :func:`energy_delta_mj`; both readings must have the same rails.

    Raises:
        ValueError: rails differ between the readings, or as :func:`energy_delta_mj` (the
            message names the rail).
    """
    if set(begin_mj) != set(end_mj):
        raise ValueError(f"rails changed within the window: {sorted(begin_mj)} at the start, "
                         f"{sorted(end_mj)} at the end")
    ranges = range_mj or {}
    deltas: dict[str, float] = {}
    for rail in sorted(begin_mj):
        try:
            deltas[rail] = energy_delta_mj(begin_mj[rail], end_mj[rail], ranges.get(rail))
        except ValueError as e:
            raise ValueError(f"rail {rail!r}: {e}") from e
    return deltas


def sum_rails_mj(energy_mj: Mapping[str, float], rails: Collection[str] | None = None) -> float:
    """Sum the chosen ``rails`` (all when ``None``). Units: mJ.

    Raises:
        ValueError: a chosen rail is missing; the message lists the rails there are.
    """
    if rails is None:
        return math.fsum(energy_mj.values())
    missing = [rail for rail in rails if rail not in energy_mj]
    if missing:
        raise ValueError(f"rails {missing} not measured; available: {sorted(energy_mj)}")
    return math.fsum(energy_mj[rail] for rail in rails)
