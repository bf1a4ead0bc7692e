"""``harness finetune``: a search's chosen candidates trained on the real task and measured again.

One tiny search (the cheap config, 5 trials) is fine-tuned once per module; tests that change
files work on a copy of its results directory.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from click.testing import Result

import results
from harness.finetune import select_trials
from results.records import Metric, TrialRecord
from results.store import ResultsStore
from search.quantizers import qkeras_custom_objects
from tests.harness.conftest import (
    CACHE_ENV,
    assert_input_error,
    cheap_config,
    invoke,
    merged,
    ok,
    store_records,
    toml_text,
)

pytestmark = pytest.mark.usefixtures("harness_env")

OBJECTIVES = {"accuracy": "maximize", "energy_mj": "minimize"}


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Tuned:
    config: Path
    results_dir: Path
    result: Result
    parent_keras: dict[int, str]  # trial -> sha256 of its .keras before the fine-tune


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, tiny_reference: Path, example_cache: Path) -> Tuned:
    root = tmp_path_factory.mktemp("finetune")
    config = root / "search.toml"
    config.write_text(toml_text(merged(cheap_config(tiny_reference, study="tiny"), {"finetune": {"epochs": 2}})))
    results_dir = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(example_cache))
        ok(invoke(["search", config, "--results-dir", results_dir, "--no-progress", "--trials", "5"]))
        parent_keras = {n: sha256(r.artifacts["keras"].path) for n, r in store_records(results_dir, "tiny").items()}
        result = invoke(["finetune", config, "--results-dir", results_dir, "--no-progress", "--data-fraction", "0.5"])
    return Tuned(config, results_dir, result, parent_keras)


def test_the_front_and_both_seeds_are_fine_tuned_under_their_own_trial_numbers(tuned: Tuned) -> None:
    result = ok(tuned.result)
    parents = store_records(tuned.results_dir, "tiny")
    expected = select_trials(list(parents.values()), OBJECTIVES)
    front = results.pareto_front(results.load("tiny", results_dir=tuned.results_dir), OBJECTIVES)
    assert set(front["trial_number"].astype(int)) | {0, 1} == set(expected)
    children = store_records(tuned.results_dir, "tiny-finetuned")
    assert sorted(children) == expected
    for number, child in children.items():
        parent = parents[number]
        assert child.state == "complete", child.error
        assert (child.label, child.candidate_key, child.layers) == (parent.label, parent.candidate_key, parent.layers)
        assert f"finetuned_from:tiny#{number}" in child.flags
        assert child.params["finetune_epochs"] == 2 and child.params["finetune_data_fraction"] == 0.5
        assert child.params["finetune_lr_schedule"] == "cosine" and child.params["finetune_devices"] == ["local"]
    assert f"study tiny-finetuned: {len(expected)} fine-tuned, 0 done before, 0 failed" in result.stdout
    assert "2 epoch(s) on 50 % of the training split" in result.stdout


def test_fine_tuned_rows_are_measured_and_keep_the_proxy_accuracy(tuned: Tuned) -> None:
    ok(tuned.result)
    parents = store_records(tuned.results_dir, "tiny")
    for number, child in store_records(tuned.results_dir, "tiny-finetuned").items():
        parent = parents[number]
        assert child.metrics["proxy_accuracy"] == parent.metrics["accuracy"]
        assert 0 <= child.metric_value("accuracy") <= 1
        assert child.metrics["accuracy"].source == "measured"
        # the same architecture: the same estimate
        assert child.metric_value("energy_pj_estimated") == pytest.approx(parent.metric_value("energy_pj_estimated"))
        assert child.metrics["energy_mj"].source == "estimated"
        assert child.metric_value("latency_ms") > 0 and child.metrics["latency_ms"].source == "measured"
        (measurement,) = child.measurements
        assert measurement["device"] == "local"
        assert child.timings_s["train"] > 0 and child.timings_s["measure"] > 0


def test_fine_tuned_models_are_new_files_and_the_search_files_are_untouched(tuned: Tuned) -> None:
    ok(tuned.result)
    parents = store_records(tuned.results_dir, "tiny")
    for number, child in store_records(tuned.results_dir, "tiny-finetuned").items():
        for kind in ("keras", "tflite"):
            path = Path(child.artifacts[kind].path)
            assert path.is_relative_to(tuned.results_dir / "tiny-finetuned" / "trials")
            assert sha256(path) == child.artifacts[kind].sha256
        assert sha256(parents[number].artifacts["keras"].path) == tuned.parent_keras[number]
    # training moved the weights (the float reference trains too: it is a baseline like int8)
    child = store_records(tuned.results_dir, "tiny-finetuned")[0]
    before = keras.models.load_model(parents[0].artifacts["keras"].path, custom_objects=qkeras_custom_objects())
    after = keras.models.load_model(child.artifacts["keras"].path, custom_objects=qkeras_custom_objects())
    assert any(not np.allclose(a, b) for a, b in zip(before.get_weights(), after.get_weights(), strict=True))


def test_the_fine_tuned_set_is_exported_and_reported_like_a_study(tuned: Tuned) -> None:
    result = ok(tuned.result)
    study_dir = tuned.results_dir / "tiny-finetuned"
    exported = pd.read_csv(study_dir / "trials.csv")
    assert set(exported["study"]) == {"tiny-finetuned"} and "proxy_accuracy" in exported.columns
    assert (study_dir / "pareto.png").is_file() and any((study_dir / "pareto").iterdir())
    assert "Pareto front (accuracy max, energy_mj min):" in result.stdout
    assert "proxy_accuracy" in result.stdout and "energy_vs_int8_pct" in result.stdout
    pd.testing.assert_frame_equal(results.load(study_dir), pd.read_parquet(study_dir / "trials.parquet"))


def test_rerun_with_the_same_settings_redoes_nothing(tuned: Tuned) -> None:
    ok(tuned.result)
    before = store_records(tuned.results_dir, "tiny-finetuned")
    again = ok(invoke(["finetune", tuned.config, "--results-dir", tuned.results_dir, "--no-progress",
                       "--data-fraction", "0.5"]))
    assert f"0 fine-tuned, {len(before)} done before" in again.stdout
    after = store_records(tuned.results_dir, "tiny-finetuned")
    assert {n: r.artifacts["keras"].sha256 for n, r in after.items()} == {
        n: r.artifacts["keras"].sha256 for n, r in before.items()}


@pytest.fixture
def copied(tuned: Tuned, tmp_path: Path) -> Path:
    """A copy of the module's results whose records point at the copied files."""
    ok(tuned.result)
    target = tmp_path / "results"
    shutil.copytree(tuned.results_dir, target)
    with ResultsStore(target / "harness.sqlite") as store:
        for study in store.studies():
            for record in store.records(study):
                record.artifacts = {
                    k: type(a)(a.path.replace(str(tuned.results_dir), str(target)), a.sha256)
                    for k, a in record.artifacts.items()
                }
                store.put(record)
    return target


