"""Proxy training of a candidate with quantization-aware training.

The QKeras layers quantize in the forward pass and pass gradients straight through (the
straight-through estimator), so plain ``model.fit`` is QAT. "Proxy" means document 000's cheap
evaluation: a fraction of the training data for a few epochs, starting from inherited weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # imported where used: TrainSettings is read with the config, before TensorFlow
    import keras

__all__ = ["LR_SCHEDULES", "TrainSettings", "TrainResult", "train_candidate", "evaluate_keras", "loss_for"]

#: Validation needs no gradients, so it runs in larger batches than training: on the CPU a
#: 10,000-image validation at batch 64 took about as long as a 6,000-image training epoch.
VALIDATION_BATCH_SIZE = 512

#: ``constant`` keeps Adam's learning rate; ``cosine`` decays it to zero over the run (Keras'
#: ``CosineDecay``), which settles a longer fine-tune instead of ending it mid-step.
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 2
    data_fraction: float = 0.5
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"training epochs must be >= 0, got {self.epochs}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"training data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"training batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"training learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"training lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float
    epochs_run: int
    train_s: float
    history: dict[str, list[float]] = field(default_factory=dict)


def loss_for(model: keras.Model) -> keras.losses.Loss:
    """Sparse categorical cross-entropy, on probabilities when the model ends in softmax."""
    import keras

    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    from_logits = activation != "softmax" and type(last).__name__ not in ("Softmax",)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)


def _compile(model: keras.Model, settings: TrainSettings, steps: int) -> None:
    import keras

    rate = settings.learning_rate
    if settings.lr_schedule == "cosine" and steps > 0:
        rate = keras.optimizers.schedules.CosineDecay(settings.learning_rate, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=loss_for(model),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def _stratified_fraction(y: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    if fraction >= 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        count = max(1, round(len(members) * fraction))
        picked.append(rng.choice(members, size=count, replace=False))
    return np.sort(np.concatenate(picked))


def train_candidate(
    model: keras.Model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    settings: TrainSettings,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    *,
    validate_each_epoch: bool = False,
) -> TrainResult:
    """Fine-tune ``model`` in place on a stratified fraction of the training split.

    ``callbacks`` may stop training early (a pruner) by raising from a hook; the exception
    propagates to the caller. They also see the final validation's test batches.

    The validation split is evaluated once, after training, unless ``validate_each_epoch``:
    a pruner reading ``val_accuracy`` at each epoch's end needs it every epoch.
    """
    import keras

    keras.utils.set_random_seed(settings.seed)
    index = _stratified_fraction(y_train, settings.data_fraction, settings.seed)
    _compile(model, settings, steps=settings.epochs * math.ceil(len(index) / settings.batch_size))
    started = time.perf_counter()
    history: dict[str, list[float]] = {}
    if settings.epochs > 0:
        fit = model.fit(
            x_train[index],
            y_train[index],
            batch_size=settings.batch_size,
            epochs=settings.epochs,
            validation_data=(x_val, y_val) if validate_each_epoch else None,
            validation_batch_size=VALIDATION_BATCH_SIZE,
            callbacks=list(callbacks),
            verbose=0,
        )
        history = {k: [float(v) for v in values] for k, values in fit.history.items()}
    if "val_accuracy" in history:
        accuracy = history["val_accuracy"][-1]
    else:
        accuracy = model.evaluate(
            x_val, y_val, batch_size=VALIDATION_BATCH_SIZE, callbacks=list(callbacks),
            verbose=0, return_dict=True,
        )["accuracy"]
    train_s = time.perf_counter() - started
    return TrainResult(float(accuracy), len(history.get("loss", [])), train_s, history)


def evaluate_keras(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(predictions, axis=-1) == y))
