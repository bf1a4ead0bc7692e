"""Document 000's forgiving-factor score (equation 2), for single-objective searches.

``score = accuracy * (1 + delta)``, ``delta = d * log(ref_cost / trial_cost) / log(rate)``
with ``d = delta_p / 100`` when the trial is cheaper than the reference and ``delta_n / 100``
when it is dearer. Reading: "for a ``rate``-fold cost reduction I accept ``delta_p`` percent
less accuracy". ``stress`` scales the reference cost (stress < 1 asks for more savings).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["ForgivingFactor"]


@dataclass(frozen=True)
class ForgivingFactor:
    """Defaults are document 000's worked example: 8 % per 2x cheaper, 2 % per 2x dearer."""

    delta_p: float = 8.0
    delta_n: float = 2.0
    rate: float = 2.0
    stress: float = 1.0

    def __post_init__(self) -> None:
        if not self.rate > 1.0:
            raise ValueError(f"forgiving factor rate must be > 1, got {self.rate}")
        if not self.stress > 0.0:
            raise ValueError(f"forgiving factor stress must be > 0, got {self.stress}")
        if self.delta_p < 0 or self.delta_n < 0:
            raise ValueError(f"delta_p and delta_n must be >= 0, got {self.delta_p}, {self.delta_n}")

    def delta(self, reference_cost: float, trial_cost: float) -> float:
        if reference_cost <= 0 or trial_cost <= 0:
            raise ValueError(f"costs must be > 0, got reference {reference_cost}, trial {trial_cost}")
        reference = reference_cost * self.stress
        percent = self.delta_p if trial_cost <= reference else self.delta_n
        return percent / 100.0 * math.log(reference / trial_cost) / math.log(self.rate)

    def score(self, accuracy: float, reference_cost: float, trial_cost: float) -> float:
        return accuracy * (1.0 + self.delta(reference_cost, trial_cost))
