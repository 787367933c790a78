"""The user's own MLflow setup and calls: the store and experiment they chose, the run
they have active, and ``mlflow.*`` calls inside their model.

MLflow keeps these as process-wide state (a global tracking URI, an active experiment, a
stack of active runs); a search reads them and never changes them for good.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import mlflow


def resolve_uri(tracking_uri: str | None) -> str:
    """The argument or flag; else the user's own MLflow setup: ``mlflow.set_tracking_uri``
    earlier in this process (a hosted service's ``init()`` calls it too), else
    ``MLFLOW_TRACKING_URI``; else MLflow's default in the working folder."""
    return tracking_uri or mlflow.get_tracking_uri()


def default_uri() -> str:
    """MLflow's default store in this working folder, where no ``mlruns/`` file store is."""
    from mlflow.utils.file_utils import path_to_local_sqlite_uri

    return path_to_local_sqlite_uri(os.path.abspath("mlflow.db"))


def user_experiment() -> tuple[str | None, str | None]:
    """``(id, name)`` of the experiment the user's MLflow setup chose, either may be None:
    ``mlflow.set_experiment`` earlier in this process, else the active run's, else
    ``MLFLOW_EXPERIMENT_NAME`` / ``MLFLOW_EXPERIMENT_ID``. Both None: nothing chosen."""
    from mlflow.tracking import fluent

    if fluent._active_experiment_id:  # set by mlflow.set_experiment; MLflow has no getter
        return fluent._active_experiment_id, None
    if (run := mlflow.active_run()) is not None:
        return run.info.experiment_id, None
    return os.environ.get("MLFLOW_EXPERIMENT_ID") or None, os.environ.get("MLFLOW_EXPERIMENT_NAME") or None


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """No "Downloading artifacts" progress bars in this block (a model load prints several)."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


@contextmanager
def using_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI is ``uri`` in this block, and exactly what it was after.

    For the calls that read it (model loading, the user's own ``mlflow.*`` calls in a
    trial). ``mlflow.set_tracking_uri(None)`` would also delete ``MLFLOW_TRACKING_URI``
    from the environment, so the variable is put back by hand.
    """
    from mlflow.tracking._tracking_service import utils

    previous, variable = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None: back to the default
        if variable is not None:
            os.environ["MLFLOW_TRACKING_URI"] = variable


@dataclass
class UserLogging:
    """What the user's own MLflow calls did during a trial."""

    model_id: str | None = None  # the model they logged (``mlflow.keras.log_model``), if any


@contextmanager
def fluent_run(run_id: str, uri: str) -> Iterator[UserLogging]:
    """Let MLflow calls in the user's own code (tutorial style) log into the trial's run.

    ``mlflow.start_run()`` and a bare ``mlflow.log_metric`` resume the run named by
    ``MLFLOW_RUN_ID``, on the study's store; a run they leave open on MLflow's stack is
    closed on the way out (the trial sets its true status right after). A run the user
    had active around the search (a notebook's ``with mlflow.start_run():``) is set aside
    meanwhile, or ``mlflow.start_run()`` in the model would refuse to start.
    """
    from mlflow.tracking import fluent

    previous = os.environ.get("MLFLOW_RUN_ID")
    outer_runs = fluent._active_run_stack.get()
    last_model = fluent._last_logged_model_id.get()
    fluent._active_run_stack.set([])
    os.environ["MLFLOW_RUN_ID"] = run_id
    logging = UserLogging()
    try:
        with using_uri(uri):
            try:
                yield logging
            finally:
                while (active := mlflow.active_run()) is not None and active.info.run_id == run_id:
                    mlflow.end_run()
    finally:
        if fluent._last_logged_model_id.get() != last_model:
            logging.model_id = fluent._last_logged_model_id.get()
        fluent._active_run_stack.set(outer_runs)
        if previous is None:
            os.environ.pop("MLFLOW_RUN_ID", None)
        else:
            os.environ["MLFLOW_RUN_ID"] = previous