def test_a_killed_fine_tune_is_finished_on_rerun_and_other_settings_redo_all(tuned: Tuned, copied: Path) -> None:
    done = store_records(copied, "tiny-finetuned")
    victim = max(done)
    with ResultsStore(copied / "harness.sqlite") as store:
        record = done[victim]
        record.state, record.metrics = "running", {}
        store.put(record)
    again = ok(invoke(["finetune", tuned.config, "--results-dir", copied, "--no-progress", "--data-fraction", "0.5"]))
    assert f"1 fine-tuned, {len(done) - 1} done before" in again.stdout
    assert store_records(copied, "tiny-finetuned")[victim].state == "complete"
    other = ok(invoke(["finetune", tuned.config, "--results-dir", copied, "--no-progress", "--epochs", "1"]))
    assert f"{len(done)} fine-tuned, 0 done before" in other.stdout
    assert all(r.params["finetune_epochs"] == 1 for r in store_records(copied, "tiny-finetuned").values())


def test_a_changed_model_file_fails_that_trial_only(tuned: Tuned, copied: Path) -> None:
    parents = store_records(copied, "tiny")
    chosen = sorted(store_records(copied, "tiny-finetuned"))
    Path(parents[chosen[0]].artifacts["keras"].path).write_bytes(b"edited")
    result = invoke(["finetune", tuned.config, "--results-dir", copied, "--no-progress", "--epochs", "1"])
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"trial {chosen[0]}" in lines[0] and "sha256" in lines[0]
    after = store_records(copied, "tiny-finetuned")
    assert after[chosen[0]].state == "failed"
    assert all(after[n].state == "complete" for n in chosen[1:])
    assert "Pareto front" in result.stdout  # the others are still reported


