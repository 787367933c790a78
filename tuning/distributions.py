"""The marker vocabulary: the distributions of ``hyperas.distributions`` (and ``hp.uniformint``).

A marker such as ``<<quniform(8, 128, 4)>>`` is evaluated to a :class:`Distribution`:
its arguments are checked here, once, so that a wrong bound is reported with the
recipe line instead of surfacing as a hyperopt error in the middle of a search.

A quantised distribution whose step ``q`` is an integer yields ``int`` values
(``quniform(8, 128, 4)`` gives ``64``, not ``64.0``), so they can go straight into
``Dense(...)`` or ``batch_size=`` without the ``int()`` casts hyperas recipes need.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np
from hyperopt import hp
from hyperopt.pyll import scope

from tuning.errors import ConfigurationError


class DistributionError(ConfigurationError):
    """A marker's arguments do not fit its distribution (the template adds file and line)."""


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise DistributionError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise DistributionError(f"{name} must be finite, got {value!r}")
    return value  # type: ignore[return-value]  # an int stays an int: quniform(8, 64, 4) gives 8


def _ordered(low: Any, high: Any) -> None:
    if _real("low", low) >= _real("high", high):
        raise DistributionError(f"low must be below high, got low={low!r}, high={high!r}")


def _positive(name: str, value: Any) -> None:
    if _real(name, value) <= 0:
        raise DistributionError(f"{name} must be positive, got {value!r}")


