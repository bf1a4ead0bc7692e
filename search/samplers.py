"""Optuna samplers and pruners by the names a config uses."""

from __future__ import annotations

import importlib.util

import optuna

__all__ = ["SAMPLERS", "make_sampler", "make_pruner", "check_sampler_available"]

SAMPLERS = ("tpe", "nsga2", "nsga3", "gp", "random")


def check_sampler_available(name: str) -> None:
    """Raises ValueError when ``name`` is unknown or needs a package that is not installed."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")
    if name == "gp" and importlib.util.find_spec("torch") is None:
        # Optuna's GPSampler imports PyTorch once its random start-up trials are done.
        raise ValueError("sampler 'gp' needs PyTorch: pip install 'energy-harness[gp]' (or torch)")


def make_sampler(name: str, *, seed: int | None = None, multi_objective: bool = True) -> optuna.samplers.BaseSampler:
    """Raises ValueError naming the unknown sampler and the known ones."""
    if name == "tpe":
        # multivariate TPE models the per-layer choices jointly; constant_liar keeps several
        # in-flight trials from being proposed the same point.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLERS)}")


def make_pruner(name: str | None) -> optuna.pruners.BasePruner:
    if name in (None, "none"):
        return optuna.pruners.NopPruner()
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "median":
        return optuna.pruners.MedianPruner()
    raise ValueError(f"unknown pruner {name!r}: expected none, hyperband or median")
