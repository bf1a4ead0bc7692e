"""The reference model: the trained float network the search quantizes and shrinks.

:func:`load_reference` accepts

* a path to a ``.keras`` file (``model.save("model.keras")``; legacy ``.h5`` also loads);
* ``module:function`` — a function, called with no arguments, that returns a trained
  ``keras.Model`` (the current directory is importable);
* ``example`` or ``example:<name>`` — a built-in example (:data:`harness.example.EXAMPLES`,
  ``doc000`` by default), trained on first use and cached.

The model comes back with its trained weights and is not compiled: callers compile it (or its
candidates) with their own loss and metrics. Errors are :class:`~harness.errors.InputError`
naming the file or spec and the fix.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras
import numpy as np

from harness.data import call_module_function
from harness.errors import InputError
from harness.example import EXAMPLES, train_example

__all__ = ["load_reference", "describe"]

_MODEL_SUFFIXES = (".keras", ".h5")
_USAGE = "pass a .keras file saved with model.save('model.keras'), module:function or example"


def load_reference(
    spec: str,
    *,
    example_dataset: str = "digits",
    example_data_path: str | os.PathLike[str] | None = None,
    example_seed: int = 0,
) -> keras.Model:
    """Load the reference model named by ``spec``.

    Args:
        spec: A ``.keras`` path, ``module:function``, ``example`` or ``example:<name>``.
        example_dataset: Dataset spec the built-in example is trained on (examples only; it
            should be the dataset the search uses, so the shapes fit).
        example_data_path: ``path`` for :func:`~harness.data.load_dataset` when the example
            is trained (examples only).
        example_seed: Seed of the example's training and ``digits`` split (examples only);
            pass the search's seed so the example never trains on the search's validation split.

    Raises:
        InputError: The file is missing, corrupt or not a Keras archive; the function does not
            import, raises or returns something other than a ``keras.Model``; the example name
            is unknown; or the model has no defined input and output.
    """
    text = spec.strip()
    if not text:
        raise InputError(f"the reference model spec is empty; {_USAGE}")
    kind, _, name = text.partition(":")
    if kind == "example":
        name = name or "doc000"
        if name not in EXAMPLES:
            raise InputError(
                f"unknown example {name!r} in reference {spec!r}; use one of "
                + ", ".join(f"example:{n}" for n in sorted(EXAMPLES))
            )
        trained = train_example(
            example_dataset, architecture=name, data_path=example_data_path, seed=example_seed
        )
        return _load_file(trained)
    path = Path(text).expanduser()
    if path.suffix in _MODEL_SUFFIXES or path.exists() or ":" not in text:
        return _load_file(path)
    model = call_module_function(text, what="reference model")
    if not isinstance(model, keras.Model):
        raise InputError(
            f"reference model function {text!r} returned a {type(model).__name__}, not a "
            f"keras.Model; return the trained model"
        )
    _require_io(model, text)
    return model


def describe(model: keras.Model) -> str:
    """One line: name, layer count (input layers excluded), parameters, input and output."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    params = sum(int(np.prod(w.shape)) for w in model.weights)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    try:
        shapes = f", input {_shape(model.inputs)} -> output {_shape(model.outputs)}"
    except AttributeError:
        shapes = ""
    return (
        f"{model.name}: {len(layers)} layers, {params:,} params "
        f"({trainable:,} trainable){shapes}"
    )


def _load_file(path: Path) -> keras.Model:
    if not path.exists():
        raise InputError(f"reference model file {path} does not exist; {_USAGE}")
    if path.is_dir():
        raise InputError(
            f"reference model {path} is a directory (a SavedModel?); Keras 3 loads .keras files: "
            f"re-save the model with model.save('model.keras')"
        )
    if path.suffix not in _MODEL_SUFFIXES:
        raise InputError(f"reference model file {path} is not a .keras file; {_USAGE}")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise InputError(
            f"reference model file {path} is not a Keras archive (a .keras file is a zip): it "
            f"is truncated or in another format; re-save it with model.save('model.keras')"
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad archive
        message = " ".join(str(e).split())
        raise InputError(
            f"cannot load reference model file {path}: {type(e).__name__}: {message}; re-save "
            f"it with model.save('model.keras'), or load models with custom layers through "
            f"module:function"
        ) from e
    if not isinstance(model, keras.Model):
        raise InputError(f"reference model file {path} holds a {type(model).__name__}, not a model")
    _require_io(model, str(path))
    return model


def _require_io(model: keras.Model, source: str) -> None:
    try:
        inputs, outputs = model.inputs, model.outputs
    except AttributeError as e:
        raise InputError(
            f"reference model {model.name!r} from {source} has no defined input shape; build it "
            f"with keras.Input(shape=...) (functional or Sequential API)"
        ) from e
    if not inputs or not outputs:
        raise InputError(f"reference model {model.name!r} from {source} has no inputs or outputs")


def _shape(tensors: list[keras.KerasTensor]) -> str:
    shapes = [tuple(t.shape)[1:] for t in tensors]
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)