def _integer(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise DistributionError(f"{name} must be a whole number, got {value!r}")


def _options(options: Any) -> list[Any]:
    if isinstance(options, str | bytes) or not isinstance(options, Sequence):
        raise DistributionError(f"options must be a list, got {options!r}")
    if not options:
        raise DistributionError("options must not be empty")
    return list(options)


def _multiples(first: float, last: float, q: float) -> list[float]:
    count = int(round((last - first) / q)) + 1
    return [round(first + i * q, 12) for i in range(count)]


# One checker per distribution: its Python signature is the marker's signature
# (so wrong arity or keyword names are reported in Python's own words), and it
# returns the discrete values of the distribution, or None when it is continuous
# or unbounded.
def uniform(low: float, high: float) -> None:
    _ordered(low, high)


def quniform(low: float, high: float, q: float) -> list[float]:
    _ordered(low, high)
    _positive("q", q)
    return _multiples(round(low / q) * q, round(high / q) * q, q)


def loguniform(low: float, high: float) -> None:
    _ordered(low, high)


def qloguniform(low: float, high: float, q: float) -> list[float]:
    _ordered(low, high)
    _positive("q", q)
    return _multiples(round(math.exp(low) / q) * q, round(math.exp(high) / q) * q, q)


def normal(mu: float, sigma: float) -> None:
    _real("mu", mu)
    _positive("sigma", sigma)


def qnormal(mu: float, sigma: float, q: float) -> None:
    normal(mu, sigma)
    _positive("q", q)


def lognormal(mu: float, sigma: float) -> None:
    normal(mu, sigma)


def qlognormal(mu: float, sigma: float, q: float) -> None:
    qnormal(mu, sigma, q)


def choice(options: Sequence[Any]) -> list[Any]:
    return _options(options)


def pchoice(p_options: Sequence[tuple[float, Any]]) -> list[Any]:
    pairs = _options(p_options)
    if not all(isinstance(p, Sequence) and len(p) == 2 for p in pairs):
        raise DistributionError("p_options must be a list of (probability, option) pairs")
    probabilities = [_real("probability", p) for p, _ in pairs]
    if any(p < 0 for p in probabilities) or not math.isclose(sum(probabilities), 1.0):
        raise DistributionError(f"probabilities must be ≥ 0 and sum to 1, got {probabilities}")
    return [option for _, option in pairs]


def randint(low: int, high: int | None = None) -> list[int]:
    # hyperopt's randint(upper) draws from [0, upper); randint(low, high) from [low, high).
    low, high = (0, low) if high is None else (low, high)
    _integer("low", low)
    _integer("high", high)
    _ordered(low, high)
    return list(range(int(low), int(high)))


def uniformint(low: int, high: int, q: int = 1) -> list[float]:
    _integer("low", low)
    _integer("high", high)
    return quniform(low, high, q)


_CHECKERS: dict[str, Callable[..., list[Any] | None]] = {
    f.__name__: f
    for f in (uniform, quniform, loguniform, qloguniform, normal, qnormal, lognormal,
              qlognormal, choice, pchoice, randint, uniformint)
}
NAMES: tuple[str, ...] = tuple(_CHECKERS)
QUANTISED = frozenset({"quniform", "qloguniform", "qnormal", "qlognormal"})


@dataclass(frozen=True)
class Distribution:
    """One marker's distribution with checked arguments, e.g. ``quniform(8, 128, 4)``."""

    kind: str
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def create(cls, kind: str, *args: Any, **kwargs: Any) -> Distribution:
        checker = _CHECKERS[kind]
        signature = inspect.signature(checker)
        try:
            signature.bind(*args, **kwargs)
        except TypeError as error:
            usage = ", ".join(str(p.replace(annotation=p.empty)) for p in signature.parameters.values())
            raise DistributionError(f"{error}; write {kind}({usage})") from None
        checker(*args, **kwargs)
        return cls(kind, args, tuple(sorted(kwargs.items())))

    @property
    def grid(self) -> list[Any] | None:
        """Every value the distribution can take, or None if continuous or unbounded."""
        return _CHECKERS[self.kind](*self.args, **dict(self.kwargs))

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments by name, defaults included: ``{"low": 0, "high": 1}`` for ``uniform(0, 1)``."""
        bound = inspect.signature(_CHECKERS[self.kind]).bind(*self.args, **dict(self.kwargs))
        bound.apply_defaults()
        return dict(bound.arguments)

    @property
    def is_integer(self) -> bool:
        q = self.arguments.get("q")
        if self.kind in {"randint", "uniformint"}:
            return True
        return self.kind in QUANTISED and isinstance(q, int) and not isinstance(q, bool)

    def to_hyperopt(self, label: str) -> Any:
        """The hyperopt expression for this distribution, labelled ``label``."""
        kwargs = dict(self.kwargs)
        if self.kind == "uniformint":
            low, high, *rest = self.args
            expression = hp.quniform(label, low, high, kwargs.get("q", rest[0] if rest else 1))
        else:
            expression = getattr(hp, self.kind)(label, *self.args, **kwargs)
        if self.is_integer and self.kind != "randint":  # hp.randint is an int already
            return scope.int(expression)
        return expression

    @property
    def span(self) -> str | None:
        """The values a log-scaled distribution takes, as numbers: its arguments are logs
        (``loguniform(-7, -3)`` draws from e^-7 … e^-3 ≈ 0.000912 … 0.0498)."""
        arguments = self.arguments
        if self.kind in ("loguniform", "qloguniform"):
            low, high = arguments["low"], arguments["high"]
            return f"e^{low:g} … e^{high:g} ≈ {math.exp(low):.3g} … {math.exp(high):.3g}"
        if self.kind in ("lognormal", "qlognormal"):
            mu, sigma = arguments["mu"], arguments["sigma"]
            return f"e^N({mu:g}, {sigma:g}): median ≈ {math.exp(mu):.3g}"
        return None

    def describe(self) -> str:
        parts = [repr(_plain(a)) for a in self.args] + [f"{k}={_plain(v)!r}" for k, v in self.kwargs]
        return f"{self.kind}({', '.join(parts)})"


def _plain(value: Any) -> Any:
    """numpy's numbers as Python's, so that ``loguniform(np.log(1e-5), …)`` reads
    ``loguniform(-11.512925464970229, …)``, not ``np.float64(-11.51…)``."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return type(value)(map(_plain, value))
    return value


def conditional(value: Any) -> Any:
    """hyperas 0.4.0's ``conditional``: the value itself, read in ``if
    conditional({{choice(['three', 'four'])}}) == 'four':``."""
    return value


def complete_hyperas() -> None:
    """Give ``hyperas.distributions`` the names scripts import from it that the installed
    hyperas lacks: ``conditional``, in its README's example until hyperas removed it in
    2018, and ``uniformint``, added after 0.4.1, its last release on the package index.

    Called when ``tuning.optim`` is imported and before a recipe file runs, so that a
    script's ``from hyperas.distributions import choice, conditional`` works after its
    ``from tuning import optim``. Names hyperas has are left as they are.
    """
    try:
        import hyperas.distributions as module
    except ImportError:  # a recipe without hyperas scripts needs none of this
        return
    for name, value in (("conditional", conditional), ("uniformint", hp.uniformint)):
        if not hasattr(module, name):
            setattr(module, name, value)
