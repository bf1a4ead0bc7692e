"""After the search: train the chosen candidates on the real task, then lower and measure them again.

The search ranks candidates by a proxy (document 000: a fraction of the data, few epochs, from
inherited weights); the models a user deploys deserve the real task. ``harness finetune`` takes
a study's Pareto candidates, and always its seeded ``reference`` and ``int8`` candidates so the
fine-tuned set still has its baselines trained alike, continues each from its trained .keras
with ``[finetune]`` settings, and records them as a study of their own, ``<study>-finetuned``,
with the same trial numbers: its CSV/Parquet, Pareto table, plot and kept models come from the
same report as a search's.

Resumable like a search: a candidate whose fine-tuned record is complete with the same settings
is not redone; one measurement runs while the next candidate trains.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
from tqdm import tqdm

from devices.files import sha256_file
from devices.fleet import FleetResult
from harness.config import SearchConfig
from harness.errors import HarnessError, InputError
from harness.fleet_setup import open_fleet
from harness.objectives import apply_fleet_result, apply_host_outcome, estimate_metrics
from harness.report import study_objectives
from harness.search_loop import SearchRun
from results.export import to_frame
from results.pareto import pareto_front
from results.records import Metric, TrialRecord
from results.store import ResultsStore
from search.candidate import CandidateSpec
from search.estimates import estimate
from search.quantizers import qkeras_custom_objects
from search.space import SEED_LABELS

__all__ = [
    "FINETUNED_SUFFIX", "FinetuneRun", "FinetuneSummary", "finetuned_study", "raise_for_failures", "select_trials",
]

log = logging.getLogger(__name__)
FINETUNED_SUFFIX = "-finetuned"


def finetuned_study(study: str) -> str:
    return f"{study}{FINETUNED_SUFFIX}"


def select_trials(
    records: Sequence[TrialRecord], objectives: dict[str, str], accuracy_margin: float = 0.0
) -> list[int]:
    """The complete, constraint-feasible trials on the front of ``objectives``, and the seeded
    baselines, by trial number (a candidate proposed twice is kept once, its first trial).

    ``accuracy_margin`` (a fraction) also keeps the trials at most that far behind the front in
    accuracy: the proxy's ranking is noisy, and fine-tuning reorders near neighbours."""
    complete = [r for r in records if r.state == "complete" and "keras" in r.artifacts]
    if not complete:
        return []
    frame = to_frame(complete)
    feasible = frame[~frame["flags"].fillna("").str.contains("constraint:")]
    slack = {"accuracy": accuracy_margin} if accuracy_margin else None
    chosen = set(pareto_front(feasible, objectives, slack)["trial_number"].astype(int))
    chosen |= {r.trial_number for r in complete if r.label in SEED_LABELS}
    first_of_key: dict[str, int] = {}
    for record in sorted(complete, key=lambda r: r.trial_number):
        first_of_key.setdefault(record.candidate_key, record.trial_number)
    return sorted({first_of_key[r.candidate_key] for r in complete if r.trial_number in chosen})


@dataclass
class FinetuneSummary:
    study: str
    done: list[int] = field(default_factory=list)  # fine-tuned and measured by this run
    reused: list[int] = field(default_factory=list)  # complete already, with the same settings
    failed: dict[int, str] = field(default_factory=dict)  # trial number -> why


