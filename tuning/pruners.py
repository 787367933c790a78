"""Pruning: stop a hopeless trial between epochs, judged against the study's earlier trials.

After every epoch a trial's *learning curve* gets one more point: its objective measured
on that epoch's logs (``val_<objective>`` when the recipe validates, else the objective as
trained), as a loss, lower is better. A :class:`Pruner` compares that curve with the
curves of earlier trials and says whether to stop. The rules are Optuna's:

- :class:`MedianPruner`: once ``startup_trials`` trials have finished, a trial whose best
  value so far is worse than the median of the finished trials at the same epoch stops.
- :class:`HyperbandPruner`: successive halving over epochs in several brackets. In a
  bracket, at epochs ``min_epochs * reduction**k`` only the best ``1/reduction`` of the
  trials that got there go on.

A pruned trial's run ends KILLED with the tags ``tuning.pruned`` and
``tuning.pruned_epoch``; hyperopt is told its last value, so TPE still learns from it.
The curves of earlier trials are read back from the tracking server on ``--resume``.

Example::

    import tuning
    study = tuning.minimize("recipes/mnist_cnn.py", max_evals=30, prune="hyperband")
"""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tuning.errors import ConfigurationError

__all__ = [  # the rest is this package's own
    "Pruner", "MedianPruner", "HyperbandPruner", "PastTrial", "Curve",
]

Curve = tuple[float, ...]  # one loss per epoch, lower is better


@dataclass(frozen=True)
class PastTrial:
    """An earlier trial's learning curve, and whether it ran to the end (or was pruned)."""

    curve: Curve
    complete: bool


class Pruner:
    """Decides, after each epoch, whether a trial goes on."""

    def should_prune(self, number: int, curve: Curve, planned_epochs: int,
                     past: Mapping[int, PastTrial]) -> bool:
        """``curve`` holds trial ``number``'s losses so far; ``past`` the earlier trials'."""
        raise NotImplementedError


@dataclass(frozen=True)
class MedianPruner(Pruner):
    """Optuna's ``MedianPruner``: worse than the median of finished trials at this epoch."""

    startup_trials: int = 5
    warmup_epochs: int = 0

    def should_prune(self, number: int, curve: Curve, planned_epochs: int,
                     past: Mapping[int, PastTrial]) -> bool:
        epoch = len(curve) - 1
        finished = [p.curve for p in past.values() if p.complete]
        if len(finished) < self.startup_trials or epoch < self.warmup_epochs:
            return False
        at_epoch = [c[epoch] for c in finished if len(c) > epoch]
        return bool(at_epoch) and min(curve) > statistics.median(at_epoch)


@dataclass(frozen=True)
class HyperbandPruner(Pruner):
    """Optuna's ``HyperbandPruner``: brackets of successive halving over epochs.

    The longest a trial trains is the ``epochs`` of its ``fit``. Bracket *s* first judges
    at epoch ``min_epochs * reduction**s``; the last bracket never prunes. As in Optuna,
    brackets that prune early get more trials (in proportion to Hyperband's budget for
    them), dealt by a hash of the trial number.
    """

    min_epochs: int = 1
    reduction: int = 3

    def should_prune(self, number: int, curve: Curve, planned_epochs: int,
                     past: Mapping[int, PastTrial]) -> bool:
        bracket = self.bracket(number, planned_epochs)
        epochs = len(curve)
        if epochs not in self.rungs(bracket, planned_epochs):
            return False
        # Every trial of this bracket that reached this rung competes, pruned or not.
        rivals = [p.curve[epochs - 1] for n, p in past.items()
                  if self.bracket(n, planned_epochs) == bracket and len(p.curve) >= epochs]
        competing = sorted([*rivals, curve[-1]])
        # The best len/reduction go on; while fewer trials than ``reduction`` got here,
        # only a new best does (Optuna's rule, since a paused trial cannot be resumed).
        keep = max(len(competing) // self.reduction, 1)
        return curve[-1] > competing[keep - 1]

    def brackets(self, planned_epochs: int) -> int:
        ratio = max(planned_epochs, self.min_epochs) / self.min_epochs
        return int(math.log(ratio, self.reduction) + 1e-9) + 1

    def bracket(self, number: int, planned_epochs: int) -> int:
        """Trial ``number``'s bracket: Optuna's budget weights, a hash for the draw."""
        count = self.brackets(planned_epochs)
        weights = [math.ceil(count * self.reduction ** (count - 1 - s) / (count - s)) for s in range(count)]
        bounds = list(itertools.accumulate(weights))
        return bisect.bisect_right(bounds, zlib.crc32(number.to_bytes(8, "little")) % bounds[-1])

    def rungs(self, bracket: int, planned_epochs: int) -> list[int]:
        rungs, epochs = [], self.min_epochs * self.reduction ** bracket
        while epochs < planned_epochs:
            rungs.append(epochs)
            epochs *= self.reduction
        return rungs


PRUNERS: dict[str, type[Pruner]] = {"median": MedianPruner, "hyperband": HyperbandPruner}


def create(pruner: str | Pruner | None) -> Pruner | None:
    """A pruner from its CLI name (``median``, ``hyperband``, ``none``) or as given."""
    if pruner is None or isinstance(pruner, Pruner):
        return pruner
    if pruner == "none":
        return None
    if pruner not in PRUNERS:
        raise ConfigurationError(f"unknown pruner {pruner!r}: choose one of {', '.join(PRUNERS)} or none")
    return PRUNERS[pruner]()


@dataclass
class Pruning:
    """A study's pruner and the learning curves of its trials so far.

    Plain data, so a worker process gets a copy with each trial it runs.
    """

    pruner: Pruner
    past: dict[int, PastTrial] = field(default_factory=dict)

    def should_prune(self, number: int, curve: Curve, planned_epochs: int) -> bool:
        return self.pruner.should_prune(number, curve, planned_epochs, self.past)

    def record(self, number: int, curve: Curve, complete: bool) -> None:
        if curve:
            self.past[number] = PastTrial(curve, complete)

    def load(self, trials: Iterable[tuple[int, Curve, bool]]) -> None:
        """The curves of earlier trials: (number, curve, complete) each."""
        for number, curve, complete in trials:
            self.record(number, curve, complete)
