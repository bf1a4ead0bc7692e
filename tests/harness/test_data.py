"""Tests of harness.data: the three dataset forms, IDX parsing, check_fits and subset."""

from __future__ import annotations

import gzip
from pathlib import Path

import keras
import numpy as np
import pytest

import harness.data as data_module
from harness.data import Dataset, check_fits, load_dataset, read_idx, subset
from harness.errors import HarnessError, InputError
from tests.harness.fixtures_models import (  # noqa: F401 - fixture
    isolated_sys_path,
    tiny_model,
    write_fashion_dir,
    write_idx,
    write_module,
)

# --- digits ----------------------------------------------------------------------------------


def test_digits_split_sizes_range_and_stratification() -> None:
    ds = load_dataset("digits", validation_fraction=0.2, seed=0)
    assert ds.name == "digits" and ds.num_classes == 10
    assert ds.input_shape == (8, 8, 1)
    assert len(ds.x_train) + len(ds.x_val) == 1797
    assert len(ds.x_val) == 360  # ceil(0.2 * 1797)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype.kind == "i"
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert ds.x_val.min() >= 0.0 and ds.x_val.max() <= 1.0
    # Stratified: each class's share of the validation split matches its share overall.
    all_labels = np.concatenate([ds.y_train, ds.y_val])
    for label in range(10):
        expected = 0.2 * np.sum(all_labels == label)
        assert abs(np.sum(ds.y_val == label) - expected) <= 1.0


def test_digits_split_follows_seed_and_fraction() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=0)
    c = load_dataset("digits", seed=1)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.y_val, c.y_val)
    assert len(load_dataset("digits", validation_fraction=0.5).x_val) == 899


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_digits_rejects_bad_validation_fraction(fraction: float) -> None:
    with pytest.raises(InputError, match="validation_fraction"):
        load_dataset("digits", validation_fraction=fraction)


def test_unknown_spec_and_stray_path_are_input_errors() -> None:
    with pytest.raises(InputError, match="unknown dataset 'cifar'.*fashion-mnist"):
        load_dataset("cifar")
    with pytest.raises(InputError, match="only to fashion-mnist"):
        load_dataset("digits", path="/tmp")
    assert issubclass(InputError, HarnessError)


def test_dataset_repr_is_short() -> None:
    text = repr(load_dataset("digits"))
    assert text == "Dataset('digits', train=1437, val=360, input_shape=(8, 8, 1), num_classes=10)"


# --- fashion-mnist from IDX files ------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_fashion_mnist_reads_idx_files(tmp_path: Path, gz: bool) -> None:
    arrays = write_fashion_dir(tmp_path, n_train=30, n_val=10, gz=gz)
    ds = load_dataset("fashion-mnist", path=tmp_path)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.input_shape == (28, 28, 1)
    assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_val.shape == (10, 28, 28, 1)
    assert ds.x_train.dtype == np.float32
    np.testing.assert_allclose(
        ds.x_train[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.y_val, arrays["t10k-labels-idx1-ubyte"])


def test_fashion_mnist_pixel_scale_is_0_to_1(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, gz=False)
    images = np.zeros((2, 28, 28), np.uint8)
    images[1] = 255
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 9], np.uint8))
    ds = load_dataset("fashion-mnist", path=tmp_path)
    assert ds.x_val[0].max() == 0.0 and ds.x_val[1].min() == 1.0


def test_read_idx_truncated_gz_names_the_file(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, gz=True)
    victim = tmp_path / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte\.gz"):
        load_dataset("fashion-mnist", path=tmp_path)


def test_read_idx_not_gzip_at_all(tmp_path: Path) -> None:
    bad = tmp_path / "x.gz"
    bad.write_bytes(b"this is not gzip data")
    with pytest.raises(InputError, match=r"cannot read IDX file .*x\.gz"):
        read_idx(bad)


