"""Tests of harness.config: defaults, every key checked where it is read, flag overrides."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from harness.config import (
    OBJECTIVES,
    Constraints,
    MeasureConfig,
    SearchConfig,
    config_from_mapping,
    load_config,
)
from harness.errors import InputError
from search.scoring import ForgivingFactor
from search.space import DEFAULT_ACTIVATION, DEFAULT_BIAS, DEFAULT_KERNEL, DEFAULT_MULTIPLIERS, LayerRule
from search.training import TrainSettings
from tests.harness.conftest import REPO, toml_text

# --- defaults ---------------------------------------------------------------------------------


def test_empty_mapping_is_the_default_config() -> None:
    config = config_from_mapping({})
    assert config == SearchConfig()
    assert config.reference == "example" and config.dataset == "digits"
    assert config.study == "doc000-digits" and config.trials == 30 and config.sampler == "tpe"
    assert config.mode == "pareto" and config.objectives == ("accuracy", "energy")
    assert config.directions == ["maximize", "minimize"]
    assert config.space.kernel == DEFAULT_KERNEL and config.space.bias == DEFAULT_BIAS
    assert config.space.activation == DEFAULT_ACTIVATION
    assert config.space.multipliers == DEFAULT_MULTIPLIERS
    assert config.space.size_mode == "per-layer" and config.space.rules == ()
    assert config.space.strict_layers is False and config.space.activation_range == "calibrated"
    assert config.training == TrainSettings()
    assert config.constraints == Constraints()
    assert config.measure == MeasureConfig() and config.measure.devices == ("local",)
    assert config.score == ForgivingFactor() and config.score_cost == "energy"
    assert config.pruner == "hyperband" and config.in_flight == 2 and config.input_bits == 8
    assert config.results_dir == "results" and config.lowering_tolerance == 0.02


def test_empty_sections_are_the_defaults_too() -> None:
    sections = ("reference", "data", "search", "score", "training", "constraints", "lowering", "measure")
    assert config_from_mapping({s: {} for s in sections}) == SearchConfig()


def test_example_file_writes_the_defaults_out() -> None:
    """Regression: README says so; the file used to add a dense layer rule the defaults lack."""
    assert load_config(REPO / "examples" / "doc000-digits.toml") == SearchConfig()


def test_example_file_loads() -> None:
    config = load_config(REPO / "examples" / "doc000-digits.toml")
    assert config.study == "doc000-digits" and config.trials == 30
    assert config.measure.min_seconds == 0.5


def test_score_mode_has_one_maximised_objective() -> None:
    config = config_from_mapping({"search": {"mode": "score", "objectives": ["accuracy", "latency"]}})
    assert config.directions == ["maximize"]
    config = config_from_mapping({"search": {"objectives": ["size", "accuracy", "bops", "latency"]}})
    assert config.directions == [OBJECTIVES[n] for n in ("size", "accuracy", "bops", "latency")]
    assert config.directions == ["minimize", "maximize", "minimize", "minimize"]


# --- values flow into the typed settings ------------------------------------------------------


def test_every_section_reaches_its_setting() -> None:
    config = config_from_mapping(
        {
            "reference": {"model": "m.keras"},
            "data": {"dataset": "fashion-mnist", "path": "/data/fm", "validation_fraction": 0.1},
            "search": {
                "study": "s", "trials": 7, "sampler": "nsga2", "seed": 3, "mode": "score",
                "objectives": ["accuracy", "size"], "in_flight": 3, "input_bits": 6,
                "size_mode": "model", "kernel": ["ternary", "fixed(4,1)"], "bias": ["fixed(16)"],
                "activation": ["fixed(8)"], "multipliers": [1, 2.5], "strict_layers": True,
                "activation_range": "half", "results_dir": "out", "accuracy_from": "keras",
                "layer": [
                    {"match": "conv[12]", "kernel": ["fixed(4)"], "resize": False},
                    {"match": "dense", "skip": True, "multipliers": [1.0]},
                ],
            },
            "score": {"delta_p": 10, "delta_n": 3.5, "rate": 4, "stress": 0.5, "cost": "bops", "pruner": "median"},
            "training": {"epochs": 1, "data_fraction": 0.25, "batch_size": 16, "learning_rate": 0.01},
            "constraints": {"max_size_bytes": 40000, "max_energy_mj": 0.001, "max_bops": 1e9,
                            "max_latency_ms": 2, "min_accuracy": 0.9},
            "measure": {"devices": ["local"], "threads": 2, "warmup_runs": 0, "min_seconds": 1,
                        "min_runs": 3, "latency_aggregate": "mean"},
            "lowering": {"accuracy_tolerance": 0.05},
        }
    )
    assert (config.reference, config.dataset, config.data_path) == ("m.keras", "fashion-mnist", "/data/fm")
    assert config.validation_fraction == 0.1
    assert (config.study, config.trials, config.sampler, config.seed) == ("s", 7, "nsga2", 3)
    assert config.mode == "score" and config.objectives == ("accuracy", "size")
    assert (config.in_flight, config.input_bits, config.results_dir) == (3, 6, "out")
    assert config.accuracy_from == "keras"
    space = config.space
    assert space.size_mode == "model" and space.kernel == ("ternary", "fixed(4,1)")
    assert space.bias == ("fixed(16)",) and space.activation == ("fixed(8)",)
    assert space.multipliers == (1.0, 2.5) and all(isinstance(m, float) for m in space.multipliers)
    assert space.strict_layers is True and space.activation_range == "half"
    assert space.rules == (
        LayerRule(match="conv[12]", kernel=("fixed(4)",), resize=False),
        LayerRule(match="dense", multipliers=(1.0,), skip=True),
    )
    assert config.score == ForgivingFactor(delta_p=10.0, delta_n=3.5, rate=4.0, stress=0.5)
    assert config.score_cost == "bops" and config.pruner == "median"
    assert config.training == TrainSettings(epochs=1, data_fraction=0.25, batch_size=16, learning_rate=0.01, seed=3)
    assert config.constraints == Constraints(40000.0, 0.001, 2.0, 1e9, 0.9)
    assert isinstance(config.constraints.max_size_bytes, float)
    assert config.measure == MeasureConfig(("local",), 2, 0, 1.0, 3, "mean")
    assert isinstance(config.measure.min_seconds, float)
    assert config.lowering_tolerance == 0.05


def test_finetune_section_and_its_defaults() -> None:
    assert SearchConfig().finetune == TrainSettings(epochs=3, data_fraction=1.0, lr_schedule="cosine")
    config = config_from_mapping({
        "search": {"seed": 4},
        "training": {"lr_schedule": "cosine"},
        "finetune": {"epochs": 5, "data_fraction": 0.5, "learning_rate": 0.0005, "lr_schedule": "constant"},
    })
    assert config.training.lr_schedule == "cosine"
    assert config.finetune == TrainSettings(epochs=5, data_fraction=0.5, learning_rate=0.0005, seed=4,
                                            lr_schedule="constant")
    assert config.with_overrides(seed=9).finetune.seed == 9


# --- errors name the key ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"search": {"trials": "3"}}, "[search] trials"),
        ({"search": {"trials": True}}, "[search] trials"),
        ({"search": {"trials": 2.5}}, "[search] trials"),
        ({"search": {"seed": "0"}}, "[search] seed"),
        ({"search": {"sampler": 1}}, "[search] sampler"),
        ({"search": {"kernel": "fixed(4)"}}, "[search] kernel"),
        ({"search": {"kernel": []}}, "[search] kernel"),
        ({"search": {"bias": ["fixed(8)", 8]}}, "[search] bias"),
        ({"search": {"multipliers": [1.0, "x"]}}, "[search] multipliers"),
        ({"search": {"multipliers": [True]}}, "[search] multipliers"),
        ({"search": {"objectives": "accuracy"}}, "[search] objectives"),
        ({"search": {"strict_layers": "yes"}}, "[search] strict_layers"),
        ({"search": {"layer": {"match": "x"}}}, "[search] layer"),
        ({"search": {"layer": [{"match": 3}]}}, "[[search.layer]] #1 match"),
        ({"search": {"layer": [{"match": "a"}, {"match": "b", "resize": "no"}]}}, "[[search.layer]] #2 resize"),
        ({"reference": {"model": 3}}, "[reference] model"),
        ({"data": {"validation_fraction": "0.2"}}, "[data] validation_fraction"),
        ({"score": {"delta_p": "8"}}, "[score] delta_p"),
        ({"training": {"epochs": 1.5}}, "[training] epochs"),
        ({"training": {"learning_rate": "fast"}}, "[training] learning_rate"),
        ({"constraints": {"max_size_bytes": "40k"}}, "[constraints] max_size_bytes"),
        ({"constraints": {"min_accuracy": False}}, "[constraints] min_accuracy"),
        ({"measure": {"min_seconds": "1s"}}, "[measure] min_seconds"),
        ({"measure": {"devices": "local"}}, "[measure] devices"),
        ({"lowering": {"accuracy_tolerance": [0.1]}}, "[lowering] accuracy_tolerance"),
        ({"search": 3}, "search"),
        ({"measure": [1]}, "measure"),
    ],
)
def test_type_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(InputError) as info:
        config_from_mapping(data)
    message = str(info.value)
    assert key in message, message
    assert "expected" in message and "\n" not in message


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        ({"serach": {}}, "'serach'"),
        ({"search": {"trails": 3}}, "[search]: unknown key 'trails'"),
        ({"measure": {"device": ["local"]}}, "[measure]: unknown key 'device'"),
        ({"search": {"layer": [{"match": "x", "kernal": ["fixed(4)"]}]}}, "[[search.layer]] #1: unknown key 'kernal'"),
        ({"score": {"cost": "energy", "prunner": "none"}}, "[score]: unknown key 'prunner'"),
    ],
)
def test_unknown_keys_are_named(data: dict, phrase: str) -> None:
    with pytest.raises(InputError, match="unknown key") as info:
        config_from_mapping(data)
    assert phrase in str(info.value)


@pytest.mark.parametrize(
    ("data", "phrase"),
    [
        ({"search": {"trials": 0}}, "trials"),
        ({"search": {"in_flight": 0}}, "in_flight"),
        ({"search": {"sampler": "cmaes"}}, "[search] sampler: unknown sampler 'cmaes'"),
        ({"search": {"mode": "best"}}, "[search] mode"),
        ({"search": {"objectives": ["accuracy", "joules"]}}, "unknown objective 'joules'"),
        ({"search": {"objectives": ["accuracy", "accuracy"]}}, "[search] objectives"),
        ({"search": {"kernel": ["fixed(4)", "int3"]}}, "[search] kernel"),
        ({"search": {"kernel": ["fixed(1)"]}}, "[search] kernel"),
        ({"search": {"activation": ["po2(9)"]}}, "[search] activation"),
        ({"search": {"layer": [{"match": "d", "bias": ["float8"]}]}}, "[[search.layer]] #1 bias"),
        ({"search": {"layer": [{"kernel": ["fixed(4)"]}]}}, "'match'"),
        ({"search": {"size_mode": "global"}}, "size_mode"),
        ({"search": {"activation_range": "max"}}, "[search]: activation_range 'max': expected 'calibrated' or 'half'"),
        ({"search": {"multipliers": [0.0, 1.0]}}, "multiplier"),
        ({"search": {"accuracy_from": "onnx"}}, "[search] accuracy_from"),
        ({"score": {"rate": 1.0}}, "rate"),
        ({"score": {"stress": 0}}, "stress"),
        ({"score": {"delta_p": -1}}, "delta_p"),
        ({"score": {"cost": "money"}}, "[score] cost"),
        ({"score": {"pruner": "asha"}}, "[score] pruner"),
        ({"training": {"epochs": -1}}, "epochs"),
        ({"training": {"data_fraction": 0.0}}, "data_fraction"),
        ({"training": {"batch_size": 0}}, "batch_size"),
        ({"training": {"lr_schedule": "step"}}, "[training]: training lr_schedule"),
        ({"finetune": {"data_fraction": 1.5}}, "[finetune]: training data_fraction"),
        ({"finetune": {"epochs": 2, "patience": 3}}, "[finetune]"),
        ({"measure": {"latency_aggregate": "median"}}, "[measure] latency_aggregate"),
    ],
)
def test_bad_values_are_input_errors_naming_the_key(data: dict, phrase: str) -> None:
    with pytest.raises(InputError) as info:
        config_from_mapping(data)
    assert phrase in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"measure": {"threads": 0}}, "[measure] threads"),
        ({"measure": {"min_runs": 0}}, "[measure] min_runs"),
        ({"measure": {"warmup_runs": -1}}, "[measure] warmup_runs"),
        ({"measure": {"min_seconds": -0.5}}, "[measure] min_seconds"),
        ({"search": {"input_bits": 1}}, "[search] input_bits"),
    ],
)
def test_out_of_range_measure_and_input_bits_are_input_errors(data: dict, key: str) -> None:
    """Regression: these passed the config and failed later with a bare ValueError (exit 1)."""
    with pytest.raises(InputError) as info:
        config_from_mapping(data)
    assert key in str(info.value)


# --- load_config ------------------------------------------------------------------------------


def test_load_config_reads_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml_text({
        "search": {"study": "x", "trials": 4, "layer": [{"match": "conv1", "skip": True}]},
        "measure": {"min_seconds": 0.05},
    }))  # fmt: skip
    config = load_config(path)
    assert config.study == "x" and config.trials == 4 and config.measure.min_seconds == 0.05
    assert config.space.rules == (LayerRule(match="conv1", skip=True),)
    assert load_config(str(path)) == config


def test_load_config_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"config .*nope\.toml: cannot read it"):
        load_config(tmp_path / "nope.toml")


def test_load_config_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[search]\ntrials = = 3\n")
    with pytest.raises(InputError, match=r"config .*bad\.toml: not valid TOML"):
        load_config(path)


def test_load_config_unknown_key_uses_the_path_for_the_root(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('title = "mine"\n')
    with pytest.raises(InputError, match=r"c\.toml: unknown key 'title'"):
        load_config(path)


# --- with_overrides ---------------------------------------------------------------------------


def test_with_overrides_applies_flags_and_leaves_none_alone() -> None:
    base = config_from_mapping({"search": {"study": "a", "trials": 5, "sampler": "random", "seed": 2}})
    same = base.with_overrides(trials=None, sampler=None, study=None, seed=None, results_dir=None, devices=None)
    assert same == base
    changed = base.with_overrides(trials=9, sampler="nsga3", study="b", results_dir="/tmp/r", devices=("local",))
    assert (changed.trials, changed.sampler, changed.study, changed.results_dir) == (9, "nsga3", "b", "/tmp/r")
    assert changed.measure.devices == ("local",)
    assert changed.measure.min_seconds == base.measure.min_seconds  # the rest of [measure] is kept
    assert changed.space == base.space and changed.training == base.training
    assert (base.trials, base.sampler, base.study) == (5, "random", "a")  # the original is untouched
    with pytest.raises(FrozenInstanceError):
        base.trials = 1  # type: ignore[misc]


def test_with_overrides_rejects_an_unknown_sampler() -> None:
    with pytest.raises(InputError, match=r"--sampler: unknown sampler 'cmaes'.*tpe"):
        SearchConfig().with_overrides(sampler="cmaes")


def test_seed_flag_is_the_same_as_the_seed_key() -> None:
    """Regression: --seed used to leave the training seed at the file's value."""
    from_file = config_from_mapping({"search": {"seed": 7}})
    from_flag = SearchConfig().with_overrides(seed=7)
    assert from_file.training.seed == 7
    assert from_flag.training.seed == from_file.training.seed
    assert from_flag == from_file


