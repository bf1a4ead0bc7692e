"""The search config: a TOML file read into validated, typed settings.

Every key is checked where it is read; an unknown key, a wrong type or a bad value is an
:class:`~harness.errors.InputError` naming the key (``[search] sampler: unknown sampler 'x'``).
All sections and keys are optional; the defaults run the built-in example on digits.

Example::

    [reference]
    model = "example"            # a .keras file, module:function, or "example"
    [data]
    dataset = "digits"           # digits | fashion-mnist | module:function
    [search]
    study = "doc000-digits"
    trials = 30
    sampler = "tpe"              # tpe | nsga2 | nsga3 | gp | random
    objectives = ["accuracy", "energy"]
    [[search.layer]]
    match = "dense"
    kernel = ["fixed(8)"]
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

from devices.base import MeasureSettings
from devices.energy_protocol import EnergyProtocol
from harness.errors import InputError
from search.groups import GroupError, GroupSettings
from search.quantizers import UnknownQuantizerError, parse_scheme
from search.samplers import check_sampler_available
from search.scoring import ForgivingFactor
from search.space_options import (
    DEFAULT_ACTIVATION,
    DEFAULT_BIAS,
    DEFAULT_KERNEL,
    DEFAULT_MULTIPLIERS,
    LayerRule,
    SpaceError,
    SpaceOptions,
)
from search.training import TrainSettings

__all__ = ["SearchConfig", "Objective", "OBJECTIVES", "load_config", "config_from_mapping"]

Objective = Literal["accuracy", "energy", "latency", "size", "bops"]
OBJECTIVES: dict[str, str] = {
    "accuracy": "maximize",
    "energy": "minimize",
    "latency": "minimize",
    "size": "minimize",
    "bops": "minimize",
}
SCORE_COSTS = ("energy", "bops", "size", "latency")

#: ``harness finetune``: the chosen candidates' training on the real task after the search
#: (document 000 evaluates on a proxy task, then trains the result model on the real one).
DEFAULT_FINETUNE = TrainSettings(epochs=3, data_fraction=1.0, lr_schedule="cosine")


@dataclass(frozen=True)
class Constraints:
    """Limits a candidate must meet; ``None`` is no limit. Units in the names."""

    max_size_bytes: float | None = None
    max_energy_mj: float | None = None
    max_latency_ms: float | None = None
    max_bops: float | None = None
    min_accuracy: float | None = None


@dataclass(frozen=True)
class MeasureConfig:
    devices: tuple[str, ...] = ("local",)
    threads: int = 1
    warmup_runs: int = 5
    min_seconds: float = 0.5
    min_runs: int = 20
    latency_aggregate: Literal["max", "mean"] = "max"
    inventory: tuple[str, ...] = ()
    retries: int = 2
    quarantine_after: int = 3
    lease_ttl_s: float = 120.0
    prescreen: bool = False
    prescreen_margin: float | None = None


@dataclass(frozen=True)
class SearchConfig:
    reference: str = "example"
    dataset: str = "digits"
    data_path: str | None = None
    validation_fraction: float = 0.2
    study: str = "doc000-digits"
    trials: int = 30
    sampler: str = "tpe"
    seed: int = 0
    objectives: tuple[str, ...] = ("accuracy", "energy")
    mode: Literal["pareto", "score"] = "pareto"
    score: ForgivingFactor = field(default_factory=ForgivingFactor)
    score_cost: str = "energy"
    pruner: str = "hyperband"
    in_flight: int = 2
    input_bits: int = 8
    space: SpaceOptions = field(default_factory=SpaceOptions)
    groups: GroupSettings | None = None  # [search.groups]: group search by energy (search.groups)
    training: TrainSettings = field(default_factory=TrainSettings)
    constraints: Constraints = field(default_factory=Constraints)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    lowering_tolerance: float = 0.02
    energy: EnergyProtocol = field(default_factory=EnergyProtocol)
    accuracy_from: Literal["tflite", "keras"] = "tflite"
    results_dir: str = "results"
    finetune: TrainSettings = field(default_factory=lambda: DEFAULT_FINETUNE)

    def with_overrides(self, **overrides: object) -> SearchConfig:
        """A copy with the CLI's flags applied (``None`` values leave a setting alone)."""
        values = {k: v for k, v in overrides.items() if v is not None}
        if "sampler" in values:
            try:
                check_sampler_available(str(values["sampler"]))
            except ValueError as e:
                raise InputError(f"--sampler: {e}") from e
        if "seed" in values:
            values["training"] = replace(self.training, seed=values["seed"])
            values["finetune"] = replace(self.finetune, seed=values["seed"])
        if "devices" in values:
            values["measure"] = replace(self.measure, devices=tuple(values.pop("devices")))  # type: ignore[arg-type]
        if "inventory" in values:
            measure = values.get("measure", self.measure)
            values["measure"] = replace(measure, inventory=tuple(values.pop("inventory")))  # type: ignore[arg-type]
        return replace(self, **values)  # type: ignore[arg-type]

    @property
    def directions(self) -> list[str]:
        if self.mode == "score":
            return ["maximize"]
        return [OBJECTIVES[name] for name in self.objectives]


