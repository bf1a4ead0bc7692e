"""The ``harness`` command as a user runs it: search, resume, crash recovery, bad input,
measure, report, score mode and constraints.

Searches run in this process through click's runner (TensorFlow is imported once); the crash
test runs the installed ``.venv/bin/harness`` in a subprocess and SIGKILLs it. Every search uses
the tiny reference and a cheap config (1 epoch, 20 % of the data, 50 ms measurement windows).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import keras
import optuna
import pandas as pd
import pytest
from click.testing import Result

import results
from results.records import ResultsError
from results.store import ResultsStore
from search.scoring import ForgivingFactor
from tests.harness.conftest import (
    CACHE_ENV,
    HARNESS_BIN,
    assert_input_error,
    cheap_config,
    invoke,
    merged,
    ok,
    store_records,
    subprocess_env,
    toml_text,
)

pytestmark = pytest.mark.usefixtures("harness_env")  # the example cache never lands in ~/.cache

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FINISHED_STATES = ("complete", "rejected", "pruned")


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def search_args(config: Path, results_dir: Path, *extra: str | int) -> list[str | Path]:
    return ["search", config, "--results-dir", results_dir, "--no-progress", *map(str, extra)]


# --- one search, looked at from every side ---------------------------------------------------


@dataclass(frozen=True)
class Searched:
    config: Path
    results_dir: Path
    study_dir: Path
    result: Result
    trials: int


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory, tiny_reference: Path, example_cache: Path) -> Searched:
    """``harness search CONFIG --trials 4 --results-dir D --no-progress`` on the tiny reference."""
    root = tmp_path_factory.mktemp("searched")
    config = root / "search.toml"
    config.write_text(toml_text(cheap_config(tiny_reference, study="tiny")))
    results_dir = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(example_cache))
        result = invoke(search_args(config, results_dir, "--trials", 4))
    return Searched(config, results_dir, results_dir / "tiny", result, 4)


def test_search_exits_0_and_prints_the_front(searched: Searched) -> None:
    result = ok(searched.result)
    assert "study tiny: 4 complete" in result.stdout
    assert "Pareto front (accuracy max, energy_mj min)" in result.stdout
    assert "trial_number" in result.stdout and "energy_mj_source" in result.stdout
    assert str(searched.study_dir / "trials.csv") in result.stdout


def test_search_writes_csv_and_parquet_with_one_row_per_trial(searched: Searched) -> None:
    ok(searched.result)
    csv = pd.read_csv(searched.study_dir / "trials.csv")
    parquet = pd.read_parquet(searched.study_dir / "trials.parquet")
    for frame in (csv, parquet):
        assert len(frame) == searched.trials
        assert list(frame["trial_number"]) == list(range(searched.trials))
        assert set(frame["study"]) == {"tiny"}
    assert list(csv["candidate_key"]) == list(parquet["candidate_key"])
    pd.testing.assert_series_equal(csv["accuracy"], parquet["accuracy"], check_dtype=False)


def test_search_plots_the_front_and_keeps_its_models(searched: Searched) -> None:
    ok(searched.result)
    assert (searched.study_dir / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    frame = results.load("tiny", results_dir=searched.results_dir)
    front = results.pareto_front(frame, {"accuracy": "maximize", "energy_mj": "minimize"})
    assert len(front) >= 1
    kept = sorted(p.name for p in (searched.study_dir / "pareto").iterdir())
    assert any(name.endswith(".tflite") for name in kept) and any(name.endswith(".keras") for name in kept)
    by_number: dict[int, set[str]] = {}
    for name in kept:
        by_number.setdefault(int(name[len("trial"):len("trial") + 5]), set()).add(Path(name).suffix)
    assert set(by_number) == set(front["trial_number"].astype(int))
    assert all(suffixes == {".tflite", ".keras"} for suffixes in by_number.values())
    # The copies are the trial's files, byte for byte.
    rows = frame.set_index("trial_number")
    for path in (searched.study_dir / "pareto").iterdir():
        number, kind = int(path.name[5:10]), path.suffix[1:]
        assert sha256(path) == rows.loc[number, f"{kind}_sha256"]


def test_seeds_are_trials_0_and_1(searched: Searched) -> None:
    ok(searched.result)
    frame = results.load("tiny", results_dir=searched.results_dir).set_index("trial_number")
    assert frame.loc[0, "label"] == "reference" and frame.loc[1, "label"] == "int8"
    assert list(frame["label"]).count("reference") == 1 and list(frame["label"]).count("int8") == 1
    assert frame.loc[0, "param_lowering_mode"] == "float32" and frame.loc[1, "param_lowering_mode"] == "int8"
    assert frame.loc[1, "energy_pj_estimated"] < frame.loc[0, "energy_pj_estimated"]
    assert "time_train_s" in frame.columns


def test_local_rows_have_estimated_energy_and_measured_latency(searched: Searched) -> None:
    ok(searched.result)
    frame = results.load("tiny", results_dir=searched.results_dir)
    assert (frame["state"] == "complete").all()
    assert (frame["energy_mj_source"] == "estimated").all()
    assert (frame["energy_mj_unit"] == "mJ").all()
    pd.testing.assert_series_equal(
        frame["energy_mj"], frame["energy_pj_estimated"] / 1e9, check_names=False, rtol=1e-9
    )
    assert (frame["latency_ms"] > 0).all() and (frame["latency_ms_source"] == "measured").all()
    assert (frame["latency_ms_p90"] >= frame["latency_ms"]).all()
    assert frame["accuracy"].between(0, 1).all() and (frame["accuracy_source"] == "measured").all()
    assert (frame["time_measure_s"] >= 0.05).all()
    with ResultsStore(searched.results_dir / "harness.sqlite", create=False) as store:
        for record in store.records("tiny"):
            (measurement,) = record.measurements
            assert measurement["device"] == "local" and measurement["energy_source"] == "none"
            assert measurement["energy_mj_median"] is None and measurement["n_inferences"] >= 5


def test_sha256_columns_match_the_files(searched: Searched) -> None:
    ok(searched.result)
    frame = results.load("tiny", results_dir=searched.results_dir)
    for _, row in frame.iterrows():
        for kind, suffix in (("tflite", ".tflite"), ("keras", ".keras")):
            path = Path(row[f"{kind}_path"])
            assert path.suffix == suffix and path.is_file()
            assert sha256(path) == row[f"{kind}_sha256"], f"trial {row.trial_number} {kind}"


def test_results_load_returns_the_exported_rows(searched: Searched) -> None:
    ok(searched.result)
    loaded = results.load("tiny", results_dir=searched.results_dir)
    exported = pd.read_parquet(searched.study_dir / "trials.parquet")
    assert list(loaded.columns) == list(exported.columns)
    pd.testing.assert_frame_equal(loaded.reset_index(drop=True), exported.reset_index(drop=True), check_dtype=False)
    from_dir = results.load(searched.study_dir)
    pd.testing.assert_frame_equal(from_dir, exported)


def test_optuna_was_told_what_the_store_holds(searched: Searched) -> None:
    ok(searched.result)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{searched.results_dir / 'optuna.sqlite3'}")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    records = store_records(searched.results_dir, "tiny")
    assert set(trials) == set(records)
    for number, record in records.items():
        assert trials[number].state == optuna.trial.TrialState.COMPLETE
        assert trials[number].values == [record.metric_value("accuracy"), record.metric_value("energy_mj")]


# --- resume ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory, searched: Searched, example_cache: Path) -> Searched:
    """A copy of ``searched``'s results, then the same command with ``--trials 6``."""
    ok(searched.result)
    results_dir = tmp_path_factory.mktemp("resumed") / "results"
    shutil.copytree(searched.results_dir, results_dir)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(example_cache))
        result = invoke(search_args(searched.config, results_dir, "--trials", 6))
    return Searched(searched.config, results_dir, results_dir / "tiny", result, 6)


