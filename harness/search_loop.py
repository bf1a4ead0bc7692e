"""The search: an Optuna study proposes, the host trains and lowers, devices measure.

Trials flow through two stages that overlap: the main thread builds, trains and lowers one
candidate while measurement workers hand earlier ones to the device fleet
(:class:`devices.fleet.Fleet`: one measurement per device class, on a leased, healthy device,
retried on another device of the class when one fails); ``ask``/``tell`` decouple the two, so
up to ``in_flight`` candidates (at least one per device of the largest class) wait for devices
at any time.

Nothing measured is lost: a trial's record is written to the results store after every stage
and *before* Optuna is told, so a killed search that is started again (same study name) tells
Optuna what the store already holds and redoes only unfinished candidates.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import keras
import optuna
from tqdm import tqdm

from devices.base import Device, MeasureSettings
from devices.fleet import FleetResult
from harness.config import SearchConfig
from harness.data import Dataset, check_fits, load_dataset
from harness.errors import HarnessError, InputError
from harness.evaluate import CandidateEvaluator, HostOutcome
from harness.fleet_setup import inventory_from, open_devices, open_fleet
from harness.group_schedule import GroupSchedule
from harness.host_gate import HostCpuGate
from harness.objectives import (
    apply_fleet_result,
    apply_host_outcome,
    estimate_metrics,
    estimated_energy_metric,
    measurement_metrics,
    objective_values,
)
from harness.reference import load_reference
from results.calibration import (
    Calibration,
    CalibrationError,
    FrontPoint,
    calibrate_all,
    front_points,
    prescreen,
)
from results.records import Metric, TrialRecord
from results.store import ResultsStore
from search.activation_ranges import CALIBRATED_KINDS, ActivationRangeError, ActivationRanges
from search.activation_ranges import calibrate as calibrate_activation_ranges
from search.candidate import CandidateSpec
from search.estimates import estimate
from search.graph import GraphError
from search.samplers import make_pruner, make_sampler
from search.space import SEED_LABELS, SearchSpace, SpaceError, build_space

__all__ = ["SearchRun", "SearchSummary", "open_study", "study_storage_url"]

log = logging.getLogger(__name__)
MAX_CONSECUTIVE_FAILURES = 5
PRESCREEN_REFIT_EVERY = 5  # measured trials between refits of the pre-screen's energy models


def study_storage_url(results_dir: Path) -> str:
    return f"sqlite:///{(results_dir / 'optuna.sqlite3').resolve()}"


def open_study(config: SearchConfig, results_dir: Path) -> optuna.Study:
    """Create the study, or load it when it exists with the same objectives."""
    results_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(study_storage_url(results_dir))
    multi = config.mode == "pareto" and len(config.directions) > 1
    pruner = make_pruner(config.pruner if config.mode == "score" else None)
    study = optuna.create_study(
        study_name=config.study, storage=storage, pruner=pruner,
        sampler=make_sampler(config.sampler, seed=config.seed, multi_objective=multi),
        directions=config.directions, load_if_exists=True,
    )
    # A resumed study must not replay the random draws of its first run (the same candidates
    # again); offset the seed by the trials it already has, which keeps fresh runs reproducible.
    existing = len(study.get_trials(deepcopy=False))
    if existing and config.seed is not None:
        study.sampler = make_sampler(config.sampler, seed=config.seed + existing, multi_objective=multi)
    objectives = ["score"] if config.mode == "score" else list(config.objectives)
    saved = study.user_attrs.get("objectives")
    if saved is not None and saved != objectives:
        raise InputError(
            f"study {config.study!r} exists with objectives {saved}, not {objectives}; "
            "pick another --study name"
        )
    # Studies from before activation ranges were calibrated have run trials but no setting: "half".
    ran = any(t.state != optuna.trial.TrialState.WAITING for t in study.get_trials(deepcopy=False))
    saved_range = study.user_attrs.get("activation_range", "half" if ran else None)
    wanted_range = config.space.activation_range
    if saved_range is not None and saved_range != wanted_range:
        raise InputError(
            f"study {config.study!r} was searched with activation_range {saved_range!r}, not "
            f"{wanted_range!r}; set [search] activation_range = {saved_range!r} to resume it, "
            "or pick another --study name"
        )
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("activation_range", wanted_range)
    study.set_user_attr("directions", list(config.directions))
    return study


@dataclass
class _Pending:
    trial: optuna.trial.Trial
    record: TrialRecord
    outcome: HostOutcome | None
    future: Future[FleetResult]
    twin_of: _Pending | None = None  # the same candidate already in flight: reuse its result


@dataclass
class SearchSummary:
    study: str
    finished: int
    counts: dict[str, int] = field(default_factory=dict)
    study_dir: Path | None = None


class SearchRun:
    """One search process over one study. Use :meth:`run` once."""

    def __init__(self, config: SearchConfig, *, progress: bool = True, devices: list[Device] | None = None) -> None:
        self.config = config
        self.progress = progress
        self.results_dir = Path(config.results_dir)
        self.study_dir = self.results_dir / config.study
        # The built-in example trains on the same split (seed, path) the search validates on.
        self.reference: keras.Model = load_reference(
            config.reference, example_dataset=config.dataset,
            example_data_path=config.data_path, example_seed=config.seed,
        )
        self.dataset: Dataset = load_dataset(
            config.dataset, path=config.data_path,
            validation_fraction=config.validation_fraction, seed=config.seed,
        )
        check_fits(self.dataset, self.reference)
        try:
            self.space: SearchSpace = build_space(self.reference, config.space)
        except (SpaceError, GraphError) as e:
            raise InputError(f"reference model {config.reference!r}: {e}") from e
        if not self.space.distributions():
            raise InputError("the search space has no choices left: check the [[search.layer]] rules")
        self.gate = HostCpuGate()
        if devices is None:
            inventory = inventory_from(config.measure.inventory)
            devices = open_devices(config.measure.devices, inventory, self.gate, config.energy)
        self.devices: list[Device] = devices
        self.evaluator = CandidateEvaluator(self.reference, self.space, self.dataset, config, self.gate)
        self.settings = MeasureSettings(
            threads=config.measure.threads, warmup_runs=config.measure.warmup_runs,
            min_seconds=config.measure.min_seconds, min_runs=config.measure.min_runs,
        )
        self.probe = self.dataset.x_val[:1]
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._calibrations: dict[str, Calibration] = {}  # the pre-screen's, by device class
        self._fronts: dict[str, list[FrontPoint]] = {}
        self._measured_since_fit = 0
        self._schedule: GroupSchedule | None = None  # group search by energy, when configured

    @cached_property
    def activation_ranges(self) -> ActivationRanges:
        """The ranges candidates' activations get (:mod:`search.activation_ranges`); calibrated
        on first use, so users of the search's parts that never propose a candidate (finetune)
        do not pay."""
        if self.config.space.activation_range != "calibrated":
            return ActivationRanges()
        try:
            return calibrate_activation_ranges(self.reference, self.space, self.evaluator.calibration_x)
        except ActivationRangeError as e:
            raise InputError(f"reference model {self.config.reference!r}: {e}") from e

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> SearchSummary:
        self.activation_ranges  # noqa: B018 - calibrate (or fail on the reference) before writing anything
        if self.config.groups is not None:
            self._schedule = self._plan_groups()  # a plan that cannot work fails before the study exists
        self.study_dir.mkdir(parents=True, exist_ok=True)
        study = open_study(self.config, self.results_dir)
        self._keep_activation_ranges(study)
        with ResultsStore(self.results_dir / "harness.sqlite") as store:
            self._recover(study, store)
            self._seed(study)
            if self._schedule is not None:
                self._schedule.adopt(study)
            if self.config.measure.prescreen:
                self._refit(store)  # a resumed study pre-screens from its first new trial
            self.fleet, lease_store = open_fleet(self.devices, self.results_dir, self.config.measure)
            # one worker per device of the largest class keeps every device of it busy
            widest = max(len(names) for names in self.fleet.classes.values())
            in_flight = max(self.config.in_flight, widest)
            executor = ThreadPoolExecutor(widest, thread_name_prefix="measure")
            pending: list[_Pending] = []
            self._consecutive_failures = 0
            bar = tqdm(total=self.config.trials, initial=self._finished(study), disable=not self.progress,
                       desc=f"search {self.config.study}", unit="trial")
            try:
                wants_score = self.config.mode == "score" or self._schedule is not None
                self._baseline_cost = self._score_baseline() if wants_score else None
                while True:
                    self._collect(study, store, pending, block=False, bar=bar)
                    self._check_failures()
                    finished = self._finished(study)
                    if finished >= self.config.trials:
                        break
                    if finished + len(pending) >= self.config.trials or len(pending) >= in_flight:
                        self._collect(study, store, pending, block=True, bar=bar)
                        continue
                    if self._schedule and not self._enter_group(study, store, finished + len(pending), pending, bar):
                        self._collect(study, store, pending, block=True, bar=bar)
                        continue
                    self._start_trial(study, store, executor, pending, bar)
            finally:
                try:
                    self._drain(study, store, pending, bar)
                finally:
                    executor.shutdown(wait=True)
                    self.fleet.close()  # waits for running measurements, closes the devices
                    lease_store.close()
                    bar.close()
            counts: dict[str, int] = {}
            for record in store.records(self.config.study):
                counts[record.state] = counts.get(record.state, 0) + 1
        return SearchSummary(self.config.study, self._finished(study), counts, self.study_dir)

    def _keep_activation_ranges(self, study: optuna.Study) -> None:
        """A resumed study keeps the ranges it started with, so the same sampled choices
        always mean the same grid; widths it never calibrated take today's calibration, but
        only of the scheme kinds it calibrates (one saved before binary, binary01 and ternary
        activations were calibrated keeps them at qkeras' scale of 1)."""
        attrs = study.user_attrs
        saved = ActivationRanges.from_dict(attrs.get("activation_ranges", {}))
        kinds = attrs.get("activation_range_kinds")
        if kinds is None:  # a new study, or one saved before the kinds were recorded (fixed only)
            kinds = ["fixed"] if "activation_ranges" in attrs else list(CALIBRATED_KINDS)
            # first: a process that reads the study between these two writes must not take it for an old one
            study.set_user_attr("activation_range_kinds", kinds)
        fresh = self.activation_ranges.without_kinds(set(CALIBRATED_KINDS) - set(kinds)).bits
        merged = {name: {**fresh.get(name, {}), **saved.bits.get(name, {})} for name in {*fresh, *saved.bits}}
        merged = {name: ranges for name, ranges in merged.items() if ranges}
        if any(saved.bits.get(n, {}).get(m, i) != i for n, widths in fresh.items() for m, i in widths.items()):
            log.info("activation ranges: keeping the study's saved ranges over a recalibration that differs")
        self.activation_ranges = ActivationRanges(merged)
        study.set_user_attr("activation_ranges", self.activation_ranges.to_dict())

    # -- group search (search.groups, harness.group_schedule) ------------------------------
    def _plan_groups(self) -> GroupSchedule:
        """Groups by their share of the int8 candidate's estimated energy, with their budgets."""
        cost = estimate(self.reference, self.space.int8_spec(), input_scheme=self.evaluator.input_scheme)
        return GroupSchedule(self.space, self.config.groups, self.config.trials,
                             {e.name: e.energy_pj for e in cost.layers})

    def _enter_group(self, study, store: ResultsStore, ordinal: int, pending: list[_Pending], bar) -> bool:
        """Make the group of the ``ordinal``-th trial current; false while the previous group
        still has trials in flight (the next group starts from its best, so it must know them)."""
        schedule = self._schedule
        waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        label = str(waiting[0].user_attrs.get("label", "")) if waiting else ""
        index = schedule.group_of(label, ordinal)
        if index is None or index == schedule.index:
            return True
        if pending:
            return False
        group = schedule.groups[index]
        start = schedule.enter(study, index, lambda: store.records(self.config.study), self._group_score)
        total_pj = sum(g.cost_pj for g in schedule.groups)
        log.info("group %d/%d %r (%.0f %% of the int8 energy): %d trials; the other layers as %s",
                 index + 1, len(schedule.groups), group.name, 100 * group.cost_pj / total_pj if total_pj else 0.0,
                 group.trials, "the int8 candidate" if start is None else f"trial {start}")
        bar.set_description(f"search {self.config.study} [group {index + 1}/{len(schedule.groups)} {group.name}]")
        return True

    def _group_score(self, record: TrialRecord) -> float | None:
        """The forgiving-factor score that picks a group's start; None without a usable cost."""
        cost = self._cost_of(record.metrics)
        if cost is None or cost <= 0 or record.metric_value("accuracy") is None:
            return None
        return self._score(record)

    def _drain(self, study, store, pending: list[_Pending], bar) -> None:
        """Finish every pending trial (measurements under way are kept, even on Ctrl-C); one
        that cannot be finished is logged and the others still are."""
        while pending:
            wait([p.future for p in pending])
            for item in list(pending):
                pending.remove(item)
                try:
                    self._finish(study, store, item)
                    bar.update(1)
                except Exception as e:  # noqa: BLE001 - one trial that cannot be finished must not lose the others
                    log.error("trial %d: could not be finished: %s", item.trial.number, e)

    _last_error: str | None = None
    _consecutive_failures = 0

    def _check_failures(self) -> None:
        """Stop a search whose trials keep failing (a broken device, a broken candidate path)."""
        if self._consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            raise HarnessError(
                f"{self._consecutive_failures} trials failed in a row; last error: {self._last_error}"
            )

    @staticmethod
    def _finished(study: optuna.Study) -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(study.get_trials(deepcopy=False, states=states))

    def _seed(self, study: optuna.Study) -> None:
        """Enqueue the reference and uniform-int8 candidates unless the study has them
        (a search killed between the two enqueues gets the missing one on its next start)."""
        present = {t.user_attrs.get("label") for t in study.get_trials(deepcopy=False)}
        for spec in (self.space.reference_spec(), self.space.int8_spec()):
            if spec.label in present:
                continue
            params = self.space.params_for(spec)
            if params is None:
                log.warning("the %s candidate is outside the search space; not seeded", spec.label)
                continue
            study.enqueue_trial(params, user_attrs={"label": spec.label})

    @contextmanager
    def _ask_lock(self) -> Iterator[None]:
        """Held while a trial is asked and named: a RUNNING trial without an owner seen under
        this lock was left by a process killed in between (flock is released by the kernel)."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        with open(self.results_dir / f".{self.config.study}.ask.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _recover(self, study: optuna.Study, store: ResultsStore) -> None:
        """Settle trials left RUNNING by a search on this host that died."""
        with self._ask_lock():
            self._recover_locked(study, store)

    def _recover_locked(self, study: optuna.Study, store: ResultsStore) -> None:
        host = socket.gethostname()
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            owner = str(trial.user_attrs.get("owner", ""))
            owner_host, _, pid = owner.rpartition(":")
            if not owner:
                pass  # killed between ask() and naming its owner: live askers hold the ask lock
            elif owner != self.owner and (owner_host != host or (pid.isdigit() and _alive(int(pid)))):
                # (our own name can only be a dead predecessor's that had our pid: a container)
                continue  # another live process (or another host) owns it
            record = store.get(self.config.study, trial.number)
            if record is not None and record.state == "complete":
                values = objective_values(record.metrics, self.config)
                study.tell(trial.number, values)
                log.info("trial %d: recovered its stored measurement", trial.number)
                continue
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(
                trial.params,
                user_attrs={"label": trial.user_attrs.get("label", ""), "retry_of": trial.number},
            )
            if record is not None:
                record.state, record.error = "failed", "the search process died; candidate re-queued"
                store.put(record)
            log.info("trial %d: its process died; candidate re-queued", trial.number)

    # -- one trial ------------------------------------------------------------------------
    def _start_trial(self, study, store, executor, pending, bar) -> bool:
        with self._ask_lock():
            trial = study.ask()
            trial.set_user_attr("owner", self.owner)
        label = str(trial.user_attrs.get("label", ""))
        spec = self.activation_ranges.resolve(self.space.suggest(trial))
        spec = CandidateSpec(spec.layers, label)
        params: dict[str, object] = dict(trial.params)
        if self._schedule is not None:
            params["search_group"] = self._schedule.group_name(label)
        record = TrialRecord(
            study=self.config.study, trial_number=trial.number, candidate_key=spec.key,
            state="running", label=label, params=params, layers=spec.to_dict(),
        )
        cached = store.find_complete(self.config.study, spec.key)
        if cached is not None:
            record.metrics, record.artifacts = dict(cached.metrics), dict(cached.artifacts)
            record.measurements = list(cached.measurements)
            record.flags = [*cached.flags, f"reused:{cached.trial_number}"]
            record.state = "complete"
            store.put(record)
            study.tell(trial, objective_values(record.metrics, self.config))
            bar.update(1)
            self._consecutive_failures = 0
            return True
        twin = next((p for p in pending if p.record.candidate_key == spec.key and p.twin_of is None), None)
        if twin is not None:  # proposed again while its first copy is measured: wait, not retrain
            store.put(record)
            pending.append(_Pending(trial, record, None, twin.future, twin_of=twin))
            return True
        try:
            model, cost, build_s = self.evaluator.build(spec)
        except Exception as e:  # noqa: BLE001 - a candidate that cannot be built is a failed trial, not a crash
            return self._fail(study, store, trial, record, f"build failed: {e}")
        record.timings_s["build"] = build_s
        record.metrics.update(estimate_metrics(cost))
        reason = self.evaluator.rejection(cost)
        if reason is not None:
            return self._settle_unmeasured(study, store, trial, record, "rejected", reason, bar)
        store.put(record)
        callbacks = []
        if self.config.mode == "score":
            callbacks.append(_ScorePruning(trial, self._estimated_score_factor(cost)))
        trial_dir = self.study_dir / "trials" / f"{trial.number:05d}"
        try:
            outcome = self.evaluator.train_and_lower(
                spec, model, cost, trial_dir, callbacks, train=label != "reference"
            )
        except optuna.TrialPruned:
            return self._settle_unmeasured(study, store, trial, record, "pruned", "pruned during training", bar)
        except Exception as e:  # noqa: BLE001 - a candidate that cannot be trained is a failed trial, not a crash
            return self._fail(study, store, trial, record, f"train/convert failed: {e}")
        apply_host_outcome(record, outcome, self.config)
        store.put(record)
        minimum = self.config.constraints.min_accuracy
        accuracy = record.metric_value("accuracy")
        if minimum is not None and accuracy is not None and accuracy < minimum:
            reason = f"accuracy {accuracy:.4f} is below the minimum {minimum:.4f}; not measured"
            return self._settle_unmeasured(study, store, trial, record, "rejected", reason, bar)
        reason = self._prescreen(record, label)
        if reason is not None:
            return self._settle_unmeasured(study, store, trial, record, "rejected", reason, bar)
        future = executor.submit(self._measure, outcome.tflite_path)
        pending.append(_Pending(trial, record, outcome, future))
        return True

    def _settle_unmeasured(self, study, store, trial, record: TrialRecord, state, reason: str, bar) -> bool:
        """A trial that ends without measurement (a constraint or the pruner): Optuna's PRUNED."""
        record.state, record.error = state, reason
        store.put(record)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        bar.update(1)
        return True

    def _fail(self, study, store, trial, record: TrialRecord, message: str) -> bool:
        message = " ".join(message.split())[:500]
        log.warning("trial %d failed: %s", trial.number, message)
        self._last_error = message
        self._consecutive_failures += 1
        record.state, record.error = "failed", message
        store.put(record)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False

    def _measure(self, model_path: Path) -> FleetResult:
        """One measurement per device class (the fleet retries within a class)."""
        return self.fleet.measure(model_path, self.settings, self.probe)

    def _collect(self, study, store, pending: list[_Pending], *, block: bool, bar) -> int:
        """Finish the pending trials whose measurements are all in; returns how many."""
        if block and pending:
            wait([p.future for p in pending], return_when=FIRST_COMPLETED)
        finished = 0
        for item in list(pending):
            if not item.future.done():
                continue
            pending.remove(item)
            finished += 1
            self._finish(study, store, item)
            bar.update(1)
        return finished

    def _finish(self, study, store, item: _Pending) -> None:
        if item.twin_of is not None:
            return self._finish_twin(study, store, item)
        record, outcome = item.record, item.outcome
        assert outcome is not None
        try:
            result = item.future.result()
        except Exception as e:  # noqa: BLE001 - a device bug (not a DeviceError) must not take the search down
            self._fail(study, store, item.trial, record, f"measurement failed: {type(e).__name__}: {e}")
            return
        error = apply_fleet_result(record, result, outcome.estimate, self.config.measure.latency_aggregate)
        if error is not None:
            self._fail(study, store, item.trial, record, error)
            return
        if self.config.mode == "score":
            record.metrics["score"] = Metric(self._score(record), "score", "measured")
        excess = self._limit_excess(record)
        record.flags.extend(
            f"constraint:{metric}={value:.4g}>{limit:.4g}"
            for metric, (value, limit) in excess.items()
            if value > limit
        )
        record.state = "complete"
        values = objective_values(record.metrics, self.config)
        store.put(record)  # persisted before Optuna hears of it: a crash here loses nothing
        for metric, (value, limit) in excess.items():
            item.trial.set_constraint(metric, value - limit)  # feasible when <= 0
        study.tell(item.trial, values)
        self._consecutive_failures = 0
        self._measured_since_fit += 1
        if self.config.measure.prescreen and self._measured_since_fit >= PRESCREEN_REFIT_EVERY:
            self._refit(store)

    # -- pre-screen (calibrated energy model) --------------------------------------------
    def _refit(self, store: ResultsStore) -> None:
        """Fit each device class's energy model to the trials measured so far."""
        records = store.records(self.config.study)
        self._calibrations = calibrate_all(records)
        self._fronts = {c: front_points(records, c, source=cal.source) for c, cal in self._calibrations.items()}
        self._measured_since_fit = 0

    def _prescreen(self, record: TrialRecord, label: str) -> str | None:
        """Why a trained candidate is not sent to the devices, or ``None`` to send it.

        Only with ``[measure] prescreen`` and a calibration for every device class; a candidate
        is held back only when its predicted energy, with the fit's error in its favour, is
        dominated on every class. Predictions are recorded either way.
        """
        if not self.config.measure.prescreen or label in SEED_LABELS:
            return None
        if not set(self.fleet.classes) <= set(self._calibrations):
            return None  # a class without a fitted model: measure, which also feeds its fit
        verdicts = []
        for device_class in self.fleet.classes:
            calibration = self._calibrations[device_class]
            try:
                features = calibration.features(record.metrics)
            except CalibrationError:
                return None
            record.metrics[f"energy_mj_predicted.{device_class}"] = Metric(
                float(calibration.predict(features)), "mJ", "estimated")
            verdicts.append(prescreen(calibration, features, self._fronts.get(device_class, []),
                                      accuracy=record.metric_value("accuracy"),
                                      margin=self.config.measure.prescreen_margin))
        if any(send for send, _ in verdicts):
            return None
        return "prescreen: " + "; ".join(reason for _, reason in verdicts)

    def _finish_twin(self, study, store, item: _Pending) -> None:
        """A trial of a candidate that was in flight when proposed: its twin's outcome, reused
        like a stored one (the twin comes first in ``pending``, so it is settled already)."""
        assert item.twin_of is not None
        original, record = item.twin_of.record, item.record
        if original.state != "complete":
            self._fail(study, store, item.trial, record,
                       f"its twin trial {original.trial_number} ({original.state}): {original.error}")
            return
        record.metrics, record.artifacts = dict(original.metrics), dict(original.artifacts)
        record.measurements = list(original.measurements)
        record.flags = [*original.flags, f"reused:{original.trial_number}"]
        record.state = "complete"
        store.put(record)
        study.tell(item.trial, objective_values(record.metrics, self.config))
        self._consecutive_failures = 0

    def _limit_excess(self, record: TrialRecord) -> dict[str, tuple[float, float]]:
        """(value, limit) of each limit that can only be judged after measuring."""
        limits = self.config.constraints
        checks = (
            ("latency_ms", limits.max_latency_ms),
            ("energy_mj", limits.max_energy_mj),
            ("size_bytes", limits.max_size_bytes),
        )
        out = {}
        for metric, limit in checks:
            value = record.metric_value(metric)
            if limit is not None and value is not None:
                out[metric] = (float(value), float(limit))
        return out

    # -- score mode ----------------------------------------------------------------------
    def _cost_of(self, metrics: dict[str, Metric]) -> float | None:
        name = {"energy": "energy_mj", "bops": "bops", "size": "model_bytes_estimated", "latency": "latency_ms"}[
            self.config.score_cost
        ]
        metric = metrics.get(name)
        return None if metric is None else metric.value

    def _score_baseline(self) -> float:
        """The int8 reference's cost, the denominator of the forgiving factor."""
        spec = self.activation_ranges.resolve(self.space.int8_spec())
        model, cost, _ = self.evaluator.build(spec)
        metrics = {**estimate_metrics(cost), "energy_mj": estimated_energy_metric(cost)}
        needs_device = self.config.score_cost == "latency" or (
            self.config.score_cost == "energy" and any(d.has_energy_meter for d in self.devices)
        )
        if needs_device:
            outcome = self.evaluator.train_and_lower(spec, model, cost, self.study_dir / "baseline", train=False)
            result = self._measure(outcome.tflite_path)
            if not result.ok:
                lines = [line for lines in result.errors.values() for line in lines]
                raise HarnessError("cannot measure the int8 reference: " + "; ".join(lines))
            measurements = result.measurements
            metrics.update(measurement_metrics(measurements, cost, self.config.measure.latency_aggregate))
        value = self._cost_of(metrics)
        if value is None or value <= 0:
            raise HarnessError(f"the int8 reference has no usable {self.config.score_cost} cost ({value})")
        return float(value)

    def _estimated_score_factor(self, cost) -> float:
        """``1 + delta`` from the candidate's estimate; 1 when its cost is only measured."""
        if self.config.score_cost == "latency" or not self._baseline_cost:
            return 1.0
        trial_cost = self._cost_of({**estimate_metrics(cost), "energy_mj": estimated_energy_metric(cost)})
        return 1.0 + self.config.score.delta(self._baseline_cost, trial_cost) if trial_cost else 1.0

    def _score(self, record: TrialRecord) -> float:
        cost = self._cost_of(record.metrics)
        accuracy = record.metric_value("accuracy") or 0.0
        assert self._baseline_cost is not None and cost is not None
        return self.config.score.score(accuracy, self._baseline_cost, cost)


class _ScorePruning(keras.callbacks.Callback):
    """Reports the forgiving-factor score per epoch so Hyperband can stop weak candidates.

    ``factor`` is ``1 + delta`` from the cost known before training (1 when it is not)."""

    def __init__(self, trial: optuna.trial.Trial, factor: float) -> None:
        super().__init__()
        self.trial = trial
        self.factor = factor

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if "val_accuracy" not in logs:  # training ran without per-epoch validation: a wiring bug
            raise RuntimeError("score pruning needs val_accuracy at each epoch's end; none was logged")
        self.trial.report(float(logs["val_accuracy"]) * self.factor, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def copy_pareto_artifacts(records: list[TrialRecord], numbers: set[int], out_dir: Path) -> list[Path]:
    """Copy the Pareto candidates' .tflite and .keras to ``out_dir`` (replacing older copies)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    copied = []
    for record in records:
        if record.trial_number not in numbers:
            continue
        for artifact in record.artifacts.values():
            source = Path(artifact.path)
            if source.exists():
                suffix = "".join(source.suffixes[-1:])
                target = out_dir / f"trial{record.trial_number:05d}{'-' + record.label if record.label else ''}{suffix}"
                shutil.copy2(source, target)
                copied.append(target)
    return copied
