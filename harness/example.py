"""Built-in example reference models, trained on demand and cached.

``doc000`` is the document-000 reference: three 3x3 ReLU convolutions (16, 32, 64 filters,
max-pooled after the first two) and a softmax dense layer. ``resnet`` is a small functional
network with two residual blocks, for exercising search spaces with branches.

:func:`train_example` trains one on a dataset and caches the ``.keras`` file under
:func:`default_cache_dir`, keyed by the dataset and a hash of the architecture and training
settings; later calls return the cached file without training. Files are written atomically
(temp file + :func:`os.replace`), so a killed run never leaves a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras

from harness.data import Dataset, load_dataset
from harness.errors import InputError

__all__ = [
    "CACHE_ENV",
    "EXAMPLES",
    "DEFAULT_EPOCHS",
    "TrainSettings",
    "build_doc000",
    "build_small_resnet",
    "default_cache_dir",
    "train_example",
]

_log = logging.getLogger(__name__)

#: Environment variable that overrides the cache directory.
CACHE_ENV = "ENERGY_HARNESS_CACHE"
#: Bump when the cached file's meaning changes, so old files are not reused.
_CACHE_FORMAT = 1
#: Epochs used when :func:`train_example` is not given any.
DEFAULT_EPOCHS = {"digits": 8, "fashion-mnist": 3}
_FALLBACK_EPOCHS = 5


def _image_shape(input_shape: Sequence[int], example: str) -> tuple[int, int, int]:
    shape = tuple(int(d) for d in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InputError(
            f"the {example} example needs image samples (height, width, channels), got shape "
            f"{shape}; use an image dataset or your own reference model"
        )
    return shape  # type: ignore[return-value]


def _check_classes(num_classes: int, example: str) -> None:
    if num_classes < 2:
        raise InputError(f"the {example} example needs at least 2 classes, got {num_classes}")


def build_doc000(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """The document-000 reference (untrained): conv1 16 -> conv2 32 -> conv3 64 -> dense.

    Convolutions are 3x3, ``same`` padding, ReLU; 2x2 max pooling (``same`` padding) follows
    conv1 and conv2, so 28x28 inputs reach conv3 at 7x7 and 8x8 digits at 2x2.

    Raises:
        InputError: ``input_shape`` is not ``(height, width, channels)`` or fewer than 2 classes.
    """
    shape = _image_shape(input_shape, "doc000")
    _check_classes(num_classes, "doc000")
    layers = keras.layers
    inputs = keras.Input(shape=shape, name="input")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(2, padding="same", name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, padding="same", name="pool2")(x)
    x = layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="dense")(x)
    return keras.Model(inputs, outputs, name="doc000")


def build_small_resnet(input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """A small functional ResNet (untrained), for search spaces with branches.

    ``stem`` (3x3, 16) -> block1 (``block1_conv1``, ``block1_conv2``, identity skip,
    ``block1_add``) -> block2 (``block2_conv1`` stride 2, ``block2_conv2``, 1x1 stride-2
    projection ``block2_proj`` on the skip, ``block2_add``) -> ``gap`` -> ``dense`` softmax.

    Raises:
        InputError: ``input_shape`` is not ``(height, width, channels)`` or fewer than 2 classes.
    """
    shape = _image_shape(input_shape, "resnet")
    _check_classes(num_classes, "resnet")
    layers = keras.layers
    inputs = keras.Input(shape=shape, name="input")
    stem = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)

    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="block1_conv1")(stem)
    x = layers.Conv2D(16, 3, padding="same", name="block1_conv2")(x)
    x = layers.Add(name="block1_add")([x, stem])
    block1 = layers.ReLU(name="block1_relu")(x)

    x = layers.Conv2D(
        32, 3, strides=2, padding="same", activation="relu", name="block2_conv1"
    )(block1)
    x = layers.Conv2D(32, 3, padding="same", name="block2_conv2")(x)
    skip = layers.Conv2D(32, 1, strides=2, padding="same", name="block2_proj")(block1)
    x = layers.Add(name="block2_add")([x, skip])
    x = layers.ReLU(name="block2_relu")(x)

    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="dense")(x)
    return keras.Model(inputs, outputs, name="small_resnet")


#: The built-in examples by name, as accepted by ``example:<name>``.
EXAMPLES: dict[str, Callable[[Sequence[int], int], keras.Model]] = {
    "doc000": build_doc000,
    "resnet": build_small_resnet,
}


@dataclass(frozen=True)
class TrainSettings:
    """How an example is trained; all of it goes into the cache key.

    Attributes:
        epochs: Passes over the training split.
        batch_size: Samples per step.
        learning_rate: Adam's learning rate.
        seed: Seed of the weights, the shuffling and the ``digits`` split.
    """

    epochs: int
    batch_size: int = 64
    learning_rate: float = 5e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise InputError(f"example epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise InputError(f"example batch_size must be >= 1, got {self.batch_size}")
        if not self.learning_rate > 0:
            raise InputError(f"example learning_rate must be > 0, got {self.learning_rate}")


def default_cache_dir() -> Path:
    """``$ENERGY_HARNESS_CACHE``, else ``$XDG_CACHE_HOME/energy-harness``, else
    ``~/.cache/energy-harness``."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "energy-harness"


