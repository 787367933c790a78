"""Where parallel trials run: the :class:`Cluster` and its Spark session, started early.

A parallel study cannot start its first trial before three slow things are done: this
process imports the recipe (TensorFlow with it), the Spark JVM starts, and each Spark
Python worker imports the recipe and loads its data. They do not depend on each other, so
:func:`starting_early` starts the JVM, then has the workers load the recipe, in a thread
while this process is still importing it; :func:`session` later takes that session.

This module imports neither Keras nor MLflow nor pyspark when it is imported: the
``tuning`` command uses it before it loads the recipe.

Example::

    from tuning.cluster import Cluster, starting_early, session
    with starting_early(Cluster(2), "recipes/digits_cnn.py", None, "http://127.0.0.1:5000"):
        ...  # import the recipe here
        spark, own = session(Cluster(2))
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tuning import DISTRIBUTION
from tuning.errors import ConfigurationError, TrackingError, TuningError

if TYPE_CHECKING:
    from tuning.recipe import RecipeSource

__all__ = ["Cluster"]  # the rest is this package's own

_log = logging.getLogger("tuning")

_LEAN_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
_SHARED_SCHEMES = ("http", "https", "databricks")  # stores that executors on other hosts reach
INSTALL = ("--parallelism runs trials on Apache Spark, which needs pyspark and Java 17 or newer: "
           f"pip install '{DISTRIBUTION}[spark]' and apt-get install openjdk-17-jre-headless "
           "(or set JAVA_HOME)")


@dataclass(frozen=True)
class Cluster:
    """Where parallel trials run: N at a time, on a Spark master (None: local[N])."""

    parallelism: int
    master: str | None = None
    threads_per_trial: int | None = None  # None: the cores shared out on a local master

    def __post_init__(self) -> None:
        if self.parallelism < 1:
            raise ConfigurationError(f"parallelism must be at least 1, got {self.parallelism}")

    def threads(self) -> int | None:
        if self.threads_per_trial is not None or self.master is not None:
            return self.threads_per_trial
        return max(1, (os.cpu_count() or 1) // self.parallelism)


def check_store(uri: str) -> None:
    """Executors log on their own: the store must be a server, not a file of this host."""
    if not _shared(uri):
        raise TrackingError(
            f"--parallelism runs trials in other processes (on other hosts with a cluster), which "
            f"cannot share the store {uri}: start a tracking server, e.g. `mlflow server "
            "--backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000`, and pass "
            "--tracking-uri http://127.0.0.1:5000")


def _shared(uri: str) -> bool:
    return urlparse(uri).scheme in _SHARED_SCHEMES


class _EarlyStart:
    """A Spark session starting in a thread, then its Python workers loading the recipe."""

    def __init__(self, cluster: Cluster, path: str, data_path: str | None, tracking_uri: str):
        self.cluster = cluster
        self.session: Future[tuple[Any, bool]] = Future()
        self.taken = False
        self._abandoned = False  # no study will take the session: stop it once it is up
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._start, args=(path, data_path, tracking_uri),
                                        name="tuning-spark-start", daemon=True)
        self._thread.start()

    def _start(self, path: str, data_path: str | None, tracking_uri: str) -> None:
        try:
            spark, own = _new_session(self.cluster)
        except BaseException as error:  # raised where the study asks for the session
            self.session.set_exception(error)
            return
        with self._lock:
            self.session.set_result((spark, own))
            abandoned = self._abandoned
        if abandoned:
            self.stop()
            return
        try:
            from tuning.recipe import RecipeSource

            recipe = RecipeSource.from_file(path, data_path)
            context = spark.sparkContext
            context.setLocalProperty("spark.job.description", "tuning: the workers load the recipe")
            slots = self.cluster.parallelism
            context.parallelize(range(slots), slots).mapPartitions(
                functools.partial(_load_on_worker, recipe, tracking_uri)).collect()
        except Exception as error:  # the trials load it themselves, and say what went wrong
            _log.debug("the Spark workers did not load the recipe early: %s", error)

    def stop(self) -> None:
        """Stop a session that no study took (the recipe failed to load, say): now if it is
        up, else its thread does as soon as it is. The study's error is not held up by the
        JVM's start; and if the process ends first, the JVM ends with it (its stdin closes)."""
        with self._lock:
            self._abandoned = True
            if not self.session.done():
                _stopping.append(self._thread)
                return
        with contextlib.suppress(BaseException):  # (a session that failed to start)
            spark, own = self.session.result()
            if own:
                spark.stop()


def _load_on_worker(recipe: RecipeSource, tracking_uri: str, partition: Iterator[int]) -> Iterator[int]:
    """In a Spark Python worker: load the recipe and its data, as its first trial would."""
    for _ in partition:  # read the input first (SPARK-26549)
        pass
    with contextlib.suppress(Exception):  # the trial loads it again and reports the error
        recipe.load(tracking_uri)
    yield 0


_early: _EarlyStart | None = None
_stopping: list[threading.Thread] = []  # abandoned early starts, to stop their session once it is up


@contextmanager
def starting_early(cluster: Cluster | None, recipe: str | Path | Any, data_path: str | None,
                   tracking_uri: str | None) -> Iterator[None]:
    """Start ``cluster``'s Spark session and load ``recipe`` (a file's path) on its Python
    workers while the block runs; :func:`session` inside the block takes that session. A
    session nobody took is stopped when the block ends. Nothing starts without a cluster,
    for a recipe that is no file, for a store executors cannot share (the study says why),
    or inside another such block."""
    global _early
    # mlflow's own resolve_uri would import MLflow (seconds) before the JVM could start; the
    # CLI has not set a URI in MLflow yet, and minimize passes the resolved one.
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if cluster is None or not isinstance(recipe, str | Path) or not _shared(uri) or _early is not None:
        yield
        return
    early = _early = _EarlyStart(cluster, str(recipe), data_path, uri)
    try:
        yield
    finally:
        _early = None
        if not early.taken:
            early.stop()


def session(cluster: Cluster) -> tuple[Any, bool]:
    """The Spark session trials run on, and whether it was started here (to stop it after).

    With no master given, an active session (a notebook's) is used, else ``local[N]``. A
    session :func:`starting_early` started for the same cluster is taken as it is.
    """
    global _early
    if _early is not None and _early.cluster == cluster:
        early, _early = _early, None
        early.taken = True
        return early.session.result()
    return _new_session(cluster)


def _new_session(cluster: Cluster) -> tuple[Any, bool]:
    # Spark's getOrCreate would hand out the session an abandoned start is about to stop.
    for thread in [t for t in _stopping if t is not threading.current_thread()]:
        thread.join()
    _stopping[:] = [t for t in _stopping if t.is_alive()]
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
        if "java-options" not in os.environ.get("PYSPARK_SUBMIT_ARGS", ""):
            # The driver's JVM only schedules one small job per trial, on the cores the
            # trials train on: the quick JIT and a one-thread GC halve its CPU (16 s to 8 s
            # in a 16-trial digits study on 2 cores, most of it while it starts).
            builder = builder.config("spark.driver.extraJavaOptions", _LEAN_JVM)
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