def test_rerun_with_more_trials_continues_the_study(resumed: Searched, searched: Searched) -> None:
    again = resumed
    result = ok(again.result)
    assert "study tiny: 6 complete" in result.stdout
    frame = pd.read_csv(again.study_dir / "trials.csv")
    assert list(frame["trial_number"]) == list(range(6))
    labels = list(frame["label"].fillna(""))
    assert labels.count("reference") == 1 and labels.count("int8") == 1  # seeds not re-enqueued
    before, after = store_records(searched.results_dir, "tiny"), store_records(again.results_dir, "tiny")
    for number, record in before.items():
        assert after[number].metrics == record.metrics and after[number].candidate_key == record.candidate_key
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{again.results_dir / 'optuna.sqlite3'}")
    assert [t.number for t in study.trials] == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_rerun_with_the_same_trials_does_nothing_new(tmp_path: Path, searched: Searched, harness_env: Path) -> None:
    ok(searched.result)
    results_dir = tmp_path / "results"
    shutil.copytree(searched.results_dir, results_dir)
    result = ok(invoke(search_args(searched.config, results_dir, "--trials", 4)))
    assert "study tiny: 4 complete" in result.stdout
    assert store_records(results_dir, "tiny") == store_records(searched.results_dir, "tiny")


def test_resumed_trials_propose_new_candidates(resumed: Searched) -> None:
    """Regression: a resumed sampler used to replay its first run's draws (same seed)."""
    again = resumed
    ok(again.result)
    records = store_records(again.results_dir, "tiny")
    old_keys = {records[n].candidate_key for n in range(4)}
    for number in (4, 5):
        assert not any(f.startswith("reused:") for f in records[number].flags), records[number].flags
        assert records[number].candidate_key not in old_keys


