"""How a trial's Keras model is described to MLflow: its signature and its pip requirements."""

from __future__ import annotations

import importlib.metadata
from functools import cache
from typing import Any

import numpy as np


def signature(model: Any, x_sample: Any | None) -> Any:
    """The model's signature from a few inputs and its declared output shape; several
    inputs or outputs by their names."""
    from mlflow.models import infer_signature

    if x_sample is None:
        return None
    x_sample = _arrays(x_sample)
    shape = getattr(model, "output_shape", None)
    if isinstance(shape, tuple) and all(isinstance(d, int | None) for d in shape):
        outputs = np.zeros((_rows(x_sample), *shape[1:]), dtype="float32")
    else:  # several outputs, or not built
        try:
            outputs = model.predict(x_sample, verbose=0)
        except Exception:  # noqa: BLE001 - a model we cannot sample is logged without one
            return None
    inputs = _by_name(x_sample, [getattr(t, "name", None) for t in getattr(model, "inputs", None) or ()])
    try:
        found = infer_signature(inputs, _by_name(outputs, getattr(model, "output_names", None) or ()))
    except Exception:  # noqa: BLE001 - same
        return None
    # The Keras flavor refuses a signature of columns (strings, mixed lists): none, then.
    return found if found.inputs.is_tensor_spec() and found.outputs.is_tensor_spec() else None


def _arrays(x: Any) -> Any:
    """pandas' DataFrames and Series (what ``data()`` of a tabular recipe returns, and Keras
    takes) as the arrays Keras sees: MLflow would describe them by column, which the Keras
    flavor refuses."""
    if isinstance(x, dict):
        return {k: _arrays(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_arrays(v) for v in x]
    to_numpy = getattr(x, "to_numpy", None)  # pandas' (and polars') frames and series
    return to_numpy() if callable(to_numpy) else x


def _rows(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, list | tuple) else x
    return len(first)


def _by_name(values: Any, names: list[str | None] | tuple[str, ...]) -> Any:
    """A list of arrays as a dict by the model's input or output names (MLflow's signature
    takes one array or a dict of them)."""
    if isinstance(values, list | tuple) and len(values) == len(names) and all(names):
        return dict(zip(names, values, strict=True))
    return values


@cache
def keras_requirements() -> list[str]:
    """Pinned pip requirements for the installed Keras and its backend."""
    import keras

    backend = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax",),
               "torch": ("torch",)}.get(keras.backend.backend(), ())
    requirements = [f"keras=={keras.__version__}"]
    for dist in backend:
        try:
            requirements.append(f"{dist}=={importlib.metadata.version(dist)}")
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    return requirements
