"""Fixtures and helpers of the harness CLI, config, search-loop and host-gate tests.

* ``example_cache`` / ``harness_env``: ``ENERGY_HARNESS_CACHE`` points at one session-wide tmp
  directory (the one ``fixtures_models.trained_example`` uses), so the built-in example is
  trained at most once per session and never lands in ``~/.cache``.
* ``tiny_reference``: a small conv net trained briefly on digits and saved as ``.keras``; it
  makes candidates cheap where the document-000 example is not the point.
* ``make_config``: writes a cheap TOML search config (1 epoch, 20 % of the data, 50 ms
  measurement windows) for ``tiny_reference``, with per-test overrides.
* ``results_dir``: a per-test results directory that does not exist yet.

The helpers below (``toml_text``, ``invoke``, ``assert_input_error``…) are imported by the test
modules from here.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__all__ = [
    "REPO",
    "HARNESS_BIN",
    "CACHE_ENV",
    "cheap_config",
    "toml_text",
    "merged",
    "invoke",
    "ok",
    "store_records",
    "assert_input_error",
    "subprocess_env",
]

REPO = Path(__file__).resolve().parents[2]
HARNESS_BIN = REPO / ".venv" / "bin" / "harness"
CACHE_ENV = "ENERGY_HARNESS_CACHE"  # harness.example.CACHE_ENV, without importing Keras here


# --- TOML -------------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a TOML basic string for everything a test writes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_text(config: Mapping[str, Mapping[str, object]]) -> str:
    """Tables of scalars and arrays; a list of tables under a key (``search.layer``) becomes
    ``[[section.key]]`` blocks."""
    lines: list[str] = []
    for section, table in config.items():
        lines.append(f"[{section}]")
        arrays_of_tables = []
        for key, value in table.items():
            if isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
                arrays_of_tables.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, blocks in arrays_of_tables:
            for block in blocks:
                lines.append(f"[[{section}.{key}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in block.items())
        lines.append("")
    return "\n".join(lines)


def cheap_config(reference: str | Path, study: str = "tiny") -> dict[str, dict[str, object]]:
    """A search that costs about a second per trial on two cores."""
    return {
        "reference": {"model": str(reference)},
        "data": {"dataset": "digits"},
        "search": {
            "study": study,
            "trials": 3,
            "sampler": "tpe",
            "kernel": ["ternary", "fixed(4)", "fixed(8)", "float32"],
            "bias": ["fixed(8)", "float32"],
            "activation": ["fixed(4)", "fixed(8)", "float32"],
            "multipliers": [0.5, 1.0],
            "in_flight": 2,
        },
        "training": {"epochs": 1, "data_fraction": 0.2},
        "measure": {"devices": ["local"], "min_seconds": 0.05, "min_runs": 5, "warmup_runs": 1},
    }


def merged(
    base: Mapping[str, Mapping[str, object]], overrides: Mapping[str, Mapping[str, object] | None]
) -> dict[str, dict[str, object]]:
    """``base`` with ``overrides`` applied per section; a ``None`` value removes a key or section."""
    out = copy.deepcopy({k: dict(v) for k, v in base.items()})
    for section, table in overrides.items():
        if table is None:
            out.pop(section, None)
            continue
        target = out.setdefault(section, {})
        for key, value in table.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
    return out


# --- running the command ----------------------------------------------------------------------


def invoke(args: Sequence[str | Path]):  # -> click.testing.Result
    """Run ``harness ARGS`` in this process with click's runner (stdout and stderr apart)."""
    from click.testing import CliRunner

    from harness.cli import cli

    runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], prog_name="harness", catch_exceptions=True)


def ok(result, code: int = 0):  # -> click.testing.Result
    """``result`` after asserting its exit code, with everything it printed when it differs."""
    assert result.exit_code == code, (
        f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}\n"
        f"exception: {result.exception!r}"
    )
    return result


def store_records(results_dir: Path, study: str) -> dict:  # trial number -> TrialRecord
    """A study's records in ``results_dir``'s store, by trial number."""
    from results.store import ResultsStore

    with ResultsStore(results_dir / "harness.sqlite", create=False) as store:
        return {r.trial_number: r for r in store.records(study)}


def assert_input_error(result, *phrases: str) -> str:
    """Exit 2 and a single ``error: …`` line on stderr naming every phrase; returns the line."""
    assert result.exit_code == 2, (
        f"exit {result.exit_code}; stdout={result.stdout!r} stderr={result.stderr!r} "
        f"exception={result.exception!r}"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for phrase in phrases:
        assert phrase in line, f"{phrase!r} not in {line!r}"
    return line


def subprocess_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env[CACHE_ENV] = str(cache)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("PYTHONPATH", None)
    return env


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def example_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example cache of this session (shared with ``fixtures_models.trained_example``)."""
    path = tmp_path_factory.getbasetemp() / "shared-example-cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def harness_env(monkeypatch: pytest.MonkeyPatch, example_cache: Path) -> Path:
    """``ENERGY_HARNESS_CACHE`` set to the session's example cache for one test."""
    monkeypatch.setenv(CACHE_ENV, str(example_cache))
    return example_cache


@pytest.fixture(scope="session")
def tiny_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conv1(4) -> pool -> conv2(8) -> flatten -> dense(10, softmax), trained on digits (8x8x1)."""
    import keras

    from harness.data import load_dataset

    dataset = load_dataset("digits")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = keras.Input((8, 8, 1), name="input")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(10, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(dataset.x_train, dataset.y_train, epochs=4, batch_size=64, verbose=0)
    path = tmp_path_factory.mktemp("tiny-reference") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    """A results directory for one test; it does not exist until something writes it."""
    return tmp_path / "results"


@pytest.fixture
def make_config(tmp_path: Path, tiny_reference: Path) -> Iterator[Callable[..., Path]]:
    """``make_config(overrides=None, name="search.toml") -> Path`` of a cheap TOML config."""

    def make(overrides: Mapping[str, Mapping[str, object] | None] | None = None, name: str = "search.toml") -> Path:
        data = merged(cheap_config(tiny_reference), overrides or {})
        path = tmp_path / name
        path.write_text(toml_text(data))
        return path

    yield make
