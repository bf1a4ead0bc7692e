"""Proxy training: the training fraction, and when the validation split is evaluated."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from search.training import TrainSettings, _stratified_fraction, evaluate_keras, train_candidate


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=360)
    x = rng.normal(size=(360, 6)).astype(np.float32) + y[:, None].astype(np.float32)  # learnable
    return x[:240], y[:240], x[240:], y[240:]


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3, activation="softmax")])


class _Recorder(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epoch_logs: list[dict] = []
        self.test_batches = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_logs.append(dict(logs or {}))

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.test_batches += 1


def test_validation_runs_once_after_training_by_default() -> None:
    x, y, x_val, y_val = _data()
    model, recorder = _model(), _Recorder()
    result = train_candidate(model, x, y, x_val, y_val, TrainSettings(epochs=3, data_fraction=1.0, learning_rate=0.05),
                             callbacks=[recorder])
    assert result.epochs_run == 3
    assert all("val_accuracy" not in logs for logs in recorder.epoch_logs)
    assert recorder.test_batches == 1  # one final pass over 120 images, in one large batch
    assert result.val_accuracy == pytest.approx(evaluate_keras(model, x_val, y_val), abs=1e-6)
    assert result.val_accuracy > 0.5  # it learned, so the equality above means something


def test_validate_each_epoch_gives_callbacks_each_epochs_accuracy() -> None:
    x, y, x_val, y_val = _data()
    model, recorder = _model(), _Recorder()
    result = train_candidate(model, x, y, x_val, y_val, TrainSettings(epochs=2, data_fraction=1.0, learning_rate=0.05),
                             callbacks=[recorder], validate_each_epoch=True)
    assert [("val_accuracy" in logs) for logs in recorder.epoch_logs] == [True, True]
    assert result.val_accuracy == pytest.approx(recorder.epoch_logs[-1]["val_accuracy"])
    assert result.val_accuracy == pytest.approx(evaluate_keras(model, x_val, y_val), abs=1e-6)


def test_zero_epochs_only_evaluates() -> None:
    x, y, x_val, y_val = _data()
    model = _model()
    before = [w.copy() for w in model.get_weights()]
    result = train_candidate(model, x, y, x_val, y_val, TrainSettings(epochs=0))
    assert result.epochs_run == 0 and result.history == {}
    for old, new in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert result.val_accuracy == pytest.approx(evaluate_keras(model, x_val, y_val), abs=1e-6)


def test_training_fraction_keeps_every_class_in_proportion() -> None:
    y = np.repeat([0, 1, 2], [100, 50, 10])
    index = _stratified_fraction(y, 0.2, seed=3)
    assert np.bincount(y[index]).tolist() == [20, 10, 2]
    assert len(set(index.tolist())) == len(index)
    assert np.array_equal(index, _stratified_fraction(y, 0.2, seed=3))  # seeded
    assert np.array_equal(_stratified_fraction(y, 1.0, seed=3), np.arange(len(y)))


def _final_learning_rate(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def test_cosine_schedule_decays_to_zero_over_the_whole_run_and_constant_does_not() -> None:
    x, y, x_val, y_val = _data()
    settings = TrainSettings(epochs=3, data_fraction=0.5, batch_size=16, learning_rate=0.05, lr_schedule="cosine")
    cosine = _model()
    train_candidate(cosine, x, y, x_val, y_val, settings)
    assert int(cosine.optimizer.iterations) == 3 * 8  # 120 samples in batches of 16, three times
    assert _final_learning_rate(cosine) == pytest.approx(0.0, abs=1e-7)
    constant = _model()
    train_candidate(constant, x, y, x_val, y_val, TrainSettings(epochs=3, data_fraction=0.5, learning_rate=0.05))
    assert _final_learning_rate(constant) == pytest.approx(0.05)


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainSettings(lr_schedule="step")
