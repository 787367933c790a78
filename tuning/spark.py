"""Parallel trials on Apache Spark.

``--parallelism N`` runs N trials at a time. Each trial is one Spark job of one task: the
executor loads the recipe and its data once per Python worker, runs
:func:`tuning.trial.run_trial` and logs straight to the tracking server (the same child
run, tags, epoch metrics and model as a serial trial). The driver proposes configurations
with hyperopt, in hyperopt's ``Trials``, and collects the results (:class:`SparkExecutor`).
The session, and the thread limits that keep N workers from fighting over the cores, come
from :mod:`tuning.cluster`, which starts it while the study loads the recipe.

Example::

    import tuning
    study = tuning.minimize("recipes/digits_cnn.py", parallelism=2,
                            tracking_uri="http://127.0.0.1:5000")
"""

from __future__ import annotations

import functools
import queue
import re
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from tuning import DISTRIBUTION, history
from tuning.errors import TrackingError, TuningError
from tuning.loop import ExecutorUnusable
from tuning.progress import SilentReporter
from tuning.pruners import Pruning
from tuning.tracking import RETRY_TAG
from tuning.trial import TrialResult, TrialSetup, TrialStatus, run_trial
from tuning.worker import TrialSpec

EXECUTOR_SETUP_FAILED = "the recipe could not be loaded on the Spark executor at"
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


class SparkExecutor:
    """Runs trials as Spark jobs, N at a time, for :func:`tuning.loop.run_trials`.

    hyperopt's own ``SparkTrials`` looks for new work once a second, in two loops (its
    ``fmin`` and its dispatcher); with trials of a few seconds that idled each Spark slot
    a second or more between trials. Here the driver waits on the trials' results
    themselves: when one ends, its result goes into the hyperopt document (TPE learns from
    it), the next configuration is suggested and its Spark job starts, all at once.
    """

    def __init__(self, spark: Any, parallelism: int, setup: TrialSetup, pruning: Pruning | None):
        self.spark = spark
        self.slots = parallelism
        self.setup = setup
        spec = TrialSpec.of(setup)  # no Keras output in executor logs:
        self.spec = replace(spec, options=replace(spec.options, quiet_fit=True))
        self.pruning = pruning  # pickled with each task: the curves known when it starts
        self._ended: queue.Queue[TrialResult] = queue.Queue()

    def next_result(self) -> TrialResult:
        """The next trial to end, reported here (the executors report nothing to this process)."""
        result = self._ended.get()
        if (result.error or "").startswith(EXECUTOR_SETUP_FAILED):  # not a trial: it has no run
            raise ExecutorUnusable(result.number, result.error or "")
        if result.status is TrialStatus.FAILED and not result.run_id:
            result = self._lost(result)
        self.setup.reporter.trial_ended(result)
        return result

    def _lost(self, result: TrialResult) -> TrialResult:
        """A trial whose Spark task died: its run, if it has one, ends FAILED with the reason."""
        setup = self.setup
        ended = history.end_orphans(setup.tracker, setup.experiment_id, setup.study_run_id,
                                    result.error or "", "FAILED", result.number)
        if not ended:
            return result
        # The run a Spark retry left says itself which run it reran (the driver never saw it).
        return replace(result, run_id=ended[0].info.run_id, retry_of=ended[0].data.tags.get(RETRY_TAG))

    def start(self, number: int, params: dict[str, Any], raw: dict[str, Any]) -> None:
        task = functools.partial(_trial_task, self.spec, self.pruning, number, params, raw)

        def job() -> None:
            context = self.spark.sparkContext
            context.setLocalProperty("spark.job.description", f"tuning trial {number}")
            context.setLocalProperty("spark.job.interruptOnCancel", "true")  # Ctrl-C stops the trial
            try:
                result = context.parallelize([0], 1).mapPartitions(task).collect()[0]
            except Exception as error:  # the task never ran or its worker died: Spark's message
                result = TrialResult(number, "", TrialStatus.FAILED, params,
                                     error=f"the Spark task failed: {_reason(error)}")
            self._ended.put(result)

        from pyspark import InheritableThread  # pyspark's threads keep their job's properties

        InheritableThread(target=job, daemon=True).start()


def _reason(error: Exception) -> str:
    """The line of Spark's long message that says what failed: the last exception line of
    the Python traceback it holds (its very last lines may be a traceback's carets)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if _EXCEPTION_LINE.match(line)]
    reason = (raised or lines or [type(error).__name__])[-1]
    if missing := re.search(r"No module named '([\w.]+)'", reason):
        reason += (f" (the executors' Python lacks {missing[1]}: install {DISTRIBUTION} and the "
                   "recipe's imports on every worker host, and set PYSPARK_PYTHON, where you start "
                   "tuning, to that Python)")
    return reason


def _trial_task(spec: TrialSpec, pruning: Pruning | None, number: int, params: dict[str, Any],
                raw: dict[str, Any], partition: Iterator[int]) -> Iterator[TrialResult]:
    """One trial, in a Spark task."""
    from pyspark import TaskContext

    for _ in partition:
        # Read the input: Spark gives a Python worker its next task only after it read all
        # of it (SPARK-26549); otherwise every trial would start a new Python and load
        # TensorFlow and the data again.
        pass
    try:
        setup = _setup(spec)
    except TuningError as error:  # no trial can run here: the study stops (Spark would retry it)
        yield TrialResult(number, "", TrialStatus.FAILED, params,
                          error=f"{EXECUTOR_SETUP_FAILED} {socket.gethostname()}: {error}")
        return
    retries = setup.retries
    task = TaskContext.get()  # always set inside a Spark task
    if task is not None and task.attemptNumber() > 0:
        # Spark runs the task again after its executor was lost: the run it left behind is
        # interrupted, and this one reruns it (so --resume does not run it a third time).
        lost = history.end_orphans(setup.tracker, setup.experiment_id, setup.study_run_id,
                                   "its Spark executor was lost; Spark ran the trial again", "KILLED", number)
        retries += tuple((number, run.info.run_id) for run in lost[:1])
    yield run_trial(replace(setup, retries=retries), number, params, raw, pruning).portable()


_SETUPS: dict[TrialSpec, TrialSetup] = {}


def _setup(spec: TrialSpec) -> TrialSetup:
    """The study's TrialSetup in this worker: the recipe and its data are loaded once."""
    if spec not in _SETUPS:
        _SETUPS.clear()  # another study: its data would only take memory
        _SETUPS[spec] = spec.setup(SilentReporter())
    return _SETUPS[spec]


@contextmanager
def executing(spark: Any, own: bool, setup: TrialSetup, parallelism: int,
              pruning: Pruning | None) -> Iterator[SparkExecutor]:
    """A :class:`SparkExecutor` for the study's trials. Ctrl-C and SIGTERM cancel its jobs;
    when the study ends, the runs of tasks that were cancelled end too (unless the store is
    away), and a session started by the study stops."""
    store_away = False
    try:
        with cancelling_on_interrupt(spark):
            yield SparkExecutor(spark, parallelism, setup, pruning)
    except TrackingError:
        store_away = True
        raise
    finally:
        try:
            if not store_away:  # cancelled Spark tasks leave their runs RUNNING
                history.end_orphans(setup.tracker, setup.experiment_id, setup.study_run_id,
                                    "stopped with the study")
        finally:
            if own:
                spark.stop()


@contextmanager
def cancelling_on_interrupt(spark: Any) -> Iterator[None]:
    """Ctrl-C and SIGTERM cancel the running Spark jobs at once (else they would train on to their end)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        spark.sparkContext.cancelAllJobs()
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
