"""Why a study stops: its trial budget, or one of the limits a user set.

``timeout`` stops starting trials once that many seconds have passed (a running trial
finishes, as in Optuna and Talos); ``early_stop`` stops after that many trials in a row
without a better objective (hyperopt's ``no_progress_loss``); ``target`` stops as soon as
the objective reaches the value. The first rule that fires is the study's stop reason,
kept on the study run as the ``tuning.stop_reason`` tag (and ``tuning.stop_detail``).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from tuning.errors import ConfigurationError
from tuning.trial import Objective, TrialResult, TrialStatus

__all__ = ["StopReason", "StopRules"]  # the rest is this package's own


class StopReason(enum.StrEnum):
    MAX_EVALS = "max_evals"  # the trial budget is spent
    GRID_DONE = "grid_done"  # every grid point ran
    ROUNDS_DONE = "rounds_done"  # every round of population based training ran (tuning.pbt)
    TIMEOUT = "timeout"
    EARLY_STOP = "early_stop"
    TARGET = "target"
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM
    TRACKING = "tracking"  # the tracking server stayed away past --patience


@dataclass
class StopRules:
    """The user's study limits; ``check`` answers after every trial.

    A study runs with its own copy, its objective set (``minimize(stop=StopRules(timeout=600))``);
    the clock starts when the copy is made.
    """

    objective: Objective = Objective()
    timeout: float | None = None
    early_stop: int | None = None
    target: float | None = None
    reason: StopReason | None = field(default=None, init=False)
    detail: str = field(default="", init=False)
    _started: float = field(default_factory=time.monotonic, init=False)
    # Where the best result so far is (-1: none yet), kept as results arrive: a check costs
    # the same at trial 10 and at trial 10,000.
    _seen: int = field(default=0, init=False)
    _best_at: int = field(default=-1, init=False)

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigurationError(f"timeout must be positive, got {self.timeout}")
        if self.early_stop is not None and self.early_stop < 1:
            raise ConfigurationError(f"early_stop must be at least 1 trial, got {self.early_stop}")

    def check(self, results: Sequence[TrialResult]) -> bool:
        """True when the study should start no further trial; sets ``reason``. ``results``
        only grows between calls."""
        for index in range(self._seen, len(results)):
            result = results[index]
            usable = result.status is TrialStatus.OK and result.loss is not None
            if usable and (self._best_at < 0 or _rank(result) < _rank(results[self._best_at])):
                self._best_at = index
        self._seen = len(results)
        best = results[self._best_at] if self._best_at >= 0 else None  # usable: its loss is set
        if (self.target is not None and best is not None
                and _rank(best)[0] <= self.objective.loss(self.target)):
            return self._stop(StopReason.TARGET, f"{self.objective.metric} reached {self.target:g} "
                                                 f"in trial {best.number}")
        if self.early_stop is not None:
            since = len(results) - (self._best_at + 1)  # all of them when none was usable
            if since >= self.early_stop:
                return self._stop(StopReason.EARLY_STOP, f"{since} trials without a better "
                                                         f"{self.objective.metric}")
        elapsed = time.monotonic() - self._started
        if self.timeout is not None and elapsed >= self.timeout:
            return self._stop(StopReason.TIMEOUT, f"{elapsed:.0f} s passed (--timeout {self.timeout:g})")
        return False

    def _stop(self, reason: StopReason, detail: str) -> bool:
        self.reason, self.detail = reason, detail
        return True


def ended_by(status: str, otherwise: StopReason) -> StopReason:
    """Why a study ended, from how its run ends (see :class:`tuning.study_run.StudyRun`):
    interrupted when KILLED, the store when it went away (no status), else ``otherwise``."""
    return {"KILLED": StopReason.INTERRUPTED, "": StopReason.TRACKING}.get(status, otherwise)


def stop_detail(reason: StopReason, trials: int) -> str:
    """What ``tuning.stop_detail`` says when no rule gave a detail of its own."""
    budget = "the budget's one trial ran" if trials == 1 else f"all {trials} trials of the budget ran"
    return {StopReason.MAX_EVALS: budget,
            StopReason.GRID_DONE: f"every one of the grid's {trials} points ran",
            StopReason.INTERRUPTED: "interrupted",
            StopReason.TRACKING: "the tracking server stayed away"}.get(reason, "")


def _rank(result: TrialResult) -> tuple[float, int]:
    """Lower is better; a tie goes to the earlier trial."""
    return result.loss, result.number  # type: ignore[return-value]
