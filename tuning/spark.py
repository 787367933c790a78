"""Parallel trials on Apache Spark, through hyperopt's ``SparkTrials``.

``--parallelism N`` runs N trials at a time. Each trial is one Spark task: the executor
loads the recipe and its data once per Python worker, runs :func:`tuning.trial.run_trial`
and logs straight to the tracking server (the same child run, tags, epoch metrics and
model as a serial trial). The driver only proposes configurations and collects results.

How this fits hyperopt:

- ``SparkTrials`` cannot hand the objective its trial number, so the space gets one hidden
  dimension, :data:`TRIAL_LABEL`, whose value the suggest wrapper :func:`numbered` sets to
  hyperopt's trial id. (TPE treats dimensions one by one, so it changes no other choice.)
- Results come back on the driver in the trial documents; :class:`Harvest` turns them
  into :class:`~tuning.trial.TrialResult` as they arrive.
- Each Python worker limits its thread pools (``TF_NUM_INTRAOP_THREADS`` …, set through
  ``spark.executorEnv.*``) so that N workers do not fight over the cores.

Example::

    import tuning
    study = tuning.minimize("recipes/digits_cnn.py", parallelism=2,
                            tracking_uri="http://127.0.0.1:5000")
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlparse

from hyperopt import base, hp

from tuning.errors import TrackingError, TuningError
from tuning.progress import SilentReporter
from tuning.pruners import Pruning
from tuning.trial import TrialResult, TrialSetup, TrialStatus, hyperopt_point, run_trial
from tuning.worker import TrialSpec

TRIAL_LABEL = "tuning_trial"
_SHARED_SCHEMES = ("http", "https", "databricks")  # stores that executors on other hosts reach
INSTALL = ("--parallelism runs trials on Apache Spark, which needs pyspark and Java 17 or newer: "
           "pip install 'tuning[spark]' and apt-get install openjdk-17-jre-headless "
           "(or set JAVA_HOME)")


@dataclass(frozen=True)
class Cluster:
    """Where parallel trials run: N at a time, on a Spark master (None: local[N])."""

    parallelism: int
    master: str | None = None
    threads_per_trial: int | None = None  # None: the cores shared out on a local master

    def threads(self) -> int | None:
        if self.threads_per_trial is not None or self.master is not None:
            return self.threads_per_trial
        return max(1, (os.cpu_count() or 1) // self.parallelism)


def check_store(uri: str) -> None:
    """Executors log on their own: the store must be a server, not a file of this host."""
    if urlparse(uri).scheme not in _SHARED_SCHEMES:
        raise TrackingError(
            f"--parallelism runs trials in other processes (on other hosts with a cluster), which "
            f"cannot share the store {uri}: start a tracking server, e.g. `mlflow server "
            "--backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, and pass "
            "--tracking-uri http://127.0.0.1:5000")


def session(cluster: Cluster) -> tuple[Any, bool]:
    """The Spark session trials run on, and whether it was started here (to stop it after).

    With no master given, an active session (a notebook's) is used, else ``local[N]``.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise TuningError(INSTALL) from None
    if cluster.master is None and (active := SparkSession.getActiveSession()) is not None:
        return active, False
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise TuningError(INSTALL)
    builder = (SparkSession.builder.appName("tuning")
               .master(cluster.master or f"local[{cluster.parallelism}]")
               .config("spark.ui.showConsoleProgress", "false"))
    if cluster.master is None:
        # Workers on this host run this very Python, with its packages (PySpark reads the
        # variable, not spark.pyspark.python, when the context starts inside Python).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.ui.enabled", "false")
    for name, value in _thread_limits(cluster.threads()).items():
        builder = builder.config(f"spark.executorEnv.{name}", value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark, True


def _thread_limits(threads: int | None) -> dict[str, str]:
    """Environment that caps a worker's TensorFlow, OpenMP and XLA thread pools."""
    if threads is None:
        return {}
    limits = {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads),
              "OMP_NUM_THREADS": str(threads)}
    if threads == 1:
        limits["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return limits


def trials(spark: Any, parallelism: int) -> Any:
    from hyperopt import SparkTrials

    return SparkTrials(parallelism=parallelism, spark_session=spark)


def numbered_space(space: dict[str, Any]) -> dict[str, Any]:
    """The space with the hidden dimension that carries each trial's number to its executor."""
    return {**space, TRIAL_LABEL: hp.uniform(TRIAL_LABEL, 0, 2**31)}


def numbered(suggest: Callable[..., Any], trials: Any) -> Callable[..., Any]:
    """``suggest``, with each new trial's hidden dimension set to its hyperopt id.

    The trials already in ``trials`` (a resumed study's) get theirs now: hyperopt evaluates
    the best of them in the whole space at the end.
    """
    for doc in trials._dynamic_trials:
        _number(doc)

    def suggest_numbered(new_ids: list[int], domain: Any, trials: Any, seed: int) -> list[dict[str, Any]]:
        docs = suggest(new_ids, domain, trials, seed)
        for doc in docs:
            _number(doc)
        return docs
    return suggest_numbered


def _number(doc: dict[str, Any]) -> None:
    doc["misc"]["idxs"][TRIAL_LABEL] = [doc["tid"]]
    doc["misc"]["vals"][TRIAL_LABEL] = [float(doc["tid"])]


class SparkObjective:
    """What a Spark task runs: one trial, in a Python worker that keeps the recipe and data."""

    fmin_pass_expr_memo_ctrl = True  # hyperopt's Domain on the executor reads this

    def __init__(self, setup: TrialSetup, names: list[str], pruning: Pruning | None):
        self.spec = replace(TrialSpec.of(setup), quiet_fit=True)  # no Keras output in executor logs
        self.names = names  # the recipe's order
        self.pruning = pruning  # pickled with each task: the curves known when it starts

    def __call__(self, expr: Any, memo: dict[Any, Any], ctrl: Any) -> dict[str, Any]:
        _let_spark_reuse_this_worker()
        params, raw = hyperopt_point(expr, memo, self.names)
        number = int(raw.pop(TRIAL_LABEL)) + 1
        setup = _setup(self.spec)
        setup.pruning = self.pruning
        result = run_trial(setup, number, params, raw)
        return {**result.to_hyperopt(), "trial": result}


_SETUPS: dict[TrialSpec, TrialSetup] = {}


def _setup(spec: TrialSpec) -> TrialSetup:
    """The study's TrialSetup in this worker: the recipe and its data are loaded once."""
    if spec not in _SETUPS:
        _SETUPS.clear()  # another study: its data would only take memory
        _SETUPS[spec] = spec.setup(SilentReporter())
    return _SETUPS[spec]


def _let_spark_reuse_this_worker() -> None:
    """Read the task's input partition, which hyperopt's task function leaves unread.

    Spark gives a Python worker to the next task only after the worker read all its input
    (SPARK-26549); hyperopt's ``run_task_on_executor(_)`` never reads ``_``, so every trial
    would start a new Python process and import TensorFlow and load the data again.
    """
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_name != "run_task_on_executor":
        frame = frame.f_back
    if frame is not None and isinstance(partition := frame.f_locals.get("_"), Iterator):
        for _ in partition:
            pass


class Harvest:
    """Hands each trial that ended on an executor to ``record``, once, on the driver."""

    def __init__(self, record: Callable[[TrialResult], None], trials: Any):
        self._record = record
        self._seen = {doc["tid"] for doc in trials.trials}  # a resumed study's earlier trials
        self._lock = threading.Lock()

    def __call__(self, trials: Any) -> None:
        with self._lock:  # the dispatcher thread and the main thread both harvest
            # _dynamic_trials holds every document, whatever the last refresh() saw
            for doc in list(trials._dynamic_trials):
                if doc["tid"] not in self._seen and doc["state"] in _ENDED:
                    self._seen.add(doc["tid"])
                    self._record(_result(doc))


_ENDED = (base.JOB_STATE_DONE, base.JOB_STATE_ERROR, base.JOB_STATE_CANCEL)


def _result(doc: dict[str, Any]) -> TrialResult:
    if doc["state"] == base.JOB_STATE_DONE and "trial" in doc["result"]:
        return doc["result"]["trial"]
    if doc["state"] == base.JOB_STATE_CANCEL:
        return TrialResult(doc["tid"] + 1, "", TrialStatus.KILLED, {}, error="cancelled with the study")
    # hyperopt keeps the exception's type; Spark's log above shows the executor's traceback
    kind, traceback = doc["misc"].get("error", ("an unknown error", None))
    last = (traceback or "").strip().splitlines()[-1:] or [f"{kind} (its traceback is in the log above)"]
    return TrialResult(doc["tid"] + 1, "", TrialStatus.FAILED, {}, error=f"the Spark task failed: {last[0]}")


@contextmanager
def cancelling_on_interrupt(spark: Any) -> Iterator[None]:
    """Ctrl-C and SIGTERM cancel the running Spark jobs at once (hyperopt would wait for them)."""
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