class _Section:
    """Reads one TOML table, remembering which keys were used so leftovers are reported."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            raise InputError(f"{where}: expected a table, got {type(data).__name__}")
        self.data, self.where, self.used = data, where, set()

    def get(self, key: str, kind: type | tuple[type, ...], default: object) -> object:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise InputError(f"{self.where} {key}: expected {names}, got {value!r}")
        return value

    def strings(self, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not value or not all(isinstance(v, str) for v in value):  # type: ignore[union-attr]
            raise InputError(f"{self.where} {key}: expected a non-empty list of strings, got {value!r}")
        return tuple(value)  # type: ignore[arg-type]

    def numbers(self, key: str, default: tuple[float, ...] | None) -> tuple[float, ...] | None:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):  # type: ignore[union-attr]
            raise InputError(f"{self.where} {key}: expected a non-empty list of numbers, got {value!r}")
        return tuple(float(v) for v in value)  # type: ignore[union-attr]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise InputError(f"{self.where}: unknown key {unknown[0]!r}")


def load_config(path: str | Path) -> SearchConfig:
    """Read a TOML search config.

    Raises:
        InputError: the file is missing or not TOML, or a key is unknown or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InputError(f"config {path}: cannot read it ({e.strerror})") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"config {path}: not valid TOML: {e}") from e
    return config_from_mapping(data, where=str(path), base_dir=path.parent)


