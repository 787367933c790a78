"""Trials in a worker process, watched: a time limit, a memory limit, a fresh process now and then.

With ``--trial-timeout`` or ``--trial-max-memory`` (or ``--isolate``) each trial runs in a
worker process that loaded the recipe and its data once. The study process watches it
while it trains: past the time limit, or over the memory limit (resident size, not
virtual), the worker is killed, the trial's run ends KILLED with the reason in a tag,
hyperopt is told the trial failed, and the search goes on in a new worker.

Workers are also replaced every ``worker_trials`` trials: TensorFlow keeps the traced
graphs of every model it trained (``keras.backend.clear_session`` does not free them,
about 6 MB per trial on the digits recipe), so only a new process gives the memory back.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Any

import psutil

from tuning.errors import RecipeError
from tuning.pruners import Pruning
from tuning.recipe import RecipeSource
from tuning.tracking import INTERRUPTED_TAG
from tuning.trial import Reporter, TrialOptions, TrialResult, TrialSetup, TrialStatus, run_trial, settle

__all__ = ["Limits"]  # the rest is this package's own

_POLL = 0.2  # seconds between checks of a running trial


@dataclass(frozen=True)
class Limits:
    """What a trial may use; None means no limit."""

    seconds: float | None = None
    memory_mb: float | None = None
    worker_trials: int = 20

    def exceeded(self, elapsed: float, resident_mb: float) -> str | None:
        if self.seconds is not None and elapsed > self.seconds:
            return f"time limit: over {self.seconds:g} s"
        if self.memory_mb is not None and resident_mb > self.memory_mb:
            return f"memory limit: {resident_mb:.0f} MB resident, over {self.memory_mb:g} MB"
        return None


class _PipeReporter:
    """A worker's reporter: tells the study process what happens, as it happens."""

    def __init__(self, connection: multiprocessing.connection.Connection):
        self._connection = connection

    def trial_started(self, number: int, run_id: str, params: dict[str, Any]) -> None:
        self._connection.send(("started", number, run_id, params))

    def epoch_ended(self, number: int, step: int, metrics: dict[str, float]) -> None:
        self._connection.send(("epoch", number, step, metrics))

    def trial_ended(self, result: TrialResult) -> None:
        pass  # the result itself is sent back once run_trial returns


@dataclass(frozen=True)
class TrialSpec:
    """What another process (a worker, a Spark executor) needs to rebuild the study's
    TrialSetup: plain, picklable values."""

    recipe: RecipeSource
    tracking_uri: str
    patience: float
    experiment_id: str
    study_run_id: str
    options: TrialOptions
    retries: tuple[tuple[int, str], ...] = ()

    @classmethod
    def of(cls, setup: TrialSetup) -> TrialSpec:
        return cls(RecipeSource.of(setup.recipe), setup.tracker.uri, setup.tracker.patience.seconds,
                   setup.experiment_id, setup.study_run_id, setup.options, setup.retries)

    def setup(self, reporter: Reporter) -> TrialSetup:
        """The study's TrialSetup again, in this process: its recipe and data are loaded
        here once (a Spark worker may have loaded them while the study started)."""
        from tuning.tracking import Tracker

        recipe, data = self.recipe.load(self.tracking_uri)
        setup = TrialSetup(Tracker(self.tracking_uri, self.patience), self.experiment_id,
                           self.study_run_id, recipe, data, self.options, reporter, retries=self.retries)
        settle()  # this process lives for its trials
        return setup


class IsolatedRunner:
    """Runs trials one at a time in a watched worker process."""

    def __init__(self, setup: TrialSetup, limits: Limits, pruning: Pruning | None = None):
        self._setup = setup
        self._pruning = pruning  # sent with each trial: the curves known when it starts
        self._spec = TrialSpec.of(setup)
        self._limits = limits
        self._context = multiprocessing.get_context("spawn")  # forking TensorFlow is unsafe
        self._process: Any = None
        self._connection: Any = None
        self._trials_in_worker = 0

    def __call__(self, number: int, params: dict[str, Any], raw: dict[str, Any]) -> TrialResult:
        if self._process is None or self._trials_in_worker >= self._limits.worker_trials:
            self.close()
            self._start()
        self._connection.send(("trial", number, params, raw, self._pruning))
        self._trials_in_worker += 1
        started, run_id = time.monotonic(), None
        try:
            while True:
                if self._connection.poll(_POLL):
                    message = self._connection.recv()
                    if message[0] == "started":
                        run_id = message[2]
                        self._setup.reporter.trial_started(*message[1:])
                    elif message[0] == "epoch":
                        self._setup.reporter.epoch_ended(*message[1:])
                    else:  # "ended"
                        result: TrialResult = message[1]
                        self._setup.reporter.trial_ended(result)
                        return result
                    continue
                if not self._process.is_alive():
                    return self._stopped(number, run_id, params, "FAILED",
                                         f"the worker process died (exit code {self._process.exitcode})")
                reason = self._limits.exceeded(time.monotonic() - started, self._resident_mb())
                if reason:
                    return self._stopped(number, run_id, params, "KILLED", reason)
        except KeyboardInterrupt:
            self._stopped(number, run_id, params, "KILLED", "interrupted")
            raise

    def close(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._connection.send(None)
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.kill()
        self._process = self._connection = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self._spec),
                                              name="tuning-worker", daemon=True)
        self._process.start()
        child.close()
        self._connection = parent
        self._trials_in_worker = 0
        message = parent.recv()  # the worker has loaded the recipe and its data, or failed
        if message[0] == "error":
            self.close()
            raise RecipeError(f"the worker process could not load the recipe: {message[1]}")

    def _resident_mb(self) -> float:
        try:
            return psutil.Process(self._process.pid).memory_info().rss / 2**20
        except psutil.Error:
            return 0.0

    def _stopped(self, number: int, run_id: str | None, params: dict[str, Any], status: str,
                 reason: str) -> TrialResult:
        """Kill the worker; the trial's run ends with ``status`` and the reason."""
        self._process.kill()
        self._process.join()
        self._process = self._connection = None
        tracker = self._setup.tracker
        if run_id is not None:
            tags = {"tuning.error": reason, "tuning.stopped_by": reason.split(":")[0]}
            if reason == "interrupted":
                tags[INTERRUPTED_TAG] = "true"  # --resume runs its configuration again
            tracker.log(run_id, tags=tags)
            tracker.end_run(run_id, status)
        result = TrialResult(number, run_id or "",
                             TrialStatus.KILLED if status == "KILLED" else TrialStatus.FAILED,
                             params, error=reason, retry_of=self._setup.retry_of(number))
        self._setup.reporter.trial_ended(result)
        return result


def _serve(connection: multiprocessing.connection.Connection, spec: TrialSpec) -> None:
    """The worker: load the recipe and data once, then run the trials it is sent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the study process's to handle
    try:
        setup = spec.setup(_PipeReporter(connection))
    except Exception as error:  # noqa: BLE001 - reported to the study process
        connection.send(("error", "".join(traceback.format_exception_only(error)).strip()))
        return
    connection.send(("ready",))
    while (job := connection.recv()) is not None:
        _, number, params, raw, pruning = job
        connection.send(("ended", run_trial(setup, number, params, raw, pruning).portable()))