def test_read_idx_truncated_payload(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "imgs", np.zeros((5, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"imgs holds 3820 data bytes .*\(5, 28, 28\).*truncated"):
        read_idx(path, 3)


def test_read_idx_trailing_bytes_are_corrupt(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "labels", np.arange(4, dtype=np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(InputError, match="truncated or corrupt"):
        read_idx(path, 1)


def test_read_idx_bad_magic_and_wrong_rank(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(InputError, match=r"not an IDX file .*12340801"):
        read_idx(bad)
    floats = tmp_path / "floats"
    floats.write_bytes(b"\x00\x00\x0d\x01" + (1).to_bytes(4, "big") + b"\x00" * 4)
    with pytest.raises(InputError, match="unsigned bytes"):
        read_idx(floats)
    labels = write_idx(tmp_path / "labels", np.arange(3, dtype=np.uint8))
    with pytest.raises(InputError, match=r"1 dimensions .*expected 3 .*0x00000803"):
        read_idx(labels, 3)
    header_only = tmp_path / "short"
    header_only.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(InputError, match="truncated inside its header"):
        read_idx(header_only)


def test_read_idx_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="magic number empty"):
        read_idx(empty)


def test_fashion_mnist_image_label_count_mismatch(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, n_train=30, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29, np.uint8))
    with pytest.raises(InputError, match="30 images but .*29 labels"):
        load_dataset("fashion-mnist", path=tmp_path)


def test_fashion_mnist_label_out_of_range(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, n_val=10, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.full(10, 12, np.uint8))
    with pytest.raises(InputError, match=r"y_val holds labels 12\.\.12, outside 0\.\.9"):
        load_dataset("fashion-mnist", path=tmp_path)


def test_fashion_mnist_missing_file_and_missing_dir(tmp_path: Path) -> None:
    write_fashion_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(InputError, match=r"no t10k-labels-idx1-ubyte\.gz or t10k-labels"):
        load_dataset("fashion-mnist", path=tmp_path)
    with pytest.raises(InputError, match="nowhere does not exist"):
        load_dataset("fashion-mnist", path=tmp_path / "nowhere")


def test_fashion_mnist_falls_back_to_keras_then_explains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from keras.datasets import fashion_mnist

    monkeypatch.setattr(data_module, "FASHION_MNIST_DIR", tmp_path / "absent")

    def offline() -> None:
        raise Exception("URL fetch failure on https://example.invalid: [Errno -3]\nTemporary")

    monkeypatch.setattr(fashion_mnist, "load_data", offline)
    with pytest.raises(InputError) as info:
        load_dataset("fashion-mnist")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "path" in message
    assert str(tmp_path / "absent") in message and "\n" not in message

    def downloaded() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        x = np.full((4, 28, 28), 255, np.uint8)
        y = np.array([0, 1, 2, 3], np.uint8)
        return (x, y), (x[:2], y[:2])

    monkeypatch.setattr(fashion_mnist, "load_data", downloaded)
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (4, 28, 28, 1) and ds.x_train.max() == 1.0 and len(ds.y_val) == 2


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_fashion_mnist_reads_the_real_debian_files() -> None:
    ds = load_dataset("fashion-mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_val.shape == (10000, 28, 28, 1)
    assert np.array_equal(np.bincount(ds.y_train), np.full(10, 6000))
    assert np.array_equal(np.bincount(ds.y_val), np.full(10, 1000))
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


# --- module:function -------------------------------------------------------------------------

_GOOD = """
import numpy as np
def load():
    rng = np.random.default_rng(0)
    return (rng.random((20, 4, 4, 1), dtype=np.float32), np.arange(20) % 3,
            rng.random((6, 4, 4, 1)), np.arange(6) % 3)
def keras_style():
    x, y = np.zeros((5, 3)), np.array([0, 1, 0, 1, 1])
    return (x, y), (x[:2], y[:2])
def one_hot():
    eye = np.eye(5)
    return np.zeros((10, 2)), eye[np.arange(10) % 2], np.zeros((3, 2)), eye[[0, 1, 1]]
def column_and_float_labels():
    return (np.zeros((4, 2)), np.array([[0], [1], [2], [1]]),
            np.zeros((2, 2)), np.array([1.0, 2.0]))
NOT_CALLABLE = 3
"""


def test_module_function_good(isolated_sys_path: Path) -> None:  # noqa: F811 - pytest fixture
    name = write_module(isolated_sys_path, _GOOD)
    ds = load_dataset(f"{name}:load")
    assert ds.name == f"{name}:load" and ds.num_classes == 3
    assert ds.input_shape == (4, 4, 1)
    assert ds.x_train.dtype == np.float32 and ds.x_val.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and len(ds.y_val) == 6


def test_module_function_adds_cwd_to_sys_path(isolated_sys_path: Path) -> None:  # noqa: F811 - pytest fixture
    import sys

    name = write_module(isolated_sys_path, _GOOD)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", str(isolated_sys_path))]
    assert load_dataset(f"{name}:load").num_classes == 3
    assert str(isolated_sys_path) in sys.path


def test_module_function_keras_style_and_label_forms(isolated_sys_path: Path) -> None:  # noqa: F811 - pytest fixture
    name = write_module(isolated_sys_path, _GOOD)
    ks = load_dataset(f"{name}:keras_style")
    assert len(ks.x_train) == 5 and len(ks.x_val) == 2 and ks.num_classes == 2
    oh = load_dataset(f"{name}:one_hot")
    assert oh.num_classes == 5  # the one-hot width, though only classes 0 and 1 occur
    np.testing.assert_array_equal(oh.y_train, np.arange(10) % 2)
    np.testing.assert_array_equal(oh.y_val, [0, 1, 1])
    col = load_dataset(f"{name}:column_and_float_labels")
    np.testing.assert_array_equal(col.y_train, [0, 1, 2, 1])
    np.testing.assert_array_equal(col.y_val, [1, 2])
    assert col.num_classes == 3


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("return np.zeros((4, 2)), np.zeros(4, int)", "returned 2 items; it must return"),
        ("return {'x': 1}", "returned a dict"),
        (
            "return np.zeros((4, 2)), np.zeros(3, int), np.zeros((2, 2)), np.zeros(2, int)",
            "y_train has 3 labels for 4 samples",
        ),
        (
            "return np.zeros((4, 2)), np.zeros(4, int), np.zeros((2, 3)), np.zeros(2, int)",
            r"x_val samples have shape \(3,\) but x_train samples have shape \(2,\)",
        ),
        (
            "return np.zeros((4, 2), 'u1'), np.zeros(4, int), np.zeros((2, 2)), np.zeros(2, int)",
            r"x_train .* has dtype uint8; return float features",
        ),
        (
            "return np.zeros(4), np.zeros(4, int), np.zeros(2), np.zeros(2, int)",
            "x_train has shape .*feature axis",
        ),
        (
            "return np.zeros((4, 2)), np.full((4, 3), 0.5), np.zeros((2, 2)), np.zeros(2, int)",
            "rows are not one-hot",
        ),
        (
            "return np.zeros((4, 2)), np.array([0, -1, 0, 1]), np.zeros((2, 2)), np.zeros(2, int)",
            r"y_train holds labels -1\.\.1",
        ),
        (
            "return np.zeros((4, 2)), np.array([0, .5, 0, 1]), np.zeros((2, 2)), np.zeros(2, int)",
            "dtype float64; return integer class ids",
        ),
        (
            "return np.full((4, 2), np.nan), np.zeros(4, int), np.zeros((2, 2)), np.zeros(2, int)",
            "NaN",
        ),
        ("raise RuntimeError('disk on fire')", "raised RuntimeError: disk on fire"),
    ],
)
def test_module_function_bad_results(isolated_sys_path: Path, body: str, match: str) -> None:  # noqa: F811 - pytest fixture
    name = write_module(isolated_sys_path, f"import numpy as np\ndef load():\n    {body}\n")
    with pytest.raises(InputError, match=match):
        load_dataset(f"{name}:load")


def test_module_function_import_problems(isolated_sys_path: Path) -> None:  # noqa: F811 - pytest fixture
    name = write_module(isolated_sys_path, _GOOD)
    with pytest.raises(InputError, match="cannot import module 'no_such_module_xyz'"):
        load_dataset("no_such_module_xyz:load")
    with pytest.raises(InputError, match=f"module '{name}' has no attribute 'missing'"):
        load_dataset(f"{name}:missing")
    with pytest.raises(InputError, match="names a int, not a function"):
        load_dataset(f"{name}:NOT_CALLABLE")
    with pytest.raises(InputError, match="not of the form module:function"):
        load_dataset(f"{name}:")
    broken = write_module(isolated_sys_path, "raise ValueError('bad config')\n")
    with pytest.raises(InputError, match="raised ValueError: bad config"):
        load_dataset(f"{broken}:load")


# --- check_fits and subset -------------------------------------------------------------------


def _toy(n: int = 40, shape: tuple[int, ...] = (8, 8, 1), classes: int = 10) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.random((n, *shape), dtype=np.float32)
    y = np.arange(n) % classes
    return Dataset("toy", x, y, x[:10], y[:10], num_classes=classes)


def test_check_fits_accepts_matching_model() -> None:
    check_fits(_toy(), tiny_model((8, 8, 1), 10))
    check_fits(_toy(classes=3), tiny_model((8, 8, 1), 10))  # fewer classes than units is fine


def test_check_fits_shape_mismatch_message() -> None:
    with pytest.raises(InputError, match=r"data shape \(8, 8, 1\) does not fit model input "
                       r"\(28, 28, 1\)"):
        check_fits(_toy(), tiny_model((28, 28, 1), 10))
    with pytest.raises(InputError, match=r"data shape \(64,\) does not fit"):
        check_fits(_toy(shape=(64,)), tiny_model((8, 8, 1), 10))


def test_check_fits_allows_unknown_model_dims() -> None:
    inputs = keras.Input(shape=(None, None, 1))
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(inputs))
    check_fits(_toy(), keras.Model(inputs, outputs, name="any_size"))


def test_check_fits_too_many_classes() -> None:
    with pytest.raises(InputError, match="has 10 classes but model 'tiny' has 4 output units"):
        check_fits(_toy(), tiny_model((8, 8, 1), 4))


def test_check_fits_unbuilt_and_multi_io_models() -> None:
    with pytest.raises(InputError, match="no defined input"):
        check_fits(_toy(), keras.Sequential([keras.layers.Dense(10)], name="unbuilt"))
    a, b = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    two = keras.Model([a, b], keras.layers.Flatten()(keras.layers.Add()([a, b])))
    with pytest.raises(InputError, match="2 inputs and 1 outputs"):
        check_fits(_toy(), two)


def test_subset_is_stratified_and_seeded() -> None:
    ds = load_dataset("digits")
    part = subset(ds, 0.25, seed=3)
    assert part.x_val is ds.x_val and part.name == ds.name
    counts, part_counts = np.bincount(ds.y_train), np.bincount(part.y_train, minlength=10)
    np.testing.assert_array_equal(part_counts, np.round(0.25 * counts).astype(int))
    # The images travel with their labels: each kept pair is a pair of the full split.
    full = {(x.tobytes(), int(y)) for x, y in zip(ds.x_train, ds.y_train, strict=True)}
    kept = zip(part.x_train, part.y_train, strict=True)
    assert all((x.tobytes(), int(y)) in full for x, y in kept)
    again, other = subset(ds, 0.25, seed=3), subset(ds, 0.25, seed=4)
    np.testing.assert_array_equal(again.y_train, part.y_train)
    assert not np.array_equal(other.x_train, part.x_train)
    assert subset(ds, 1.0) is ds


def test_subset_keeps_every_class_and_checks_fraction() -> None:
    tiny = subset(_toy(n=40), 0.01)
    assert sorted(set(tiny.y_train.tolist())) == list(range(10))
    for bad in (0.0, -1.0, 1.01):
        with pytest.raises(InputError, match="subset fraction"):
            subset(_toy(), bad)


def test_gzip_helper_writes_a_real_idx_header(tmp_path: Path) -> None:
    # Guard against the fixture and the parser agreeing on a wrong format.
    path = write_idx(tmp_path / "l.gz", np.arange(3, dtype=np.uint8))
    with gzip.open(path, "rb") as f:
        assert f.read() == bytes.fromhex("00000801 00000003 000102".replace(" ", ""))