class FinetuneRun:
    """Fine-tunes trials of ``config.study`` into ``<study>-finetuned``. Use :meth:`run` once."""

    def __init__(
        self, config: SearchConfig, *, trials: Sequence[int] = (), accuracy_margin: float = 0.0,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.results_dir = Path(config.results_dir)
        self.store_path = self.results_dir / "harness.sqlite"
        if not self.store_path.is_file():
            raise InputError(f"no results store at {self.store_path}: run 'harness search' first or pass --results-dir")
        with ResultsStore(self.store_path) as store:
            self.parents = {r.trial_number: r for r in store.records(config.study)}
        if not self.parents:
            raise InputError(f"study {config.study!r} has no trials in {self.store_path}")
        self.trials = self._chosen(trials, accuracy_margin)
        self.study = finetuned_study(config.study)
        self.progress = progress
        # the search's own reference, data split, space, evaluator and devices
        self.search = SearchRun(config, progress=progress)

    def _chosen(self, trials: Sequence[int], accuracy_margin: float) -> list[int]:
        if not trials:
            objectives = study_objectives(self.results_dir, self.config.study)
            if accuracy_margin and "accuracy" not in objectives:
                raise InputError(f"--accuracy-margin: study {self.config.study!r} does not optimise accuracy "
                                 f"(objectives: {', '.join(objectives)})")
            chosen = select_trials(list(self.parents.values()), objectives, accuracy_margin)
            if not chosen:
                raise InputError(f"study {self.config.study!r} has no complete trial to fine-tune")
            return chosen
        for number in trials:
            record = self.parents.get(number)
            if record is None:
                raise InputError(f"--trial {number}: study {self.config.study!r} has no such trial")
            if record.state != "complete" or "keras" not in record.artifacts:
                raise InputError(f"--trial {number}: the trial is {record.state}, with no trained model to fine-tune")
        return sorted(set(trials))

    def settings_params(self) -> dict[str, object]:
        """The fine-tune settings as record parameters: a record made with others is redone."""
        params: dict[str, object] = {f"finetune_{k}": v for k, v in asdict(self.config.finetune).items()}
        params["finetune_devices"] = list(self.config.measure.devices)  # measured elsewhere: redo
        return params

    def run(self) -> FinetuneSummary:
        search, params = self.search, self.settings_params()
        summary = FinetuneSummary(self.study)
        done, reused, failed = summary.done, summary.reused, summary.failed
        fleet, lease_store = open_fleet(search.devices, self.results_dir, self.config.measure)
        executor = ThreadPoolExecutor(1, thread_name_prefix="measure")
        pending: list[tuple[TrialRecord, object, Future[FleetResult]]] = []
        bar = tqdm(total=len(self.trials), disable=not self.progress, desc=f"finetune {self.config.study}",
                   unit="model")
        try:
            with ResultsStore(self.store_path) as store:
                for number in self.trials:
                    existing = store.get(self.study, number)
                    if existing is not None and existing.state == "complete" and _same_settings(existing, params):
                        reused.append(number)
                        bar.update(1)
                        continue
                    record = self._new_record(self.parents[number], params)
                    store.put(record)
                    try:
                        cost, tflite_path = self._train(record)
                    except Exception as e:  # noqa: BLE001 - one candidate that cannot be trained must not stop the others
                        failed[number] = self._fail(store, record, f"fine-tune failed: {e}")
                        bar.update(1)
                        continue
                    store.put(record)
                    future = executor.submit(fleet.measure, tflite_path, search.settings, search.probe)
                    pending.append((record, cost, future))
                    self._settle(store, pending, done, failed, bar, block=False)
                self._settle(store, pending, done, failed, bar, block=True)
        finally:
            executor.shutdown(wait=True)
            fleet.close()
            lease_store.close()
            bar.close()
        return summary

    def _new_record(self, parent: TrialRecord, params: dict[str, object]) -> TrialRecord:
        return TrialRecord(
            study=self.study, trial_number=parent.trial_number, candidate_key=parent.candidate_key,
            state="running", label=parent.label, params={**parent.params, **params}, layers=dict(parent.layers),
            flags=[f"finetuned_from:{parent.study}#{parent.trial_number}"],
        )

    def _train(self, record: TrialRecord):
        """Continue the parent's trained model with the fine-tune settings; lower and verify it."""
        parent = self.parents[record.trial_number]
        source = parent.artifacts["keras"]
        if not Path(source.path).is_file():
            raise FileNotFoundError(f"{source.path}: the trial's trained model is gone")
        if sha256_file(Path(source.path)) != source.sha256:
            raise ValueError(f"{source.path}: changed since the trial recorded it (sha256 differs)")
        spec = CandidateSpec.from_dict(parent.layers, parent.label)
        model = keras.models.load_model(source.path, custom_objects=qkeras_custom_objects())
        evaluator = self.search.evaluator
        cost = estimate(model, spec, input_scheme=evaluator.input_scheme)
        trial_dir = self.results_dir / self.study / "trials" / f"{record.trial_number:05d}"
        outcome = evaluator.train_and_lower(spec, model, cost, trial_dir, training=self.config.finetune)
        record.metrics.update(estimate_metrics(cost))
        apply_host_outcome(record, outcome, self.config)
        proxy = parent.metrics.get("accuracy")
        if proxy is not None:
            record.metrics["proxy_accuracy"] = Metric(proxy.value, proxy.unit, proxy.source)
        return cost, outcome.tflite_path

    def _settle(self, store, pending, done: list[int], failed: dict[int, str], bar, *, block: bool) -> None:
        for item in list(pending):
            record, cost, future = item
            if not block and not future.done():
                continue
            pending.remove(item)
            try:
                error = apply_fleet_result(record, future.result(), cost, self.config.measure.latency_aggregate)
            except Exception as e:  # noqa: BLE001 - a device bug must not lose the other candidates
                error = f"measurement failed: {type(e).__name__}: {e}"
            if error is not None:
                failed[record.trial_number] = self._fail(store, record, error)
            else:
                record.state = "complete"
                store.put(record)
                done.append(record.trial_number)
            bar.update(1)

    @staticmethod
    def _fail(store: ResultsStore, record: TrialRecord, message: str) -> str:
        message = " ".join(message.split())[:500]
        log.warning("trial %d: %s", record.trial_number, message)
        record.state, record.error = "failed", message
        store.put(record)
        return message


def _same_settings(record: TrialRecord, params: dict[str, object]) -> bool:
    return all(record.params.get(k) == v for k, v in params.items())


def raise_for_failures(summary: FinetuneSummary) -> None:
    """One line naming what failed, after the others were finished and reported."""
    if summary.failed:
        number, message = next(iter(sorted(summary.failed.items())))
        raise HarnessError(
            f"{len(summary.failed)} of the chosen trials could not be fine-tuned; trial {number}: {message}"
        )
