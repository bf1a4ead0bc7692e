"""The host half of a trial: spec -> QAT model -> estimate -> trained -> .tflite, checked.

Everything here runs on the host's main thread; device measurement happens elsewhere so the
next candidate can train while this one is measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from harness.config import SearchConfig
from harness.data import Dataset
from harness.host_gate import GateCallback, HostCpuGate
from search.builder import build_candidate, build_deploy_model
from search.candidate import CandidateSpec
from search.estimates import Estimate, estimate
from search.lowering import evaluate_tflite, lower, precision_for, write_tflite
from search.quantizers import Scheme
from search.space import SearchSpace
from search.training import TrainResult, TrainSettings, evaluate_keras, train_candidate

__all__ = ["HostOutcome", "CandidateEvaluator", "PJ_PER_MJ"]

PJ_PER_MJ = 1e9


@dataclass
class HostOutcome:
    """What the host learnt about a candidate before any device measured it."""

    spec: CandidateSpec
    estimate: Estimate
    keras_accuracy: float | None = None
    tflite_accuracy: float | None = None
    tflite_path: Path | None = None
    keras_path: Path | None = None
    tflite_bytes: int | None = None
    lowering_mode: str = ""
    float_layers: tuple[str, ...] = ()
    timings_s: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    epochs_run: int = 0


class CandidateEvaluator:
    """Builds, estimates, trains and lowers candidates of one search. Not thread-safe."""

    def __init__(
        self,
        reference: keras.Model,
        space: SearchSpace,
        dataset: Dataset,
        config: SearchConfig,
        gate: HostCpuGate | None = None,
    ) -> None:
        self.reference = reference
        self.space = space
        self.dataset = dataset
        self.config = config
        self.gate = gate or HostCpuGate()
        self.input_scheme = Scheme("fixed", config.input_bits)
        calibration = np.random.default_rng(config.seed).permutation(len(dataset.x_train))[:200]
        self.calibration_x = dataset.x_train[calibration]

    def build(self, spec: CandidateSpec) -> tuple[keras.Model, Estimate, float]:
        """The QAT model for ``spec`` and its cost estimate (no training yet)."""
        with self._stage() as elapsed, self.gate.work():
            model = build_candidate(self.reference, self.space, spec, seed=self.config.seed)
            cost = estimate(model, spec, input_scheme=self.input_scheme)
        return model, cost, elapsed()

    @contextmanager
    def _stage(self) -> Iterator[Callable[[], float]]:
        """Times a stage, less the time it waited for a local measurement to free the CPU
        (that wait is the measurement's time, not this stage's)."""
        started, waited = time.perf_counter(), self.gate.work_wait_s
        result: list[float] = []
        try:
            yield lambda: result[0]
        finally:
            result.append(time.perf_counter() - started - (self.gate.work_wait_s - waited))

    def rejection(self, cost: Estimate) -> str | None:
        """Why the candidate breaks a constraint that is known before training, if it does."""
        limits = self.config.constraints
        checks = (
            ("estimated energy", cost.energy_pj / PJ_PER_MJ, limits.max_energy_mj, "mJ"),
            ("estimated size", float(cost.model_bytes), limits.max_size_bytes, "bytes"),
            ("BOPs", float(cost.bops), limits.max_bops, ""),
        )
        for what, value, limit, unit in checks:
            if limit is not None and value > limit:
                return f"{what} {value:.4g} {unit} exceeds the limit {limit:.4g} {unit}".replace("  ", " ")
        return None

    def train_and_lower(
        self,
        spec: CandidateSpec,
        model: keras.Model,
        cost: Estimate,
        trial_dir: Path,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        train: bool = True,
        training: TrainSettings | None = None,
    ) -> HostOutcome:
        """Train ``model`` (unless ``train`` is false), lower it and check the lowering.

        ``training`` defaults to the search's proxy training (``config.training``); fine-tuning
        passes its own. Files are written under ``trial_dir`` atomically; a callback may raise
        to prune.
        """
        outcome = HostOutcome(spec=spec, estimate=cost)
        trial_dir.mkdir(parents=True, exist_ok=True)
        data = self.dataset
        gate_callback = GateCallback(self.gate)
        with self._stage() as train_s:
            self._train(model, outcome, gate_callback, callbacks, train, training or self.config.training)
        outcome.timings_s["train"] = train_s()

        with self._stage() as convert_s:
            with self.gate.work():
                deploy = build_deploy_model(model, self.reference, spec)
                precision = {name: precision_for(c.kernel, c.activation) for name, c in spec}
                lowered = lower(deploy, precision, self.calibration_x)
            outcome.lowering_mode = lowered.mode
            outcome.float_layers = tuple(lowered.float_layers)
            outcome.tflite_path = trial_dir / "model.tflite"
            write_tflite(lowered, outcome.tflite_path)
            outcome.tflite_bytes = len(lowered.tflite_bytes)
            keras_path = trial_dir / "model.keras"
            partial = trial_dir / "model.partial.keras"
            with self.gate.work():
                model.save(partial)
            os.replace(partial, keras_path)
            outcome.keras_path = keras_path
        outcome.timings_s["convert"] = convert_s()

        with self._stage() as verify_s, self.gate.work():
            outcome.tflite_accuracy = evaluate_tflite(lowered.tflite_bytes, data.x_val, data.y_val)
        outcome.timings_s["verify"] = verify_s()
        loss = (outcome.keras_accuracy or 0.0) - outcome.tflite_accuracy
        if loss > self.config.lowering_tolerance:
            outcome.flags.append(
                f"lowering_accuracy_loss:{loss:.4f}>{self.config.lowering_tolerance:g}"
            )
        return outcome

    def _train(
        self, model, outcome: HostOutcome, gate_callback: GateCallback, callbacks, train: bool, settings: TrainSettings,
    ) -> None:
        data = self.dataset
        try:
            if train:
                result: TrainResult = train_candidate(
                    model, data.x_train, data.y_train, data.x_val, data.y_val,
                    settings, callbacks=[gate_callback, *callbacks],
                    # the search's own callbacks are pruners that read each epoch's accuracy
                    validate_each_epoch=bool(callbacks),
                )
                outcome.keras_accuracy = result.val_accuracy
                outcome.epochs_run = result.epochs_run
            else:
                with self.gate.work():
                    outcome.keras_accuracy = evaluate_keras(model, data.x_val, data.y_val)
        finally:
            gate_callback.close()

