"""What a user may ask of a search space, without the model: default choices, layer rules,
options and their errors.

Kept apart from :mod:`search.space` (which reads Keras models) so that reading and checking a
config does not import TensorFlow: a typo in a config is reported in about a second.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ACTIVATION_RANGES",
    "SpaceError",
    "LayerRule",
    "SpaceOptions",
    "DEFAULT_KERNEL",
    "DEFAULT_BIAS",
    "DEFAULT_ACTIVATION",
    "DEFAULT_MULTIPLIERS",
]

DEFAULT_KERNEL = ("binary", "ternary", "po2(4)", "fixed(2)", "fixed(4)", "fixed(6)", "fixed(8)", "float32")
DEFAULT_BIAS = ("fixed(8)", "fixed(16)", "float32")
DEFAULT_ACTIVATION = ("fixed(2)", "fixed(4)", "fixed(6)", "fixed(8)", "float32")
DEFAULT_MULTIPLIERS = (0.5, 0.75, 1.0, 1.5, 2.0)


class SpaceError(ValueError):
    """The config and the reference model do not make a valid search space."""


@dataclass(frozen=True)
class LayerRule:
    """Restricts the layers whose name fully matches ``match`` (a regex or a plain name).

    ``None`` leaves a field as the defaults (or an earlier rule) set it. ``skip`` keeps the
    layer float at its reference size; ``resize = False`` keeps only its size.
    """

    match: str
    kernel: tuple[str, ...] | None = None
    bias: tuple[str, ...] | None = None
    activation: tuple[str, ...] | None = None
    multipliers: tuple[float, ...] | None = None
    resize: bool = True
    skip: bool = False

    def __post_init__(self) -> None:
        for value in self.multipliers or ():
            if not value > 0:
                raise SpaceError(f"layer rule {self.match!r}: size multiplier {value!r} must be > 0")
        for role in ("kernel", "bias", "activation", "multipliers"):
            if getattr(self, role) is not None and len(getattr(self, role)) == 0:
                raise SpaceError(f"layer rule {self.match!r}: {role} list is empty")

    def matches(self, layer_name: str) -> bool:
        try:
            return re.fullmatch(self.match, layer_name) is not None
        except re.error as e:
            raise SpaceError(f"layer rule match {self.match!r} is not a valid regex: {e}") from e


#: How ``fixed(M)`` activations without integer bits get their range.
ACTIVATION_RANGES = ("calibrated", "half")


@dataclass(frozen=True)
class SpaceOptions:
    kernel: tuple[str, ...] = DEFAULT_KERNEL
    bias: tuple[str, ...] = DEFAULT_BIAS
    activation: tuple[str, ...] = DEFAULT_ACTIVATION
    multipliers: tuple[float, ...] = DEFAULT_MULTIPLIERS
    size_mode: Literal["per-layer", "model"] = "per-layer"
    rules: tuple[LayerRule, ...] = ()
    strict_layers: bool = False  # refuse, rather than skip, layers the search cannot handle
    # "calibrated": a fixed(M) activation's range, and a binary/binary01/ternary one's scale, is
    # fitted to the reference's outputs (search.activation_ranges); "half": M // 2 integer bits
    # and scale 1 whatever the layer
    activation_range: Literal["calibrated", "half"] = "calibrated"

    def __post_init__(self) -> None:
        if self.size_mode not in ("per-layer", "model"):
            raise SpaceError(f"size_mode {self.size_mode!r}: expected 'per-layer' or 'model'")
        if self.activation_range not in ACTIVATION_RANGES:
            raise SpaceError(
                f"activation_range {self.activation_range!r}: expected 'calibrated' or 'half'"
            )
        for value in self.multipliers:
            if not value > 0:
                raise SpaceError(f"size multiplier {value!r} must be > 0")