def train_example(
    dataset_name: str = "digits",
    epochs: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    architecture: str = "doc000",
    batch_size: int = 64,
    learning_rate: float = 5e-3,
    seed: int = 0,
    data_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Train an example on a dataset, or return the cached result of an earlier run.

    Training seeds Python, NumPy and TensorFlow with ``seed`` (``keras.utils.set_random_seed``),
    so a run that trains resets the process's global random state; a cache hit does not.

    Args:
        dataset_name: Any spec :func:`~harness.data.load_dataset` accepts.
        epochs: Defaults to :data:`DEFAULT_EPOCHS` for the dataset (5 for others).
        cache_dir: Defaults to :func:`default_cache_dir`.
        architecture: A key of :data:`EXAMPLES`.
        batch_size: Samples per training step.
        learning_rate: Adam's learning rate.
        seed: Seed of the weights, the shuffling and the ``digits`` split.
        data_path: Passed to :func:`~harness.data.load_dataset` as ``path``.

    Returns:
        The cached ``.keras`` file (trained weights, compiled). A ``.json`` file next to it
        records the settings, validation accuracy and training time.

    Raises:
        InputError: Unknown architecture, bad settings, a dataset that does not load or fit,
            or a cache directory that cannot be written.
    """
    if architecture not in EXAMPLES:
        raise InputError(
            f"unknown example {architecture!r}; choose one of {', '.join(sorted(EXAMPLES))}"
        )
    dataset = load_dataset(dataset_name, path=data_path, seed=seed)
    if epochs is None:
        epochs = DEFAULT_EPOCHS.get(dataset.name, _FALLBACK_EPOCHS)
    settings = TrainSettings(epochs, batch_size, learning_rate, seed)

    build = EXAMPLES[architecture]
    shape, classes = dataset.input_shape, dataset.num_classes
    key = _cache_key(architecture, dataset, settings, build(shape, classes))
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = directory / f"{architecture}-{_slug(dataset.name)}-{key[:16]}.keras"
    if target.is_file():
        _log.debug("example %s on %s: using cached %s", architecture, dataset.name, target)
        return target

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"cannot create the example cache directory {directory}: {e}; set {CACHE_ENV} to a "
            f"writable directory"
        ) from e
    _log.info(
        "training example %s on %s (%d epochs); cached at %s",
        architecture, dataset.name, settings.epochs, target,
    )
    keras.utils.set_random_seed(seed)
    model = build(shape, classes)
    val_accuracy, train_s = _fit(model, dataset, settings)
    _log.info("example %s: val accuracy %.4f after %.1f s", architecture, val_accuracy, train_s)
    record = {
        "architecture": architecture,
        "dataset": dataset.name,
        "settings": asdict(settings),
        "params": int(model.count_params()),
        "val_accuracy": val_accuracy,
        "train_s": round(train_s, 3),
        "keras_version": keras.__version__,
        "key": key,
    }
    # The sidecar first: a .keras file in the cache always has its record.
    _write_atomically(target.with_suffix(".json"), lambda p: p.write_text(json.dumps(record)))
    _write_atomically(target, lambda p: model.save(p))
    return target


def _fit(model: keras.Model, dataset: Dataset, settings: TrainSettings) -> tuple[float, float]:
    """Train in place; return (validation accuracy, training time in s)."""
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        dataset.x_train,
        dataset.y_train,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        shuffle=True,
        verbose=0,
    )
    train_s = time.perf_counter() - start
    _, accuracy = model.evaluate(dataset.x_val, dataset.y_val, batch_size=256, verbose=0)
    return float(accuracy), train_s


def _cache_key(
    architecture: str, dataset: Dataset, settings: TrainSettings, model: keras.Model
) -> str:
    description = {
        "format": _CACHE_FORMAT,
        "architecture": architecture,
        "model": json.loads(model.to_json()),  # layer names, configs and shapes
        "keras": keras.__version__,
        "dataset": dataset.name,
        "data": [len(dataset.x_train), len(dataset.x_val), dataset.num_classes],
        "settings": asdict(settings),
    }
    text = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "data"


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Write through ``write(temp)`` into a temp file beside ``target``, then rename.

    ``write`` creates the temp file itself, so it gets the umask's permissions (not
    ``mkstemp``'s 0600) and a shared cache stays readable.
    """
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temp = target.with_name(f".{target.stem}.{token}.tmp{target.suffix}")
    try:
        write(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