def test_killed_search_recovers_on_rerun(make_config, results_dir: Path, harness_env: Path, tmp_path: Path) -> None:
    total = 3
    config = make_config({"search": {"study": "crash", "trials": total}})
    store_path = results_dir / "harness.sqlite"
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(HARNESS_BIN), *map(str, search_args(config, results_dir))],
            stdout=out, stderr=subprocess.STDOUT, env=subprocess_env(harness_env), cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + 240
            while True:
                assert time.monotonic() < deadline, "no complete record within 240 s"
                assert proc.poll() is None, (
                    f"the search ended (rc {proc.returncode}) before the kill:\n{log.read_text()}"
                )
                if store_path.exists():
                    try:
                        with ResultsStore(store_path, create=False) as store:
                            if any(r.state == "complete" for r in store.records("crash")):
                                break
                    except ResultsError:
                        pass  # created, schema not written yet
                time.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    before = store_records(results_dir, "crash")
    complete_before = {n: r for n, r in before.items() if r.state == "complete"}
    assert complete_before and len(complete_before) < total

    result = ok(invoke(search_args(config, results_dir)))
    assert "study crash:" in result.stdout

    after = store_records(results_dir, "crash")
    frame = pd.read_csv(results_dir / "crash" / "trials.csv")
    assert frame["trial_number"].is_unique and len(frame) == len(after)
    assert sum(r.state in FINISHED_STATES for r in after.values()) == total
    assert all(r.state != "running" for r in after.values())
    for number, record in complete_before.items():
        assert after[number].state == "complete"
        assert after[number].metrics == record.metrics
        assert after[number].artifacts == record.artifacts
    complete_labels = [r.label for r in after.values() if r.state == "complete"]
    assert complete_labels.count("reference") == 1 and complete_labels.count("int8") == 1
    study = optuna.load_study(study_name="crash", storage=f"sqlite:///{results_dir / 'optuna.sqlite3'}")
    states = [t.state for t in study.get_trials(deepcopy=False)]
    # Every trial the dead process left RUNNING is settled, with or without an owner yet.
    assert optuna.trial.TrialState.RUNNING not in states
    assert states.count(optuna.trial.TrialState.COMPLETE) + states.count(optuna.trial.TrialState.PRUNED) == total
    for record in after.values():
        if record.state == "complete":
            assert sha256(record.artifacts["tflite"].path) == record.artifacts["tflite"].sha256


