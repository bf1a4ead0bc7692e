"""Helpers for the harness tests: tiny models, IDX files, user modules, a trained example.

Import the fixtures into a test module to use them::

    from tests.harness.fixtures_models import trained_example  # noqa: F401
"""

from __future__ import annotations

import gzip
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import pytest

from harness.example import train_example

__all__ = [
    "tiny_model",
    "write_idx",
    "write_fashion_dir",
    "write_module",
    "isolated_sys_path",
    "trained_example",
]


def tiny_model(
    input_shape: Sequence[int] = (8, 8, 1), num_classes: int = 10, name: str = "tiny"
) -> keras.Model:
    """A small functional classifier with seeded, non-trivial weights (no training)."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="dense")(x)
    return keras.Model(inputs, outputs, name=name)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file with the real header; gzip when ``path`` ends .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


def write_fashion_dir(
    directory: Path, *, n_train: int = 30, n_val: int = 10, gz: bool = True, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write the four Fashion-MNIST IDX files of random 28x28 images; return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_val, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_val, dtype=np.uint8)[::-1] % 10,
    }
    directory.mkdir(parents=True, exist_ok=True)
    for base, array in arrays.items():
        write_idx(directory / (f"{base}.gz" if gz else base), array)
    return arrays


def write_module(directory: Path, source: str) -> str:
    """Write ``source`` as a uniquely named module in ``directory``; return the module name."""
    name = f"user_{uuid.uuid4().hex[:12]}"
    (directory / f"{name}.py").write_text(source)
    return name


@pytest.fixture
def isolated_sys_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Run in ``tmp_path`` with ``sys.path`` restored afterwards; yields ``tmp_path``."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def trained_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The doc000 example trained on digits with default settings, in a session cache dir.

    Each test module that imports this fixture gets its own copy; the fixed directory makes
    every copy after the first a cache hit, so the session trains once.
    """
    cache = tmp_path_factory.getbasetemp() / "shared-example-cache"
    return train_example("digits", cache_dir=cache)
