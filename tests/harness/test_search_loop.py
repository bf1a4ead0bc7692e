"""Tests of harness.search_loop.SearchRun driven directly: every sampler, candidate reuse,
devices with meters, and a device that keeps failing.

The tiny reference, no training epochs (the proxy training is not the point here) and 50 ms
measurement windows keep each search to a few seconds.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import numpy as np
import optuna
import pytest

from devices.base import Device, DeviceError, Measurement, MeasureSettings
from harness import search_loop
from harness.config import SearchConfig, config_from_mapping
from harness.errors import HarnessError, InputError
from harness.search_loop import MAX_CONSECUTIVE_FAILURES, SearchRun, open_study
from results.records import TrialRecord
from results.store import ResultsStore
from search.samplers import SAMPLERS
from tests.harness.conftest import cheap_config, merged

pytestmark = pytest.mark.usefixtures("harness_env")

SAMPLER_CLASSES = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "nsga3": optuna.samplers.NSGAIIISampler,
    "gp": optuna.samplers.GPSampler,
    "random": optuna.samplers.RandomSampler,
}

# One searchable choice (the dense kernel): the two seeds are the whole space.
TWO_CANDIDATES = {
    "search": {
        "kernel": ["fixed(8)", "float32"], "bias": ["float32"], "activation": ["float32"],
        "multipliers": [1.0], "layer": [{"match": "conv.*", "kernel": ["float32"]}],
    },
}  # fmt: skip


def make(tiny_reference: Path, results_dir: Path, overrides: dict) -> SearchConfig:
    base = merged(
        cheap_config(tiny_reference), {"training": {"epochs": 0}, "search": {"results_dir": str(results_dir)}}
    )
    return config_from_mapping(merged(base, overrides))


def records_of(config: SearchConfig) -> list[TrialRecord]:
    with ResultsStore(Path(config.results_dir) / "harness.sqlite", create=False) as store:
        return store.records(config.study)


class FakeDevice(Device):
    """A device with a meter that answers fixed numbers, or fails on every measurement."""

    def __init__(self, name: str, *, energy_mj: float = 0.5, latency_ms: float = 2.0,
                 source: str = "measured", fail: bool = False, limit: int | None = None) -> None:
        super().__init__(name)
        self.energy_mj, self.latency_ms, self.source = energy_mj, latency_ms, source
        self.fail, self.limit, self.calls = fail, limit, 0

    @property
    def has_energy_meter(self) -> bool:
        return True

    def measure(
        self, model_path: Path, settings: MeasureSettings, probe_input: np.ndarray | None = None
    ) -> Measurement:
        self.calls += 1
        if self.limit is not None and self.calls > self.limit:
            raise Runaway(f"{self.calls} measurements")
        assert Path(model_path).is_file() and Path(model_path).suffix == ".tflite"
        if self.fail:
            raise DeviceError(f"device {self.name!r}: power rail vanished measuring {Path(model_path).name}")
        return Measurement(
            device=self.name, latency_ms_median=self.latency_ms, latency_ms_p90=self.latency_ms * 1.5,
            n_inferences=settings.min_runs, window_s=0.01, threads=settings.threads,
            energy_mj_median=self.energy_mj, energy_source=self.source,  # type: ignore[arg-type]
        )


class Runaway(BaseException):
    """Stops a search that does not stop by itself (not an Exception: the loop cannot eat it)."""


# --- samplers -------------------------------------------------------------------------------


HAS_TORCH = importlib.util.find_spec("torch") is not None
NEEDS_TORCH = pytest.mark.skipif(not HAS_TORCH, reason="sampler gp needs PyTorch (refused up front without it)")


@pytest.mark.parametrize("sampler", [pytest.param(s, marks=NEEDS_TORCH) if s == "gp" else s for s in SAMPLERS])
def test_every_sampler_runs_three_trials(sampler: str, tiny_reference: Path, tmp_path: Path) -> None:
    search = {"study": f"s-{sampler}", "sampler": sampler, "trials": 3}
    config = make(tiny_reference, tmp_path / "results", {"search": search})
    run = SearchRun(config, progress=False)
    summary = run.run()
    assert summary.finished == 3 and summary.counts == {"complete": 3}
    assert summary.study_dir == tmp_path / "results" / f"s-{sampler}"
    records = records_of(config)
    assert [r.trial_number for r in records] == [0, 1, 2]
    assert [r.label for r in records] == ["reference", "int8", ""]
    distributions = run.space.distributions()
    proposed = records[2].params
    for name, values in distributions.items():
        assert proposed[name] in values, (name, proposed[name])
    assert all(r.metric_value("latency_ms") > 0 and r.metrics["energy_mj"].source == "estimated" for r in records)
    study = open_study(config, Path(config.results_dir))
    assert isinstance(study.sampler, SAMPLER_CLASSES[sampler])
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 3


@NEEDS_TORCH
def test_gp_sampler_runs_past_its_startup_trials(tiny_reference: Path, tmp_path: Path) -> None:
    """GPSampler imports PyTorch only after its 10 random start-up trials."""
    search = {"study": "gp", "sampler": "gp", "trials": 12, "in_flight": 1}
    config = make(tiny_reference, tmp_path / "results", merged(TWO_CANDIDATES, {"search": search}))
    summary = SearchRun(config, progress=False).run()
    assert summary.finished == 12


@pytest.mark.skipif(HAS_TORCH, reason="PyTorch is installed: gp is available")
def test_gp_without_torch_is_refused_up_front(tiny_reference: Path, tmp_path: Path) -> None:
    """Not at trial 10 with a ModuleNotFoundError, but when the config or flag is read."""
    with pytest.raises(InputError, match=r"\[search\] sampler: .*'gp' needs PyTorch"):
        make(tiny_reference, tmp_path / "results", {"search": {"sampler": "gp"}})
    with pytest.raises(InputError, match=r"--sampler: .*'gp' needs PyTorch"):
        SearchConfig().with_overrides(sampler="gp")


# --- candidate reuse ---------------------------------------------------------------------------


def test_a_candidate_measured_before_is_reused_not_retrained(tiny_reference: Path, tmp_path: Path) -> None:
    # One candidate in flight at a time: only a *complete* trial can be reused, and with two in
    # flight the same candidate may legitimately be trained twice.
    search = {"study": "reuse", "sampler": "random", "trials": 5, "in_flight": 1}
    config = make(tiny_reference, tmp_path / "results", merged(TWO_CANDIDATES, {"search": search}))
    run = SearchRun(config, progress=False)
    assert list(run.space.distributions()) == ["kernel:dense"]
    summary = run.run()
    assert summary.finished == 5 and summary.counts == {"complete": 5}
    records = records_of(config)
    first = {records[0].candidate_key: records[0], records[1].candidate_key: records[1]}
    assert len(first) == 2
    for record in records[2:]:
        original = first[record.candidate_key]
        assert f"reused:{original.trial_number}" in record.flags
        assert record.metrics == original.metrics and record.artifacts == original.artifacts
        assert record.timings_s == {}  # nothing built, trained or measured again
    assert not (tmp_path / "results" / "reuse" / "trials" / "00002").exists()


def test_a_candidate_proposed_while_in_flight_waits_for_its_twin_not_retrained(
    tiny_reference: Path, tmp_path: Path
) -> None:
    """Regression: with two in flight, a candidate proposed again while its first copy was being
    measured used to be trained (and measured) a second time."""
    search = {"study": "twins", "sampler": "random", "trials": 6, "in_flight": 3}
    config = make(tiny_reference, tmp_path / "results", merged(TWO_CANDIDATES, {"search": search}))

    class SlowFirstDevice(FakeDevice):
        """Holds its first measurement until a third trial exists, so that trial's candidate
        (one of the two, both seeded first) is proposed while its twin is still in flight."""

        def measure(self, model_path, settings, probe_input=None):  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + 60
            while self.calls == 0 and len(records_of(config)) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            return super().measure(model_path, settings, probe_input)

    device = SlowFirstDevice("bench", energy_mj=0.5, latency_ms=2.0)
    summary = SearchRun(config, progress=False, devices=[device]).run()  # type: ignore[list-item]
    assert summary.counts == {"complete": 6}
    records = records_of(config)
    originals = {}
    for record in records:
        originals.setdefault(record.candidate_key, record)
    assert len(originals) == 2
    assert device.calls == 2  # each distinct candidate measured once
    trained = sorted(p.name for p in (tmp_path / "results" / "twins" / "trials").iterdir())
    assert trained == sorted(f"{r.trial_number:05d}" for r in originals.values())
    for record in records:
        original = originals[record.candidate_key]
        if record is not original:
            assert f"reused:{original.trial_number}" in record.flags
            assert record.metrics == original.metrics and record.artifacts == original.artifacts


# --- devices ---------------------------------------------------------------------------------------


def test_metered_devices_give_measured_or_simulated_energy(tiny_reference: Path, tmp_path: Path) -> None:
    config = make(tiny_reference, tmp_path / "results", {"search": {"study": "metered", "trials": 2}})
    devices = [
        FakeDevice("bench", energy_mj=0.5, latency_ms=2.0, source="measured"),
        FakeDevice("sim", energy_mj=0.7, latency_ms=1.0, source="simulated"),
    ]
    summary = SearchRun(config, progress=False, devices=devices).run()  # type: ignore[arg-type]
    assert summary.counts == {"complete": 2}
    assert [d.calls for d in devices] == [2, 2]
    for record in records_of(config):
        metrics = record.metrics
        # max over devices (latency_aggregate = "max"); one simulated meter makes it simulated
        assert metrics["energy_mj"].value == 0.7 and metrics["energy_mj"].source == "simulated"
        assert metrics["energy_mj.bench"].value == 0.5 and metrics["energy_mj.bench"].source == "measured"
        assert metrics["energy_mj.sim"].source == "simulated"
        assert metrics["latency_ms"].value == 2.0 and metrics["latency_ms_p90"].value == 3.0
        assert metrics["latency_ms.sim"].value == 1.0
        assert [m["device"] for m in record.measurements] == ["bench", "sim"]
        assert record.timings_s["measure"] == pytest.approx(0.02)


def test_a_device_that_always_fails_stops_the_search(
    tiny_reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a failed measurement used to reset the failure count, so this looped forever."""
    assert MAX_CONSECUTIVE_FAILURES == 5
    monkeypatch.setattr(search_loop, "MAX_CONSECUTIVE_FAILURES", 2)  # fewer doomed trials to pay for
    config = make(tiny_reference, tmp_path / "results", {"search": {"study": "broken", "trials": 3, "in_flight": 1}})
    device = FakeDevice("flaky", fail=True, limit=2 + 1)  # one more than the patched limit
    try:
        with pytest.raises(HarnessError, match="failed in a row") as info:
            SearchRun(config, progress=False, devices=[device]).run()  # type: ignore[list-item]
    except Runaway:
        pytest.fail(f"the search kept measuring after {device.limit} failed measurements")
    assert "power rail vanished" in str(info.value)
    records = records_of(config)
    assert records and all(r.state == "failed" for r in records)
    assert all("measurement failed: flaky" in (r.error or "") for r in records)