def test_trial_killed_before_it_has_an_owner_is_settled(searched: Searched, tmp_path: Path) -> None:
    """A process killed between study.ask() and naming the trial's owner leaves an ownerless
    RUNNING trial (the SIGKILL test above can land there); the next run settles it too."""
    ok(searched.result)
    results_dir = tmp_path / "results"
    shutil.copytree(searched.results_dir, results_dir)
    storage = f"sqlite:///{results_dir / 'optuna.sqlite3'}"
    killed = subprocess.run(
        [sys.executable, "-c", "import optuna, os, signal, sys; "
         "optuna.load_study(study_name='tiny', storage=sys.argv[1]).ask(); os.kill(os.getpid(), signal.SIGKILL)",
         storage],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING] == [4]
    assert "owner" not in study.trials[4].user_attrs

    ok(invoke(search_args(searched.config, results_dir, "--trials", 5)))
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING] == []
    assert study.trials[4].state == optuna.trial.TrialState.FAIL
    complete = [t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 5
    records = store_records(results_dir, "tiny")
    assert 4 not in records and sorted(records) == complete


def test_seed_lost_to_a_kill_between_the_two_enqueues_is_restored(
    searched: Searched, make_config, results_dir: Path
) -> None:
    ok(searched.result)
    old = optuna.load_study(study_name="tiny", storage=f"sqlite:///{searched.results_dir / 'optuna.sqlite3'}")
    reference = old.trials[0]
    assert reference.user_attrs["label"] == "reference"
    # What a search killed right after its first enqueue_trial leaves behind.
    results_dir.mkdir()
    study = optuna.create_study(
        study_name="tiny", storage=f"sqlite:///{results_dir / 'optuna.sqlite3'}",
        directions=["maximize", "minimize"],
    )
    study.enqueue_trial(reference.params, user_attrs={"label": "reference"})
    ok(invoke(search_args(make_config(), results_dir, "--trials", 2)))
    labels = [r.label for r in store_records(results_dir, "tiny").values()]
    assert labels == ["reference", "int8"]


# --- the built-in example ------------------------------------------------------------------------


def test_search_on_the_builtin_example_trains_it_once(tmp_path: Path, results_dir: Path, harness_env: Path) -> None:
    data = merged(cheap_config("example", study="ex"), {"search": {"trials": 2}, "training": {"epochs": 0}})
    config = tmp_path / "ex.toml"
    config.write_text(toml_text(data))
    ok(invoke(search_args(config, results_dir)))
    cached = sorted(harness_env.glob("doc000-digits-*.keras"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    frame = results.load("ex", results_dir=results_dir)
    assert list(frame["label"]) == ["reference", "int8"] and (frame["state"] == "complete").all()
    assert "param_kernel:conv3" in frame.columns  # the doc000 layers
    assert frame.loc[0, "accuracy"] > 0.8  # the cached example is a trained model
    result = ok(invoke(search_args(config, results_dir)))  # loads the example again, nothing to run
    assert "study ex: 2 complete" in result.stdout
    assert cached[0].stat().st_mtime_ns == stamp  # a cache hit, not a retrain


# --- bad input ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Untrained models and broken files that must be refused before anything is written."""
    root = tmp_path_factory.mktemp("bad-models")
    layers = keras.layers
    keras.utils.set_random_seed(0)
    paths: dict[str, Path] = {}

    inputs = keras.Input((28, 28, 1), name="input")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    outputs = layers.Dense(10, activation="softmax", name="dense")(layers.Flatten(name="flatten")(x))
    keras.Model(inputs, outputs, name="mnist28").save(paths.setdefault("28x28", root / "m28.keras"))

    inputs = keras.Input((8, 8, 1), name="input")
    x = layers.Reshape((8, 8), name="rows")(inputs)
    x = layers.LSTM(4, name="lstm")(x)
    outputs = layers.Dense(10, activation="softmax", name="dense")(x)
    keras.Model(inputs, outputs, name="with_lstm").save(paths.setdefault("lstm", root / "lstm.keras"))

    inputs = keras.Input((8, 8, 1), name="input")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = layers.Conv2DTranspose(2, 3, padding="same", name="up")(x)
    outputs = layers.Dense(10, activation="softmax", name="dense")(layers.Flatten(name="flatten")(x))
    keras.Model(inputs, outputs, name="with_convt").save(paths.setdefault("convt", root / "convt.keras"))

    paths["garbage"] = root / "garbage.keras"
    paths["garbage"].write_bytes(b"this is not a zip archive\n" * 10)
    paths["zip"] = root / "zip.keras"
    with zipfile.ZipFile(paths["zip"], "w") as archive:
        archive.writestr("readme.txt", "a zip, but not a Keras model")
    return paths


@pytest.mark.parametrize(
    ("overrides", "phrases"),
    [
        ({"search": {"trails": 3}}, ("unknown key 'trails'",)),
        ({"search": {"kernel": ["fixed(4)", "int3"]}}, ("kernel", "int3")),
        ({"search": {"sampler": "cmaes"}}, ("sampler", "cmaes")),
        ({"search": {"trials": "many"}}, ("[search] trials",)),
        ({"reference": {"model": "missing/nope.keras"}}, ("nope.keras", "does not exist")),
        ({"data": {"dataset": "cifar"}}, ("unknown dataset 'cifar'",)),
        ({"search": {"layer": [{"match": "conv9", "kernel": ["fixed(4)"]}]}}, ("conv9", "matches no")),
        ({"measure": {"devices": ["pixel9"]}}, ("pixel9", "not in the inventory")),
    ],
    ids=["unknown-key", "unknown-quantizer", "unknown-sampler", "bad-type", "missing-model",
         "unknown-dataset", "rule-matches-nothing", "unknown-device"],
)
def test_bad_config_is_exit_2_and_writes_nothing(
    make_config, results_dir: Path, harness_env: Path, overrides, phrases
) -> None:
    config = make_config(overrides)
    assert_input_error(invoke(search_args(config, results_dir)), *phrases)
    assert not results_dir.exists()


@pytest.mark.parametrize(
    ("model", "overrides", "phrases"),
    [
        ("garbage", {}, ("garbage.keras", "not a Keras archive")),
        ("zip", {}, ("zip.keras", "cannot load")),
        ("28x28", {}, ("(8, 8, 1)", "(28, 28, 1)", "does not fit")),
        # refused even without strict_layers: int8 conversion segfaults on recurrent layers
        ("lstm", {}, ("'lstm'", "LSTM", "recurrent")),
        ("convt", {"search": {"strict_layers": True}}, ("'up'", "Conv2DTranspose", "strict_layers")),
    ],
    ids=["corrupt-keras", "zip-not-keras", "data-does-not-fit", "recurrent-lstm", "strict-conv2dtranspose"],
)
def test_bad_model_is_exit_2_and_writes_nothing(
    make_config, bad_models: dict[str, Path], results_dir: Path, harness_env: Path, model, overrides, phrases
) -> None:
    config = make_config(merged({"reference": {"model": str(bad_models[model])}}, overrides))
    assert_input_error(invoke(search_args(config, results_dir)), *phrases)
    assert not results_dir.exists()


def test_missing_config_file(tmp_path: Path, results_dir: Path) -> None:
    assert_input_error(invoke(search_args(tmp_path / "absent.toml", results_dir)), "absent.toml", "cannot read")
    assert not results_dir.exists()


def test_bad_toml(tmp_path: Path, results_dir: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text('[search\nstudy = "x"\n')
    assert_input_error(invoke(search_args(config, results_dir)), "broken.toml", "not valid TOML")
    assert not results_dir.exists()


def test_unknown_sampler_flag_is_a_usage_error(make_config, results_dir: Path) -> None:
    result = invoke(search_args(make_config(), results_dir, "--sampler", "cmaes"))
    assert_input_error(result, "--sampler", "cmaes", "harness search --help")
    assert not results_dir.exists()


def test_help_still_exits_0() -> None:
    result = invoke(["search", "--help"])
    assert result.exit_code == 0 and "--sampler" in result.stdout and result.stderr == ""


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed: gp runs")
def test_gp_sampler_without_torch_is_exit_2(make_config, results_dir: Path) -> None:
    config = make_config({"search": {"sampler": "gp"}})
    assert_input_error(invoke(search_args(config, results_dir)), "[search] sampler", "'gp' needs PyTorch")
    assert_input_error(invoke(search_args(make_config(), results_dir, "--sampler", "gp")), "--sampler", "PyTorch")
    assert not results_dir.exists()


def test_bad_input_in_a_real_process_is_one_clean_line(
    bad_models: dict[str, Path], make_config, results_dir: Path, harness_env: Path, tmp_path: Path
) -> None:
    """The installed command: nothing but the one error line on stderr (no TensorFlow noise)."""
    config = make_config({"reference": {"model": str(bad_models["28x28"])}})
    proc = subprocess.run(
        [str(HARNESS_BIN), *map(str, search_args(config, results_dir))],
        capture_output=True, text=True, env=subprocess_env(harness_env), cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: data shape (8, 8, 1) does not fit"), lines
    assert not results_dir.exists()


def test_out_of_range_measure_setting_is_exit_2(make_config, results_dir: Path, harness_env: Path) -> None:
    """Regression: used to be a ValueError traceback from SearchRun.__init__, exit 1."""
    config = make_config({"measure": {"threads": 0}})
    assert_input_error(invoke(search_args(config, results_dir)), "threads")


def test_unsupported_layer_is_skipped_with_a_warning(
    make_config, bad_models: dict[str, Path], results_dir: Path, harness_env: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config({"reference": {"model": str(bad_models["convt"])}, "search": {"trials": 2}})
    with caplog.at_level(logging.WARNING):
        ok(invoke(search_args(config, results_dir)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'up'" in m and "Conv2DTranspose" in m for m in warnings), warnings
    frame = results.load("tiny", results_dir=results_dir)
    assert len(frame) == 2 and (frame["state"] == "complete").all()
    assert not any(":up" in column for column in frame.columns)  # not searched: it stays float
    assert any(column == "param_kernel:conv" for column in frame.columns)


# --- measure --------------------------------------------------------------------------------------


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`harness measure` keeps device health in ./results by default: not in the repository."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_measure_json_is_one_object(searched: Searched, in_tmp_dir: Path) -> None:
    ok(searched.result)
    model = next((searched.study_dir / "pareto").glob("*.tflite"))
    result = ok(invoke(["measure", model, "--device", "local", "--json", "--min-seconds", "0.05", "--min-runs", "5"]))
    assert (in_tmp_dir / "results" / "harness.sqlite").is_file()  # the default results directory
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert isinstance(data, dict)
    assert data["device"] == "local"
    assert data["latency_ms_median"] > 0 and data["latency_ms_p90"] >= data["latency_ms_median"]
    assert data["energy_mj_median"] is None and data["energy_source"] == "none"
    assert isinstance(data["n_inferences"], int) and data["n_inferences"] >= 5
    assert data["window_s"] >= 0.05 and data["threads"] == 1


def test_measure_prints_a_line_without_json(searched: Searched, in_tmp_dir: Path) -> None:
    ok(searched.result)
    model = next((searched.study_dir / "pareto").glob("*.tflite"))
    result = ok(invoke(["measure", model, "--min-seconds", "0.05", "--min-runs", "5", "--warmup-runs", "0"]))
    assert result.stdout.startswith("local: latency median ") and "no power meter" in result.stdout


def test_measure_missing_file_is_exit_2(tmp_path: Path, in_tmp_dir: Path) -> None:
    assert_input_error(invoke(["measure", tmp_path / "none.tflite", "--json"]), "none.tflite", "no such file")


def test_measure_unknown_device_is_exit_2(searched: Searched, in_tmp_dir: Path) -> None:
    ok(searched.result)
    model = next((searched.study_dir / "pareto").glob("*.tflite"))
    assert_input_error(invoke(["measure", model, "--device", "pixel9", "--json"]), "pixel9", "not in the inventory")


def test_measure_corrupt_model_is_exit_2(tmp_path: Path, in_tmp_dir: Path) -> None:
    """Regression: README counts a corrupt model as bad input; this used to exit 1."""
    model = tmp_path / "broken.tflite"
    model.write_bytes(b"not a flatbuffer" * 8)
    assert_input_error(invoke(["measure", model, "--json", "--min-seconds", "0.05"]), "broken.tflite")


# --- report ---------------------------------------------------------------------------------------


def test_report_prints_the_pareto_table(searched: Searched) -> None:
    ok(searched.result)
    result = ok(invoke(["report", "tiny", "--results-dir", searched.results_dir]))
    frame = results.load("tiny", results_dir=searched.results_dir)
    front = results.pareto_front(frame, {"accuracy": "maximize", "energy_mj": "minimize"})
    title, header, *rows = result.stdout.splitlines()[: len(front) + 2]
    assert title == "Pareto front (accuracy max, energy_mj min):"  # as `search` prints it
    assert header.split()[:3] == ["trial_number", "label", "accuracy"]
    assert sorted(int(row.split()[0]) for row in rows) == sorted(front["trial_number"].astype(int))
    assert "energy_vs_int8_pct" in header
    assert f"trials: {searched.study_dir / 'trials.csv'} and trials.parquet" in result.stdout
    assert f"plot: {searched.study_dir / 'pareto.png'}" in result.stdout
    assert len(pd.read_csv(searched.study_dir / "trials.csv")) == searched.trials


def test_report_unknown_study_names_the_known_ones(searched: Searched) -> None:
    ok(searched.result)
    assert_input_error(invoke(["report", "nosuch", "--results-dir", searched.results_dir]), "'nosuch'", "tiny")
    assert not (searched.results_dir / "nosuch").exists()


def test_report_without_a_store_is_exit_2(tmp_path: Path) -> None:
    assert_input_error(invoke(["report", "tiny", "--results-dir", tmp_path / "empty"]), "no results store")


def test_report_with_only_infeasible_trials(tmp_path: Path) -> None:
    """Regression: the plot was attempted on an empty feasible set and the report exited 1."""
    from results.records import Metric, TrialRecord

    results_dir = tmp_path / "results"
    with ResultsStore(results_dir / "harness.sqlite") as store:
        for number, label in enumerate(("reference", "int8")):
            store.put(TrialRecord(
                study="slow", trial_number=number, candidate_key=f"k{number}", state="complete", label=label,
                metrics={"accuracy": Metric(0.9, "fraction", "measured"), "energy_mj": Metric(1e-5, "mJ", "estimated"),
                         "latency_ms": Metric(0.01, "ms", "measured")},
                flags=["constraint:latency_ms=0.01>1e-06"],
            ))  # fmt: skip
    result = ok(invoke(["report", "slow", "--results-dir", results_dir]))
    assert "(empty)" in result.stdout


def test_changing_the_objectives_of_an_existing_study_is_exit_2(
    searched: Searched, tiny_reference: Path, tmp_path: Path, harness_env: Path
) -> None:
    ok(searched.result)
    results_dir = tmp_path / "results"
    shutil.copytree(searched.results_dir, results_dir)
    config = tmp_path / "latency.toml"
    latency = merged(cheap_config(tiny_reference), {"search": {"objectives": ["accuracy", "latency"]}})
    config.write_text(toml_text(latency))
    assert_input_error(invoke(search_args(config, results_dir, "--trials", 6)), "'tiny'", "objectives", "--study")
    assert store_records(results_dir, "tiny") == store_records(searched.results_dir, "tiny")


# --- score mode -------------------------------------------------------------------------------


def test_score_mode_scores_every_complete_row(make_config, results_dir: Path, harness_env: Path) -> None:
    factor = ForgivingFactor(delta_p=10.0, delta_n=3.0, rate=2.0, stress=1.0)
    config = make_config({
        "search": {"study": "scored", "mode": "score", "trials": 3},
        "score": {"delta_p": factor.delta_p, "delta_n": factor.delta_n, "rate": factor.rate,
                  "stress": factor.stress, "cost": "energy", "pruner": "hyperband"},
    })  # fmt: skip
    ok(invoke(search_args(config, results_dir)))
    records = store_records(results_dir, "scored")
    assert sum(r.state in FINISHED_STATES for r in records.values()) == 3
    complete = [r for r in records.values() if r.state == "complete"]
    assert {r.label for r in complete} >= {"reference", "int8"}
    (int8,) = [r for r in complete if r.label == "int8"]
    baseline_mj = int8.metric_value("energy_pj_estimated") / 1e9  # the int8 baseline estimate
    for record in complete:
        score = record.metrics["score"]
        accuracy, energy_mj = record.metric_value("accuracy"), record.metric_value("energy_mj")
        assert record.metrics["energy_mj"].source == "estimated"
        assert score.value == pytest.approx(factor.score(accuracy, baseline_mj, energy_mj), rel=1e-9)
        assert score.value == pytest.approx(accuracy * (1 + factor.delta(baseline_mj, energy_mj)), rel=1e-9)
    assert int8.metric_value("score") == pytest.approx(int8.metric_value("accuracy"))
    # One row by hand: the float reference costs more than int8, so delta_n applies.
    (reference,) = [r for r in complete if r.label == "reference"]
    ratio = baseline_mj / reference.metric_value("energy_mj")
    assert ratio < 1
    by_hand = reference.metric_value("accuracy") * (1 + 0.03 * math.log(ratio) / math.log(2.0))
    assert reference.metric_value("score") == pytest.approx(by_hand, rel=1e-9)
    study = optuna.load_study(study_name="scored", storage=f"sqlite:///{results_dir / 'optuna.sqlite3'}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        assert trial.values == [records[trial.number].metric_value("score")]
        if records[trial.number].label != "reference":  # trained, so Hyperband saw each epoch
            assert trial.intermediate_values and all(v > 0 for v in trial.intermediate_values.values())


# --- constraints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "limit", "metric", "scale", "what", "trials"),
    [
        # Seeds only: the float reference's estimate (6.5 kB) is over the limit, int8's (1.6 kB,
        # a 5.4 kB .tflite) is under it both as estimated and as built.
        ("max_size_bytes", 6000, "model_bytes_estimated", 1.0, "estimated size", 2),
        # For the local device energy_mj *is* the estimate, so nothing breaks it after measuring.
        ("max_energy_mj", 1e-5, "energy_pj_estimated", 1e-9, "estimated energy", 3),
    ],
    ids=["max_size_bytes", "max_energy_mj"],
)
def test_constraint_rejects_before_training(
    make_config, results_dir: Path, harness_env: Path, key: str, limit: float, metric: str, scale: float,
    what: str, trials: int,
) -> None:
    config = make_config({"search": {"study": "limited", "trials": trials}, "constraints": {key: limit}})
    ok(invoke(search_args(config, results_dir)))
    records = store_records(results_dir, "limited")
    assert sum(r.state in FINISHED_STATES for r in records.values()) == trials
    rejected = [r for r in records.values() if r.state == "rejected"]
    passed = [r for r in records.values() if r.state == "complete"]
    assert rejected and passed
    assert records[0].state == "rejected" and records[1].state == "complete"  # reference over, int8 under
    for record in rejected:
        assert record.metric_value(metric) * scale > limit
        assert what in record.error and "exceeds the limit" in record.error and f"{limit:.4g}" in record.error
        assert record.artifacts == {} and "train" not in record.timings_s and "build" in record.timings_s
        assert "accuracy" not in record.metrics and "latency_ms" not in record.metrics
    for record in passed:
        assert record.metric_value(metric) * scale <= limit
        assert "tflite" in record.artifacts and "train" in record.timings_s
        assert not any(f.startswith("constraint:") for f in record.flags)
    frame = pd.read_csv(results_dir / "limited" / "trials.csv").set_index("trial_number")
    for record in rejected:
        assert frame.loc[record.trial_number, "state"] == "rejected"
        assert pd.isna(frame.loc[record.trial_number, "tflite_path"])
        assert pd.isna(frame.loc[record.trial_number, "time_train_s"])
    study = optuna.load_study(study_name="limited", storage=f"sqlite:///{results_dir / 'optuna.sqlite3'}")
    pruned = {t.number for t in study.get_trials(states=(optuna.trial.TrialState.PRUNED,))}
    assert pruned == {r.trial_number for r in rejected}


@pytest.mark.parametrize(
    ("limits", "flagged", "states"),
    [
        # No candidate runs in under a nanosecond: every measured trial breaks the limit.
        ({"max_latency_ms": 1e-6}, "constraint:latency_ms", ["complete", "complete"]),
        # The reference's estimate (6.5 kB) is over it before training; int8's estimate (1.6 kB)
        # is under it, but its .tflite (5.4 kB) is over it once built.
        ({"max_size_bytes": 3000}, "constraint:size_bytes", ["rejected", "complete"]),
    ],
    ids=["max_latency_ms", "max_size_bytes"],
)
def test_limit_broken_after_measuring_is_flagged_not_fatal(
    make_config, results_dir: Path, harness_env: Path, limits: dict, flagged: str, states: list[str]
) -> None:
    """Regression: trial.set_constraint([1.0]) (wrong signature) used to crash the search here."""
    config = make_config({"search": {"study": "slow", "trials": 2}, "training": {"epochs": 0}, "constraints": limits})
    result = ok(invoke(search_args(config, results_dir)))
    records = store_records(results_dir, "slow")
    assert [r.state for r in records.values()] == states
    for record in records.values():
        if record.state == "complete":
            assert any(f.startswith(flagged) for f in record.flags), record.flags
            assert "tflite" in record.artifacts and record.metric_value("latency_ms") > 0  # measured, kept
    assert "(empty)" in result.stdout  # infeasible trials are not on the front
    assert not list((results_dir / "slow" / "pareto").iterdir())
    study = optuna.load_study(study_name="slow", storage=f"sqlite:///{results_dir / 'optuna.sqlite3'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) == 2


def test_min_accuracy_rejects_after_training(make_config, results_dir: Path, harness_env: Path) -> None:
    config = make_config({"search": {"study": "picky", "trials": 2}, "constraints": {"min_accuracy": 0.99}})
    result = ok(invoke(search_args(config, results_dir)))
    assert "study picky: 2 rejected" in result.stdout
    assert "(empty)" in result.stdout
    records = store_records(results_dir, "picky")
    assert len(records) == 2
    for record in records.values():
        assert record.state == "rejected"
        assert record.metric_value("accuracy") < 0.99
        assert "below the minimum 0.9900" in record.error and "not measured" in record.error
        assert "tflite" in record.artifacts and "train" in record.timings_s  # trained and lowered
        assert "latency_ms" not in record.metrics and record.measurements == []
