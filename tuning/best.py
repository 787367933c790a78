"""Questions about finished studies: the best trials, and reloading their models."""

from __future__ import annotations

import re
from typing import Any

from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from tuning.errors import NoTrialsError, TrackingError
from tuning.tracking import KIND_TAG, LOSS_METRIC, Tracker

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def best_runs(experiment: str, top: int = 1, tracking_uri: str | None = None,
              study_run_id: str | None = None) -> list[Run]:
    """The ``top`` finished trials of ``experiment`` (all its studies), best first.

    Example::

        for run in tuning.best_runs("digits_cnn", top=3):
            print(run.info.run_id, run.data.metrics["hyperopt_loss"], run.data.params)
    """
    tracker = Tracker(tracking_uri)
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        names = [e.name for e in tracker.client.search_experiments()]
        raise NoTrialsError(f"no experiment {experiment!r} in {tracker.uri} "
                            f"(experiments: {', '.join(names) or 'none'})")
    query = f"tags.`{KIND_TAG}` = 'trial' and attributes.status = 'FINISHED'"
    if study_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{study_run_id}'"
    runs = tracker.client.search_runs([found.experiment_id], query, max_results=top,
                                      order_by=[f"metrics.{LOSS_METRIC} ASC"])
    if not runs:
        raise NoTrialsError(f"experiment {experiment!r} has no finished trial yet")
    return list(runs)


def model_uri(which: str, tracking_uri: str | None = None) -> str:
    """A loadable model URI for an experiment name, a run id, or a ``runs:/``/``models:/`` URI."""
    if which.startswith(("runs:/", "models:/")):
        return which
    if _RUN_ID.match(which):
        try:
            Tracker(tracking_uri).client.get_run(which)
            return f"runs:/{which}/model"
        except MlflowException:
            pass  # not a run id after all: try it as an experiment name
    return f"runs:/{best_runs(which, 1, tracking_uri)[0].info.run_id}/model"


def load_best(which: str, tracking_uri: str | None = None) -> Any:
    """Reload a trial's Keras model: the best of an experiment, a run id, or a model URI.

    Example::

        model = tuning.load_best("digits_cnn")
        model.predict(x_test[:5])
    """
    import mlflow.keras

    tracker = Tracker(tracking_uri)  # MLflow's loader reads the process-wide URI
    uri = model_uri(which, tracker.uri)
    try:
        return mlflow.keras.load_model(uri)
    except (MlflowException, OSError) as error:
        raise TrackingError(f"cannot load the model at {uri}: {error}") from None