def test_prescreen_keeps_clearly_dominated_candidates_off_the_devices(tiny_reference: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate measures the same energy here, so once the energy model is fitted, any
    candidate less accurate than the best measured one is dominated and is not sent."""
    monkeypatch.setattr(search_loop, "PRESCREEN_REFIT_EVERY", 1)
    config = make(tiny_reference, tmp_path / "results", {
        "search": {"study": "prescreen", "trials": 16, "sampler": "random", "in_flight": 1},
        "measure": {"prescreen": True, "prescreen_margin": 0.0},
    })
    device = FakeDevice("bench", energy_mj=0.5, latency_ms=2.0)
    summary = SearchRun(config, progress=False, devices=[device]).run()  # type: ignore[list-item]
    records = records_of(config)
    held_back = [r for r in records if (r.error or "").startswith("prescreen:")]
    assert summary.finished == 16 and held_back, summary.counts
    assert device.calls == 16 - len(held_back) - sum(1 for r in records if "reused:" in " ".join(r.flags))
    best = max(r.metric_value("accuracy") for r in records if r.state == "complete")
    for record in held_back:
        assert record.state == "rejected" and not record.measurements
        assert record.metric_value("accuracy") < best
        assert record.metrics["energy_mj_predicted.bench"].value == pytest.approx(0.5, rel=0.05)
        assert "dominated by trial" in (record.error or "")


# --- activation ranges ----------------------------------------------------------------------

FIXED4_ACTIVATIONS = {"search": {"activation": ["fixed(4)", "float32"], "trials": 4}}


def test_fixed_activations_train_with_ranges_calibrated_on_the_reference(tiny_reference: Path, tmp_path: Path) -> None:
    import keras

    from search.quantizers import qkeras_custom_objects

    config = make(tiny_reference, tmp_path / "results", FIXED4_ACTIVATIONS)
    run = SearchRun(config, progress=False)
    run.run()
    calibrated = {name: widths[4] for name, widths in run.activation_ranges.bits.items()}
    assert set(calibrated) == {"conv1", "conv2"}  # the softmax dense layer stays float
    records = records_of(config)
    assert [r.label for r in records] == ["reference", "int8", "", ""]
    assert {n: records[1].layers[n]["activation"] for n in calibrated} == {
        n: f"fixed(4,{i})" for n, i in calibrated.items()
    }
    for record in records:
        trained = keras.models.load_model(
            record.artifacts["keras"].path, custom_objects=qkeras_custom_objects(), compile=False
        )
        for name, integer in calibrated.items():
            activation = record.layers[name]["activation"]
            assert activation in ("float32", f"fixed(4,{integer})"), (record.trial_number, name)
            if activation != "float32":
                quantizer = trained.get_layer(name).activation
                assert (quantizer.bits, float(quantizer.integer)) == (4, integer)
    attrs = open_study(config, Path(config.results_dir)).user_attrs
    assert attrs["activation_range"] == "calibrated"
    assert attrs["activation_ranges"] == {n: {"4": i} for n, i in calibrated.items()}


def test_ternary_activations_train_with_calibrated_scales(tiny_reference: Path, tmp_path: Path) -> None:
    import keras

    from search.quantizers import qkeras_custom_objects

    config = make(tiny_reference, tmp_path / "results", {"search": {"activation": ["ternary"], "trials": 1}})
    run = SearchRun(config, progress=False)
    run.run()
    scales = {name: keys["ternary"] for name, keys in run.activation_ranges.bits.items()}
    assert set(scales) == {"conv1", "conv2"}
    (record,) = records_of(config)
    assert record.state == "complete"
    trained = keras.models.load_model(record.artifacts["keras"].path, custom_objects=qkeras_custom_objects(),
                                      compile=False)  # fmt: skip
    for name, exponent in scales.items():
        assert record.layers[name]["activation"] == f"ternary(2^{exponent})"
        # after the ReLU only the {0, 2^c} half is left: the 1-bit ReLU grid [0, 2^(c+1))
        quantizer = trained.get_layer(name).activation
        assert (quantizer.bits, float(quantizer.integer)) == (1, exponent + 1)
    attrs = open_study(config, Path(config.results_dir)).user_attrs
    assert attrs["activation_ranges"] == {n: {"ternary": c} for n, c in scales.items()}
    assert attrs["activation_range_kinds"] == ["fixed", "binary", "binary01", "ternary"]


def test_a_study_saved_before_ternary_was_calibrated_keeps_scale_one(tiny_reference: Path, tmp_path: Path) -> None:
    config = make(tiny_reference, tmp_path / "results", {"search": {"activation": ["ternary", "fixed(4)"],
                                                                     "trials": 6, "sampler": "random"}})  # fmt: skip
    storage = search_loop.study_storage_url(Path(config.results_dir))
    Path(config.results_dir).mkdir(parents=True)
    older = optuna.create_study(study_name=config.study, storage=storage, directions=config.directions)
    for key, value in {"objectives": list(config.objectives), "activation_range": "calibrated",
                       "activation_ranges": {"conv1": {"4": -5}}}.items():  # fmt: skip
        older.set_user_attr(key, value)  # all a harness that calibrated fixed(M) only stored
    run = SearchRun(config, progress=False)
    run.run()
    assert {r.layers["conv1"]["activation"] for r in records_of(config)} == {"ternary", "fixed(4,-5)"}
    attrs = open_study(config, Path(config.results_dir)).user_attrs
    assert attrs["activation_range_kinds"] == ["fixed"]
    assert attrs["activation_ranges"] == {"conv1": {"4": -5}, "conv2": {"4": run.activation_ranges.bits["conv2"][4]}}


def test_activation_range_half_keeps_the_configured_names(tiny_reference: Path, tmp_path: Path) -> None:
    half = merged(FIXED4_ACTIVATIONS, {"search": {"activation_range": "half"}})
    config = make(tiny_reference, tmp_path / "results", half)
    SearchRun(config, progress=False).run()
    int8 = records_of(config)[1]
    assert int8.label == "int8" and int8.layers["conv1"]["activation"] == "fixed(4)"


def test_a_study_is_not_resumed_with_another_activation_range(tiny_reference: Path, tmp_path: Path) -> None:
    half = make(tiny_reference, tmp_path / "results", {"search": {"activation_range": "half", "trials": 2}})
    SearchRun(half, progress=False).run()
    calibrated = make(tiny_reference, tmp_path / "results", {"search": {"trials": 3}})
    with pytest.raises(InputError, match="activation_range 'half', not 'calibrated'"):
        SearchRun(calibrated, progress=False).run()


def test_a_study_from_before_calibration_counts_as_half(tiny_reference: Path, tmp_path: Path) -> None:
    config = make(tiny_reference, tmp_path / "results", {})
    storage = search_loop.study_storage_url(Path(config.results_dir))
    Path(config.results_dir).mkdir(parents=True)
    older = optuna.create_study(study_name=config.study, storage=storage, directions=config.directions)
    older.set_user_attr("objectives", list(config.objectives))  # all an older harness stored
    older.tell(older.ask(), [0.5, 1.0])
    with pytest.raises(InputError, match="activation_range 'half', not 'calibrated'"):
        open_study(config, Path(config.results_dir))
    fresh = make(tiny_reference, tmp_path / "other", {})
    assert open_study(fresh, Path(fresh.results_dir)).user_attrs["activation_range"] == "calibrated"


def test_a_resumed_study_keeps_its_saved_ranges(tiny_reference: Path, tmp_path: Path) -> None:
    only_fixed4 = {"search": {"activation": ["fixed(4)"], "trials": 1}}
    first = make(tiny_reference, tmp_path / "results", only_fixed4)
    run = SearchRun(first, progress=False)
    run.run()
    calibrated = run.activation_ranges.bits
    assert calibrated["conv1"][4] != -3
    # as if this host's recalibration differed from the one the study started with (say, another
    # machine's float rounding); conv2 was never saved, as if its width was added on resume
    open_study(first, Path(first.results_dir)).set_user_attr("activation_ranges", {"conv1": {"4": -3}})
    resumed = make(tiny_reference, tmp_path / "results", merged(only_fixed4, {"search": {"trials": 2}}))
    SearchRun(resumed, progress=False).run()
    second = records_of(resumed)[1]
    assert second.state == "complete"
    assert second.layers["conv1"]["activation"] == "fixed(4,-3)"  # a negative I, trained and lowered
    import keras

    from search.quantizers import qkeras_custom_objects

    trained = keras.models.load_model(
        second.artifacts["keras"].path, custom_objects=qkeras_custom_objects(), compile=False
    )
    assert float(trained.get_layer("conv1").activation.integer) == -3.0  # saved and read back
    assert second.layers["conv2"]["activation"] == f"fixed(4,{calibrated['conv2'][4]})"
    saved = open_study(resumed, Path(resumed.results_dir)).user_attrs["activation_ranges"]
    assert saved == {"conv1": {"4": -3}, "conv2": {"4": calibrated["conv2"][4]}}


# --- group search by energy (search.groups) ---------------------------------------------------


def test_group_search_runs_the_costliest_group_first_then_starts_each_from_the_best(
    tiny_reference: Path, tmp_path: Path
) -> None:
    groups = {"patterns": ["conv.*", "dense"], "min_trials": 3}
    search = {"study": "groups", "sampler": "random", "trials": 10, "in_flight": 2, "groups": groups}
    config = make(tiny_reference, tmp_path / "results", {"search": search})
    run = SearchRun(config, progress=False)
    summary = run.run()
    assert summary.finished == 10
    attrs = open_study(config, Path(config.results_dir)).user_attrs
    plan = attrs["search_groups"]["groups"]
    assert [g["name"] for g in plan] == ["conv.*", "dense"]  # the convolutions cost more at int8
    assert plan[0]["cost_pj"] > plan[1]["cost_pj"] and sum(g["trials"] for g in plan) == 8  # after the 2 seeds
    records = records_of(config)
    first = plan[0]["trials"]
    assert [r.params["search_group"] for r in records] == ["seed"] * 2 + ["conv.*"] * first + ["dense"] * (8 - first)

    int8 = run.space.params_for(run.space.int8_spec())
    conv_params, dense_params = set(plan[0]["params"]), set(plan[1]["params"])
    assert dense_params == {"kernel:dense", "bias:dense"}
    conv_trials = records[2:2 + first]
    for record in conv_trials:  # the first group's proposals keep the dense layer of the int8 candidate
        assert {p: record.params[p] for p in dense_params} == {p: int8[p] for p in dense_params}
    assert any(record.params[p] != int8[p] for record in conv_trials for p in conv_params)  # and search conv
    # the second group starts from the best seed or first-group trial by the forgiving factor
    baseline = records[1].metric_value("energy_mj")
    best = max((r for r in records[:2 + first] if r.state == "complete"),
               key=lambda r: (config.score.score(r.metric_value("accuracy"), baseline, r.metric_value("energy_mj")),
                              -r.trial_number))
    assert attrs["search_group_starts"]["1"]["trial"] == best.trial_number
    assert attrs["search_group_starts"]["0"]["trial"] is None  # the int8 candidate
    for record in records[2 + first:]:
        for name in conv_params:
            assert record.params[name] == best.params[name], (record.trial_number, name)


def test_group_search_resumes_with_its_plan_and_starts(tiny_reference: Path, tmp_path: Path) -> None:
    groups = {"patterns": ["conv.*", "dense"], "min_trials": 1}
    search = {"study": "groups-resume", "sampler": "random", "trials": 5, "in_flight": 1, "groups": groups}
    config = make(tiny_reference, tmp_path / "results", {"search": search, "score": {"delta_p": 50.0}})
    SearchRun(config, progress=False).run()
    before = open_study(config, Path(config.results_dir)).user_attrs
    assert [g["trials"] for g in before["search_groups"]["groups"]] == [2, 1]
    # a second process with a larger budget carries on in the last group, from the same start
    # ... even when its [score] would now pick another start: the start is chosen once
    later = {"search": {**search, "trials": 8}, "score": {"delta_p": 0.01}}
    resumed = make(tiny_reference, tmp_path / "results", later)
    SearchRun(resumed, progress=False).run()
    after = open_study(config, Path(config.results_dir)).user_attrs
    assert after["search_groups"] == before["search_groups"]
    assert after["search_group_starts"] == before["search_group_starts"]
    records = records_of(config)
    assert [r.params["search_group"] for r in records] == ["seed"] * 2 + ["conv.*"] * 2 + ["dense"] * 4
    start = after["search_group_starts"]["1"]["params"]
    for record in records[4:]:
        assert all(record.params[p] == start[p] for p in ("kernel:conv1", "kernel:conv2", "size:conv1"))

    changed = make(tiny_reference, tmp_path / "results",
                   {"search": {**search, "groups": {**groups, "min_trials": 2}, "trials": 8}})
    with pytest.raises(InputError, match=r"study 'groups-resume' was searched with \[search.groups\]"):
        SearchRun(changed, progress=False).run()


def test_a_joint_study_is_not_resumed_as_a_group_search(tiny_reference: Path, tmp_path: Path) -> None:
    search = {"study": "joint", "sampler": "random", "trials": 3}
    config = make(tiny_reference, tmp_path / "results", {"search": search})
    SearchRun(config, progress=False).run()
    grouped_search = {**search, "trials": 9, "groups": {"min_trials": 1}}
    grouped = make(tiny_reference, tmp_path / "results", {"search": grouped_search})
    with pytest.raises(InputError, match=r"study 'joint' was searched without \[search.groups\]"):
        SearchRun(grouped, progress=False).run()


def test_group_search_config_errors_are_one_line_input_errors(tiny_reference: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    with pytest.raises(InputError, match=r"\[search.groups\] order 'x': expected 'cost' or 'sequential'"):
        make(tiny_reference, results, {"search": {"groups": {"order": "x"}}})
    with pytest.raises(InputError, match=r"\[search.groups\]: unknown key 'pattern'"):
        make(tiny_reference, results, {"search": {"groups": {"pattern": ["x"]}}})
    with pytest.raises(InputError, match=r"\[search.groups\] patterns \['conv1', 'conv1'\] name a pattern twice"):
        make(tiny_reference, results, {"search": {"groups": {"patterns": ["conv1", "conv1"]}}})
    config = make(tiny_reference, results, {"search": {"groups": {"patterns": ["conv1", "fc"]}}})
    with pytest.raises(InputError, match=r"\[search.groups\] pattern 'fc' matches no quantizable layer"):
        SearchRun(config, progress=False).run()
    config = make(tiny_reference, results, {"search": {"trials": 30, "groups": {}}})  # 3 layers x 10 > 28
    with pytest.raises(InputError, match=r"28 trials cannot give each of 3 groups its 10 .*the 2 seed trials"):
        SearchRun(config, progress=False).run()
    assert not (results / "optuna.sqlite3").exists()  # refused before the study was created