def test_explicit_trials_are_the_only_ones_tuned(tuned: Tuned, copied: Path) -> None:
    result = ok(invoke(["finetune", tuned.config, "--results-dir", copied, "--no-progress", "--epochs", "1",
                        "--trial", "1"]))
    assert "1 fine-tuned, 0 done before" in result.stdout
    assert store_records(copied, "tiny-finetuned")[1].params["finetune_epochs"] == 1


def test_an_accuracy_margin_adds_the_trials_just_behind_the_front(tuned: Tuned, copied: Path) -> None:
    parents = store_records(copied, "tiny")
    front = select_trials(list(parents.values()), OBJECTIVES)
    everything = select_trials(list(parents.values()), OBJECTIVES, accuracy_margin=1.0)
    assert set(front) <= set(everything)
    result = ok(invoke(["finetune", tuned.config, "--results-dir", copied, "--no-progress", "--epochs", "1",
                        "--accuracy-margin", "100"]))
    assert f"{len(everything)} fine-tuned, 0 done before" in result.stdout
    assert sorted(store_records(copied, "tiny-finetuned")) == everything
    assert_input_error(invoke(["finetune", tuned.config, "--results-dir", copied, "--trial", "1",
                               "--accuracy-margin", "1"]), "--accuracy-margin", "--trial")


def test_unknown_trial_is_exit_2(tuned: Tuned) -> None:
    ok(tuned.result)
    assert_input_error(
        invoke(["finetune", tuned.config, "--results-dir", tuned.results_dir, "--trial", "999"]), "--trial 999",
    )


def test_no_store_is_exit_2(tuned: Tuned, tmp_path: Path) -> None:
    assert_input_error(invoke(["finetune", tuned.config, "--results-dir", tmp_path / "none"]), "no results store")
    assert not (tmp_path / "none").exists()


def test_bad_finetune_setting_is_exit_2(tuned: Tuned, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    assert "[finetune]" in tuned.config.read_text()
    config.write_text(tuned.config.read_text().replace("[finetune]", '[finetune]\nlr_schedule = "step"'))
    assert_input_error(invoke(["finetune", config, "--results-dir", tuned.results_dir]), "[finetune]", "step")


def test_selection_keeps_one_trial_per_candidate_and_skips_unfinished() -> None:
    def record(number: int, key: str, accuracy: float, energy: float, label: str = "", state: str = "complete"):
        return TrialRecord(
            study="s", trial_number=number, candidate_key=key, state=state, label=label,
            metrics={"accuracy": Metric(accuracy, "fraction", "measured"),
                     "energy_mj": Metric(energy, "mJ", "estimated")},
            artifacts={"keras": results.Artifact(f"/m{number}.keras", "0" * 64)},
        )

    chosen = select_trials([
        record(0, "ref", 0.90, 10.0, "reference"),  # dominated, but a baseline
        record(1, "int8", 0.91, 2.0, "int8"),
        record(2, "a", 0.89, 1.0),
        record(3, "a", 0.89, 1.0),  # the same candidate proposed again
        record(4, "b", 0.80, 5.0),  # dominated
        record(5, "c", 0.95, 0.5, state="failed"),
    ], OBJECTIVES)
    assert chosen == [0, 1, 2]
    near = select_trials([
        record(1, "int8", 0.91, 2.0, "int8"),
        record(2, "a", 0.89, 1.0),
        record(4, "b", 0.885, 1.5),  # half a point behind trial 2 at a higher energy
        record(6, "d", 0.85, 1.2),  # four points behind
    ], OBJECTIVES, accuracy_margin=0.01)
    assert near == [1, 2, 4]
