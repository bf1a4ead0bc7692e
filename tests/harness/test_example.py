"""Tests of harness.example: the built-in architectures, training and the cache."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from harness.errors import InputError
from harness.example import (
    CACHE_ENV,
    build_doc000,
    build_small_resnet,
    default_cache_dir,
    train_example,
)
from tests.harness.fixtures_models import trained_example  # noqa: F401 - fixture


def _shapes(model: keras.Model) -> dict[str, tuple[int | None, ...]]:
    return {layer.name: tuple(layer.output.shape) for layer in model.layers}


def test_doc000_layers_and_shapes_for_28x28() -> None:
    model = build_doc000((28, 28, 1), 10)
    shapes = _shapes(model)
    assert [n for n in shapes if n not in ("input", "flatten") and "pool" not in n] == [
        "conv1", "conv2", "conv3", "dense",
    ]
    assert shapes["conv1"] == (None, 28, 28, 16)
    assert shapes["conv2"] == (None, 14, 14, 32)
    assert shapes["conv3"] == (None, 7, 7, 64)
    assert shapes["dense"] == (None, 10)
    assert model.get_layer("dense").activation is keras.activations.softmax
    assert all(model.get_layer(n).kernel_size == (3, 3) for n in ("conv1", "conv2", "conv3"))


def test_doc000_works_on_8x8_digits() -> None:
    model = build_doc000((8, 8, 1), 10)
    assert _shapes(model)["conv3"] == (None, 2, 2, 64)
    probs = model.predict(np.zeros((2, 8, 8, 1), np.float32), verbose=0)
    assert probs.shape == (2, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("builder", [build_doc000, build_small_resnet])
def test_builders_reject_non_image_shapes(builder: object) -> None:
    with pytest.raises(InputError, match=r"needs image samples .*\(64,\)"):
        builder((64,), 10)  # type: ignore[operator]
    with pytest.raises(InputError, match="at least 2 classes"):
        builder((8, 8, 1), 1)  # type: ignore[operator]


def test_small_resnet_has_residual_branches() -> None:
    model = build_small_resnet((8, 8, 1), 10)
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert [layer.name for layer in adds] == ["block1_add", "block2_add"]
    # block1's skip is the stem itself; block2's skip goes through the 1x1 projection.
    block1_inputs = {t._keras_history.operation.name for t in adds[0].input}
    block2_inputs = {t._keras_history.operation.name for t in adds[1].input}
    assert block1_inputs == {"block1_conv2", "stem"}
    assert block2_inputs == {"block2_conv2", "block2_proj"}
    assert model.get_layer("block2_proj").kernel_size == (1, 1)
    assert _shapes(model)["block2_add"] == (None, 4, 4, 32)
    assert _shapes(build_small_resnet((28, 28, 1), 10))["dense"] == (None, 10)
    assert model.predict(np.zeros((1, 8, 8, 1), np.float32), verbose=0).shape == (1, 10)


def test_default_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "energy-harness"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "energy-harness"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_example_reaches_90_percent_on_digits(trained_example: Path) -> None:  # noqa: F811
    assert trained_example.is_file() and trained_example.name.startswith("doc000-digits-")
    record = json.loads(trained_example.with_suffix(".json").read_text())
    assert record["val_accuracy"] >= 0.9
    assert record["architecture"] == "doc000" and record["dataset"] == "digits"
    # The saved file holds the trained weights: it scores the same on the validation split.
    from harness.data import load_dataset

    ds = load_dataset("digits")
    model = keras.saving.load_model(trained_example)
    accuracy = np.mean(model.predict(ds.x_val, verbose=0).argmax(axis=1) == ds.y_val)
    assert accuracy == pytest.approx(record["val_accuracy"], abs=1e-6)


def test_second_call_uses_the_cache(
    trained_example: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    before = trained_example.stat().st_mtime_ns

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("train_example trained although the model was cached")

    monkeypatch.setattr(keras.Model, "fit", no_training)
    again = train_example("digits", cache_dir=trained_example.parent)
    assert again == trained_example
    assert again.stat().st_mtime_ns == before


def test_cache_dir_comes_from_the_environment(
    trained_example: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(trained_example.parent))
    monkeypatch.setattr(keras.Model, "fit", None)  # any training would fail
    assert train_example("digits") == trained_example


def _fake_fit(calls: list[int]) -> object:
    def fit(self: keras.Model, *args: object, **kwargs: object) -> None:
        calls.append(int(kwargs["epochs"]))  # type: ignore[call-overload]

    return fit


def test_settings_change_the_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(keras.Model, "fit", _fake_fit(calls))
    one = train_example("digits", epochs=1, cache_dir=tmp_path)
    two = train_example("digits", epochs=2, cache_dir=tmp_path)
    lr = train_example("digits", epochs=1, cache_dir=tmp_path, learning_rate=1e-3)
    res = train_example("digits", epochs=1, cache_dir=tmp_path, architecture="resnet")
    assert len({one, two, lr, res}) == 4 and res.name.startswith("resnet-digits-")
    assert train_example("digits", epochs=2, cache_dir=tmp_path) == two
    assert calls == [1, 2, 1, 1]


def test_failed_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keras.Model, "fit", _fake_fit([]))

    def killed_mid_write(self: keras.Model, filepath: str, *args: object, **kwargs: object) -> None:
        Path(filepath).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train_example("digits", epochs=1, cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.keras")) and not list(tmp_path.glob(".*"))


def test_training_is_deterministic(tmp_path: Path) -> None:
    a = train_example("digits", epochs=1, cache_dir=tmp_path / "a")
    b = train_example("digits", epochs=1, cache_dir=tmp_path / "b")
    assert a.name == b.name
    weights_a = keras.saving.load_model(a).get_weights()
    weights_b = keras.saving.load_model(b).get_weights()
    for wa, wb in zip(weights_a, weights_b, strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown example 'vgg'; choose one of doc000, resnet"):
        train_example("digits", architecture="vgg", cache_dir=tmp_path)
    with pytest.raises(InputError, match="epochs must be >= 1, got 0"):
        train_example("digits", epochs=0, cache_dir=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=f"cannot create the example cache directory.*{CACHE_ENV}"):
        train_example("digits", epochs=1, cache_dir=blocker / "sub")
