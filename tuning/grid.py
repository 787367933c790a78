"""Grid search as a hyperopt ``suggest`` function: every combination, or a random share.

Every marker must be discrete (``choice``, ``quniform``, ``randint`` …). The combinations
are numbered in ``itertools.product`` order over the markers in recipe order; with
``fraction`` below 1 a seeded random sample of them is drawn without repeats (Talos'
``fraction_limit``). Trial *n* always gets point *n - 1* of that order, so a resumed grid
study continues exactly where it stopped, and when the points run out the suggestion list
is empty, which ends hyperopt's ``fmin``.

Example::

    import tuning
    study = tuning.minimize("recipes/diabetes_regression.py", algo="grid", fraction=0.01, seed=1)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hyperopt.fmin import generate_trial

from tuning.distributions import Distribution
from tuning.errors import ConfigurationError, TemplateError
from tuning.template import Template

_INDEXED = frozenset({"choice", "pchoice"})  # hyperopt stores these as the option's index


class Grid:
    """The points of a discrete search space, in the order trials take them."""

    def __init__(self, template: Template, distributions: dict[str, Distribution],
                 fraction: float = 1.0, seed: int = 0):
        if not 0 < fraction <= 1:
            raise ConfigurationError(f"fraction must be in (0, 1], got {fraction}")
        self._names = list(distributions)
        self._kinds = [distributions[n].kind for n in self._names]
        self._values = [_values(template, name, d) for name, d in distributions.items()]
        self.size = math.prod(map(len, self._values))
        self.proposed = 0  # points handed out; a trial number may differ (reruns take numbers too)
        if fraction == 1:
            self._order: Any = range(self.size)
        else:
            count = max(1, round(self.size * fraction))
            self._order = np.random.default_rng(seed).choice(self.size, count, replace=False)

    def __len__(self) -> int:
        return len(self._order)

    def __call__(self, new_ids: list[int], domain: Any, trials: Any, seed: int) -> list[dict[str, Any]]:
        """hyperopt's suggest protocol: trial docs for ``new_ids``, the next points in order
        (``proposed`` so far: a resumed study sets it); none once the grid is done."""
        docs = []
        for tid in new_ids:
            if self.proposed < len(self):
                docs.append(generate_trial(tid, self._raw(self.proposed)))
                self.proposed += 1
        return docs

    def _raw(self, index: int) -> dict[str, Any]:
        """hyperopt's own encoding of a point: indices for choices, values otherwise."""
        return {name: (i if kind in _INDEXED else values[i])
                for name, kind, values, i in zip(self._names, self._kinds, self._values,
                                                 self._digits(index), strict=True)}

    def _digits(self, index: int) -> list[int]:
        """Combination number → one option index per marker (the last marker varies fastest)."""
        number = int(self._order[index])
        digits = []
        for values in reversed(self._values):
            number, digit = divmod(number, len(values))
            digits.append(digit)
        return digits[::-1]


def grid_size(distributions: dict[str, Distribution]) -> int | None:
    """How many combinations the space has, or None when a parameter is continuous."""
    values = [d.grid for d in distributions.values()]
    return None if None in values else math.prod(len(v) for v in values if v is not None)


def _values(template: Template, name: str, distribution: Distribution) -> list[Any]:
    values = distribution.grid
    if values is None:
        line = next(m.line for m in template.markers if m.name == name)
        raise TemplateError(f"--algo grid needs discrete markers, but {name!r} is "
                            f"{distribution.describe()}, which is continuous or unbounded: write it "
                            "as quniform(low, high, step), choice([...]) or randint(low, high)",
                            template.filename, line)
    return values
