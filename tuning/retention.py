"""Which trials keep their model: all of them, the N best, or none.

A study of thousands of trials with a model logged for each fills a disk (390 KB per
digits conv net: 4 GB per 10,000 trials). With ``keep_models="best:N"`` only the N best
trials so far keep their model; when a better trial arrives, the model of the trial it
pushes out is deleted from the store (its files and the logged model), while its run,
params, metrics and tags stay, with ``tuning.model_deleted`` saying why. A model that a
registered model version points to is never deleted. ``load_best`` and ``--register`` need
only the best trial's model, which is always kept.

Example::

    import tuning
    study = tuning.minimize("recipes/digits_cnn.py", max_evals=200, keep_models="best:5")
    model = tuning.load_best(study.experiment)
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from tuning.errors import ConfigurationError, TrackingError
from tuning.tracking import MODEL_DELETED_TAG, Tracker
from tuning.trial import TrialResult, TrialStatus

__all__ = ["KeepModels"]  # the rest is this package's own

_log = logging.getLogger("tuning")


@dataclass(frozen=True)
class KeepModels:
    """A model-retention policy: ``best`` is how many of the best trials keep their model
    (``None``: every trial's; ``0``: none is logged)."""

    best: int | None = None

    @classmethod
    def parse(cls, text: str | KeepModels) -> KeepModels:
        """``"all"``, ``"none"`` or ``"best:N"`` (N ≥ 1)."""
        if isinstance(text, KeepModels):
            return text
        value = str(text).strip().lower()
        if value in ("all", "none"):
            return cls(None if value == "all" else 0)
        kind, _, count = value.partition(":")
        if kind == "best" and count.strip().isdigit() and int(count) >= 1:
            return cls(int(count))
        raise ConfigurationError(f"keep_models must be 'all', 'none' or 'best:N' with N ≥ 1 "
                                 f"(e.g. best:5), got {text!r}")

    def __str__(self) -> str:
        return "all" if self.best is None else "none" if self.best == 0 else f"best:{self.best}"


class ModelKeeper:
    """Applies ``best:N`` as results arrive (on the process that runs the study)."""

    def __init__(self, policy: KeepModels, tracker: Tracker, past: Iterable[TrialResult] = ()) -> None:
        self.policy, self.tracker = policy, tracker
        self._holders: list[tuple[float, int, str]] = []  # (loss, number, run id), best first
        for result in past:  # a resumed study: the trials that still hold a model
            self._add(result)

    def record(self, result: TrialResult) -> list[str]:
        """Count ``result``; delete the model of the trial it pushes out of the N best. The
        run ids whose model was deleted."""
        deleted: list[str] = []
        if not self._add(result):
            return deleted
        while len(self._holders) > (self.policy.best or 0):  # more than one after a resume with a smaller N
            loss, number, run_id = self._holders.pop()
            why = (f"trial {number} (loss {loss:.6g}) is not one of them" if number == result.number else
                   f"trial {result.number} made trial {number} (loss {loss:.6g}) no longer one of them")
            reason = (f"keep_models={self.policy}: only the {self.policy.best} best trials "
                      f"keep their model; {why}")
            try:
                if self.tracker.delete_models(run_id):
                    self.tracker.log(run_id, tags={MODEL_DELETED_TAG: reason})
                    deleted.append(run_id)
            except TrackingError as error:  # the model stays: disk, not results, is at stake
                _log.warning("the model of trial %d was kept: %s", number, error)
        return deleted

    def _add(self, result: TrialResult) -> bool:
        if (self.policy.best is None or not result.model_logged or result.loss is None
                or result.status is not TrialStatus.OK):
            return False
        # Ties go to the older trial: a newer one must do better to take a place.
        bisect.insort(self._holders, (result.loss, result.number, result.run_id))
        return True