def config_from_mapping(
    data: Mapping[str, object], where: str = "config", base_dir: Path | None = None
) -> SearchConfig:
    """Settings from parsed TOML; relative inventory paths resolve against ``base_dir``."""
    root = _Section(data, where)
    values: dict[str, object] = {}
    defaults = SearchConfig()

    reference = _Section(root.get("reference", dict, {}), "[reference]")
    values["reference"] = reference.get("model", str, defaults.reference)
    reference.finish()

    data_section = _Section(root.get("data", dict, {}), "[data]")
    values["dataset"] = data_section.get("dataset", str, defaults.dataset)
    values["data_path"] = data_section.get("path", str, None)
    values["validation_fraction"] = data_section.get("validation_fraction", float, defaults.validation_fraction)
    data_section.finish()

    search = _Section(root.get("search", dict, {}), "[search]")
    values["study"] = search.get("study", str, defaults.study)
    values["trials"] = search.get("trials", int, defaults.trials)
    values["sampler"] = search.get("sampler", str, defaults.sampler)
    try:
        check_sampler_available(str(values["sampler"]))
    except ValueError as e:
        raise InputError(f"[search] sampler: {e}") from e
    values["seed"] = search.get("seed", int, defaults.seed)
    values["mode"] = search.get("mode", str, defaults.mode)
    if values["mode"] not in ("pareto", "score"):
        raise InputError(f"[search] mode: expected 'pareto' or 'score', got {values['mode']!r}")
    objectives = search.strings("objectives", defaults.objectives)
    for name in objectives or ():
        if name not in OBJECTIVES:
            raise InputError(f"[search] objectives: unknown objective {name!r}; expected {', '.join(OBJECTIVES)}")
    if objectives and len(set(objectives)) != len(objectives):
        raise InputError(f"[search] objectives: {list(objectives)} names an objective twice")
    values["objectives"] = objectives
    values["in_flight"] = search.get("in_flight", int, defaults.in_flight)
    values["input_bits"] = search.get("input_bits", int, defaults.input_bits)
    if not 2 <= values["input_bits"] <= 32:  # type: ignore[operator]
        raise InputError(f"[search] input_bits: expected 2 to 32, got {values['input_bits']}")
    values["accuracy_from"] = search.get("accuracy_from", str, defaults.accuracy_from)
    values["results_dir"] = search.get("results_dir", str, defaults.results_dir)
    values["space"] = _space_options(search)
    values["groups"] = _group_settings(search)
    search.finish()
    if values["trials"] < 1 or values["in_flight"] < 1:  # type: ignore[operator]
        raise InputError("[search] trials and in_flight must be >= 1")
    if values["accuracy_from"] not in ("tflite", "keras"):
        raise InputError(f"[search] accuracy_from: expected 'tflite' or 'keras', got {values['accuracy_from']!r}")

    score = _Section(root.get("score", dict, {}), "[score]")
    try:
        values["score"] = ForgivingFactor(
            delta_p=score.get("delta_p", float, 8.0),  # type: ignore[arg-type]
            delta_n=score.get("delta_n", float, 2.0),  # type: ignore[arg-type]
            rate=score.get("rate", float, 2.0),  # type: ignore[arg-type]
            stress=score.get("stress", float, 1.0),  # type: ignore[arg-type]
        )
    except ValueError as e:
        raise InputError(f"[score]: {e}") from e
    values["score_cost"] = score.get("cost", str, defaults.score_cost)
    if values["score_cost"] not in SCORE_COSTS:
        raise InputError(f"[score] cost: expected one of {', '.join(SCORE_COSTS)}, got {values['score_cost']!r}")
    values["pruner"] = score.get("pruner", str, defaults.pruner)
    if values["pruner"] not in ("none", "hyperband", "median"):
        raise InputError(f"[score] pruner: expected none, hyperband or median, got {values['pruner']!r}")
    score.finish()

    values["training"] = _train_settings(root, "training", defaults.training, values["seed"])  # type: ignore[arg-type]
    values["finetune"] = _train_settings(root, "finetune", defaults.finetune, values["seed"])  # type: ignore[arg-type]

    constraints = _Section(root.get("constraints", dict, {}), "[constraints]")
    values["constraints"] = Constraints(
        **{f.name: constraints.get(f.name, float, None) for f in fields(Constraints)}  # type: ignore[arg-type]
    )
    constraints.finish()

    values["energy"] = _energy_protocol(_Section(root.get("energy", dict, {}), "[energy]"))

    lowering = _Section(root.get("lowering", dict, {}), "[lowering]")
    values["lowering_tolerance"] = lowering.get("accuracy_tolerance", float, defaults.lowering_tolerance)
    lowering.finish()

    measure = _Section(root.get("measure", dict, {}), "[measure]")
    values["measure"] = MeasureConfig(
        devices=measure.strings("devices", defaults.measure.devices),  # type: ignore[arg-type]
        threads=measure.get("threads", int, defaults.measure.threads),  # type: ignore[arg-type]
        warmup_runs=measure.get("warmup_runs", int, defaults.measure.warmup_runs),  # type: ignore[arg-type]
        min_seconds=measure.get("min_seconds", float, defaults.measure.min_seconds),  # type: ignore[arg-type]
        min_runs=measure.get("min_runs", int, defaults.measure.min_runs),  # type: ignore[arg-type]
        latency_aggregate=measure.get("latency_aggregate", str, "max"),  # type: ignore[arg-type]
        inventory=tuple(str(base_dir / p) if base_dir is not None and not Path(p).is_absolute() else p
                        for p in measure.strings("inventory", ()) or ()),
        retries=measure.get("retries", int, defaults.measure.retries),  # type: ignore[arg-type]
        quarantine_after=measure.get("quarantine_after", int, defaults.measure.quarantine_after),  # type: ignore[arg-type]
        lease_ttl_s=measure.get("lease_ttl_s", float, defaults.measure.lease_ttl_s),  # type: ignore[arg-type]
        prescreen=measure.get("prescreen", bool, defaults.measure.prescreen),  # type: ignore[arg-type]
        prescreen_margin=measure.get("prescreen_margin", float, None),  # type: ignore[arg-type]
    )
    if values["measure"].latency_aggregate not in ("max", "mean"):  # type: ignore[attr-defined]
        raise InputError("[measure] latency_aggregate: expected 'max' or 'mean'")
    if values["measure"].retries < 0:  # type: ignore[attr-defined]
        raise InputError("[measure] retries: expected a whole number >= 0")
    if values["measure"].quarantine_after < 1:  # type: ignore[attr-defined]
        raise InputError("[measure] quarantine_after: expected a whole number >= 1")
    margin = values["measure"].prescreen_margin  # type: ignore[attr-defined]
    if margin is not None and not margin >= 0:
        raise InputError("[measure] prescreen_margin: expected a fraction >= 0 (0.2 = 20 %)")
    if not values["measure"].lease_ttl_s >= 5:  # type: ignore[attr-defined]
        raise InputError("[measure] lease_ttl_s: expected a number of seconds >= 5")
    chosen = values["measure"]
    try:
        MeasureSettings(chosen.threads, chosen.warmup_runs, chosen.min_seconds, chosen.min_runs)  # type: ignore[attr-defined]
    except ValueError as e:
        raise InputError(f"[measure] {e}") from e
    measure.finish()
    root.finish()
    return SearchConfig(**values)  # type: ignore[arg-type]


