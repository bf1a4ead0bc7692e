"""A candidate: the per-layer choices that turn the reference model into one trial's model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from search.quantizers import Scheme, parse_scheme

__all__ = ["LayerChoice", "CandidateSpec"]


@dataclass(frozen=True)
class LayerChoice:
    """The choices for one quantizable layer.

    Attributes:
        kernel: Scheme of the kernel (weights).
        bias: Scheme of the bias.
        activation: Scheme of the layer's output (after its activation function).
        size: Filters or units of the candidate layer; ``None`` where the layer has no size of
            its own (depthwise convolutions follow their input).
    """

    kernel: Scheme
    bias: Scheme
    activation: Scheme
    size: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "kernel": self.kernel.name,
            "bias": self.bias.name,
            "activation": self.activation.name,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> LayerChoice:
        size = data.get("size")
        return cls(
            kernel=parse_scheme(str(data["kernel"])),
            bias=parse_scheme(str(data["bias"])),
            activation=parse_scheme(str(data["activation"])),
            size=None if size is None else int(size),  # type: ignore[call-overload]
        )


@dataclass(frozen=True)
class CandidateSpec:
    """Per-layer choices keyed by the reference layer's name, in the reference's layer order.

    The spec is data only: :mod:`search.builder` turns it into a Keras model. Two specs with the
    same choices have the same :attr:`key`, which the results store uses to resume work.
    """

    layers: tuple[tuple[str, LayerChoice], ...]
    label: str = field(default="", compare=False)

    @classmethod
    def from_mapping(cls, layers: Mapping[str, LayerChoice], label: str = "") -> CandidateSpec:
        return cls(tuple(layers.items()), label)

    def __getitem__(self, layer_name: str) -> LayerChoice:
        for name, choice in self.layers:
            if name == layer_name:
                return choice
        raise KeyError(layer_name)

    def __contains__(self, layer_name: object) -> bool:
        return any(name == layer_name for name, _ in self.layers)

    def __iter__(self) -> Iterator[tuple[str, LayerChoice]]:
        return iter(self.layers)

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {name: choice.to_dict() for name, choice in self.layers}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, object]], label: str = "") -> CandidateSpec:
        return cls(tuple((name, LayerChoice.from_dict(c)) for name, c in data.items()), label)

    @property
    def key(self) -> str:
        """A stable sha256 of the choices (not of the label)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def summary(self) -> str:
        """One short line per layer, for tables: ``conv1:fixed(4)/fixed(8)/fixed(4)x12``."""
        parts = []
        for name, c in self.layers:
            size = "" if c.size is None else f"x{c.size}"
            parts.append(f"{name}:{c.kernel}/{c.bias}/{c.activation}{size}")
        return " ".join(parts)
