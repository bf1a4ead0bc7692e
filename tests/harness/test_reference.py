"""Tests of harness.reference: loading .keras files, module:function and the example."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from harness.errors import InputError
from harness.example import CACHE_ENV
from harness.reference import describe, load_reference
from tests.harness.fixtures_models import (  # noqa: F401 - fixtures
    isolated_sys_path,
    tiny_model,
    trained_example,
    write_module,
)


@pytest.fixture
def saved_model(tmp_path: Path) -> tuple[Path, keras.Model]:
    model = tiny_model()
    path = tmp_path / "ref.keras"
    model.save(path)
    return path, model


def _assert_same(a: keras.Model, b: keras.Model, shape: tuple[int, ...] = (8, 8, 1)) -> None:
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), rtol=1e-6)


def test_loads_a_keras_file_with_its_weights(saved_model: tuple[Path, keras.Model]) -> None:
    path, original = saved_model
    loaded = load_reference(str(path))
    assert loaded.name == "tiny"
    assert [layer.name for layer in loaded.layers] == ["input", "conv", "flatten", "dense"]
    _assert_same(loaded, original)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"reference model file .*nope\.keras does not exist"):
        load_reference(str(tmp_path / "nope.keras"))
    with pytest.raises(InputError, match="does not exist"):
        load_reference("just_a_name")


def test_garbage_file_is_not_a_keras_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"definitely not a zip")
    with pytest.raises(InputError, match=r"bad\.keras is not a Keras archive"):
        load_reference(str(bad))


def test_truncated_keras_file(saved_model: tuple[Path, keras.Model]) -> None:
    path, _ = saved_model
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match=r"ref\.keras is not a Keras archive.*truncated"):
        load_reference(str(path))


def test_zip_that_is_not_a_keras_model(tmp_path: Path) -> None:
    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not a model")
    with pytest.raises(InputError, match=r"cannot load reference model file .*other\.keras"):
        load_reference(str(path))


def test_corrupt_weights_inside_a_keras_archive(saved_model: tuple[Path, keras.Model]) -> None:
    path, _ = saved_model
    with zipfile.ZipFile(path) as z:
        entries = {name: z.read(name) for name in z.namelist()}
    weights = next(name for name in entries if name.endswith(".h5"))
    entries[weights] = entries[weights][:200]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    with pytest.raises(InputError, match=r"cannot load reference model file .*ref\.keras"):
        load_reference(str(path))


def test_wrong_kind_of_path(tmp_path: Path) -> None:
    text = tmp_path / "model.txt"
    text.write_text("hi")
    with pytest.raises(InputError, match=r"model\.txt is not a \.keras file"):
        load_reference(str(text))
    with pytest.raises(InputError, match="is a directory"):
        load_reference(str(tmp_path))
    with pytest.raises(InputError, match="spec is empty"):
        load_reference("  ")


_MODULE = """
import keras
import numpy as np

def build():
    inputs = keras.Input(shape=(8, 8, 1))
    outputs = keras.layers.Dense(10, name="out")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs, name="from_module")
    kernel, bias = np.full((64, 10), 0.25, "float32"), np.arange(10, dtype="float32")
    model.get_layer("out").set_weights([kernel, bias])
    return model

def not_a_model():
    return "model.keras"

class Sub(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.d = keras.layers.Dense(3)
    def call(self, x):
        return self.d(x)

def subclassed():
    return Sub()
"""


def test_module_function_returns_the_trained_model(isolated_sys_path: Path) -> None:  # noqa: F811 - pytest fixture
    name = write_module(isolated_sys_path, _MODULE)
    model = load_reference(f"{name}:build")
    assert model.name == "from_module"
    kernel, bias = model.get_layer("out").get_weights()
    assert np.all(kernel == 0.25)
    np.testing.assert_array_equal(bias, np.arange(10))


def test_module_function_bad_returns(isolated_sys_path: Path) -> None:  # noqa: F811 - pytest fixture
    name = write_module(isolated_sys_path, _MODULE)
    with pytest.raises(InputError, match="returned a str, not a keras.Model"):
        load_reference(f"{name}:not_a_model")
    with pytest.raises(InputError, match="'sub' .*has no defined input shape"):
        load_reference(f"{name}:subclassed")
    with pytest.raises(InputError, match="has no attribute 'nothing'"):
        load_reference(f"{name}:nothing")
    with pytest.raises(InputError, match="cannot import module 'missing_mod_abc'"):
        load_reference("missing_mod_abc:build")


def test_unknown_example() -> None:
    with pytest.raises(InputError, match="unknown example 'vgg'.*example:doc000, example:resnet"):
        load_reference("example:vgg")


@pytest.mark.parametrize("spec", ["example", "example:doc000"])
def test_example_loads_the_cached_trained_model(
    spec: str, trained_example: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(trained_example.parent))
    monkeypatch.setattr(keras.Model, "fit", None)  # a cache miss would try to train and fail
    model = load_reference(spec)
    assert model.name == "doc000"
    assert [layer.name for layer in model.layers if layer.weights] == [
        "conv1", "conv2", "conv3", "dense",
    ]
    _assert_same(model, keras.saving.load_model(trained_example))


def test_describe_is_one_line(saved_model: tuple[Path, keras.Model]) -> None:
    _, model = saved_model
    # conv: 3*3*1*4 + 4 = 40; dense: 256*10 + 10 = 2570
    assert describe(model) == (
        "tiny: 3 layers, 2,610 params (2,610 trainable), input (8, 8, 1) -> output (10,)"
    )
    seq = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="seq")
    assert describe(seq) == "seq: 1 layers, 10 params (10 trainable), input (4,) -> output (2,)"