def test_reading_a_config_does_not_import_tensorflow(tmp_path) -> None:
    # so that `harness search` reports a config mistake before TensorFlow's seconds of start-up
    import subprocess
    import sys
    import textwrap

    config = tmp_path / "c.toml"
    config.write_text('[search]\ntrials = 3\nkernel = ["ternary", "fixed(4)"]\n[training]\nepochs = 1\n')
    code = textwrap.dedent(f"""
        import sys
        from harness.config import load_config
        load_config({str(config)!r})
        heavy = sorted(m for m in ("tensorflow", "keras", "qkeras") if m in sys.modules)
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_group_search_example_loads_and_its_budget_fits_the_example_model() -> None:
    from harness.example import build_doc000
    from search.estimates import estimate
    from search.groups import plan_groups
    from search.space import build_space

    config = load_config(REPO / "examples" / "doc000-groups.toml")
    assert config.groups is not None and config.groups.order == "cost" and config.groups.min_trials == 10
    model = build_doc000((8, 8, 1), 10)  # the example on digits
    space = build_space(model, config.space)
    costs = {e.name: e.energy_pj for e in estimate(model, space.int8_spec()).layers}
    groups = plan_groups(space, costs, config.groups, config.trials - 2)  # after the two seeds
    assert len(groups) == 4 and sum(g.trials for g in groups) == config.trials - 2
