"""The trial loop: propose a point, run it, record its result, decide whether to go on.

One loop for every way trials run, as keras-tuner runs one create → run → end loop that its
distributed search reuses: here in this process (or a watched worker process, see
:mod:`tuning.worker`), or N at a time on Spark (:mod:`tuning.spark`). What differs is the
:class:`Executor`, which starts a trial and hands results back as trials end.

hyperopt's ``fmin`` is not used for it: its loop re-reads every trial several times per trial
(counting states, listing losses, rebuilding ``trials.trials``), 10 ms a trial at 10,000
trials. Here a step costs the same at trial 10 and at trial 10,000. The proposals are
``fmin``'s: one seed per proposal, drawn from the same stream, and interrupted trials that a
resume queued (``JOB_STATE_NEW`` documents) run before anything new is proposed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from hyperopt import Trials, base
from hyperopt.utils import coarse_utcnow

from tuning import signals
from tuning.errors import RecipeError
from tuning.trial import TrialResult, hyperopt_point


class ExecutorUnusable(Exception):  # noqa: N818 - a state, not a failure of the caller
    """No trial can run where the executor runs them (e.g. a Spark executor cannot load the
    recipe): the trial ``number`` is not a trial, nothing more starts, the study stops."""

    def __init__(self, number: int, reason: str):
        super().__init__(reason)
        self.number = number


class Executor(Protocol):
    slots: int  # trials it runs at a time

    def start(self, number: int, params: dict[str, Any], raw: dict[str, Any]) -> None: ...

    def next_result(self) -> TrialResult:
        """The result of a started trial (the next to end); raises :class:`ExecutorUnusable`."""
        ...


class InProcess:
    """Runs each trial here (or in the runner's worker process) when its result is asked for."""

    slots = 1

    def __init__(self, runner: Callable[[int, dict[str, Any], dict[str, Any]], TrialResult]):
        self.runner = runner
        self._next: tuple[int, dict[str, Any], dict[str, Any]] | None = None

    def start(self, number: int, params: dict[str, Any], raw: dict[str, Any]) -> None:
        self._next = (number, params, raw)

    def next_result(self) -> TrialResult:
        assert self._next is not None, "next_result() without start()"
        number, params, raw = self._next
        self._next = None
        signals.check()  # a stop requested between trials
        return self.runner(number, params, raw)


def run_trials(space: dict[str, Any], suggest: Callable[..., Any], trials: Trials, max_evals: int,
               rng: np.random.Generator, executor: Executor, names: list[str],
               started: Callable[[int, dict[str, Any]], None], ended: Callable[[TrialResult], bool]) -> None:
    """Run trials until ``max_evals`` are in ``trials``, ``suggest`` has no more, or ``ended``
    (called with each result) says stop; trials already started finish. ``started`` hears
    each trial's number and raw hyperopt values as it starts. Every result goes into its
    hyperopt document as it arrives, so the next proposal learns from it."""
    domain = base.Domain(None, space)  # suggest functions read only the space
    running: dict[int, dict[str, Any]] = {}  # trial number -> its document
    queued = [doc for doc in trials.trials if doc["state"] == base.JOB_STATE_NEW]
    stopping, unusable = False, ""
    while True:
        while not stopping and len(running) < executor.slots:
            if queued:
                doc = queued.pop(0)
            elif len(trials.trials) >= max_evals:
                break
            else:
                docs = suggest(trials.new_trial_ids(1), domain, trials, rng.integers(2**31 - 1))
                if not docs:  # a grid with no points left
                    stopping = True
                    break
                doc = _insert(trials, docs[0])
            doc["state"] = base.JOB_STATE_RUNNING
            doc["book_time"] = doc["refresh_time"] = coarse_utcnow()
            number = doc["tid"] + 1
            running[number] = doc
            config = base.spec_from_misc(doc["misc"])
            params, raw = hyperopt_point(domain.expr, domain.memo_from_config(config), names)
            started(number, raw)
            executor.start(number, params, raw)
        if not running:
            if unusable:
                raise RecipeError(unusable)
            return
        try:
            result = executor.next_result()
        except ExecutorUnusable as error:
            doc = running.pop(error.number)
            doc["state"], doc["result"] = base.JOB_STATE_DONE, {"status": "fail", "error": str(error)}
            unusable, stopping = unusable or str(error), True
            continue
        doc = running.pop(result.number)
        doc["state"], doc["result"] = base.JOB_STATE_DONE, result.to_hyperopt()
        doc["refresh_time"] = coarse_utcnow()
        stopping = ended(result) or stopping


def _insert(trials: Trials, doc: dict[str, Any]) -> dict[str, Any]:
    """Add a proposed document to ``trials``, visible in ``trials.trials`` as ``refresh()``
    would make it, without re-reading every trial as ``refresh()`` does."""
    trials.insert_trial_docs([doc])
    inserted = trials._dynamic_trials[-1]
    in_step = len(trials._trials) == len(trials._dynamic_trials) - 1
    if type(trials) is Trials and trials._exp_key is None and in_step:
        trials._trials.append(inserted)  # (its tid is in trials._ids since new_trial_ids)
    else:  # another kind of Trials, or one changed behind our back: hyperopt's way
        trials.refresh()
    return inserted
