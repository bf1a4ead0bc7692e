"""Datasets the harness trains and evaluates on.

:func:`load_dataset` turns a user's dataset spec into a :class:`Dataset`:

* ``digits`` — scikit-learn's 8x8 digits (ships with the wheel, works offline);
* ``fashion-mnist`` — the Fashion-MNIST IDX files from a directory (Debian's
  ``dataset-fashion-mnist`` package installs them), else ``keras.datasets``;
* ``module:function`` — a user function returning ``(x_train, y_train, x_val, y_val)``.

Every error a user can cause is an :class:`~harness.errors.InputError` naming the file, the
array or the spec that is wrong, and how to fix it. Nothing here imports Keras at module import.
"""

from __future__ import annotations

import gzip
import importlib
import math
import os
import sys
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.errors import InputError

if TYPE_CHECKING:
    import keras

__all__ = [
    "Dataset",
    "FASHION_MNIST_DIR",
    "load_dataset",
    "read_idx",
    "check_fits",
    "subset",
    "import_object",
    "call_module_function",
]

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_FASHION_NUM_CLASSES = 10
# (Dataset field, IDX base name, number of dimensions)
_FASHION_FILES = (
    ("x_train", "train-images-idx3-ubyte", 3),
    ("y_train", "train-labels-idx1-ubyte", 1),
    ("x_val", "t10k-images-idx3-ubyte", 3),
    ("y_val", "t10k-labels-idx1-ubyte", 1),
)
_IDX_UBYTE = 0x08


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A classification dataset split into training and validation parts.

    Attributes:
        name: The spec it was loaded from (``digits``, ``fashion-mnist``, ``module:function``).
        x_train: Features, shape ``(n_train, *input_shape)``, floating point.
        y_train: Integer class ids, shape ``(n_train,)``, in ``[0, num_classes)``.
        x_val: Features, shape ``(n_val, *input_shape)``.
        y_val: Integer class ids, shape ``(n_val,)``.
        num_classes: Number of classes.
        input_shape: Shape of one sample (derived from ``x_train``).

    Raises:
        InputError: The arrays do not agree (lengths, sample shapes, dtypes, label range).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise InputError(
                f"dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}"
            )
        for split in ("train", "val"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            _check_features(x, f"x_{split}", self.name)
            _check_labels(y, f"y_{split}", self.name, len(x), self.num_classes)
        if self.x_val.shape[1:] != self.x_train.shape[1:]:
            raise InputError(
                f"dataset {self.name!r}: x_val samples have shape {self.x_val.shape[1:]} but "
                f"x_train samples have shape {self.x_train.shape[1:]}; both splits need one shape"
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.x_train.shape[1:]))

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.x_train)}, val={len(self.x_val)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )


def load_dataset(
    spec: str = "digits",
    *,
    path: str | os.PathLike[str] | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Load the dataset named by ``spec``.

    Args:
        spec: ``digits``, ``fashion-mnist`` or ``module:function``.
        path: Directory of the Fashion-MNIST IDX files (``fashion-mnist`` only). Default:
            :data:`FASHION_MNIST_DIR`, falling back to ``keras.datasets`` when it is absent.
        validation_fraction: Share of ``digits`` held out for validation (stratified).
            Fashion-MNIST uses its official 10,000-image ``t10k`` split; a user function
            returns its own split.
        seed: Seed of the ``digits`` split.

    Raises:
        InputError: Unknown spec, unreadable files, or data that does not make a valid dataset.
    """
    name = spec.strip().lower()
    if path is not None and name not in ("fashion-mnist", "fashion_mnist"):
        raise InputError(f"a dataset path applies only to fashion-mnist, not to {spec!r}; drop it")
    if name == "digits":
        return _load_digits(validation_fraction, seed)
    if name in ("fashion-mnist", "fashion_mnist"):
        return _load_fashion_mnist(None if path is None else Path(path))
    if ":" in spec:
        return _load_from_function(spec.strip())
    raise InputError(f"unknown dataset {spec!r}; use digits, fashion-mnist or module:function")


def _load_digits(validation_fraction: float, seed: int) -> Dataset:
    if not 0.0 < validation_fraction < 1.0:
        raise InputError(f"validation_fraction must be between 0 and 1, got {validation_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[..., np.newaxis]
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=validation_fraction, stratify=y, random_state=seed
    )
    return Dataset("digits", x_train, y_train, x_val, y_val, num_classes=10)


# --- Fashion-MNIST ---------------------------------------------------------------------------


def read_idx(path: Path, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file of unsigned bytes (gzip-compressed when its name ends in ``.gz``).

    Args:
        path: The file.
        ndim: Expected number of dimensions (3 for images, 1 for labels); ``None`` accepts any.

    Returns:
        A read-only ``uint8`` array of the shape in the file's header.

    Raises:
        InputError: The file cannot be read, is truncated, or its header is not a ubyte IDX
            header of ``ndim`` dimensions that matches its size.
    """
    fix = "re-download it or reinstall the dataset-fashion-mnist package"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise InputError(f"cannot read IDX file {path}: {_one_line(e)}; {fix}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _IDX_UBYTE:
        magic = data[:4].hex() or "empty"
        raise InputError(
            f"{path} is not an IDX file of unsigned bytes (magic number {magic}, expected "
            f"000008xx); {fix}"
        )
    file_ndim = data[3]
    if ndim is not None and file_ndim != ndim:
        raise InputError(
            f"{path} has {file_ndim} dimensions in its header, expected {ndim} "
            f"(magic 0x{int.from_bytes(data[:4], 'big'):08x}, expected 0x{0x800 + ndim:08x}); {fix}"
        )
    header = 4 + 4 * file_ndim
    if len(data) < header:
        raise InputError(f"{path} is truncated inside its header; {fix}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(file_ndim))
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise InputError(
            f"{path} holds {len(data) - header} data bytes but its header says shape {dims} "
            f"({expected} bytes): the file is truncated or corrupt; {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(directory: Path, base: str) -> Path:
    for name in (f"{base}.gz", base):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise InputError(
        f"{directory} has no {base}.gz or {base}; pass the directory that holds the four "
        f"Fashion-MNIST IDX files"
    )


def _load_fashion_mnist(path: Path | None) -> Dataset:
    directory = FASHION_MNIST_DIR if path is None else path
    if not directory.is_dir():
        if path is None:
            return _fashion_mnist_from_keras(directory)
        raise InputError(
            f"Fashion-MNIST directory {directory} does not exist; pass the directory holding "
            f"train-images-idx3-ubyte.gz and the other IDX files"
        )
    files = {key: _find_idx(directory, base) for key, base, _ in _FASHION_FILES}
    raw = {key: read_idx(files[key], ndim) for key, _, ndim in _FASHION_FILES}
    for split in ("train", "val"):
        n_x, n_y = len(raw[f"x_{split}"]), len(raw[f"y_{split}"])
        if n_x != n_y:
            raise InputError(
                f"{files[f'x_{split}']} holds {n_x} images but {files[f'y_{split}']} holds "
                f"{n_y} labels; the files do not belong together"
            )
    return _fashion_dataset(raw["x_train"], raw["y_train"], raw["x_val"], raw["y_val"])


def _fashion_mnist_from_keras(missing: Path) -> Dataset:
    try:
        from keras.datasets import fashion_mnist

        (x_train, y_train), (x_val, y_val) = fashion_mnist.load_data()
    except Exception as e:  # any download/cache failure means the same to the user
        raise InputError(
            f"Fashion-MNIST is not installed at {missing} and keras could not download it "
            f"({type(e).__name__}: {_one_line(e)}); install it with "
            f"`apt-get install dataset-fashion-mnist` or pass the path of the IDX files"
        ) from e
    return _fashion_dataset(x_train, y_train, x_val, y_val)


def _fashion_dataset(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> Dataset:
    def images(x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float32) / 255.0)[..., np.newaxis]

    return Dataset(
        "fashion-mnist",
        images(x_train),
        np.asarray(y_train, dtype=np.int64),
        images(x_val),
        np.asarray(y_val, dtype=np.int64),
        num_classes=_FASHION_NUM_CLASSES,
    )


# --- module:function -------------------------------------------------------------------------


def import_object(spec: str, *, what: str) -> object:
    """Import the object named by ``module:attr`` (``attr`` may be dotted).

    The current directory is put on ``sys.path`` first, so ``mydata:load`` finds
    ``./mydata.py``.

    Args:
        spec: ``module:attr``.
        what: What the spec is for, used in messages (``"dataset"``, ``"reference model"``).

    Raises:
        InputError: Malformed spec, the module does not import, or it lacks the attribute.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"{what} {spec!r} is not of the form module:function")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(
            f"cannot import module {module_name!r} of {what} {spec!r}: {_one_line(e)}; run from "
            f"the directory that holds it or add it to PYTHONPATH"
        ) from e
    except Exception as e:  # user code may raise anything at import
        raise InputError(
            f"importing module {module_name!r} of {what} {spec!r} raised "
            f"{type(e).__name__}: {_one_line(e)}"
        ) from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise InputError(
                f"module {module_name!r} has no attribute {attr!r} ({what} {spec!r})"
            ) from e
    return obj


def call_module_function(spec: str, *, what: str) -> object:
    """Import ``module:function`` (see :func:`import_object`) and call it with no arguments.

    Raises:
        InputError: The import fails, the object is not callable, or the call raises.
    """
    function = import_object(spec, what=what)
    if not callable(function):
        raise InputError(f"{what} {spec!r} names a {type(function).__name__}, not a function")
    try:
        return function()
    except Exception as e:  # user code may raise anything
        raise InputError(
            f"{what} function {spec!r} raised {type(e).__name__}: {_one_line(e)}"
        ) from e


def _load_from_function(spec: str) -> Dataset:
    result = call_module_function(spec, what="dataset")
    arrays = _unpack_result(result, spec)
    xs = {n: _as_features(arrays[n], n, spec) for n in ("x_train", "x_val")}
    labels = {n: _as_labels(arrays[n], n, spec) for n in ("y_train", "y_val")}
    num_classes = max(max(width, int(y.max(initial=-1)) + 1) for y, width in labels.values())
    return Dataset(
        spec,
        xs["x_train"],
        labels["y_train"][0],
        xs["x_val"],
        labels["y_val"][0],
        num_classes=max(num_classes, 1),
    )


def _unpack_result(result: object, spec: str) -> dict[str, object]:
    names = ("x_train", "y_train", "x_val", "y_val")
    usage = "it must return (x_train, y_train, x_val, y_val)"
    if not isinstance(result, (tuple, list)):
        raise InputError(f"dataset function {spec!r} returned a {type(result).__name__}; {usage}")
    items = list(result)
    # Also accept keras' load_data() form: ((x_train, y_train), (x_val, y_val)).
    if len(items) == 2 and all(isinstance(p, (tuple, list)) and len(p) == 2 for p in items):
        items = [*items[0], *items[1]]
    if len(items) != 4:
        raise InputError(f"dataset function {spec!r} returned {len(items)} items; {usage}")
    return dict(zip(names, items, strict=True))


def _as_features(value: object, name: str, spec: str) -> np.ndarray:
    x = np.asarray(value)
    if x.dtype.kind != "f":
        raise InputError(
            f"{name} from {spec!r} has dtype {x.dtype}; return float features scaled for the "
            f"model (e.g. x.astype('float32') / 255)"
        )
    return x.astype(np.float32, copy=False)


def _as_labels(value: object, name: str, spec: str) -> tuple[np.ndarray, int]:
    """Integer class ids and the one-hot width (0 when the labels were not one-hot)."""
    y = np.asarray(value)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        numeric = y.dtype.kind in "biuf"
        if not (numeric and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all()):
            raise InputError(
                f"{name} from {spec!r} has shape {y.shape} but its rows are not one-hot; return "
                f"integer class ids of shape (n,) or one-hot rows"
            )
        return y.argmax(axis=1).astype(np.int64), int(y.shape[1])
    if y.ndim != 1:
        raise InputError(
            f"{name} from {spec!r} has shape {y.shape}; return class ids of shape (n,)"
        )
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise InputError(
            f"{name} from {spec!r} has dtype {y.dtype}; return integer class ids (0, 1, 2, ...)"
        )
    return y.astype(np.int64, copy=False), 0


def _check_features(x: object, name: str, dataset: str) -> None:
    if not isinstance(x, np.ndarray) or x.dtype.kind != "f":
        kind = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise InputError(f"dataset {dataset!r}: {name} must be a float numpy array, got {kind}")
    if x.ndim < 2 or len(x) == 0:
        raise InputError(
            f"dataset {dataset!r}: {name} has shape {x.shape}; it needs a non-empty samples axis "
            f"and at least one feature axis"
        )
    if not np.isfinite(x).all():
        raise InputError(f"dataset {dataset!r}: {name} holds NaN or infinite values; clean them")


def _check_labels(y: object, name: str, dataset: str, n: int, num_classes: int) -> None:
    if not isinstance(y, np.ndarray) or y.dtype.kind not in "iu" or y.ndim != 1:
        kind = f"{y.dtype} of shape {y.shape}" if isinstance(y, np.ndarray) else type(y).__name__
        raise InputError(
            f"dataset {dataset!r}: {name} must be integer class ids of shape (n,), got {kind}"
        )
    if len(y) != n:
        raise InputError(
            f"dataset {dataset!r}: {name} has {len(y)} labels for {n} samples; they must match"
        )
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise InputError(
            f"dataset {dataset!r}: {name} holds labels {low}..{high}, outside 0..{num_classes - 1}"
        )


# --- helpers for the search ------------------------------------------------------------------


def check_fits(dataset: Dataset, model: keras.Model) -> None:
    """Check that ``dataset`` can be fed to ``model`` and its labels scored by it.

    Raises:
        InputError: The model does not have one defined input and one output, the sample shape
            does not fit the model's input, or there are more classes than output units.
    """
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError) as e:
        raise InputError(
            f"model {model.name!r} has no defined input; build it with keras.Input(shape=...)"
        ) from e
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(
            f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs; the "
            f"harness needs a classifier with one input and one output"
        )
    model_shape = tuple(inputs[0].shape)[1:]
    fits = len(model_shape) == len(dataset.input_shape) and all(
        m is None or m == d for m, d in zip(model_shape, dataset.input_shape, strict=True)
    )
    if not fits:
        raise InputError(
            f"data shape {dataset.input_shape} does not fit model input {model_shape} "
            f"(dataset {dataset.name!r}, model {model.name!r}); use a dataset whose samples have "
            f"the model's input shape or a reference model built for the data"
        )
    units = outputs[0].shape[-1]
    if units is not None and dataset.num_classes > units:
        raise InputError(
            f"dataset {dataset.name!r} has {dataset.num_classes} classes but model "
            f"{model.name!r} has {units} output units; use a reference with one output per class"
        )


def subset(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """A stratified ``fraction`` of the training split, for cheap proxy training.

    Each class keeps ``round(fraction * count)`` samples, at least one. The validation split
    is kept whole so proxy and full runs are scored on the same data.

    Raises:
        InputError: ``fraction`` is not in ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"subset fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return dataset
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(dataset.y_train):
        members = np.flatnonzero(dataset.y_train == label)
        count = min(len(members), max(1, round(fraction * len(members))))
        keep.append(rng.choice(members, size=count, replace=False))
    index = rng.permutation(np.concatenate(keep))
    return replace(dataset, x_train=dataset.x_train[index], y_train=dataset.y_train[index])


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