def _train_settings(root: _Section, name: str, defaults: TrainSettings, seed: int) -> TrainSettings:
    """``[training]`` (the search's proxy training) or ``[finetune]`` (after the search)."""
    section = _Section(root.get(name, dict, {}), f"[{name}]")
    try:
        settings = TrainSettings(
            epochs=section.get("epochs", int, defaults.epochs),  # type: ignore[arg-type]
            data_fraction=section.get("data_fraction", float, defaults.data_fraction),  # type: ignore[arg-type]
            batch_size=section.get("batch_size", int, defaults.batch_size),  # type: ignore[arg-type]
            learning_rate=section.get("learning_rate", float, defaults.learning_rate),  # type: ignore[arg-type]
            seed=seed,
            lr_schedule=section.get("lr_schedule", str, defaults.lr_schedule),  # type: ignore[arg-type]
        )
    except ValueError as e:
        raise InputError(f"[{name}]: {e}") from e
    section.finish()
    return settings


_ENERGY_KEYS: dict[str, type | tuple[type, ...]] = {
    "min_window_s": float, "short_window_s": float, "repeats": int, "baseline_s": float,
    "settle_s": float, "cool_down_to_c": float, "cool_down_timeout_s": float,
    "cool_down_poll_s": float, "max_temp_c": float, "max_freq_drop": float,
    "throttle_policy": str, "max_rejected": int, "refuse_charging": bool,
}


def _energy_protocol(section: _Section) -> EnergyProtocol:
    """``[energy]``: how devices with a meter measure (devices.energy_protocol.EnergyProtocol)."""
    values = {key: section.get(key, kind, None) for key, kind in _ENERGY_KEYS.items()}
    section.finish()
    try:
        return EnergyProtocol(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
    except ValueError as e:
        raise InputError(f"[energy] {e}") from e


def _group_settings(search: _Section) -> GroupSettings | None:
    """``[search.groups]``: present (even empty) turns group search on."""
    raw = search.get("groups", dict, None)
    if raw is None:
        return None
    section = _Section(raw, "[search.groups]")
    defaults = GroupSettings()
    try:
        settings = GroupSettings(
            patterns=section.strings("patterns", None),
            order=section.get("order", str, defaults.order),  # type: ignore[arg-type]
            min_trials=section.get("min_trials", int, defaults.min_trials),  # type: ignore[arg-type]
        )
    except GroupError as e:
        raise InputError(f"[search.groups] {e}") from e
    section.finish()
    return settings


def _space_options(search: _Section) -> SpaceOptions:
    rules = []
    raw_rules = search.get("layer", list, [])
    for index, raw in enumerate(raw_rules):  # type: ignore[arg-type]
        rule = _Section(raw, f"[[search.layer]] #{index + 1}")
        match = rule.get("match", str, None)
        if match is None:
            raise InputError(f"[[search.layer]] #{index + 1}: 'match' (a layer name or regex) is required")
        rules.append(
            LayerRule(
                match=match,  # type: ignore[arg-type]
                kernel=_checked_schemes(rule, "kernel", None),
                bias=_checked_schemes(rule, "bias", None),
                activation=_checked_schemes(rule, "activation", None),
                multipliers=rule.numbers("multipliers", None),
                resize=rule.get("resize", bool, True),  # type: ignore[arg-type]
                skip=rule.get("skip", bool, False),  # type: ignore[arg-type]
            )
        )
        rule.finish()
    try:
        return SpaceOptions(
            kernel=_checked_schemes(search, "kernel", DEFAULT_KERNEL),  # type: ignore[arg-type]
            bias=_checked_schemes(search, "bias", DEFAULT_BIAS),  # type: ignore[arg-type]
            activation=_checked_schemes(search, "activation", DEFAULT_ACTIVATION),  # type: ignore[arg-type]
            multipliers=search.numbers("multipliers", DEFAULT_MULTIPLIERS),  # type: ignore[arg-type]
            size_mode=search.get("size_mode", str, "per-layer"),  # type: ignore[arg-type]
            rules=tuple(rules),
            strict_layers=search.get("strict_layers", bool, False),  # type: ignore[arg-type]
            activation_range=search.get("activation_range", str, "calibrated"),  # type: ignore[arg-type]
        )
    except SpaceError as e:
        raise InputError(f"[search]: {e}") from e


def _checked_schemes(section: _Section, key: str, default: tuple[str, ...] | None) -> tuple[str, ...] | None:
    names = section.strings(key, default)
    for name in names or ():
        try:
            parse_scheme(name)
        except UnknownQuantizerError as e:
            raise InputError(f"{section.where} {key}: {e}") from e
    return names
