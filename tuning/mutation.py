"""What population based training may change on a member, and how a value moves.

Mutable are the markers that set the optimizer's learning rate, a layer's dropout
``rate`` or an L1/L2 factor of a kernel, bias or activity regularizer. Matching values
alone cannot find them (``l1=1e-4`` and ``l2=1e-4`` look alike, so do a dropout of 0 and
a penalty of 0), so the model is built a second time with a distinct probe value in each
candidate marker: a marker is mutable when a setting holds its value in the first model
and its probe in the second. Integer and text markers and learning rate schedules stay
fixed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, TypeGuard

from tuning.quiet import tensorflow_start_up

with tensorflow_start_up():
    import keras
import numpy as np

from tuning.distributions import Distribution

MUTABLE = "the optimizer's learning rate, a layer's dropout rate or an L1/L2 regularizer factor"
FACTORS = (0.8, 1.2)  # pbt-keras' perturbation factors
_PROBE = 0.0123  # valid as a learning rate, a dropout rate and a penalty factor alike
_SCALED = frozenset({"uniform", "loguniform", "normal", "lognormal"})  # continuous: multiplied
_REGULARIZERS = ("kernel_regularizer", "bias_regularizer", "activity_regularizer")


def mutable(model: Any, values: dict[str, Any], distributions: dict[str, Distribution],
            build: Callable[[dict[str, Any]], Any]) -> tuple[str, ...]:
    """The markers that set a learning rate, dropout rate or penalty factor of ``model``.

    ``model`` was built from ``values``; ``build(values)`` builds another one the same way.
    """
    candidates = [name for name, d in distributions.items() if _fractional(d) and is_real(values[name])]
    if not candidates:
        return ()
    probes = {name: _PROBE * (1 + i / 64) for i, name in enumerate(candidates)}
    try:
        probed = build({**values, **probes})
    except Exception:  # noqa: BLE001 - a recipe that refuses the probe values keeps its markers fixed
        return ()
    now, then = _settings(model), _settings(probed)
    return tuple(name for name in candidates
                 if any(_same(value, values[name]) and _same(then.get(where), probes[name])
                        for where, value in now.items()))


def perturb(value: float, distribution: Distribution, factor: float) -> float:
    """``value`` moved by ``factor`` (0.8 or 1.2) within what its marker allows.

    Continuous markers are multiplied and clipped to their bounds (``e**low`` to
    ``e**high`` for loguniform). Discrete ones (choice, quniform …) take the option
    nearest the product, but at least the neighbouring option in that direction; at
    either end of the options they stay.
    """
    options = distribution.grid
    if options is None:
        low, high = _bounds(distribution)
        return min(max(value * factor, low), high)
    ordered = sorted(options)
    here, there = _nearest(ordered, value), _nearest(ordered, value * factor)
    there = max(there, here + 1) if factor > 1 else min(there, here - 1)
    return ordered[min(max(there, 0), len(ordered) - 1)]


def explore(values: dict[str, Any], names: tuple[str, ...], distributions: dict[str, Distribution],
            rng: np.random.Generator) -> dict[str, Any]:
    """``values`` with each of ``names`` perturbed by a factor drawn from :data:`FACTORS`."""
    return {**values, **{name: perturb(values[name], distributions[name], FACTORS[rng.integers(2)])
                         for name in names}}


def _settings(model: Any) -> dict[str, float]:
    """The model's learning rate, dropout rates and penalty factors, keyed by where they are."""
    found: dict[str, float] = {}
    rate = model.optimizer.learning_rate if model.optimizer is not None else None
    if isinstance(rate, keras.Variable):  # a schedule's rate is computed, not set
        found["optimizer.learning_rate"] = float(rate.numpy())
    for where, layer in _layers(model, "model"):
        if is_real(getattr(layer, "rate", None)):
            found[f"{where}.rate"] = layer.rate
        for kind in _REGULARIZERS:
            for factor in ("l1", "l2"):
                value = getattr(getattr(layer, kind, None), factor, None)
                if is_real(value):
                    found[f"{where}.{kind}.{factor}"] = value
    return found


def _layers(model: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every layer, nested models' included, by its position (names differ between builds)."""
    for i, layer in enumerate(getattr(model, "layers", ())):
        yield f"{where}.layers[{i}]", layer
        yield from _layers(layer, f"{where}.layers[{i}]")


def _fractional(distribution: Distribution) -> bool:
    """Whether a marker can take fractional values, as rates and penalty factors do."""
    if distribution.is_integer:
        return False
    options = distribution.grid
    if options is None:
        return distribution.kind in _SCALED
    return all(is_real(o) for o in options) and any(o != int(o) for o in options)


def is_real(value: Any) -> TypeGuard[float]:
    """A number that can be a rate or a factor (``True`` is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)  # float32 variables


def _bounds(distribution: Distribution) -> tuple[float, float]:
    arguments = distribution.arguments
    if distribution.kind == "uniform":
        return arguments["low"], arguments["high"]
    if distribution.kind == "loguniform":
        return math.exp(arguments["low"]), math.exp(arguments["high"])
    return -math.inf, math.inf


def _nearest(ordered: list[float], value: float) -> int:
    return min(range(len(ordered)), key=lambda i: abs(ordered[i] - value))
